//! The HTTP leaf: the body type of every answer, the connection facts a request carries,
//! the small answers Scopegate writes itself (JSON errors, no-store JSON, `Retry-After`),
//! header-name rules and the request-path normal form ([`path`]). Depends on nothing else
//! in the crate, so every layer above can use it.

pub mod limit;
pub mod path;
pub mod trace;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, PRAGMA, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of everything Scopegate answers: its own small JSON bodies and
/// upstream bodies streamed through.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// What the server knows about the connection a request came on, prepared once per
/// connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The peer's IP as a header value, for `x-forwarded-for`.
    pub client_ip: HeaderValue,
    /// What a connection upgraded off this one (a WebSocket) keeps of it.
    pub lease: Lease,
}

/// What an upgraded connection (a WebSocket) keeps of the HTTP connection it came on: a
/// share of its listener slot (so a draining listener waits for it) and the signal that
/// closes it once the shutdown grace is over.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    pub slot: Option<std::sync::Arc<tokio::sync::OwnedSemaphorePermit>>,
    /// Turns true when the connection must close.
    pub closing: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Lease {
    /// Resolves once the connection must close; never without a signal.
    pub async fn closed(&mut self) {
        match &mut self.closing {
            // An error: the listener is gone, so close too.
            Some(closing) => {
                let _ = closing.wait_for(|closing| *closing).await;
            }
            None => std::future::pending().await,
        }
    }
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> ConnInfo {
        let client_ip = HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            remote,
            tls,
            client_ip,
            lease: Lease::default(),
        }
    }
}

/// A complete answer: `status`, `body` and fixed header values (inserted in order).
pub fn with_headers(
    status: StatusCode,
    body: impl Into<Bytes>,
    headers: &[(HeaderName, &'static str)],
) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (name, value) in headers {
        map.insert(name.clone(), HeaderValue::from_static(value));
    }
    response
}

/// `Content-Type` of the JSON answers.
pub const JSON: (HeaderName, &str) = (CONTENT_TYPE, "application/json");
/// `Cache-Control: no-store`: for answers that carry credentials or per-user state.
pub const NO_STORE: (HeaderName, &str) = (CACHE_CONTROL, "no-store");
/// `Pragma: no-cache`, beside [`NO_STORE`] for HTTP/1.0 caches (RFC 6749 §5.1).
pub const NO_CACHE: (HeaderName, &str) = (PRAGMA, "no-cache");

/// A JSON `{error, error_description}` answer with `Cache-Control: no-store`.
pub fn json_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let description = error_description_text(description);
    let body = serde_json::json!({ "error": error, "error_description": description });
    with_headers(status, body.to_string(), &[JSON, NO_STORE])
}

/// `error_description` text within RFC 6749 §5.2's characters (`%x20-21 / %x23-5B /
/// %x5D-7E`): `"` and `\` become `'`, anything else outside printable ASCII (controls,
/// non-ASCII) becomes `?`. Every OAuth error goes through here, in a JSON body or a
/// redirect.
///
/// ```
/// use scopegate::http::error_description_text;
/// assert_eq!(error_description_text("scope \"a\\b\" é\n"), "scope 'a'b' ??");
/// ```
pub fn error_description_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// A 200 JSON answer that carries credentials or token state: `Cache-Control: no-store`,
/// `Pragma: no-cache` (RFC 6749 §5.1).
pub fn no_store_json(body: impl Into<Bytes>) -> Response<Body> {
    with_headers(StatusCode::OK, body, &[JSON, NO_STORE, NO_CACHE])
}

/// Sets `Retry-After` to whole seconds (at least one).
pub fn set_retry_after(headers: &mut HeaderMap, seconds: u64) {
    headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
}

/// The byte a `%XY` escape starting at `bytes[at]` (the `%`) stands for; `None` when the
/// two hex digits are missing or not hex.
///
/// ```
/// assert_eq!(scopegate::http::percent_byte(b"a%2Fb", 1), Some(b'/'));
/// assert_eq!(scopegate::http::percent_byte(b"%4", 0), None);
/// ```
pub fn percent_byte(bytes: &[u8], at: usize) -> Option<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let hi = hex(*bytes.get(at + 1)?)?;
    let lo = hex(*bytes.get(at + 2)?)?;
    Some(hi << 4 | lo)
}

/// `b` percent-encoded, with upper-case hex (RFC 3986 §2.1).
pub fn percent_encoded(b: u8) -> [u8; 3] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]
}

/// `application/x-www-form-urlencoded` for one value: unreserved characters as they
/// are, everything else percent-encoded.
///
/// ```
/// assert_eq!(scopegate::http::form_encode("a.b-c_d~e"), "a.b-c_d~e");
/// assert_eq!(scopegate::http::form_encode("a+b/c=d e:é"), "a%2Bb%2Fc%3Dd%20e%3A%C3%A9");
/// ```
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.extend(percent_encoded(byte).map(char::from));
        }
    }
    out
}

/// A client's HTTP Basic credentials as RFC 6749 §2.3.1 has them: each part
/// form-encoded first. Marked sensitive; `None` if they cannot be a header.
pub fn basic_credentials(client_id: &str, client_secret: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let credentials = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

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
///
/// ```
/// assert_eq!(scopegate::http::normalize_header_name("X_Auth-Subject"), "x-auth-subject");
/// ```
pub fn normalize_header_name(name: &str) -> String {
    name.bytes().map(|b| header_name_byte(b) as char).collect()
}

/// One byte of [`normalize_header_name`]: lower case, `_` as `-`.
pub fn header_name_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Why an `Authorization` header cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    #[error("more than one Authorization header")]
    Duplicate,
    #[error("{0}")]
    Malformed(&'static str),
}

/// How an access token was presented in `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScheme {
    Bearer,
    /// RFC 9449: a DPoP-bound token, with a proof in the `DPoP` header.
    Dpop,
}

/// Finds the bearer token in `Authorization` (scheme case-insensitive). `Ok(None)` when
/// there is none or the scheme is not Bearer.
///
/// Only the shape is checked here; the JWS parser refuses anything that is not
/// base64url (spaces included).
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthorizationError> {
    Ok(access_token(headers)?
        .filter(|(scheme, _)| *scheme == TokenScheme::Bearer)
        .map(|(_, token)| token))
}

/// Finds the access token in `Authorization` under the `Bearer` or `DPoP` scheme (case
/// insensitive). `Ok(None)` when there is none or the scheme is another.
pub fn access_token(
    headers: &HeaderMap,
) -> Result<Option<(TokenScheme, &str)>, AuthorizationError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthorizationError::Duplicate);
    }
    let bytes = value.as_bytes();
    let scheme_end = bytes.iter().position(|&b| b == b' ').unwrap_or(bytes.len());
    let scheme = &bytes[..scheme_end];
    let scheme = if scheme.eq_ignore_ascii_case(b"bearer") {
        TokenScheme::Bearer
    } else if scheme.eq_ignore_ascii_case(b"dpop") {
        TokenScheme::Dpop
    } else {
        return Ok(None);
    };
    let token = std::str::from_utf8(&bytes[scheme_end..])
        .map_err(|_| {
            AuthorizationError::Malformed("the bearer token has characters a token cannot have")
        })?
        .trim_matches(' ');
    if token.is_empty() {
        return Err(AuthorizationError::Malformed(
            "the Authorization header has an empty bearer token",
        ));
    }
    Ok(Some((scheme, token)))
}

/// RFC 3986 `unreserved` or `sub-delims`: what a `reg-name` host or a path segment may
/// hold unescaped (a segment also takes `:` and `@`).
pub fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}
