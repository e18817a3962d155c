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
//! - `Host` (RFC 9112 §3.2): an HTTP/1.1 request without one, any request with two, or
//!   one whose value is not a valid `host[:port]` (`evil.example/x?y=`, `user@host`) is
//!   refused with 400. With an absolute-form target (or HTTP/2's `:authority`), the
//!   target's authority wins over `Host` (§3.2.2): it becomes the request's `Host`, so
//!   it is what `x-forwarded-host` reports.

use http::header::{HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Request, Version};

use crate::error::ProxyError;

/// Refuses what the gateway will not interpret, and makes an absolute-form target's
/// authority the request's `Host`. Runs once per request, before anything else reads it.
pub fn check<B>(request: &mut Request<B>) -> Result<(), ProxyError> {
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
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked"))
    {
        return Err(ProxyError::NotImplemented(
            "the only transfer coding accepted is chunked".into(),
        ));
    }
    check_host(request)
}

fn check_host<B>(request: &mut Request<B>) -> Result<(), ProxyError> {
    let bad = |why: &str| Err(ProxyError::BadRequest(why.into()));
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("the request has more than one Host header");
    }
    if let Some(host) = host
        && !is_host_port(host.as_bytes())
    {
        return bad("the Host header is not host[:port]");
    }
    if host.is_none() && request.version() == Version::HTTP_11 {
        return bad("an HTTP/1.1 request needs a Host header");
    }
    if let Some(authority) = request.uri().authority() {
        let value = match HeaderValue::from_str(authority.as_str()) {
            Ok(value) if is_host_port(value.as_bytes()) => value,
            _ => return bad("the request target's authority is not host[:port]"),
        };
        request.headers_mut().insert(HOST, value);
    }
    Ok(())
}

/// `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2): an IP literal in brackets, or
/// a reg-name / IPv4 address of unreserved, sub-delims and %-escapes; no userinfo, path,
/// query or spaces. Empty is valid (a target without an authority).
///
/// ```
/// use scopegate::pipeline::request::is_host_port;
/// assert!(is_host_port(b"api.example.com:8443"));
/// assert!(is_host_port(b"[::1]:80"));
/// assert!(!is_host_port(b"evil.example/x?y="));
/// assert!(!is_host_port(b"user@host"));
/// ```
pub fn is_host_port(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &value[end + 1..] {
            [] => (&[][..], None),
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let host_ok = host.iter().enumerate().all(|(i, &b)| {
        crate::http::is_unreserved_or_sub_delim(b)
            // The two hex digits after it are alphanumeric, so they pass on their own.
            || (b == b'%'
                && host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    let port_ok = port.is_none_or(|port| port.len() <= 5 && port.iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}
