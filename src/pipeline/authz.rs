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
    /// `scope="..."` values for 403 answers, built once.
    all_text: String,
    any_text: String,
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
            all_text: String::new(),
            any_text: String::new(),
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
            all_text: route.scopes.join(" "),
            any_text: route.any_scopes.join(" "),
        }
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
        Ok(())
    }
}
