//! `authgate healthcheck`: asks the running gateway's admin listener for `GET /healthz` and
//! succeeds on a 200. Made for Docker's `HEALTHCHECK` (the image has no curl).
//!
//! It deliberately does not load the config the way `run` does: a half-edited file during a
//! live edit, or a secret missing from the healthcheck's environment, must not make a healthy
//! container look unhealthy. It reads only `admin.listen`, leniently (from the `admin:` block
//! alone when the rest of the file is not valid YAML), and falls back to
//! [`DEFAULT_ADMIN_LISTEN`]. The request is one blocking HTTP/1.1 exchange on a `TcpStream`,
//! bounded by [`TIMEOUT`] for the connect and for the answer: no async runtime is started.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{DEFAULT_ADMIN_LISTEN, expand};

/// Time allowed to connect, and then for the status line to arrive.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes read while looking for the status line.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// The address to ask, and why the config's own value was not used (when it was not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where `GET /healthz` is sent (an unspecified listen address is already turned into
    /// the loopback address of its family).
    pub addr: SocketAddr,
    /// Set when the config has an `admin.listen` that could not be used and the default was
    /// taken instead; added to the failure message.
    pub note: Option<String>,
}

/// Where the admin listener is: `--admin-addr` when given, else `admin.listen` from the
/// config file (with `${VAR}` expansion), else [`DEFAULT_ADMIN_LISTEN`]. A missing or
/// unparsable config file is not an error; only a bad `--admin-addr` is.
pub fn target(config: &Path, admin_addr: Option<&str>) -> Result<Target, String> {
    if let Some(flag) = admin_addr {
        let addr: SocketAddr = flag
            .trim()
            .parse()
            .map_err(|_| format!("--admin-addr `{flag}` is not IP:PORT (e.g. 127.0.0.1:9090)"))?;
        return Ok(Target {
            addr: connectable(addr),
            note: None,
        });
    }
    let default = || {
        DEFAULT_ADMIN_LISTEN
            .parse::<SocketAddr>()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090)))
    };
    let (addr, note) = match configured_listen(config) {
        None => (default(), None),
        Some(Ok(addr)) => (addr, None),
        Some(Err(why)) => (
            default(),
            Some(format!(
                "{}: admin.listen: {why}; asked the default {DEFAULT_ADMIN_LISTEN} instead",
                config.display()
            )),
        ),
    };
    Ok(Target {
        addr: connectable(addr),
        note,
    })
}

/// `admin.listen` of the config file: `None` when the file, the YAML or the key is absent,
/// `Some(Err)` when the key is there but its value cannot be used.
fn configured_listen(config: &Path) -> Option<Result<SocketAddr, String>> {
    let text = std::fs::read_to_string(config).ok()?;
    let doc: yaml_serde::Value = match yaml_serde::from_str(&text) {
        Ok(doc) => doc,
        // A half-saved edit elsewhere in the file must not hide a non-default admin address.
        Err(_) => yaml_serde::from_str(&admin_section(&text)?).ok()?,
    };
    let value = doc.get("admin")?.get("listen")?;
    let Some(raw) = value.as_str() else {
        return Some(Err("is not a string".into()));
    };
    Some(match expand(raw) {
        Err(e) => Err(e.to_string()),
        Ok(listen) => listen
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| format!("`{listen}` is not IP:port")),
    })
}

/// The top-level `admin:` block of a YAML text, cut out by indentation: its first line and
/// every following line that is indented, blank or a comment.
fn admin_section(text: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("admin:"));
    let first = lines.next()?;
    let mut section = format!("{first}\n");
    for line in lines
        .take_while(|l| l.trim().is_empty() || l.starts_with([' ', '\t']) || l.starts_with('#'))
    {
        section.push_str(line);
        section.push('\n');
    }
    Some(section)
}

/// A listener on `0.0.0.0` or `[::]` is reached through the loopback address of its family.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Sends `GET /healthz` to `addr` and returns the status code of the answer.
pub fn get_healthz(addr: SocketAddr) -> io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    let deadline = Instant::now() + TIMEOUT;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    let line_end = loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            break end;
        }
        if head.len() > MAX_STATUS_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no status line in the first 8 KiB of the answer",
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a status line",
                ));
            }
            n => head.extend_from_slice(&buf[..n]),
        }
    };
    parse_status_line(&head[..line_end]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not an HTTP status line: {:?}",
                String::from_utf8_lossy(&head[..line_end.min(80)])
            ),
        )
    })
}

/// The status code of `HTTP/1.x NNN reason` (RFC 9112 §4).
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

/// The whole command: `Ok` when `/healthz` answered 200, else a one-line reason.
pub fn run(config: &Path, admin_addr: Option<&str>) -> Result<SocketAddr, String> {
    let target = target(config, admin_addr)?;
    let url = format!("http://{}/healthz", target.addr);
    let failure = match get_healthz(target.addr) {
        Ok(200) => return Ok(target.addr),
        Ok(status) => format!("{url} answered {status}"),
        Err(e) => format!("{url}: {}", describe(&e)),
    };
    Err(match target.note {
        Some(note) => format!("{failure} ({note})"),
        None => failure,
    })
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            format!("no answer within {}s", TIMEOUT.as_secs())
        }
        io::ErrorKind::ConnectionRefused => {
            "connection refused (is authgate running, and is this its admin.listen?)".into()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn unspecified_addresses_become_loopback() {
        let c = |s: &str| connectable(s.parse().unwrap()).to_string();
        assert_eq!(c("0.0.0.0:9090"), "127.0.0.1:9090");
        assert_eq!(c("[::]:9090"), "[::1]:9090");
        assert_eq!(c("10.0.0.5:9090"), "10.0.0.5:9090");
    }

    #[test]
    fn target_is_lenient_about_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        let default: SocketAddr = DEFAULT_ADMIN_LISTEN.parse().unwrap();

        // Missing file, broken YAML, no admin section: the default, silently.
        assert_eq!(target(&path, None).unwrap().addr, default);
        std::fs::write(&path, "routes: [\n").unwrap();
        assert_eq!(target(&path, None).unwrap().addr, default);
        std::fs::write(&path, "listen: 0.0.0.0:8080\n").unwrap();
        assert_eq!(
            target(&path, None).unwrap(),
            Target {
                addr: default,
                note: None
            }
        );

        // Broken YAML elsewhere: the admin block alone is still read.
        std::fs::write(
            &path,
            "routes: [\nadmin:\n  # the admin listener\n  listen: \"127.0.0.1:9393\"\nroutes:\n  - {\n",
        )
        .unwrap();
        assert_eq!(
            target(&path, None).unwrap().addr.to_string(),
            "127.0.0.1:9393"
        );
        std::fs::write(&path, "x: [\nadmin: { listen: \"127.0.0.1:9494\" }\n").unwrap();
        assert_eq!(
            target(&path, None).unwrap().addr.to_string(),
            "127.0.0.1:9494"
        );

        // Only admin.listen is read; the rest may be anything.
        std::fs::write(&path, "bogus: 1\nadmin:\n  listen: \"0.0.0.0:9191\"\n").unwrap();
        assert_eq!(
            target(&path, None).unwrap().addr.to_string(),
            "127.0.0.1:9191"
        );
        std::fs::write(
            &path,
            "admin:\n  listen: \"${AUTHGATE_HC_UNSET:-[::]:9292}\"\n",
        )
        .unwrap();
        assert_eq!(target(&path, None).unwrap().addr.to_string(), "[::1]:9292");

        // An unusable value: the default, with a note for the failure message.
        std::fs::write(&path, "admin:\n  listen: \"${AUTHGATE_HC_UNSET}\"\n").unwrap();
        let t = target(&path, None).unwrap();
        assert_eq!(t.addr, default);
        assert!(t.note.unwrap().contains("AUTHGATE_HC_UNSET"));

        // The flag wins over everything; a bad flag is an error.
        assert_eq!(
            target(&path, Some("127.0.0.1:1234"))
                .unwrap()
                .addr
                .to_string(),
            "127.0.0.1:1234"
        );
        assert!(target(&path, Some("localhost")).is_err());
    }
}
