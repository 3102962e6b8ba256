//! Bodies stream through the gateway in both directions, never buffered whole; a request body
//! is cut off at the route's limit, and why a stream failed is remembered so the answer
//! blames the right side (413 or 400 for the client, 502 for the upstream).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of everything the gateway sends, upstream or downstream.
pub type Body = BoxBody<Bytes, BoxError>;

/// Wraps a streaming hyper body without buffering it.
pub fn stream(body: Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed()
}

/// How a forwarded request body ended, as far as the client's side is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    Fine,
    /// It passed the route's `max_body_bytes` (413).
    OverLimit,
    /// The client sent something that is not a valid body (400), e.g. a bad chunk size.
    ClientError,
}

/// Shared between a streaming body and the request that forwards it.
#[derive(Debug, Default)]
pub struct BodyWatch(AtomicU8);

impl BodyWatch {
    pub fn state(&self) -> BodyState {
        match self.0.load(Ordering::Acquire) {
            1 => BodyState::OverLimit,
            2 => BodyState::ClientError,
            _ => BodyState::Fine,
        }
    }
}

/// Streams a request body, failing it once more than `max` bytes have passed, and records in
/// `watch` why it failed, so the answer blames the right side.
pub fn stream_watched(body: Incoming, max: Option<u64>, watch: Arc<BodyWatch>) -> Body {
    let max = max.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    http_body_util::Limited::new(body, max)
        .map_err(move |e| {
            let state = if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                1
            } else {
                2
            };
            watch.0.store(state, Ordering::Release);
            e
        })
        .boxed()
}
