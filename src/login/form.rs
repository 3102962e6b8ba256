//! Reading a login request: its content type, its body (bounded before any hashing), the
//! credentials in it (JSON or an HTML form), and which client sent it.

use std::net::IpAddr;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;
use serde_json::{Map, Value};

use super::password::{MAX_PASSWORD, MAX_USERNAME};
use crate::error::GatewayError;

pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Where a browser goes after logging in (form field; validated before use).
    pub next: Option<String>,
}

/// The address the per-client limit is keyed on: the socket peer, or — when the peer is a
/// trusted proxy — the right-most `X-Forwarded-For` entry that is not a trusted proxy.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

pub enum Form {
    Json,
    UrlEncoded,
}

pub fn content_type(headers: &HeaderMap) -> Result<Form, GatewayError> {
    let value = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = value.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(Form::Json)
    } else if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(Form::UrlEncoded)
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

pub fn parse_credentials(form: &Form, body: &[u8]) -> Result<Credentials, GatewayError> {
    let creds = match form {
        Form::Json => {
            const SHAPE: &str =
                "expected a JSON object with string fields `username` and `password`";
            // An object, not serde's positional array form of a struct.
            let object = serde_json::from_slice::<Map<String, Value>>(body)
                .map_err(|_| GatewayError::BadRequest(SHAPE))?;
            match (object.get("username"), object.get("password")) {
                (Some(Value::String(u)), Some(Value::String(p))) => Credentials {
                    username: u.clone(),
                    password: p.clone(),
                    next: None,
                },
                _ => return Err(GatewayError::BadRequest(SHAPE)),
            }
        }
        Form::UrlEncoded => {
            let (mut username, mut password, mut next) = (None, None, None);
            for (k, v) in form_urlencoded::parse(body) {
                let slot = match &*k {
                    "username" => &mut username,
                    "password" => &mut password,
                    "next" => &mut next,
                    _ => continue,
                };
                if slot.replace(v.into_owned()).is_some() {
                    return Err(GatewayError::BadRequest(
                        "`username` and `password` must be given once",
                    ));
                }
            }
            match (username, password) {
                (Some(username), Some(password)) => Credentials {
                    username,
                    password,
                    next,
                },
                _ => {
                    return Err(GatewayError::BadRequest(
                        "expected form fields `username` and `password`",
                    ));
                }
            }
        }
    };
    if creds.username.is_empty() || creds.username.len() > MAX_USERNAME {
        return Err(GatewayError::BadRequest("username must be 1 to 256 bytes"));
    }
    if creds.password.is_empty() || creds.password.len() > MAX_PASSWORD {
        return Err(GatewayError::BadRequest("password must be 1 to 1024 bytes"));
    }
    Ok(creds)
}

pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    max: u64,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(GatewayError::PayloadTooLarge)
        }
        Err(_) => Err(GatewayError::BadRequest(
            "the request body could not be read",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_trusts_forwarded_for_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 10.0.0.2".parse().unwrap());
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let direct: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_ip(&h, proxy, &trusted),
            "1.1.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&h, direct, &trusted), direct);
        assert_eq!(client_ip(&h, proxy, &[]), proxy);
        assert_eq!(client_ip(&HeaderMap::new(), proxy, &trusted), proxy);
    }

    #[test]
    fn credentials_parse_from_json_and_forms() {
        let c = parse_credentials(
            &Form::Json,
            br#"{"username":"a","password":"b","role":"admin"}"#,
        )
        .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("a", "b"));
        let c =
            parse_credentials(&Form::UrlEncoded, b"username=al%20ice&password=p%26w&x=1").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("al ice", "p&w")
        );
        assert!(parse_credentials(&Form::Json, br#"{"username":"a"}"#).is_err());
        assert!(parse_credentials(&Form::Json, br#"{"username":1,"password":"b"}"#).is_err());
        assert!(parse_credentials(&Form::Json, b"not json").is_err());
        assert!(parse_credentials(&Form::UrlEncoded, b"username=a&username=b&password=c").is_err());
        assert!(parse_credentials(&Form::UrlEncoded, b"username=&password=c").is_err());
        let long = format!(r#"{{"username":"a","password":"{}"}}"#, "x".repeat(2000));
        assert!(parse_credentials(&Form::Json, long.as_bytes()).is_err());
    }
}
