//! Header rewriting on the way up and down.
//!
//! Upstream: hop-by-hop headers and every header the client names in `Connection` go;
//! every client-sent copy of an identity header goes, whatever its case and whether it
//! is spelled with `_` (`X_Auth_Subject`), on every route; then the verified identity,
//! `x-forwarded-for/-proto/-host`, `x-request-id` and the upstream's `Host` are set. A
//! client naming an identity header in `Connection` only removes its own copy: the
//! verified one is added after the removal.
//!
//! Downstream: hop-by-hop headers go, `x-request-id` is returned.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

use crate::claims::Identity;
use crate::config::ForwardConfig;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the non-standard ones proxies meet.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Lower case with `_` read as `-`: the spelling many servers (CGI, WSGI, nginx with
/// `underscores_in_headers`) use to find a header.
pub fn normalize_name(name: &str) -> String {
    name.bytes()
        .map(|b| if b == b'_' { '-' } else { b.to_ascii_lowercase() as char })
        .collect()
}

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
}

/// Builds the headers sent upstream from the client's.
pub fn upstream_headers(
    forward: &ForwardHeaders,
    client: HeaderMap,
    identity: Option<&Identity>,
    origin: &Origin<'_>,
) -> HeaderMap {
    let connection_named = connection_tokens(&client);
    let mut out = HeaderMap::with_capacity(client.len() + 10);
    let mut forwarded_for: Option<Vec<u8>> = None;
    let mut current: Option<HeaderName> = None;
    for (name, value) in client {
        if let Some(name) = name {
            current = Some(name);
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        if is_hop_by_hop(name)
            || forward.is_identity(name)
            || connection_named.iter().any(|n| same_header(name.as_str(), n))
            || *name == header::HOST
            || *name == X_FORWARDED_PROTO
            || *name == X_FORWARDED_HOST
            || *name == X_REQUEST_ID
        {
            continue;
        }
        if *name == X_FORWARDED_FOR {
            let list = forwarded_for.get_or_insert_with(Vec::new);
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(value.as_bytes());
            continue;
        }
        out.append(name.clone(), value);
    }

    if let Some(identity) = identity {
        out.insert(forward.subject.clone(), identity.subject.clone());
        out.insert(forward.scopes.clone(), identity.scopes.clone());
        if let Some(client_id) = &identity.client_id {
            out.insert(forward.client_id.clone(), client_id.clone());
        }
        out.insert(forward.issuer.clone(), identity.issuer.clone());
        for (name, value) in forward.claims.iter().zip(&identity.mapped) {
            if let Some(value) = value {
                out.insert(name.clone(), value.clone());
            }
        }
    }

    let xff = match forwarded_for {
        Some(mut list) => {
            list.extend_from_slice(b", ");
            list.extend_from_slice(origin.client_ip.as_bytes());
            HeaderValue::from_bytes(&list).unwrap_or_else(|_| origin.client_ip.clone())
        }
        None => origin.client_ip.clone(),
    };
    out.insert(X_FORWARDED_FOR.clone(), xff);
    out.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(origin.proto));
    if let Some(host) = &origin.host {
        out.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    out.insert(X_REQUEST_ID.clone(), origin.request_id.clone());
    match (origin.upstream_host, &origin.host) {
        (Some(upstream), _) => {
            out.insert(header::HOST, upstream.clone());
        }
        (None, Some(host)) => {
            out.insert(header::HOST, host.clone());
        }
        (None, None) => {}
    }
    out
}

/// Cleans an upstream's response headers and returns the request id.
pub fn downstream_headers(headers: &mut HeaderMap, request_id: &HeaderValue) {
    let named = connection_tokens(headers);
    for name in named {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

/// Header names listed in `Connection`, normalised.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| normalize_name(t.trim()))
        .filter(|t| !t.is_empty())
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

/// A fresh request id: 16 random bytes, hex.
pub fn new_request_id() -> HeaderValue {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // The system RNG failing is not a reason to refuse traffic; ids only correlate logs.
        bytes = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos().to_le_bytes())
            .unwrap_or_default();
    }
    let mut text = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        text[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
        text[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 15)];
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
        };
        let out = upstream_headers(&forward(), client, None, &origin);
        for name in out.keys() {
            assert!(!normalize_name(name.as_str()).starts_with("x-auth-"), "{name} leaked");
        }
        assert_eq!(out["x-other"], "kept");
        assert_eq!(out["x-forwarded-for"], "10.0.0.1");
        assert_eq!(out["host"], "gw");
    }

    #[test]
    fn connection_named_headers_and_hop_by_hop_go() {
        let mut client = HeaderMap::new();
        client.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret, x_auth_subject"));
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
        };
        let out = upstream_headers(&forward(), client, None, &origin);
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        assert_eq!(out["x-forwarded-for"], "1.1.1.1, 10.0.0.1");
        assert_eq!(out["x-forwarded-proto"], "https");
    }

    #[test]
    fn request_ids() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123_x.y")));
        assert!(!sane_request_id(&HeaderValue::from_static("")));
        assert!(!sane_request_id(&HeaderValue::from_static("a b")));
        assert!(!sane_request_id(&HeaderValue::from_str(&"a".repeat(129)).unwrap()));
        let fresh = new_request_id();
        assert!(sane_request_id(&fresh));
        assert_ne!(fresh, new_request_id());
    }
}
