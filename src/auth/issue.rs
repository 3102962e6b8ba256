//! The one place that signs tokens: login, refresh, sliding renewal, single sign-on and the
//! `token` CLI all go through an [`Issuer`], so every issued token has the same shape — `iss`,
//! `aud`, `iat`, `nbf`, `exp`, a fresh `jti`, and the session id `sid` that ties renewals and
//! refreshes together (logout revokes a whole session by it).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Header;
use serde_json::{Map, Value};

use super::keys::KeySet;
use crate::clock::unix_now;
use crate::config::{Diagnostics, KeyPath, RawTokens};
use crate::state::store::TokenHash;

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

/// A random 128-bit identifier, hex-encoded (`jti`, `sid`, refresh tokens' ids).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros; uniqueness is then lost but nothing else breaks.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A signed token and the identifiers it carries.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub jti: String,
    pub sid: String,
    pub exp: u64,
}

/// `tokens.refresh`, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSettings {
    /// Absolute lifetime of a session.
    pub ttl: Duration,
    /// A refresh token unused this long is dead.
    pub idle_ttl: Duration,
    /// How long a just-spent token may be presented again.
    pub reuse_grace: Duration,
}

impl RefreshSettings {
    pub fn compile(tokens: &RawTokens, diags: &mut Diagnostics) -> Option<RefreshSettings> {
        let raw = tokens.refresh.as_ref()?;
        let at = KeyPath::root().key("tokens").key("refresh");
        for (field, value) in [("ttl", raw.ttl.0), ("idle_ttl", raw.idle_ttl.0)] {
            if value.is_zero() {
                diags.at(&at.key(field), "must be longer than 0s");
            }
        }
        if raw.reuse_grace.0 >= raw.idle_ttl.0 {
            diags.at(
                &at.key("reuse_grace"),
                "must be shorter than `idle_ttl` (a grace as long as the token's life is no rotation)",
            );
        }
        Some(RefreshSettings {
            ttl: raw.ttl.0,
            idle_ttl: raw.idle_ttl.0,
            reuse_grace: raw.reuse_grace.0,
        })
    }
}

/// A new refresh token: what the client gets, and the only thing the store keeps (its hash).
pub struct RefreshToken {
    pub token: String,
    pub hash: TokenHash,
}

/// 256 random bits, base64url: guessing one is hopeless, so the endpoint needs no lockout.
pub fn new_refresh_token() -> RefreshToken {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    RefreshToken { token, hash }
}

/// The SHA-256 a refresh token is stored (and looked up) as.
pub fn hash_refresh_token(token: &str) -> TokenHash {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Signs access tokens with the first configured key.
pub struct Issuer {
    keys: Arc<KeySet>,
    issuer: Option<String>,
    audience: Option<String>,
    ttl: Duration,
    leeway: Duration,
    /// Refresh tokens, when `tokens.refresh` is set.
    pub refresh: Option<RefreshSettings>,
}

impl Issuer {
    pub fn new(keys: Arc<KeySet>, tokens: &RawTokens, refresh: Option<RefreshSettings>) -> Issuer {
        Issuer {
            keys,
            issuer: tokens.issuer.as_ref().map(|t| t.as_str().to_owned()),
            audience: tokens.audience.as_ref().map(|t| t.as_str().to_owned()),
            ttl: tokens.ttl.0,
            leeway: tokens.leeway.0,
            refresh,
        }
    }

    /// `tokens.issuer`: the `iss` of issued tokens, and the one tokens verified with
    /// authgate's own keys must carry.
    pub fn issuer_name(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// `tokens.audience`: the `aud` of issued tokens, and the one verified tokens must name.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// The key sealing short-lived browser state, derived from the signing key.
    pub fn sealing_key(&self) -> Option<[u8; 32]> {
        self.keys.signing()?.seal
    }

    /// Lifetime of issued access tokens (`tokens.ttl`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When a session revoked now has no token left: every token of it was issued before now,
    /// so none lives past now + ttl (+ the leeway verification allows).
    pub fn session_end_from_now(&self) -> u64 {
        unix_now() + self.ttl.as_secs() + self.leeway.as_secs()
    }

    /// Signs a token for `sub` with `extra` claims, in session `sid` (`None` starts a new one).
    pub fn issue(
        &self,
        sub: &str,
        extra: Map<String, Value>,
        sid: Option<&str>,
    ) -> Result<Issued, IssueError> {
        self.issue_for(sub, extra, sid, self.ttl)
    }

    /// [`Issuer::issue`] with another lifetime (the `token` CLI's `--ttl`).
    pub fn issue_for(
        &self,
        sub: &str,
        extra: Map<String, Value>,
        sid: Option<&str>,
        ttl: Duration,
    ) -> Result<Issued, IssueError> {
        let key = self.keys.signing().ok_or(IssueError::NoSigningKey)?;
        let encoding = key.encoding.as_ref().ok_or(IssueError::NoSigningKey)?;
        if let Some(name) = extra.keys().find(|k| RESERVED_CLAIMS.contains(&k.as_str())) {
            return Err(IssueError::Reserved(name.clone()));
        }
        let now = unix_now();
        let (jti, sid) = (random_id(), sid.map_or_else(random_id, str::to_owned));
        let exp = now + ttl.as_secs();
        let mut claims = extra;
        claims.insert("sub".into(), sub.into());
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), iss.as_str().into());
        }
        if let Some(aud) = &self.audience {
            claims.insert("aud".into(), aud.as_str().into());
        }
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), jti.as_str().into());
        claims.insert("sid".into(), sid.as_str().into());
        let mut header = Header::new(key.alg);
        header.kid = Some(key.id.clone());
        let token = jsonwebtoken::encode(&header, &claims, encoding)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(Issued {
            token,
            jti,
            sid,
            exp,
        })
    }
}
