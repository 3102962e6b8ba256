//! Acting on a granted request: header rewriting (`headers`), the upstream, its servers and
//! their connection pools (`upstream`, `pool`, `health`), streaming bodies (`body`), WebSocket tunnels (`upgrade`),
//! the demo echo upstream (`echo`), and the forwarding step that ties them (`forward`).

pub mod body;
pub mod echo;
pub mod forward;
pub mod headers;
pub mod health;
pub mod pool;
pub mod upgrade;
pub mod upstream;

pub use body::{Body, BoxError};
