//! authgate: an auth gateway reverse proxy. It verifies a JWT on every request against
//! per-route rules from a YAML file and forwards authorized requests with claims injected as
//! headers. `gateway.yaml -> config::RawConfig -> runtime::Runtime -> gateway::Gateway`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod error;
pub mod gateway;
pub mod healthcheck;
pub mod login;
pub mod login_page;
pub mod metrics;
pub mod oidc;
pub mod path;
pub mod proxy;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod session;
