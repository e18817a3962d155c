//! Authorization: does a verified identity satisfy the route's policy (audience, all of
//! `scopes`, one of `any_scopes`)?

use crate::claims::{AuthFailure, Identity, Reason};
use crate::config::{AuthMode, RouteConfig};
use crate::error::ProxyError;

/// A route's access rules, prepared at load.
#[derive(Debug, Clone)]
pub struct Policy {
    pub auth: AuthMode,
    /// `revocation: strict`: every token confirmed active by its issuer.
    pub strict: bool,
    /// `dpop: required`: only DPoP-bound tokens.
    pub dpop_required: bool,
    pub audience: Option<Box<str>>,
    pub scopes: Vec<Box<str>>,
    pub any_scopes: Vec<Box<str>>,
    /// Any one of these all-of sets (routes from OpenAPI whose operations list several
    /// security requirements with several scopes each); empty: no such rule.
    pub alternatives: Vec<Vec<Box<str>>>,
    /// `scope="..."` values for 403 answers, built once.
    all_text: String,
    any_text: String,
    alt_text: String,
}

impl Policy {
    /// No token checked (`auth: none`): the issuer's endpoints check their own.
    pub fn open() -> Policy {
        Policy {
            auth: AuthMode::None,
            strict: false,
            dpop_required: false,
            audience: None,
            scopes: Vec::new(),
            any_scopes: Vec::new(),
            alternatives: Vec::new(),
            all_text: String::new(),
            any_text: String::new(),
            alt_text: String::new(),
        }
    }

    pub fn from_route(route: &RouteConfig) -> Policy {
        Policy {
            auth: route.auth,
            strict: route.revocation == crate::config::Revocation::Strict,
            dpop_required: route.dpop == crate::config::DpopMode::Required,
            audience: route.audience.as_deref().map(Into::into),
            scopes: route.scopes.iter().map(|s| s.as_str().into()).collect(),
            any_scopes: route.any_scopes.iter().map(|s| s.as_str().into()).collect(),
            alternatives: Vec::new(),
            all_text: route.scopes.join(" "),
            any_text: route.any_scopes.join(" "),
            alt_text: String::new(),
        }
    }

    /// Adds alternatives of all-of scope sets: a token must hold every scope of at least
    /// one of them. A 403 names the first set.
    pub fn with_alternatives(mut self, alternatives: &[Vec<String>]) -> Policy {
        self.alternatives = alternatives
            .iter()
            .map(|set| set.iter().map(|s| s.as_str().into()).collect())
            .collect();
        if let Some(first) = alternatives.first() {
            self.alt_text = first.join(" ");
        }
        self
    }

    /// Checks the identity against this policy.
    pub fn authorize(&self, identity: &Identity) -> Result<(), ProxyError> {
        if let Some(audience) = &self.audience
            && !identity.has_audience(audience)
        {
            return Err(ProxyError::InvalidToken(AuthFailure::new(
                Reason::WrongAudience,
                "the token is not meant for this route's audience",
            )));
        }
        if !self.scopes.iter().all(|scope| identity.has_scope(scope)) {
            return Err(ProxyError::InsufficientScope {
                required: self.all_text.clone(),
            });
        }
        if !self.any_scopes.is_empty()
            && !self
                .any_scopes
                .iter()
                .any(|scope| identity.has_scope(scope))
        {
            return Err(ProxyError::InsufficientScope {
                required: self.any_text.clone(),
            });
        }
        if !self.alternatives.is_empty()
            && !self
                .alternatives
                .iter()
                .any(|set| set.iter().all(|scope| identity.has_scope(scope)))
        {
            return Err(ProxyError::InsufficientScope {
                required: self.alt_text.clone(),
            });
        }
        Ok(())
    }
}
