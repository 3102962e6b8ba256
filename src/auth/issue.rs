//! Signing tokens with the first configured key (the `token` CLI today; the login route later).

use std::time::Duration;

use jsonwebtoken::Header;
use serde_json::{Map, Value};

use super::keys::KeySet;
use super::verify::unix_now;

/// Claims the issuer sets itself; callers cannot override them.
pub const RESERVED_CLAIMS: [&str; 8] = ["sub", "iss", "aud", "exp", "nbf", "iat", "jti", "sid"];

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no key can sign: the first key in tokens.keys has no private material")]
    NoSigningKey,
    #[error("claim `{0}` is set by authgate and cannot be given")]
    Reserved(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// What goes into every issued token besides the subject's claims.
pub struct IssueOptions<'a> {
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub ttl: Duration,
    /// The session the token belongs to (`sid`); `None` starts a new session.
    pub sid: Option<&'a str>,
}

/// A random 128-bit identifier, hex-encoded (`jti`, `sid`).
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros; jti uniqueness is then lost but nothing else breaks.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs a token for `sub` with `extra` claims, `kid` set to the signing key's id.
pub fn issue(
    keys: &KeySet,
    options: &IssueOptions<'_>,
    sub: &str,
    extra: Map<String, Value>,
) -> Result<String, IssueError> {
    let key = keys.signing().ok_or(IssueError::NoSigningKey)?;
    let encoding = key.encoding.as_ref().ok_or(IssueError::NoSigningKey)?;
    if let Some(name) = extra.keys().find(|k| RESERVED_CLAIMS.contains(&k.as_str())) {
        return Err(IssueError::Reserved(name.clone()));
    }
    let now = unix_now();
    let mut claims = extra;
    claims.insert("sub".into(), sub.into());
    if let Some(iss) = options.issuer {
        claims.insert("iss".into(), iss.into());
    }
    if let Some(aud) = options.audience {
        claims.insert("aud".into(), aud.into());
    }
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), (now + options.ttl.as_secs()).into());
    claims.insert("jti".into(), random_id().into());
    let sid = options.sid.map_or_else(random_id, str::to_owned);
    claims.insert("sid".into(), sid.into());
    let mut header = Header::new(key.alg);
    header.kid = Some(key.id.clone());
    jsonwebtoken::encode(&header, &claims, encoding).map_err(|e| IssueError::Signing(e.to_string()))
}
