//! The observer explain hands to `policy::authorize_observed`: it records what the decision
//! did, step by step, so the explanation reports the gateway's own work.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::auth::{AllowRule, TokenError, VerifiedToken};
use crate::credentials::TokenSource;
use crate::policy::Observer;

/// One `allow` rule as the decision evaluated it.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The claim's value, as the rule read it (`None`: absent, or no client certificate).
    pub saw: Option<Value>,
    pub passed: bool,
}

/// What `authorize` reported, in the order it ran. `None` fields: the step was not reached.
#[derive(Debug, Default)]
pub struct Trace {
    pub route: Option<Option<usize>>,
    pub credential: Option<Option<TokenSource>>,
    pub verified: Option<Result<Arc<VerifiedToken>, TokenError>>,
    pub revoked: Option<bool>,
    /// The rules evaluated, in the route's order (evaluation stops at the first failure).
    pub allow: Vec<Evaluated>,
}

impl Observer for Trace {
    fn route(&mut self, found: Option<usize>) {
        self.route = Some(found);
    }

    fn credential(&mut self, source: Option<TokenSource>) {
        self.credential = Some(source);
    }

    fn verified(&mut self, outcome: Result<&Arc<VerifiedToken>, &TokenError>) {
        self.verified = Some(outcome.cloned().map_err(Clone::clone));
    }

    fn revocation(&mut self, revoked: bool) {
        self.revoked = Some(revoked);
    }

    fn allow(&mut self, rule: &AllowRule, claims: Option<&Map<String, Value>>, passed: bool) {
        let saw = claims.and_then(|c| rule.claim.lookup(c)).cloned();
        self.allow.push(Evaluated { saw, passed });
    }
}
