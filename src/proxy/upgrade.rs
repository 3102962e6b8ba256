//! WebSocket pass-through (RFC 6455 over HTTP/1.1 `Upgrade`). The upgrade request is
//! authorized like any other before it is forwarded; only when the upstream completes a real
//! WebSocket handshake (101 with the `Sec-WebSocket-Accept` computed from the client's key) are
//! the two connections joined, and bytes are then copied both ways until either side closes.
//! A bare 101 would otherwise open a raw tunnel in which the client speaks plain HTTP to the
//! backend, past every route, token and header rule. `Upgrade: h2c` is never passed on.

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

/// The GUID of RFC 6455 §1.3, hashed with the client's key into `Sec-WebSocket-Accept`.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The client's half of a WebSocket opening handshake (RFC 6455 §4.1).
#[derive(Debug)]
pub struct Handshake {
    /// The `Sec-WebSocket-Accept` a real WebSocket server answers with.
    expected_accept: String,
    /// The subprotocols the client offered (`Sec-WebSocket-Protocol`).
    offered: Vec<String>,
}

fn tokens<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The request's WebSocket handshake, when it is a valid one: `Connection: upgrade`,
/// `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and one `Sec-WebSocket-Key` of 16 bytes.
/// Anything else is forwarded as a plain request (and a 101 to it is refused).
pub fn client_handshake(headers: &HeaderMap) -> Option<Handshake> {
    use base64::Engine;
    if !is_websocket(headers) {
        return None;
    }
    let mut versions = headers.get_all("sec-websocket-version").iter();
    if versions.next().map(HeaderValue::as_bytes) != Some(b"13") || versions.next().is_some() {
        return None;
    }
    let mut keys = headers.get_all("sec-websocket-key").iter();
    let key = keys.next()?.to_str().ok()?.trim();
    let decoded = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    if decoded.len() != 16 || keys.next().is_some() {
        return None;
    }
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    hash.update(key.as_bytes());
    hash.update(WEBSOCKET_GUID);
    Some(Handshake {
        expected_accept: base64::engine::general_purpose::STANDARD.encode(hash.finish()),
        offered: tokens(headers, "sec-websocket-protocol")
            .map(str::to_owned)
            .collect(),
    })
}

impl Handshake {
    /// Whether a 101 completes this handshake (RFC 6455 §4.2.2): `Upgrade: websocket`,
    /// `Connection: upgrade`, the accept value computed from the client's key, and no
    /// subprotocol the client did not offer.
    pub fn accepted_by(&self, response: &HeaderMap) -> bool {
        let mut accepts = response.get_all("sec-websocket-accept").iter();
        let accept_ok = accepts
            .next()
            .is_some_and(|v| v.as_bytes() == self.expected_accept.as_bytes())
            && accepts.next().is_none();
        let mut protocols = tokens(response, "sec-websocket-protocol");
        let protocol_ok = match (protocols.next(), protocols.next()) {
            (None, _) => true,
            (Some(p), None) => self.offered.iter().any(|o| o == p),
            (Some(_), Some(_)) => false,
        };
        is_websocket(response) && accept_ok && protocol_ok
    }
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

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_a_real_websocket_handshake_is_accepted() {
        // The example handshake of RFC 6455 §1.3.
        let request = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "chat, superchat"),
        ]);
        let hs = client_handshake(&request).unwrap();
        let base = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(hs.accepted_by(&map(&base)));
        let with = |extra: (&str, &str)| {
            let mut pairs = base.to_vec();
            pairs.push(extra);
            map(&pairs)
        };
        assert!(hs.accepted_by(&with(("sec-websocket-protocol", "chat"))));
        assert!(!hs.accepted_by(&with(("sec-websocket-protocol", "admin"))));
        assert!(!hs.accepted_by(&map(&base[..2])), "no accept");
        assert!(!hs.accepted_by(&map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "wrong"),
        ])));
        assert!(!hs.accepted_by(&map(&[base[0], ("upgrade", "h2c"), base[2]])));
        // Client side: version 13 and a 16-byte key are required.
        for (k, v) in [
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "c2hvcnQ="),
        ] {
            let mut bad = request.clone();
            bad.insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
            assert!(client_handshake(&bad).is_none(), "{k}: {v}");
        }
    }
}
