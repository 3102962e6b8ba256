//! Acting on a granted request: header rewriting (`headers`), the upstream and its pooled
//! client (`upstream`, `client`), streaming bodies (`body`), WebSocket tunnels (`upgrade`),
//! the demo echo upstream (`echo`), and the forwarding step that ties them (`forward`).

pub mod body;
pub mod client;
pub mod echo;
pub mod forward;
pub mod headers;
pub mod upgrade;
pub mod upstream;

pub use body::{Body, BoxError};
