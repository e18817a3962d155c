//! The one place where errors become HTTP answers: [`ProxyError`] for the proxy and
//! bearer-token endpoints (RFC 6750), [`OAuthError`] for the issuer's token, revocation
//! and introspection endpoints (RFC 6749 §5.2) and, as HTML pages (`into_page`, made
//! by the issuer's pages), for the pages a person sees. (Errors that `/authorize`
//! sends back to the client as a redirect are made there: they need the redirect URI.)
//!
//! Handlers return a typed error; `into_response` picks the status, the
//! `WWW-Authenticate` challenge and the JSON body `{error, error_description}`.
//! Internal detail (why an upstream or the store failed) goes to the log, never to the
//! client.

use http::header::{ALLOW, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::claims::{AuthFailure, Reason};
use crate::http::{Body, json_error, set_retry_after};

pub const REALM: &str = "scopegate";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No token on a route that needs one (or a non-Bearer `Authorization`).
    MissingToken,
    /// A token was present and is not acceptable.
    InvalidToken(AuthFailure),
    /// Valid token, not enough scope. `required` is what the route asks for.
    InsufficientScope {
        required: String,
    },
    NotFound,
    /// A route for the path, not for the method: the `Allow` header value.
    MethodNotAllowed(String),
    /// A request Scopegate refuses to interpret (odd path, duplicate Authorization...).
    BadRequest(String),
    HeadersTooLarge,
    BadGateway,
    GatewayTimeout,
    /// The request body is larger than the route's `max_body`: 413.
    PayloadTooLarge,
    /// The caller's bucket is empty: 429 with `Retry-After` and the `RateLimit-Policy` /
    /// `RateLimit` header values.
    RateLimited {
        retry_after: u64,
        policy: HeaderValue,
        state: HeaderValue,
    },
    /// The token's issuer has no keys loaded yet: 503 `temporarily_unavailable` with
    /// `Retry-After` (a 401 would tell the client its token is bad).
    IssuerUnavailable(AuthFailure),
    /// A request feature Scopegate does not implement (a transfer coding other than
    /// `chunked`): 501.
    NotImplemented(String),
    /// Refused for what it asks of the protocol (CORS, upgrades, gRPC); counted by reason.
    Refused(Refusal),
    /// The route's `upstream_token` could not be minted: 503 `temporarily_unavailable`
    /// with `Retry-After` (the caller's own token is never forwarded instead).
    UpstreamTokenFailed(String),
}

/// Why a request was refused for its protocol rather than its token: the
/// `requests_refused_total` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Origin` is not `scheme://host[:port]` (or `null`), or there are several.
    OriginMalformed,
    /// A CORS preflight from an origin the route does not allow.
    OriginNotAllowed,
    /// A CORS preflight for a method the route's CORS block does not allow.
    MethodNotAllowed,
    /// A CORS preflight for request headers the route's CORS block does not allow.
    HeadersNotAllowed,
    /// `Upgrade` to a protocol the gateway does not relay.
    UpgradeUnsupported,
    /// A WebSocket handshake on a route without `websocket: true`.
    WebsocketNotEnabled,
    /// A WebSocket handshake that is not one (not a GET over HTTP/1.1, no key...).
    WebsocketMalformed,
    /// A gRPC request on a route whose upstream is not spoken to over HTTP/2.
    GrpcNeedsH2,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::OriginMalformed,
        Refusal::OriginNotAllowed,
        Refusal::MethodNotAllowed,
        Refusal::HeadersNotAllowed,
        Refusal::UpgradeUnsupported,
        Refusal::WebsocketNotEnabled,
        Refusal::WebsocketMalformed,
        Refusal::GrpcNeedsH2,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::OriginMalformed => "cors_origin_malformed",
            Refusal::OriginNotAllowed => "cors_origin_not_allowed",
            Refusal::MethodNotAllowed => "cors_method_not_allowed",
            Refusal::HeadersNotAllowed => "cors_headers_not_allowed",
            Refusal::UpgradeUnsupported => "upgrade_unsupported",
            Refusal::WebsocketNotEnabled => "websocket_not_enabled",
            Refusal::WebsocketMalformed => "websocket_malformed",
            Refusal::GrpcNeedsH2 => "grpc_needs_h2",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::OriginNotAllowed | Refusal::MethodNotAllowed | Refusal::HeadersNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Refusal::GrpcNeedsH2 => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn code_and_description(self) -> (&'static str, &'static str) {
        match self {
            Refusal::OriginMalformed => (
                "invalid_request",
                "the Origin header is not one origin of the form scheme://host[:port]",
            ),
            Refusal::OriginNotAllowed => (
                "cors_refused",
                "this origin may not call this route from a browser",
            ),
            Refusal::MethodNotAllowed => (
                "cors_refused",
                "the preflight asks for a method this route does not allow cross-origin",
            ),
            Refusal::HeadersNotAllowed => (
                "cors_refused",
                "the preflight asks for request headers this route does not allow cross-origin",
            ),
            Refusal::UpgradeUnsupported => (
                "invalid_request",
                "the gateway does not upgrade connections to this protocol",
            ),
            Refusal::WebsocketNotEnabled => (
                "invalid_request",
                "this route does not take WebSocket connections",
            ),
            Refusal::WebsocketMalformed => (
                "invalid_request",
                "a WebSocket handshake is a GET over HTTP/1.1 with Connection: upgrade, Sec-WebSocket-Key and Sec-WebSocket-Version",
            ),
            Refusal::GrpcNeedsH2 => (
                "unsupported_media_type",
                "gRPC needs HTTP/2 to the upstream; this route's protocol is http1",
            ),
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingToken | ProxyError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ProxyError::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadGateway => StatusCode::BAD_GATEWAY,
            ProxyError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::IssuerUnavailable(_) | ProxyError::UpstreamTokenFailed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Refused(refusal) => refusal.status(),
        }
    }

    /// The auth failure reason to count, if this is an auth failure.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ProxyError::MissingToken => Some(Reason::MissingToken),
            ProxyError::InvalidToken(failure) | ProxyError::IssuerUnavailable(failure) => {
                Some(failure.reason)
            }
            ProxyError::InsufficientScope { .. } => Some(Reason::InsufficientScope),
            _ => None,
        }
    }

    /// The protocol refusal to count, if this is one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            ProxyError::Refused(refusal) => Some(*refusal),
            _ => None,
        }
    }

    /// The JSON `error` code and the `error_description` of the answer.
    pub fn code_and_description(&self) -> (&'static str, String) {
        match self {
            ProxyError::MissingToken => (
                "unauthorized",
                "this route needs a bearer access token".into(),
            ),
            ProxyError::InvalidToken(failure) => ("invalid_token", failure.description.clone()),
            ProxyError::InsufficientScope { required } => (
                "insufficient_scope",
                format!("the access token lacks the scope this route needs: {required}"),
            ),
            ProxyError::NotFound => ("not_found", "no route matches this path".into()),
            ProxyError::MethodNotAllowed(_) => (
                "method_not_allowed",
                "the route for this path does not take this method".into(),
            ),
            ProxyError::BadRequest(why) => ("invalid_request", why.clone()),
            ProxyError::HeadersTooLarge => (
                "invalid_request",
                "the request headers are larger than this gateway accepts".into(),
            ),
            ProxyError::BadGateway => ("bad_gateway", "the upstream could not be reached".into()),
            ProxyError::GatewayTimeout => (
                "gateway_timeout",
                "the upstream did not answer in time".into(),
            ),
            ProxyError::NotImplemented(why) => ("not_implemented", why.clone()),
            ProxyError::IssuerUnavailable(failure) => {
                ("temporarily_unavailable", failure.description.clone())
            }
            ProxyError::UpstreamTokenFailed(why) => ("temporarily_unavailable", why.clone()),
            ProxyError::PayloadTooLarge => (
                "payload_too_large",
                "the request body is larger than this route accepts".into(),
            ),
            ProxyError::RateLimited { .. } => (
                "rate_limited",
                "too many requests for this route; try again after Retry-After seconds".into(),
            ),
            ProxyError::Refused(refusal) => {
                let (code, description) = refusal.code_and_description();
                (code, description.into())
            }
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let (code, description) = self.code_and_description();
        let challenge = match &self {
            ProxyError::MissingToken => Some(Challenge::Missing),
            ProxyError::InvalidToken(failure) if failure.reason == Reason::DpopInvalid => {
                Some(Challenge::InvalidDpop(&description))
            }
            ProxyError::InvalidToken(_) => Some(Challenge::InvalidToken(&description)),
            ProxyError::InsufficientScope { required } => {
                Some(Challenge::InsufficientScope(required))
            }
            _ => None,
        };
        let mut response = json_error(status, code, &description);
        let headers = response.headers_mut();
        if let Some(challenge) = challenge {
            challenge.set(headers);
        }
        if let ProxyError::IssuerUnavailable(failure) = &self {
            set_retry_after(headers, failure.retry_after.unwrap_or(1));
        }
        if let ProxyError::UpstreamTokenFailed(_) = &self {
            set_retry_after(headers, 2);
        }
        if let ProxyError::RateLimited {
            retry_after,
            policy,
            state,
        } = &self
        {
            set_retry_after(headers, *retry_after);
            headers.insert("ratelimit-policy", policy.clone());
            headers.insert("ratelimit", state.clone());
        }
        if let ProxyError::MethodNotAllowed(allow) = &self
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            headers.insert(ALLOW, value);
        }
        response
    }
}

/// The algorithms a DPoP proof may use (every asymmetric algorithm Scopegate verifies).
const DPOP_ALGS: &str = "ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512";

/// An RFC 6750 §3 `WWW-Authenticate: Bearer` challenge (RFC 9449's `DPoP` one for proofs).
#[derive(Debug, Clone, Copy)]
pub enum Challenge<'a> {
    /// No token: the realm only.
    Missing,
    /// `error="invalid_token"` with a description.
    InvalidToken(&'a str),
    /// `error="insufficient_scope"` with the scope needed.
    InsufficientScope(&'a str),
    /// RFC 9449 §7.1: `WWW-Authenticate: DPoP` with `error="invalid_dpop_proof"` and the
    /// proof algorithms accepted.
    InvalidDpop(&'a str),
}

impl Challenge<'_> {
    pub fn set(self, headers: &mut http::HeaderMap) {
        let text = match self {
            Challenge::Missing => format!("Bearer realm=\"{REALM}\""),
            Challenge::InvalidToken(description) => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted(description)
            ),
            Challenge::InsufficientScope(scope) => format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
                quoted(scope)
            ),
            Challenge::InvalidDpop(description) => format!(
                "DPoP realm=\"{REALM}\", algs=\"{DPOP_ALGS}\", error=\"invalid_dpop_proof\", error_description=\"{}\"",
                quoted(description)
            ),
        };
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.insert(WWW_AUTHENTICATE, value);
        }
    }
}

/// The answers of a bearer-protected resource the issuer serves (`/userinfo`), RFC 6750.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerError {
    /// No bearer token: 401 with the realm only.
    MissingToken,
    /// The `Authorization` header cannot be read: 400 `invalid_request`.
    BadRequest(&'static str),
    /// 401 `invalid_token`.
    InvalidToken(&'static str),
    /// 403 `insufficient_scope`, with the scope needed.
    InsufficientScope(&'static str),
    /// The issuer could not decide (its store failed).
    Unavailable(OAuthError),
}

impl BearerError {
    pub fn into_response(self) -> Response<Body> {
        let (status, code, description, challenge) = match &self {
            BearerError::Unavailable(err) => return err.clone().into_response(),
            BearerError::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer access token is needed",
                Some(Challenge::Missing),
            ),
            BearerError::BadRequest(why) => {
                (StatusCode::BAD_REQUEST, "invalid_request", *why, None)
            }
            BearerError::InvalidToken(why) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                *why,
                Some(Challenge::InvalidToken(why)),
            ),
            BearerError::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "the access token lacks the scope needed",
                Some(Challenge::InsufficientScope(scope)),
            ),
        };
        let mut response = json_error(status, code, description);
        if let Some(challenge) = challenge {
            challenge.set(response.headers_mut());
        }
        response
    }
}

/// The error codes of the issuer's endpoints (RFC 6749 §4.1.2.1 and §5.2, RFC 7009,
/// RFC 8628, RFC 8693, RFC 8707, OpenID Connect), plus `access_denied` as Auth0 answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    AccessDenied,
    UnsupportedTokenType,
    ServerError,
    TemporarilyUnavailable,
    /// `/authorize` (RFC 6749 §4.1.2.1).
    UnsupportedResponseType,
    /// `/authorize` with `prompt=none` and no session (OpenID Connect Core §3.1.2.6).
    LoginRequired,
    /// `/authorize` with a `request` object / a `request_uri`, neither supported (OpenID
    /// Connect Core §6.1, §6.2; §3.1.2.6).
    RequestNotSupported,
    RequestUriNotSupported,
    /// `/authorize` with a pushed request's `request_uri` that is unknown, spent, expired
    /// or another client's (RFC 9126 §4).
    InvalidRequestUri,
    /// A `DPoP` proof that is missing where required, or fails a check (RFC 9449 §5).
    InvalidDpopProof,
    /// A `DPoP` proof without the server's current nonce (RFC 9449 §8).
    UseDpopNonce,
    /// Device flow polling (RFC 8628 §3.5).
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
}

impl OAuthCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthCode::InvalidRequest => "invalid_request",
            OAuthCode::InvalidClient => "invalid_client",
            OAuthCode::InvalidGrant => "invalid_grant",
            OAuthCode::UnauthorizedClient => "unauthorized_client",
            OAuthCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthCode::InvalidScope => "invalid_scope",
            OAuthCode::InvalidTarget => "invalid_target",
            OAuthCode::AccessDenied => "access_denied",
            OAuthCode::UnsupportedTokenType => "unsupported_token_type",
            OAuthCode::ServerError => "server_error",
            OAuthCode::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthCode::UnsupportedResponseType => "unsupported_response_type",
            OAuthCode::LoginRequired => "login_required",
            OAuthCode::RequestNotSupported => "request_not_supported",
            OAuthCode::RequestUriNotSupported => "request_uri_not_supported",
            OAuthCode::InvalidRequestUri => "invalid_request_uri",
            OAuthCode::InvalidDpopProof => "invalid_dpop_proof",
            OAuthCode::UseDpopNonce => "use_dpop_nonce",
            OAuthCode::AuthorizationPending => "authorization_pending",
            OAuthCode::SlowDown => "slow_down",
            OAuthCode::ExpiredToken => "expired_token",
        }
    }
}

/// An answer of the issuer's endpoints that is not a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: OAuthCode,
    pub description: std::borrow::Cow<'static, str>,
    /// `Retry-After` in seconds: a login lockout (answered 429) or an unreachable store
    /// (`temporarily_unavailable`, answered 503).
    pub retry_after: Option<u64>,
    /// A nonce for the client's next DPoP proof, sent as `DPoP-Nonce` (RFC 9449 §8).
    pub dpop_nonce: Option<String>,
}

impl OAuthError {
    pub fn new(code: OAuthCode, description: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        OAuthError {
            code,
            description: description.into(),
            retry_after: None,
            dpop_nonce: None,
        }
    }

    pub fn invalid_request(description: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        OAuthError::new(OAuthCode::InvalidRequest, description)
    }

    pub fn invalid_grant(description: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        OAuthError::new(OAuthCode::InvalidGrant, description)
    }

    pub fn invalid_client(description: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        OAuthError::new(OAuthCode::InvalidClient, description)
    }

    /// A store or signing failure: logged with detail where it happened, answered 500
    /// (503 would invite blind retries of requests that change state).
    pub fn server_error() -> Self {
        OAuthError::new(
            OAuthCode::ServerError,
            "the issuer could not complete the request",
        )
    }

    /// The issuer's store cannot be reached: 503 `temporarily_unavailable` with
    /// `Retry-After`. Only for failures that changed nothing, so a retry is safe.
    pub fn temporarily_unavailable(retry_after: u64) -> Self {
        OAuthError {
            code: OAuthCode::TemporarilyUnavailable,
            description: "the issuer's store is unreachable; try again later".into(),
            retry_after: Some(retry_after.max(1)),
            dpop_nonce: None,
        }
    }

    /// Too many failed logins: `invalid_grant`, answered 429 with `Retry-After`.
    pub fn locked_out(retry_after: u64) -> Self {
        OAuthError {
            code: OAuthCode::InvalidGrant,
            description: "too many failed login attempts; try again later".into(),
            retry_after: Some(retry_after.max(1)),
            dpop_nonce: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        if self.code == OAuthCode::TemporarilyUnavailable {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        if self.retry_after.is_some() {
            return StatusCode::TOO_MANY_REQUESTS;
        }
        match self.code {
            OAuthCode::InvalidClient => StatusCode::UNAUTHORIZED,
            OAuthCode::AccessDenied => StatusCode::FORBIDDEN,
            OAuthCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            OAuthCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The `error_description` as sent: within RFC 6749 §5.2's characters
    /// ([`crate::http::error_description_text`]).
    pub fn error_description(&self) -> String {
        crate::http::error_description_text(&self.description)
    }

    /// RFC 6749 §5.2 JSON with `Cache-Control: no-store` and `Pragma: no-cache`;
    /// `invalid_client` is 401 with a `WWW-Authenticate: Basic` challenge.
    pub fn into_response(self) -> Response<Body> {
        let mut response = json_error(self.status(), self.code.as_str(), &self.description);
        let headers = response.headers_mut();
        headers.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.code == OAuthCode::InvalidClient {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"scopegate\", charset=\"UTF-8\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            set_retry_after(headers, seconds);
        }
        if let Some(nonce) = self.dpop_nonce.and_then(|n| HeaderValue::try_from(n).ok()) {
            headers.insert(crate::jose::dpop::DPOP_NONCE.clone(), nonce);
        }
        response
    }
}

/// Makes text safe inside an HTTP quoted-string: no quotes, backslashes or controls.
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6749 §5.2: error_description holds only %x20-21 / %x23-5B / %x5D-7E.
    #[test]
    fn rfc_6749_5_2_error_description_characters() {
        let err = OAuthError::invalid_request("parameter \"sc\\ope\" is bad: é\u{7f}\t");
        let allowed = |c: char| matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e');
        assert!(err.error_description().chars().all(allowed));
        assert_eq!(err.error_description(), "parameter 'sc'ope' is bad: ???");
        // The JSON body is made by json_error, which sanitises the same way.
        assert_eq!(
            crate::http::error_description_text("a\"b"),
            "a'b",
            "json_error and redirects share the one sanitiser"
        );
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let r = ProxyError::MissingToken.into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"scopegate\"");

        let r =
            ProxyError::InvalidToken(AuthFailure::new(Reason::Expired, "the token \"expired\""))
                .into_response();
        let challenge = r.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(
            challenge.contains("error_description=\"the token 'expired'\""),
            "{challenge}"
        );

        let r = ProxyError::InsufficientScope {
            required: "read:a write:a".into(),
        }
        .into_response();
        assert_eq!(r.status(), 403);
        assert!(
            r.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .ends_with("error=\"insufficient_scope\", scope=\"read:a write:a\"")
        );
    }
}
