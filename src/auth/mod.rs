//! Tokens: key material, verification, the claims cache, claim rules and signing.

pub mod assertion;
pub mod cache;
pub mod claims;
pub mod issue;
pub mod jwks;
pub mod keys;
pub mod memo;
pub mod token;
pub mod verify;

pub use cache::ClaimsCache;
pub use claims::{AllowRule, ClaimPath, ClaimSource};
pub use keys::{Key, KeySet};
pub use token::VerifiedToken;
pub use verify::{TokenError, Verifier};
