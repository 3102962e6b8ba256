//! Where a request's token comes from: `Authorization: Bearer` or the session cookie. Any
//! ambiguity (two headers, two tokens, two cookies, a header and a cookie that disagree) is a
//! 400: which one a backend would pick is anyone's guess.

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::auth::TokenError;
use crate::error::GatewayError;
use crate::session::session_cookie;

/// Where the token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Cookie,
}

/// token68 (RFC 9110 §11.2): the only characters a bearer token can have (a JWT uses a subset).
fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The bearer token, if any. Parsed strictly (RFC 9110 §11.6.2, RFC 6750 §2.1): one
/// `Authorization` header holding one credential, `Bearer`, spaces, a token68. A value that
/// other parsers could read differently (`Bearer<TAB>t`, `Basic x, Bearer t`, a token with
/// odd characters) is refused rather than passed on unverified. A credential of another scheme
/// (`Basic ...`) is not ours: `Ok(None)`, and it is never forwarded.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest("several Authorization headers"));
    }
    let value = value
        .to_str()
        .map_err(|_| GatewayError::Token(TokenError::Malformed))?
        .trim_matches(' ');
    if value.contains(',') {
        return Err(GatewayError::BadRequest(
            "several credentials in the Authorization header",
        ));
    }
    let (scheme, rest) = value
        .find([' ', '\t'])
        .map_or((value, ""), |i| value.split_at(i));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // `Bearer` glued to something: a malformed bearer credential, not another scheme.
        if scheme.len() > 6 && scheme.as_bytes()[..6].eq_ignore_ascii_case(b"bearer") {
            return Err(GatewayError::Token(TokenError::Malformed));
        }
        return Ok(None);
    }
    let token = rest.trim_start_matches(' ');
    if token.contains([' ', '\t']) {
        return Err(GatewayError::BadRequest(
            "several tokens in the Authorization header",
        ));
    }
    if rest.is_empty() || !is_token68(token) {
        return Err(GatewayError::Token(TokenError::Malformed));
    }
    Ok(Some(token))
}

/// The request's token and where it came from.
pub fn token<'a>(
    headers: &'a HeaderMap,
    cookie_name: &str,
) -> Result<Option<(&'a str, TokenSource)>, GatewayError> {
    let bearer = bearer_token(headers)?;
    let cookie = session_cookie(headers, cookie_name)
        .map_err(|_| GatewayError::BadRequest("several session cookies"))?;
    match (bearer, cookie) {
        (Some(b), Some(c)) if b != c => Err(GatewayError::BadRequest(
            "the Authorization header and the session cookie carry different tokens",
        )),
        (Some(b), _) => Ok(Some((b, TokenSource::Header))),
        (None, Some(c)) => Ok(Some((c, TokenSource::Cookie))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::header_map as headers;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_single() {
        let b = |v: &[&str]| {
            let pairs: Vec<(&str, &str)> = v.iter().map(|v| ("authorization", *v)).collect();
            bearer_token(&headers(&pairs)).map(|t| t.map(str::to_owned))
        };
        assert_eq!(b(&["Bearer abc"]).unwrap().as_deref(), Some("abc"));
        assert_eq!(b(&["bEaReR   abc "]).unwrap().as_deref(), Some("abc"));
        assert_eq!(b(&["Basic dXNlcjpwYXNz"]).unwrap(), None);
        assert_eq!(b(&[]).unwrap(), None);
        assert!(matches!(
            b(&["Bearer a", "Bearer b"]),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            b(&["Bearer a, Bearer b"]),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            b(&["Bearer a b"]),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(b(&["Bearer"]), Err(GatewayError::Token(_))));
        // Shapes other parsers read differently are refused, never passed on.
        assert!(matches!(
            b(&["Bearer\tabc"]),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            b(&["Bearer \tabc"]),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(b(&["Bearerabc"]), Err(GatewayError::Token(_))));
        assert!(matches!(
            b(&["Bearer \"abc\""]),
            Err(GatewayError::Token(_))
        ));
        assert!(matches!(
            b(&["Basic x, Bearer abc"]),
            Err(GatewayError::BadRequest(_))
        ));
        assert_eq!(b(&["Bearer a.b-c_d"]).unwrap().as_deref(), Some("a.b-c_d"));
    }

    #[test]
    fn header_and_cookie_must_agree() {
        let h = headers(&[("cookie", "s=t1")]);
        assert_eq!(token(&h, "s").unwrap(), Some(("t1", TokenSource::Cookie)));
        let h = headers(&[("cookie", "s=t1"), ("authorization", "Bearer t1")]);
        assert_eq!(token(&h, "s").unwrap(), Some(("t1", TokenSource::Header)));
        let h = headers(&[("cookie", "s=t1"), ("authorization", "Bearer t2")]);
        assert!(matches!(token(&h, "s"), Err(GatewayError::BadRequest(_))));
        let h = headers(&[("cookie", "s=t1; s=t2")]);
        assert!(matches!(token(&h, "s"), Err(GatewayError::BadRequest(_))));
        assert_eq!(token(&HeaderMap::new(), "s").unwrap(), None);
    }
}
