//! Forward-auth: authgate as the auth service of an edge proxy that already routes and
//! terminates TLS (nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`). The
//! edge sends the client's headers to `forward_auth.path` and names the original request in
//! `X-Forwarded-Method`/`-Proto`/`-Host`/`-Uri` (Traefik, Caddy) or `X-Original-Method`/
//! `X-Original-URI` (nginx; the host from `Host`) — believed only from `trusted_proxies`, and
//! refused when both families name it (an edge passes the client's other family on). The
//! request named is normalized and decided by the same `policy::authorize` as a proxied one;
//! nothing is forwarded. The answer tells the edge what to do: 200 with the identity headers
//! (every one any route injects, empty when absent, so a copied header always overwrites a
//! client's), 401 (with `Location` to the login page for a browser; 302 with
//! `?mode=redirect`), or 403.

mod verify;

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{Diagnostics, KeyPath, RawForwardAuth};

/// The compiled `forward_auth:` section.
#[derive(Debug)]
pub struct ForwardAuth {
    pub path: String,
    pub(crate) trusted: Vec<IpNet>,
    /// Hosts a login may send the browser back to (besides the routes' hosts).
    pub next_hosts: Vec<String>,
}

impl ForwardAuth {
    pub fn compile(raw: &RawForwardAuth, diags: &mut Diagnostics) -> Option<ForwardAuth> {
        let at = KeyPath::root().key("forward_auth");
        let path = raw.path.as_str().to_owned();
        if crate::path::normalize(&path).map_or(true, |n| n != path) {
            diags.at(
                &at.key("path"),
                format!("`{path}` is not a normalized absolute path"),
            );
        }
        let mut trusted = Vec::new();
        for (i, text) in raw.trusted_proxies.iter().enumerate() {
            let text = text.as_str();
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => trusted.push(net),
                Err(_) => diags.at(
                    &at.key("trusted_proxies").index(i),
                    format!("`{text}` is not an IP address or CIDR (e.g. 172.16.0.0/12)"),
                ),
            }
        }
        if raw.trusted_proxies.is_empty() {
            diags.at(
                &at.key("trusted_proxies"),
                "list the edge proxies that may ask (nobody else can name the original request)",
            );
        }
        let next_hosts = raw
            .next_hosts
            .iter()
            .map(|h| h.as_str().to_owned())
            .collect();
        Some(ForwardAuth {
            path,
            trusted,
            next_hosts,
        })
    }
}
