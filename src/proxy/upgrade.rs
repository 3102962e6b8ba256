//! WebSocket pass-through (RFC 6455 over HTTP/1.1 `Upgrade`). The upgrade request is
//! authorized like any other before it is forwarded; only when the upstream answers 101 are
//! the two connections joined, and bytes are then copied both ways until either side closes.
//! `Upgrade: h2c` is never passed on.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Whether the request asks to switch to WebSocket: `Connection: upgrade` and
/// `Upgrade: websocket`.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(CONNECTION, "upgrade") && has_token(UPGRADE, "websocket")
}

/// Puts back the two hop-by-hop headers an upgrade needs (after hop-by-hop removal).
pub fn restore_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// Joins the client and upstream connections once both have switched protocols.
pub async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_websocket(&h));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket(&h));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.remove(CONNECTION);
        assert!(!is_websocket(&h));
    }
}
