//! Tokens: key material, verification, the claims cache, claim rules and signing.

pub mod assertion;
pub mod cache;
pub mod claims;
pub mod error;
pub mod issue;
pub mod jwks;
pub mod keys;
pub mod memo;
pub mod registered;
pub mod signature;
pub mod token;
pub mod verify;

pub use cache::ClaimsCache;
pub use claims::{AllowRule, ClaimPath, ClaimSource};
pub use error::TokenError;
pub use keys::{Key, KeySet};
pub use token::VerifiedToken;
pub use verify::Verifier;
