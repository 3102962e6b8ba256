//! Human durations in config: `250ms`, `90s`, `15m`, `1h`, `2d`, and combinations like `1h30m`.

use std::time::Duration;

/// Parses a duration such as `90s`, `15m`, `1h30m` or `250ms`. A bare number is refused: the
/// unit is required so that `ttl: 60` cannot silently mean seconds to one reader and minutes to
/// another.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration (write e.g. `90s`, `15m`, `1h`)".into());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "`{input}` is not a duration (write e.g. `90s`, `15m`, `1h`)"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{input}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "`{input}`: missing unit (ms, s, m, h or d), e.g. `{value}s`"
                ));
            }
            other => return Err(format!("`{input}`: unknown unit `{other}`")),
        };
        rest = &rest[unit_len..];
        total = value
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("`{input}`: duration too large"))?;
    }
    Ok(Duration::from_millis(total))
}

/// Writes a duration the way [`parse_duration`] reads it, largest units first (`5400s` is
/// `1h30m`), so the JSON Schema can show defaults as they would be typed. Below a millisecond
/// is dropped: no config duration is that fine.
pub fn format_duration(d: Duration) -> String {
    const UNITS: [(&str, u128); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let mut rest = d.as_millis();
    if rest == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, ms) in UNITS {
        if rest >= ms {
            out.push_str(&format!("{}{unit}", rest / ms));
            rest %= ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn formats_largest_units_first() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1_250)), "1s250ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    proptest::proptest! {
        /// What is written reads back as the same duration.
        #[test]
        fn formatted_durations_parse_back(ms in 0u64..=10_000_000_000_000) {
            let d = Duration::from_millis(ms);
            proptest::prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn refuses_missing_or_unknown_units_and_overflow() {
        assert!(parse_duration("60").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("999999999999999d").is_err());
    }
}
