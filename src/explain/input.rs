//! The command line of `authgate explain`, turned into the request the gateway would receive:
//! method, target, headers, scheme, and the token (`--token`, or one signed here from
//! `--claims`). Anything that cannot be a request is bad input (exit 2), never a refusal.

use http::header::{AUTHORIZATION, HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use serde_json::Value;

use crate::auth::issue::IssueError;
use crate::request::Scheme;
use crate::snapshot::Snapshot;

/// The arguments of `authgate explain`.
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub method: String,
    /// An absolute `http(s)://host/path?query` URL, or an origin-form `/path?query`.
    pub url: String,
    /// `Name: value` lines.
    pub headers: Vec<String>,
    /// A JWT presented as `Authorization: Bearer`.
    pub token: Option<String>,
    /// A JSON object of claims: a token with them is signed here with the config's first key.
    pub claims: Option<String>,
}

/// How the request's token was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    Token,
    Claims,
    /// In an `Authorization` or `Cookie` header of `--header`.
    Header,
}

impl Given {
    pub fn as_str(self) -> &'static str {
        match self {
            Given::Token => "--token",
            Given::Claims => "--claims",
            Given::Header => "--header",
        }
    }
}

/// The request explain decides on, as the gateway would receive it.
#[derive(Debug)]
pub struct Input {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub scheme: Scheme,
    pub given: Option<Given>,
    /// What explain did to build the request that the reader should know.
    pub notes: Vec<String>,
}

/// Builds the request from the arguments: bad input is an error message.
pub fn parse(snap: &Snapshot, args: &Args) -> Result<Input, String> {
    let method = Method::from_bytes(args.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", args.method))?;
    let (uri, scheme) = parse_url(&args.url)?;
    let mut headers = HeaderMap::new();
    for line in &args.headers {
        let (name, value) = parse_header(line)?;
        headers.append(name, value);
    }
    if let (Some(authority), false) = (uri.authority(), headers.contains_key(HOST)) {
        // A client sends the URL's host as `Host`, as browsers and curl do.
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("`{authority}` cannot be a Host header"))?;
        headers.insert(HOST, host);
    }
    let mut notes = Vec::new();
    let given = match (&args.token, &args.claims) {
        (Some(_), Some(_)) => return Err("give --token or --claims, not both".into()),
        (Some(token), None) => {
            set_bearer(&mut headers, token.trim())?;
            Some(Given::Token)
        }
        (None, Some(json)) => {
            let (token, note) = sign_claims(snap, json)?;
            set_bearer(&mut headers, &token)?;
            notes.push(note);
            Some(Given::Claims)
        }
        (None, None) => (headers.contains_key(AUTHORIZATION)
            || headers.contains_key(http::header::COOKIE))
        .then_some(Given::Header),
    };
    if matches!(given, Some(Given::Token | Given::Header)) {
        for id in snap.ephemeral_keys() {
            notes.push(format!(
                "key `{id}` has no secret configured (JWT_SECRET is unset): explain generated a random one, so no token made elsewhere verifies with it; set the variable as the gateway has it"
            ));
        }
    }
    Ok(Input {
        method,
        uri,
        headers,
        scheme,
        given,
        notes,
    })
}

fn parse_url(url: &str) -> Result<(Uri, Scheme), String> {
    if !url.starts_with('/') && !url.contains("://") {
        return Err(format!(
            "`{url}`: give an absolute URL (https://host/path) or a path starting with `/`"
        ));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let scheme = match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(_)) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        (Some(s), Some(_)) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        (Some(s), _) => return Err(format!("`{url}`: scheme `{s}`; give an http(s) URL")),
        (None, None) if url.starts_with('/') => Scheme::Http,
        (None, _) => {
            return Err(format!(
                "`{url}`: give an absolute URL (https://host/path) or a path starting with `/`"
            ));
        }
    };
    Ok((uri, scheme))
}

/// `Name: value`, as curl's `-H` takes it (the value's surrounding blanks dropped).
fn parse_header(line: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| format!("header `{line}`: write it as `Name: value`"))?;
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("header `{line}`: `{name}` is not a header name"))?;
    let value = HeaderValue::from_str(value.trim_matches([' ', '\t']))
        .map_err(|_| format!("header `{line}`: the value has bytes a header cannot carry"))?;
    Ok((name, value))
}

fn set_bearer(headers: &mut HeaderMap, token: &str) -> Result<(), String> {
    if headers.contains_key(AUTHORIZATION) {
        return Err(
            "--token and --claims send the token in `Authorization`; the request already has that header"
                .into(),
        );
    }
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token has bytes a header cannot carry".to_owned())?;
    headers.insert(AUTHORIZATION, value);
    Ok(())
}

/// Signs a token carrying `json`'s claims with the config's first key, through the issuer
/// every authgate token comes from (it adds `iss`, `aud`, `iat`, `nbf`, `exp`, `jti`, `sid`),
/// so the real verification runs on it. Returns the token and a note saying what was done.
fn sign_claims(snap: &Snapshot, json: &str) -> Result<(String, String), String> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("--claims is not JSON: {e}"))?;
    let Value::Object(mut claims) = value else {
        return Err("--claims must be a JSON object, e.g. '{\"sub\":\"alice\"}'".into());
    };
    let sub = match claims.remove("sub") {
        Some(Value::String(sub)) => sub,
        Some(_) => return Err("--claims: `sub` must be a string".into()),
        None => {
            return Err(
                "--claims needs a `sub` (every token authgate issues has one); to test a token without it, give it with --token"
                    .into(),
            );
        }
    };
    let key = snap.verifier.keys().signing();
    let issued = snap.issuer.issue(&sub, claims, None).map_err(|e| match e {
        IssueError::NoSigningKey => format!(
            "--claims signs a token with the config's first key{}, which has no private key here ({e}); give a real token with --token instead",
            key.map_or(String::new(), |k| format!(" `{}`", k.id))
        ),
        IssueError::Reserved(claim) => format!(
            "--claims: `{claim}` is set by authgate's issuer and cannot be chosen; to test another value, give a token with --token"
        ),
        IssueError::Signing(why) => format!("--claims: signing failed: {why}"),
    })?;
    let (id, alg) = key.map_or(("?", "?"), |k| (k.id.as_str(), k.algorithm.name()));
    let note = format!(
        "--claims: a token with these claims was signed here with key `{id}` ({alg}) and expires in {}s, so the gateway's verification runs on it, but its signature proves nothing: it stands for a valid token the gateway would accept",
        snap.issuer.ttl().as_secs()
    );
    Ok((issued.token, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_absolute_http_or_a_path() {
        let (uri, scheme) = parse_url("https://app.example.com/a?b=1").unwrap();
        assert_eq!((uri.path(), scheme), ("/a", Scheme::Https));
        assert_eq!(parse_url("/x").unwrap().1, Scheme::Http);
        for bad in ["ftp://h/x", "app.example.com/x", "", "http://exa mple/"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_are_name_colon_value() {
        let (n, v) = parse_header("X-User-Id:  root ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-user-id", "root"));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
        assert!(parse_header("x: a\u{1}b").is_err());
    }
}
