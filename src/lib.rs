//! authgate: an auth gateway reverse proxy. It verifies a JWT on every request against
//! per-route rules from a YAML file and forwards authorized requests with claims injected as
//! headers. `gateway.yaml -> config::RawConfig -> (boot::Boot, snapshot::Snapshot) ->
//! gateway::Gateway`; a request goes `request::RequestView -> policy::authorize -> proxy`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod boot;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod endpoints;
pub mod error;
pub mod explain;
pub mod forward_auth;
pub mod gateway;
pub mod healthcheck;
pub mod login;
pub mod metrics;
pub mod oidc;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod request;
pub mod response;
pub mod routes;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod tls;

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_support {
    use http::{HeaderMap, HeaderName, HeaderValue};

    /// A header map from `(name, value)` pairs, repeats kept in order.
    pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
                HeaderValue::from_str(v).expect("test header value"),
            );
        }
        h
    }
}
