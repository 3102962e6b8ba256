//! The registered claims of RFC 7519 §4.1 that every accepted token must satisfy, checked after
//! its signature: expiry, not-before, issuer and audience.

use serde_json::{Map, Value};

use super::error::TokenError;

/// What the registered claims of a token must satisfy, checked after its signature: `exp`
/// always, `iss` and `aud` when configured (then required), `nbf` when present; `exp` and
/// `nbf` with `leeway_secs` of clock skew.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: u64,
}

impl ClaimRules {
    pub fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<(), TokenError> {
        let required = [
            Some("exp"),
            self.issuer.as_ref().map(|_| "iss"),
            self.audience.as_ref().map(|_| "aud"),
        ];
        for name in required.into_iter().flatten() {
            if !claims.contains_key(name) {
                return Err(TokenError::MissingClaim(name.into()));
            }
        }
        let time = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| TokenError::BadClaim(name.into())),
        };
        if time("exp")?.is_some_and(|exp| exp < now.saturating_sub(self.leeway_secs)) {
            return Err(TokenError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(self.leeway_secs)) {
            return Err(TokenError::NotYetValid);
        }
        if let Some(want) = &self.issuer {
            match claims.get("iss") {
                Some(Value::String(iss)) if iss == want => {}
                Some(Value::String(_)) => return Err(TokenError::WrongIssuer),
                _ => return Err(TokenError::BadClaim("iss".into())),
            }
        }
        if let Some(want) = &self.audience {
            let named = match claims.get("aud") {
                Some(Value::String(aud)) => aud == want,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(want)),
                _ => return Err(TokenError::BadClaim("aud".into())),
            };
            if !named {
                return Err(TokenError::WrongAudience);
            }
        }
        Ok(())
    }
}
