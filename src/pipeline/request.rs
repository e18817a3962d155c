//! Checks at the start of a request's journey, before the router (and so the issuer's
//! endpoints) sees it: requests that a server and an upstream could read differently are
//! refused here.
//!
//! - Method names are case-sensitive (RFC 9110 §9.1): a method with a lower-case letter
//!   (`get`, `Get`) is refused with 400, as nginx does; no route can list one.

use http::Request;

use crate::error::ProxyError;

/// Refuses what the gateway will not interpret. Runs once per request, before anything
/// else reads it.
pub fn check<B>(request: &Request<B>) -> Result<(), ProxyError> {
    if !super::router::is_upper_case_token(request.method().as_str()) {
        return Err(ProxyError::BadRequest(
            "method names are case-sensitive: use upper case, as in GET or POST".into(),
        ));
    }
    Ok(())
}
