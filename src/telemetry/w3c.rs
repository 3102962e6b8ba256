//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): reading a client's
//! `traceparent` and `tracestate`, and writing ours. Pure functions over bytes, tested here.

use http::header::{HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` flag (§3.2.2.5.1).
pub const SAMPLED: u8 = 0x01;
/// Level 2's `random-trace-id` flag: the only other flag defined. It describes the trace id,
/// so it stays when the trace continues; every other bit is zeroed, as the spec asks.
const RANDOM: u8 = 0x02;

/// The longest `tracestate` passed on (combined lines, commas included): the spec asks
/// vendors to propagate at least 512 characters and to document a cap.
pub const MAX_TRACESTATE: usize = 512;
/// Members of a `tracestate` list (§3.3.1.1).
const MAX_MEMBERS: usize = 32;
/// Members longer than this go first when a list is truncated (§3.3.1.5).
const LONG_MEMBER: usize = 128;

/// A valid `traceparent`, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl Parent {
    /// Reads one `traceparent` value (§3.2.2). Version `00` is exactly 55 characters; a
    /// higher version (never `ff`) is read by its version-00 prefix when that is followed by
    /// the end or a `-` (§3.2.4). Hex must be lower case, and all-zero ids are invalid.
    pub fn parse(value: &[u8]) -> Option<Parent> {
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        let tail_ok = match version {
            0x00 => value.len() == 55,
            0xff => false,
            _ => value.len() == 55 || value[55] == b'-',
        };
        if !tail_ok || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex_into(&value[3..35], &mut trace_id)?;
        hex_into(&value[36..52], &mut span_id)?;
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Parent {
            trace_id,
            span_id,
            flags,
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The flags a continued trace carries: this one's sampled and random-trace-id bits.
    pub fn continued_flags(&self) -> u8 {
        self.flags & (SAMPLED | RANDOM)
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        // Upper case is not HEXDIGLC: such a header is invalid, not another spelling.
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    Some(hex_value(pair[0])? << 4 | hex_value(pair[1])?)
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 15)];
    }
}

/// A version-00 `traceparent`: `00-{trace-id}-{parent-id}-{flags}`.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_hex(trace_id, &mut out[3..35]);
    write_hex(span_id, &mut out[36..52]);
    write_hex(&[flags], &mut out[53..55]);
    // Lower-case hex and dashes are always a valid header value; the fallback is unreachable.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn is_key(key: &[u8]) -> bool {
    let first_ok = key
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && key.len() <= 256
        && key
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/@".contains(c))
}

fn is_value(value: &[u8]) -> bool {
    let printable = |c: &u8| (0x20..=0x7e).contains(c) && *c != b',' && *c != b'=';
    !value.is_empty()
        && value.len() <= 256
        && value.iter().all(printable)
        && value.last() != Some(&b' ')
}

/// The members of a client's `tracestate` (every line, combined as one list: RFC 9110 §5.3),
/// surrounding whitespace and empty members dropped; `None` when the list breaks the grammar
/// of §3.3.1 (a malformed member, more than 32, a key twice), which discards all of it.
pub fn tracestate_members<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Option<Vec<&'a [u8]>> {
    let mut members: Vec<&'a [u8]> = Vec::new();
    for line in lines {
        for member in line.split(|c| *c == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            let eq = member.iter().position(|c| *c == b'=')?;
            let (key, value) = (&member[..eq], &member[eq + 1..]);
            if !is_key(key) || !is_value(value) || members.len() == MAX_MEMBERS {
                return None;
            }
            if members
                .iter()
                .any(|m| m.starts_with(key) && m.get(key.len()) == Some(&b'='))
            {
                return None;
            }
            members.push(member);
        }
    }
    Some(members)
}

/// The length of the members joined with commas.
pub fn list_len(members: &[&[u8]]) -> usize {
    members.iter().map(|m| m.len()).sum::<usize>() + members.len().saturating_sub(1)
}

/// The list as one value of at most [`MAX_TRACESTATE`] bytes, truncated the way §3.3.1.5 asks:
/// whole members, those over 128 characters first, then from the end (the right-most are
/// the oldest). `None` when nothing is left.
pub fn tracestate_value(mut members: Vec<&[u8]>) -> Option<HeaderValue> {
    while list_len(&members) > MAX_TRACESTATE {
        match members.iter().rposition(|m| m.len() > LONG_MEMBER) {
            Some(i) => {
                members.remove(i);
            }
            None => {
                members.pop();
            }
        }
    }
    if members.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&members.join(&b","[..])).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_a_valid_traceparent() {
        let p = Parent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.span_id[7], 0xb7);
        assert!(p.sampled());
        let out = traceparent(&p.trace_id, &p.span_id, p.flags);
        assert_eq!(out, VALID);
    }

    #[test]
    fn refuses_what_the_spec_calls_invalid() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(Parent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_a_higher_version_by_its_prefix() {
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-ever";
        let p = Parent::parse(future.as_bytes()).unwrap();
        assert_eq!(p.flags, 3);
        assert!(Parent::parse(&future.as_bytes()[..55]).is_some());
        let p = Parent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert_eq!(p.continued_flags(), SAMPLED | RANDOM);
    }

    fn state(lines: &[&str]) -> Option<Vec<String>> {
        tracestate_members(lines.iter().map(|l| l.as_bytes())).map(|m| {
            m.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        })
    }

    #[test]
    fn tracestate_lines_combine_and_are_checked() {
        assert_eq!(
            state(&[
                "rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE",
                ",  ,tenant@vendor=x y"
            ]),
            Some(vec![
                "rojo=00f067aa0ba902b7".into(),
                "congo=t61rcWkgMzE".into(),
                "tenant@vendor=x y".into(),
            ])
        );
        assert_eq!(state(&[""]), Some(vec![]));
        for bad in [
            "Rojo=1",
            "rojo",
            "rojo=",
            "rojo=a=b",
            "rojo=1,rojo=2",
            "=1",
            "ro jo=1",
            "rojo=\u{7f}",
        ] {
            assert_eq!(state(&[bad]), None, "{bad:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(state(&[&many.join(",")]), None);
        assert_eq!(state(&[&many[..32].join(",")]).map(|m| m.len()), Some(32));
    }

    #[test]
    fn long_tracestate_loses_long_members_first_then_the_last() {
        let long = format!("big={}", "x".repeat(200));
        let small: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}={}", "v".repeat(10)))
            .collect();
        let mut members: Vec<&[u8]> = vec![small[0].as_bytes(), long.as_bytes()];
        members.extend(small[1..].iter().map(|s| s.as_bytes()));
        let value = tracestate_value(members).unwrap();
        let text = value.to_str().unwrap();
        assert!(text.len() <= MAX_TRACESTATE, "{}", text.len());
        assert!(!text.contains("big="), "the long member goes first");
        assert!(text.starts_with("k00=vvvvvvvvvv,k01="), "{text}");
        // Without the long member the 30 small ones (14 bytes each, 449 with commas) fit.
        assert_eq!(text.split(',').count(), 30);
        let huge = "x".repeat(256);
        let (one, two) = (format!("k={huge}"), format!("j={huge}"));
        let kept = tracestate_value(vec![one.as_bytes(), two.as_bytes()]).unwrap();
        assert_eq!(kept, one.as_str(), "the right-most long member goes");
        let many: Vec<String> = (0..32)
            .map(|i| format!("k{i:02}={}", "v".repeat(20)))
            .collect();
        let kept = tracestate_value(many.iter().map(|s| s.as_bytes()).collect()).unwrap();
        let kept = kept.to_str().unwrap();
        assert!(
            kept.len() <= MAX_TRACESTATE && kept.starts_with("k00="),
            "{kept}"
        );
        assert!(
            kept.ends_with(&many[kept.split(',').count() - 1]),
            "cut from the end"
        );
        assert_eq!(tracestate_value(vec![]), None);
    }
}
