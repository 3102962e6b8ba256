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

/// The bearer token, if any.
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
        .trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, Digest...) carries no token of ours.
        return Ok(None);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(GatewayError::Token(TokenError::Malformed));
    }
    if token.contains([' ', ',', '\t']) {
        return Err(GatewayError::BadRequest(
            "several tokens in the Authorization header",
        ));
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
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
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
