//! The `listen`, `admin` and `server` sections: what only a restart can change ([`Boot`]:
//! listeners, the connection limit, the state store, trace export) and the connection limits a reload may change
//! ([`ServerSettings`], read per connection). Keeping them apart means a reload never has to
//! diff fields by hand: it compares two `Boot` values and warns when they differ.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;

use std::time::SystemTime;

use crate::config::{Diagnostics, KeyPath, PlainHttp, RawConfig};
use crate::telemetry::{self, TraceSettings};
use crate::tls::ServerTlsFiles;

/// Settings that take effect only at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_connections: usize,
    /// `state.store`: where revocations, sessions and login limits live.
    pub store: String,
    /// Whether `state:` was written at all (without it: `memory:` and a warning).
    pub store_configured: bool,
    /// The config file's directory (`sqlite:PATH` is relative to it).
    pub config_dir: PathBuf,
    /// HTTPS on the main listener.
    pub tls: Option<TlsListener>,
    /// `telemetry.traces`: the export task and its queue live as long as the process, and the
    /// sampling rule should not change under a running trace.
    pub traces: Option<TraceSettings>,
}

/// `server.tls`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub files: ServerTlsFiles,
    /// A plain-HTTP listener beside the HTTPS one, and what it does.
    pub http_listen: Option<SocketAddr>,
    pub http: PlainHttp,
}

impl TlsListener {
    fn compile(raw: &RawConfig, diags: &mut Diagnostics) -> Option<Option<TlsListener>> {
        let Some(tls) = &raw.server.tls else {
            return Some(None);
        };
        let at = KeyPath::root().key("server").key("tls");
        let src = diags.source();
        let files = ServerTlsFiles {
            cert_file: src.resolve(tls.cert_file.as_str()),
            key_file: src.resolve(tls.key_file.as_str()),
            client_ca_file: tls.client_ca_file.as_ref().map(|f| src.resolve(f.as_str())),
        };
        match crate::tls::check_server_files(&files, SystemTime::now()) {
            Ok(warnings) => {
                for w in warnings {
                    diags.warn(&at.key("cert_file"), w);
                }
            }
            Err(e) => {
                diags.at(&at.key("cert_file"), e);
                return None;
            }
        }
        let http_listen = match &tls.http_listen {
            None => None,
            Some(text) => Some(address(
                text.as_str(),
                &at.key("http_listen"),
                "0.0.0.0:8080",
                diags,
            )?),
        };
        Some(Some(TlsListener {
            files,
            http_listen,
            http: tls.http,
        }))
    }
}

/// Limits of the main listener that a reload may change (new connections get them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
}

fn address(text: &str, at: &KeyPath, example: &str, diags: &mut Diagnostics) -> Option<SocketAddr> {
    let parsed = text.parse::<SocketAddr>().ok();
    if parsed.is_none() {
        diags.at(
            at,
            format!("`{text}` is not an IP:port address (e.g. {example})"),
        );
    }
    parsed
}

impl Boot {
    pub fn compile(raw: &RawConfig, diags: &mut Diagnostics) -> Option<Boot> {
        let root = KeyPath::root();
        let listen = address(
            raw.listen.as_str(),
            &root.key("listen"),
            "0.0.0.0:8080",
            diags,
        );
        let admin_at = root.key("admin").key("listen");
        let admin_listen = address(
            raw.admin.listen.as_str(),
            &admin_at,
            "127.0.0.1:9090",
            diags,
        );
        if raw.server.max_connections == 0 {
            diags.at(
                &root.key("server").key("max_connections"),
                "must be at least 1",
            );
        }
        let store = raw
            .state
            .as_ref()
            .map_or("memory:", |s| s.store.as_str())
            .to_owned();
        if !crate::state::is_store_url(&store) {
            diags.at(
                &root.key("state").key("store"),
                format!("`{store}` is not a store: use memory:, sqlite:PATH, redis://, rediss:// or redis+sentinel://"),
            );
        }
        let tls = TlsListener::compile(raw, diags);
        let traces = telemetry::compile(raw, diags);
        Some(Boot {
            tls: tls?,
            traces: traces?,
            listen: listen?,
            admin_listen: admin_listen?,
            max_connections: usize::try_from(raw.server.max_connections).unwrap_or(usize::MAX),
            store,
            store_configured: raw.state.is_some(),
            config_dir: diags.source().dir.clone(),
        })
    }

    /// Logs what differs from the running `Boot` (it takes effect only after a restart).
    pub fn warn_changes(&self, running: &Boot) {
        if self.listen != running.listen || self.admin_listen != running.admin_listen {
            tracing::warn!(listen = %self.listen, admin = %self.admin_listen, "`listen` or `admin.listen` changed: it takes effect only after a restart");
        }
        if self.max_connections != running.max_connections {
            tracing::warn!(
                "`server.max_connections` changed: it takes effect only after a restart"
            );
        }
        if self.traces != running.traces {
            tracing::warn!("`telemetry` changed: it takes effect only after a restart");
        }
    }
}

impl ServerSettings {
    pub fn compile(raw: &RawConfig, diags: &mut Diagnostics) -> ServerSettings {
        let at = KeyPath::root().key("server");
        let s = &raw.server;
        if s.max_header_bytes < 8192 {
            diags.at(&at.key("max_header_bytes"), "must be at least 8192");
        }
        if s.header_read_timeout.0.is_zero() {
            diags.at(&at.key("header_read_timeout"), "must be longer than 0s");
        }
        ServerSettings {
            header_read_timeout: s.header_read_timeout.0,
            max_header_bytes: s.max_header_bytes as usize,
            shutdown_grace: s.shutdown_grace.0,
        }
    }
}

/// `server.extra_methods`: upper-case method names (methods are case-sensitive, RFC 9110 §9.1).
pub fn compile_extra_methods(raw: &RawConfig, diags: &mut Diagnostics) -> Vec<Method> {
    let at = KeyPath::root().key("server").key("extra_methods");
    let mut methods = Vec::new();
    for (i, text) in raw.server.extra_methods.iter().enumerate() {
        let name = text.as_str();
        let shape_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
        match Method::from_bytes(name.as_bytes()) {
            Ok(m) if shape_ok => methods.push(m),
            _ => diags.at(
                &at.index(i),
                format!("`{name}` is not an upper-case method name (e.g. PROPFIND)"),
            ),
        }
    }
    methods
}
