//! Forwarding to upstreams: header rewriting, the pooled client, the demo echo upstream.

pub mod echo;
pub mod forward;
pub mod headers;
pub mod upgrade;

pub use forward::{Body, BoxError};
