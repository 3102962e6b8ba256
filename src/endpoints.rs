//! The gateway's own endpoints (login, logout, JWKS), found by exact normalized path before
//! any route: one compiled table, one list of what exists and what each is called in logs and
//! metrics.

use crate::config::{Diagnostics, KeyPath};

/// One of the gateway's own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Login,
    Logout,
    Refresh,
    Jwks,
    ForwardAuth,
    /// Single sign-on: the start and the callback of provider `i` of `login.oidc`.
    OidcStart(usize),
    OidcCallback(usize),
}

impl Endpoint {
    /// Every endpoint's name in logs and in the `route` label of metrics, in the order of
    /// [`Endpoint::index`] (every single sign-on endpoint shares one).
    pub const LABELS: [&'static str; 6] = [
        "(login)",
        "(logout)",
        "(refresh)",
        "(jwks)",
        "(forward_auth)",
        "(oidc)",
    ];

    /// Its name in logs and in the `route` label of metrics.
    pub fn label(self) -> &'static str {
        Endpoint::LABELS[self.index()]
    }

    /// Its position in [`Endpoint::LABELS`] (per-endpoint metric handles are kept in that
    /// order).
    pub fn index(self) -> usize {
        match self {
            Endpoint::Login => 0,
            Endpoint::Logout => 1,
            Endpoint::Refresh => 2,
            Endpoint::Jwks => 3,
            Endpoint::ForwardAuth => 4,
            Endpoint::OidcStart(_) | Endpoint::OidcCallback(_) => 5,
        }
    }
}

/// Where the JWK Set of authgate's public keys is published (RFC 7517, RFC 8615 well-known).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Path → endpoint. A handful of entries: a scan comparing lengths first beats hashing the
/// path of every request.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_path: Vec<(Box<str>, Endpoint)>,
}

impl Endpoints {
    /// Builds the table from `(path, endpoint, where the path is configured)`; two endpoints
    /// on one path are a config error.
    pub fn compile(entries: &[(&str, Endpoint, KeyPath)], diags: &mut Diagnostics) -> Endpoints {
        let mut by_path: Vec<(Box<str>, Endpoint)> = Vec::new();
        for (path, endpoint, at) in entries {
            if let Some((_, other)) = by_path.iter().find(|(p, _)| **p == **path) {
                diags.at(
                    at,
                    format!("`{path}` is already the path of {}", other.label()),
                );
                continue;
            }
            by_path.push(((*path).into(), *endpoint));
        }
        Endpoints { by_path }
    }

    /// Adds the forward-auth verify path, when there is one.
    pub fn with(mut self, forward_auth: Option<&str>, diags: &mut Diagnostics) -> Endpoints {
        if let Some(path) = forward_auth {
            let at = KeyPath::root().key("forward_auth").key("path");
            let more = Endpoints::compile(&[(path, Endpoint::ForwardAuth, at.clone())], diags);
            if self.find(path).is_some() {
                diags.at(
                    &at,
                    format!("`{path}` is already the path of another endpoint"),
                );
            } else {
                self.by_path.extend(more.by_path);
            }
        }
        self
    }

    /// The endpoint at exactly this normalized path.
    pub fn find(&self, path: &str) -> Option<Endpoint> {
        self.by_path
            .iter()
            .find(|(p, _)| **p == *path)
            .map(|(_, e)| *e)
    }
}
