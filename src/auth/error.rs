//! Why a token was refused: one error type for every check, with the message the client sees
//! and a fixed label for metrics.

use super::claims::RenderError;

/// Why a token was refused. The message is sent to the client: it names the reason and never
/// key material or library internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("token is larger than 16 KiB")]
    TooLarge,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("encrypted tokens (JWE) are not accepted")]
    Encrypted,
    #[error("unsigned tokens (alg none) are not accepted")]
    Unsigned,
    #[error("token header field `{0}` is not accepted")]
    ForbiddenHeader(&'static str),
    #[error("token key id (kid) is not known")]
    UnknownKeyId,
    #[error("token algorithm is not the one configured for its key")]
    WrongAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has no `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` has the wrong type")]
    BadClaim(String),
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token claim `{0}` {1}")]
    UnrenderableClaim(String, RenderError),
    #[error("token has been revoked (logged out)")]
    Revoked,
    #[error("the session cookie is not usable")]
    BadCookie,
}

impl TokenError {
    /// A short fixed label (for metrics and logs).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::Encrypted => "encrypted",
            TokenError::Unsigned => "unsigned",
            TokenError::ForbiddenHeader(_) => "forbidden_header",
            TokenError::UnknownKeyId => "unknown_kid",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::BadClaim(_) => "bad_claim",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::UnrenderableClaim(..) => "bad_claim",
            TokenError::Revoked => "revoked",
            TokenError::BadCookie => "malformed",
        }
    }
}
