//! CORS (the Fetch standard's cross-origin protocol) for a route with a `cors` block.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) for a
//!   route with CORS is answered here, before authentication, and never forwarded: 204
//!   with the allowed methods, headers and max-age when the origin, the method and every
//!   requested header are allowed; otherwise 403 `cors_refused` without CORS headers.
//! - Every other answer of such a route (the upstream's, and the gateway's own 401/403
//!   and other errors, so a page can read them) carries `Vary: Origin`, and, for an
//!   allowed origin, `Access-Control-Allow-Origin` (the origin, or `*`),
//!   `-Allow-Credentials` and `-Expose-Headers`. The upstream's own CORS headers are
//!   replaced, so it cannot widen what the gateway allows.
//! - A request whose `Origin` is not one serialized origin is refused with 400.
//!
//! Routes without CORS never look at `Origin`.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HeaderName, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::router::MethodSet;
use crate::config::CorsBlock;
use crate::error::{ProxyError, Refusal};
use crate::http::{Body, full};

/// A route's CORS block, compiled.
#[derive(Debug)]
pub struct Cors {
    /// Lower-case origins; empty means `*`.
    origins: Vec<Box<[u8]>>,
    methods: MethodSet,
    methods_value: HeaderValue,
    /// Lower-case names.
    headers: Vec<HeaderName>,
    headers_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// The CORS headers one answer gets: the route's block, and the request's origin when
/// it is allowed.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    cors: &'a Cors,
    origin: Option<HeaderValue>,
}

fn joined<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let text = items.collect::<Vec<_>>().join(", ");
    (!text.is_empty())
        .then(|| HeaderValue::from_str(&text).ok())
        .flatten()
}

impl Cors {
    /// Compiles a merged block (checked at load) for a route taking `route_methods`.
    pub fn compile(block: &CorsBlock, route_methods: MethodSet) -> Cors {
        let origins = block.allow_origins.as_deref().unwrap_or_default();
        let origins = if origins == ["*"] {
            Vec::new()
        } else {
            origins
                .iter()
                .map(|o| o.to_ascii_lowercase().into_bytes().into_boxed_slice())
                .collect()
        };
        let methods = match &block.allow_methods {
            Some(names) => MethodSet::from_names(Some(names)),
            None => route_methods,
        };
        let methods_value = if methods.is_any() {
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
        } else {
            HeaderValue::from_str(&methods.allow_header())
                .unwrap_or_else(|_| HeaderValue::from_static("GET"))
        };
        let headers: Vec<HeaderName> = block
            .allow_headers
            .iter()
            .flatten()
            .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        let headers_value = joined(headers.iter().map(HeaderName::as_str));
        let expose_value = joined(block.expose_headers.iter().flatten().map(String::as_str));
        let max_age = block.max_age.map_or(600, |age| age.as_secs());
        Cors {
            origins,
            methods,
            methods_value,
            headers,
            headers_value,
            expose_value,
            credentials: block.allow_credentials.unwrap_or(false),
            max_age: HeaderValue::from(max_age),
        }
    }

    fn allows_origin(&self, origin: &[u8]) -> bool {
        self.origins.is_empty() || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The request's `Origin`: its answer's CORS headers (none for a request without
    /// one, or from an origin not allowed); 400 when `Origin` is malformed.
    pub fn answer(&self, headers: &HeaderMap) -> Result<Answer<'_>, ProxyError> {
        let origin = match request_origin(headers)? {
            Some(origin) if self.allows_origin(origin.as_bytes()) => {
                Some(if self.origins.is_empty() {
                    HeaderValue::from_static("*")
                } else {
                    origin.clone()
                })
            }
            _ => None,
        };
        Ok(Answer { cors: self, origin })
    }

    /// Answers a preflight: 204 with the CORS headers, or 403 `cors_refused`.
    pub fn preflight(
        &self,
        headers: &HeaderMap,
        method: &Method,
    ) -> Result<Response<Body>, ProxyError> {
        let answer = self.answer(headers)?;
        let Some(origin) = answer.origin else {
            return Err(ProxyError::Refused(Refusal::OriginNotAllowed));
        };
        if !self.methods.allows(method) {
            return Err(ProxyError::Refused(Refusal::MethodNotAllowed));
        }
        if !self.allows_headers(headers) {
            return Err(ProxyError::Refused(Refusal::HeadersNotAllowed));
        }
        let mut response = Response::new(full(""));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
        if let Some(value) = &self.headers_value {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, value.clone());
        }
        if self.credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        out.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        out.insert(
            VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Ok(response)
    }

    /// Every name in `Access-Control-Request-Headers` is allowed.
    fn allows_headers(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|name| !name.is_empty())
            .all(|name| {
                self.headers
                    .iter()
                    .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
            })
    }
}

impl Answer<'_> {
    /// Puts the CORS headers on an answer, replacing any the upstream set.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            ACCESS_CONTROL_EXPOSE_HEADERS,
            ACCESS_CONTROL_ALLOW_METHODS,
            ACCESS_CONTROL_ALLOW_HEADERS,
            ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
        headers.append(VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = &self.origin else {
            return;
        };
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.cors.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.cors.expose_value {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// The method a preflight asks for: `Some` for an `OPTIONS` with `Origin` and a valid
/// `Access-Control-Request-Method`.
pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
    if method != Method::OPTIONS || !headers.contains_key(ORIGIN) {
        return None;
    }
    let requested = headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(requested.as_bytes()).ok()
}

/// The one `Origin` of a request, checked: `None` without one or for `null` (an opaque
/// origin, which no block can list).
fn request_origin(headers: &HeaderMap) -> Result<Option<&HeaderValue>, ProxyError> {
    let mut all = headers.get_all(ORIGIN).iter();
    let Some(origin) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ProxyError::Refused(Refusal::OriginMalformed));
    }
    if origin.as_bytes() == b"null" {
        return Ok(None);
    }
    if !is_origin(origin.as_bytes()) {
        return Err(ProxyError::Refused(Refusal::OriginMalformed));
    }
    Ok(Some(origin))
}

/// `scheme "://" host [ ":" port ]` (RFC 6454 §6.1), nothing after it.
fn is_origin(value: &[u8]) -> bool {
    let Some(at) = value.windows(3).position(|w| w == b"://") else {
        return false;
    };
    let (scheme, authority) = (&value[..at], &value[at + 3..]);
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !authority.is_empty()
        && super::request::is_host_port(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        let block = CorsBlock {
            allow_origins: Some(origins.iter().map(|o| o.to_string()).collect()),
            allow_headers: Some(vec!["Authorization".into(), "content-type".into()]),
            expose_headers: Some(vec!["x-total".into()]),
            allow_credentials: Some(credentials),
            ..CorsBlock::default()
        };
        Cors::compile(
            &block,
            MethodSet::from_names(Some(&["GET".into(), "POST".into()])),
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn origins_are_checked_and_echoed() {
        let cors = cors(&["https://app.example.com"], true);
        let ok = cors
            .answer(&headers(&[("origin", "https://APP.example.com")]))
            .unwrap();
        let mut out = HeaderMap::new();
        ok.apply(&mut out);
        assert_eq!(
            out["access-control-allow-origin"],
            "https://APP.example.com"
        );
        assert_eq!(out["access-control-allow-credentials"], "true");
        assert_eq!(out["access-control-expose-headers"], "x-total");
        assert_eq!(out["vary"], "Origin");

        let other = cors
            .answer(&headers(&[("origin", "https://evil.example")]))
            .unwrap();
        let mut out = HeaderMap::new();
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        other.apply(&mut out);
        assert!(!out.contains_key("access-control-allow-origin"));
        assert_eq!(out["vary"], "Origin");

        for bad in [
            "app.example.com",
            "https://x/path",
            "https://",
            "https://a b",
        ] {
            assert_eq!(
                cors.answer(&headers(&[("origin", bad)])).unwrap_err(),
                ProxyError::Refused(Refusal::OriginMalformed),
                "{bad}"
            );
        }
        let two = headers(&[
            ("origin", "https://app.example.com"),
            ("origin", "https://b.example"),
        ]);
        assert!(cors.answer(&two).is_err());
        assert!(
            cors.answer(&headers(&[("origin", "null")]))
                .unwrap()
                .origin
                .is_none()
        );
    }

    #[test]
    fn preflights() {
        let cors = cors(&["*"], false);
        let asked = headers(&[
            ("origin", "https://any.example"),
            (
                "access-control-request-headers",
                "authorization, Content-Type",
            ),
        ]);
        let answer = cors.preflight(&asked, &Method::POST).unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(answer.headers()["access-control-allow-origin"], "*");
        assert_eq!(
            answer.headers()["access-control-allow-methods"],
            "GET, POST"
        );
        assert_eq!(answer.headers()["access-control-max-age"], "600");
        assert_eq!(
            cors.preflight(&asked, &Method::DELETE).unwrap_err(),
            ProxyError::Refused(Refusal::MethodNotAllowed)
        );
        let extra = headers(&[
            ("origin", "https://any.example"),
            ("access-control-request-headers", "x-secret"),
        ]);
        assert_eq!(
            cors.preflight(&extra, &Method::GET).unwrap_err(),
            ProxyError::Refused(Refusal::HeadersNotAllowed)
        );
    }
}
