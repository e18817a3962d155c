//! Header rewriting on the way up and down.
//!
//! Upstream: hop-by-hop headers and every header the client names in `Connection` go;
//! every client-sent copy of an identity header goes, whatever its case and whether it
//! is spelled with `_` (`X_Auth_Subject`), on every route; then the verified identity,
//! `x-forwarded-for/-proto/-host`, `x-request-id` and the upstream's `Host` are set. A
//! client naming an identity header in `Connection` only removes its own copy: the
//! verified one is added after the removal. Several `Cookie` fields (as HTTP/2 clients
//! send them) become one, joined with `; `. A bearer `Authorization` goes too, unless
//! `forward.token: keep`.
//!
//! Downstream: an unsolicited 1xx or a transfer coding other than `chunked` is a 502; a
//! `Content-Length` beside `Transfer-Encoding` goes; hop-by-hop headers go,
//! `x-request-id` is returned.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

use crate::claims::Identity;
use crate::config::{ForwardConfig, TokenForward};
use crate::error::ProxyError;
use crate::http::{is_hop_by_hop, normalize_header_name as normalize_name};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `name` (already lower case, as hyper gives it) equals `normalized` once `_` is `-`.
fn same_header(name: &str, normalized: &str) -> bool {
    name.len() == normalized.len()
        && name
            .bytes()
            .zip(normalized.bytes())
            .all(|(a, b)| (if a == b'_' { b'-' } else { a }) == b)
}

/// The identity header names, parsed once at load.
#[derive(Debug, Clone)]
pub struct ForwardHeaders {
    subject: HeaderName,
    scopes: HeaderName,
    client_id: HeaderName,
    issuer: HeaderName,
    claims: Vec<HeaderName>,
    /// Every identity header name, normalised, for stripping client copies.
    strip: Vec<String>,
    /// `forward.token: strip`: a bearer `Authorization` does not go upstream.
    strip_token: bool,
}

impl ForwardHeaders {
    /// Names were validated by `Config::validate`; invalid ones cannot reach here.
    pub fn new(config: &ForwardConfig) -> Result<ForwardHeaders, String> {
        let parse = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{name:?} is not a valid header name"))
        };
        Ok(ForwardHeaders {
            subject: parse(&config.subject)?,
            scopes: parse(&config.scopes)?,
            client_id: parse(&config.client_id)?,
            issuer: parse(&config.issuer)?,
            claims: config
                .claims
                .values()
                .map(|name| parse(name))
                .collect::<Result<_, _>>()?,
            strip: config.header_names().map(normalize_name).collect(),
            strip_token: config.token == TokenForward::Strip,
        })
    }

    fn is_identity(&self, name: &HeaderName) -> bool {
        self.strip.iter().any(|n| same_header(name.as_str(), n))
    }
}

/// Facts about the downstream request that the upstream should learn.
#[derive(Debug)]
pub struct Origin<'a> {
    pub client_ip: HeaderValue,
    pub proto: &'static str,
    pub host: Option<HeaderValue>,
    pub request_id: &'a HeaderValue,
    /// `Host` for the upstream; `None` keeps the client's (builtin:echo).
    pub upstream_host: Option<&'a HeaderValue>,
    /// This hop of the W3C trace: the upstream's `traceparent`.
    pub trace: &'a crate::http::trace::Trace,
}

/// Headers [`upstream_headers`] may add besides mapped claims: x-forwarded-for, -proto,
/// -host, x-request-id, traceparent, Host, subject, scopes, client id, issuer.
const ADDED_UPSTREAM: usize = 10;

/// Rewrites the client's headers, in place, into the headers sent upstream.
pub fn upstream_headers(
    forward: &ForwardHeaders,
    mut headers: HeaderMap,
    identity: Option<&Identity>,
    origin: &Origin<'_>,
) -> HeaderMap {
    let connection_named = connection_tokens(&headers);
    // One scan for what must go; most requests have nothing to remove. Headers set below
    // (Host, x-forwarded-*, x-request-id, identity) replace every client copy anyway.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            is_hop_by_hop(name)
                || forward.is_identity(name)
                || connection_named
                    .iter()
                    .any(|n| same_header(name.as_str(), n))
        })
        .cloned()
        .collect();
    for name in &doomed {
        headers.remove(name);
    }
    if forward.strip_token && carries_bearer(&headers) {
        headers.remove(header::AUTHORIZATION);
        // The proof was for the gateway (its URL, this token): no use upstream.
        headers.remove(&super::dpop::DPOP);
    }
    join_cookies(&mut headers);
    // Room for what is added below in one growth, not one per crossing of the load limit.
    headers.reserve(ADDED_UPSTREAM + forward.claims.len());

    let xff = {
        let mut sent = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        if sent.peek().is_none() {
            origin.client_ip.clone()
        } else {
            let mut list = Vec::with_capacity(64);
            for value in sent {
                list.extend_from_slice(value.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(origin.client_ip.as_bytes());
            HeaderValue::from_bytes(&list).unwrap_or_else(|_| origin.client_ip.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(origin.proto),
    );
    match &origin.host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    headers.insert(X_REQUEST_ID.clone(), origin.request_id.clone());
    origin.trace.apply(&mut headers);
    match (origin.upstream_host, &origin.host) {
        (Some(upstream), _) => {
            headers.insert(header::HOST, upstream.clone());
        }
        (None, Some(host)) => {
            headers.insert(header::HOST, host.clone());
        }
        (None, None) => {
            headers.remove(header::HOST);
        }
    }

    if let Some(identity) = identity {
        headers.insert(forward.subject.clone(), identity.subject.clone());
        headers.insert(forward.scopes.clone(), identity.scopes.clone());
        if let Some(client_id) = &identity.client_id {
            headers.insert(forward.client_id.clone(), client_id.clone());
        }
        headers.insert(forward.issuer.clone(), identity.issuer.clone());
        for (name, value) in forward.claims.iter().zip(&identity.mapped) {
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    headers
}

/// An `Authorization` field with the Bearer scheme (any case): the caller's token, which
/// `forward.token: strip` keeps from the upstream. Other schemes (an upstream's own Basic
/// credentials) are not the gateway's business and pass.
/// `Authorization` holds an access token (`Bearer` or `DPoP` scheme).
fn carries_bearer(headers: &HeaderMap) -> bool {
    headers.get_all(header::AUTHORIZATION).iter().any(|value| {
        let bytes = value.as_bytes();
        let scheme_is = |name: &[u8]| {
            bytes.len() >= name.len()
                && bytes[..name.len()].eq_ignore_ascii_case(name)
                && bytes.get(name.len()).is_none_or(|&b| b == b' ')
        };
        scheme_is(b"bearer") || scheme_is(b"dpop")
    })
}

/// Joins several `Cookie` fields into one with `; ` (RFC 9113 §8.2.3): HTTP/2 clients
/// split cookies into one field each, and the upstream hop is HTTP/1.1, where a server
/// expects one `Cookie` line (RFC 6265 §5.4) and may read only the first.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(256);
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Every piece was a valid value, so the joined bytes are one too.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Repeated framing warnings: one a second (a broken upstream answers every request so).
static BAD_FRAMING: crate::flood::Flood =
    crate::flood::Flood::per(std::time::Duration::from_secs(1));

/// Checks an upstream's response head, then cleans its headers ([`downstream_headers`]).
///
/// - A `101` (or any 1xx as the final answer) is refused with 502: `Upgrade` is never
///   forwarded, so no request through the gateway asked to switch protocols.
/// - With `Transfer-Encoding`, a `Content-Length` beside it is dropped (RFC 9112 §6.3):
///   hyper has decoded the chunked body, which streams on with its own framing; relaying
///   the stale length would cut the body there and make it look complete. A transfer
///   coding other than a final `chunked` (a body framed by closing the connection, still
///   coded) is refused with 502.
pub fn downstream(
    parts: &mut http::response::Parts,
    request_id: &HeaderValue,
) -> Result<(), ProxyError> {
    if parts.status.is_informational() {
        if let Some(suppressed) = BAD_FRAMING.pass() {
            tracing::warn!(
                status = parts.status.as_u16(),
                suppressed,
                "upstream answered with an unsolicited 1xx"
            );
        }
        return Err(ProxyError::BadGateway);
    }
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        if !final_coding_is_chunked(&parts.headers) {
            if let Some(suppressed) = BAD_FRAMING.pass() {
                tracing::warn!(
                    suppressed,
                    "upstream answered with a transfer coding other than chunked"
                );
            }
            return Err(ProxyError::BadGateway);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    downstream_headers(&mut parts.headers, request_id);
    Ok(())
}

/// True if the last transfer coding named in `Transfer-Encoding` is `chunked`.
pub fn final_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|value| value.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Cleans an upstream's response headers and sets the request id.
pub fn downstream_headers(headers: &mut HeaderMap, request_id: &HeaderValue) {
    if headers.keys().any(is_hop_by_hop) {
        let connection = headers.get_all(header::CONNECTION);
        if headers
            .keys()
            .any(|name| !is_hop_by_hop(name) && lists(&connection, name))
        {
            let named = connection_tokens(headers);
            let doomed: Vec<HeaderName> = headers
                .keys()
                .filter(|name| {
                    is_hop_by_hop(name) || named.iter().any(|n| same_header(name.as_str(), n))
                })
                .cloned()
                .collect();
            for name in &doomed {
                headers.remove(name);
            }
        } else {
            // The usual answer (`Connection: keep-alive` names nothing else): the
            // hop-by-hop names are removed one at a time, without collecting them.
            while let Some(name) = headers.keys().find(|name| is_hop_by_hop(name)).cloned() {
                headers.remove(&name);
            }
        }
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

/// Whether the `Connection` header values list `name`, compared as [`connection_tokens`]
/// and [`same_header`] compare (ASCII case and `_` as `-` ignored), without allocating.
fn lists(connection: &header::GetAll<'_, HeaderValue>, name: &HeaderName) -> bool {
    let fold = crate::http::header_name_byte;
    let name = name.as_str().as_bytes();
    connection
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|token| {
            token.len() == name.len() && token.iter().zip(name).all(|(&t, &n)| fold(t) == fold(n))
        })
}

/// Header names listed in `Connection`, normalised. Read as bytes: a value with one
/// non-ASCII token (which names no header) must not hide the tokens beside it.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .filter_map(|t| std::str::from_utf8(t).ok().filter(|t| t.is_ascii()))
        .map(normalize_name)
        .collect()
}

/// A `x-request-id` worth keeping: 1–128 characters of `[A-Za-z0-9._-]`.
pub fn sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A fresh request id: 32 hex characters, a per-process random prefix and a counter.
/// Unique within and (with overwhelming probability) across processes, without asking
/// the system RNG on every request.
pub fn new_request_id() -> HeaderValue {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            // Ids only correlate logs; the clock is an acceptable fallback.
            bytes = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| (d.as_nanos() as u64).to_le_bytes())
                .unwrap_or_default();
        }
        u64::from_le_bytes(bytes)
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut text = [0u8; 32];
    let (high, low) = text.split_at_mut(16);
    for (digits, word) in [(high, prefix), (low, count)] {
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((word >> (60 - 4 * i)) & 15) as usize];
        }
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward() -> ForwardHeaders {
        let mut config = ForwardConfig::default();
        config
            .claims
            .insert("https://x/roles".into(), "x-auth-roles".into());
        ForwardHeaders::new(&config).unwrap()
    }

    #[test]
    fn spoofed_identity_headers_go_in_any_spelling() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("x-auth-subject", "admin"),
            ("X_Auth_Subject", "admin"),
            ("X-AUTH-SCOPES", "all"),
            ("x_auth_roles", "root"),
            ("x-auth-issuer", "me"),
            ("x-auth-client-id", "evil"),
            ("x-other", "kept"),
        ] {
            client.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        let id = HeaderValue::from_static("rid");
        let origin = Origin {
            client_ip: HeaderValue::from_static("10.0.0.1"),
            proto: "http",
            host: Some(HeaderValue::from_static("gw")),
            request_id: &id,
            upstream_host: None,
            trace: &crate::http::trace::Trace::from_headers(&HeaderMap::new()),
        };
        let out = upstream_headers(&forward(), client, None, &origin);
        for name in out.keys() {
            assert!(
                !normalize_name(name.as_str()).starts_with("x-auth-"),
                "{name} leaked"
            );
        }
        assert_eq!(out["x-other"], "kept");
        assert_eq!(out["x-forwarded-for"], "10.0.0.1");
        assert_eq!(out["host"], "gw");
    }

    #[test]
    fn connection_named_headers_and_hop_by_hop_go() {
        let mut client = HeaderMap::new();
        client.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, x_auth_subject"),
        );
        client.insert("x-secret", HeaderValue::from_static("1"));
        client.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        client.insert(header::TE, HeaderValue::from_static("trailers"));
        client.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        let id = HeaderValue::from_static("rid");
        let origin = Origin {
            client_ip: HeaderValue::from_static("10.0.0.1"),
            proto: "https",
            host: None,
            request_id: &id,
            upstream_host: Some(&id),
            trace: &crate::http::trace::Trace::from_headers(&HeaderMap::new()),
        };
        let out = upstream_headers(&forward(), client, None, &origin);
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        assert_eq!(out["x-forwarded-for"], "1.1.1.1, 10.0.0.1");
        assert_eq!(out["x-forwarded-proto"], "https");

        let mut client = HeaderMap::new();
        let named = HeaderValue::from_bytes(b"x-secret, caf\xe9").unwrap();
        client.insert(header::CONNECTION, named);
        client.insert("x-secret", HeaderValue::from_static("1"));
        let out = upstream_headers(&forward(), client, None, &origin);
        assert!(!out.contains_key("x-secret"), "non-ASCII hid x-secret");
    }

    #[test]
    fn upstream_hop_by_hop_and_connection_named_response_headers_go() {
        // The names left after cleaning a reply whose `Connection` value is `connection`.
        let left = |connection: &[u8], others: &[(&'static str, &'static str)]| {
            let mut reply = HeaderMap::new();
            reply.insert(
                header::CONNECTION,
                HeaderValue::from_bytes(connection).unwrap(),
            );
            for &(name, value) in others {
                reply.append(name, HeaderValue::from_static(value));
            }
            downstream_headers(&mut reply, &HeaderValue::from_static("rid"));
            reply
                .keys()
                .map(|name| name.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        // The usual answer: `Connection: keep-alive` names nothing but hop-by-hop headers.
        let usual = [
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authenticate", "Bearer"),
            ("x-kept", "1"),
        ];
        assert_eq!(left(b"keep-alive", &usual), ["x-kept", "x-request-id"]);
        // Named headers go too, matched as servers match them (case, `_` for `-`), and a
        // non-ASCII token does not hide the ones beside it.
        let named = [("x-hop-secret", "1"), ("x-other", "2"), ("x-kept", "3")];
        assert_eq!(
            left(b"Keep-Alive, X-Hop_Secret, caf\xe9, x_other", &named),
            ["x-kept", "x-request-id"]
        );
    }

    #[test]
    fn bearer_tokens_stay_unless_kept_and_other_schemes_pass() {
        let id = HeaderValue::from_static("rid");
        let origin = Origin {
            client_ip: HeaderValue::from_static("10.0.0.1"),
            proto: "http",
            host: None,
            request_id: &id,
            upstream_host: None,
            trace: &crate::http::trace::Trace::from_headers(&HeaderMap::new()),
        };
        let with = |value: &'static str| {
            let mut client = HeaderMap::new();
            client.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            client
        };
        let strip = forward();
        let keep = ForwardHeaders::new(&ForwardConfig {
            token: TokenForward::Keep,
            ..ForwardConfig::default()
        })
        .unwrap();
        for bearer in ["Bearer a.b.c", "bearer a.b.c", "BEARER", "Bearer"] {
            let out = upstream_headers(&strip, with(bearer), None, &origin);
            assert!(!out.contains_key(header::AUTHORIZATION), "{bearer}");
            let out = upstream_headers(&keep, with(bearer), None, &origin);
            assert_eq!(out[header::AUTHORIZATION], bearer);
        }
        for other in ["Basic dXNlcjpwYXNz", "Bearerx abc"] {
            let out = upstream_headers(&strip, with(other), None, &origin);
            assert_eq!(out[header::AUTHORIZATION], other);
        }
    }

    #[test]
    fn request_ids() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123_x.y")));
        assert!(!sane_request_id(&HeaderValue::from_static("")));
        assert!(!sane_request_id(&HeaderValue::from_static("a b")));
        assert!(!sane_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
        let fresh = new_request_id();
        assert!(sane_request_id(&fresh));
        let next = new_request_id();
        assert_ne!(fresh, next);
        // 16 hex digits of the process's prefix, then 16 of a counter.
        let (fresh, next) = (fresh.to_str().unwrap(), next.to_str().unwrap());
        assert_eq!(fresh.len(), 32);
        assert!(
            fresh
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(fresh[..16], next[..16]);
        let counter = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert!(counter(next) > counter(fresh));
    }
}
