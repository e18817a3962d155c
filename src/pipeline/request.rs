//! Checks at the start of a request's journey, before the router (and so the issuer's
//! endpoints) sees it: requests that a server and an upstream could read differently are
//! refused here.
//!
//! - Method names are case-sensitive (RFC 9110 §9.1): a method with a lower-case letter
//!   (`get`, `Get`) is refused with 400, as nginx does; no route can list one.
//! - `CONNECT`, in authority or origin form, is refused with 405 and an empty `Allow`:
//!   Scopegate opens no tunnels, whatever a route lists.
//! - A transfer coding other than a single `chunked` (`gzip, chunked`) is refused with
//!   501 (RFC 9112 §6.1): the body would otherwise go upstream decoded of its chunking
//!   with the other coding silently dropped.

use http::Request;
use http::header::TRANSFER_ENCODING;

use crate::error::ProxyError;

/// Refuses what the gateway will not interpret. Runs once per request, before anything
/// else reads it.
pub fn check<B>(request: &Request<B>) -> Result<(), ProxyError> {
    if !super::router::is_upper_case_token(request.method().as_str()) {
        return Err(ProxyError::BadRequest(
            "method names are case-sensitive: use upper case, as in GET or POST".into(),
        ));
    }
    if request.method() == http::Method::CONNECT {
        // The tunnel's target (an authority) allows no method at all.
        return Err(ProxyError::MethodNotAllowed(String::new()));
    }
    let mut codings = request.headers().get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next()
        && (codings.next().is_some()
            || !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(ProxyError::NotImplemented(
            "the only transfer coding accepted is chunked".into(),
        ));
    }
    Ok(())
}
