//! gRPC requests (`content-type: application/grpc[+proto|;…]` over HTTP/2): the gateway's
//! own answers to them are gRPC answers, so a gRPC client reads the reason as a status
//! code rather than "protocol error".
//!
//! An answer is trailers-only (gRPC over HTTP/2, "Responses"): one HEADERS frame with
//! `:status 200`, `content-type: application/grpc`, `grpc-status` and `grpc-message`
//! (percent-encoded), and no body. A missing or refused token is 16 UNAUTHENTICATED
//! (with the usual `WWW-Authenticate`), too little scope 7 PERMISSION_DENIED, no route
//! 12 UNIMPLEMENTED, an upstream down 14 UNAVAILABLE, an upstream too slow 4
//! DEADLINE_EXCEEDED, any other refusal 3 INVALID_ARGUMENT. A gRPC request on a route
//! whose upstream is not spoken to over HTTP/2 keeps its HTTP 415 beside
//! `grpc-status: 12`.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::error::{ProxyError, Refusal};
use crate::http::{Body, full, percent_encoded};

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// `application/grpc`, alone or with a `+format` or parameters (not `grpc-web`, which
/// is HTTP/1.1-friendly and answered as plain HTTP).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= 16
            && value[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(value.get(16), None | Some(b'+' | b';'))
    })
}

/// The gRPC status code for an error's HTTP status.
fn code(err: &ProxyError) -> u8 {
    match err.status() {
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::FORBIDDEN => 7,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => 12,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => 12,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::GATEWAY_TIMEOUT => 4,
        status if status.is_client_error() => 3,
        _ => 2,
    }
}

/// `grpc-message`: percent-encoded outside printable ASCII, and `%` itself.
fn message(text: &str) -> HeaderValue {
    let mut out = Vec::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&percent_encoded(b));
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("refused"))
}

/// The gateway's error as a trailers-only gRPC answer (headers of the HTTP answer, such
/// as `WWW-Authenticate` and `Retry-After`, kept).
pub fn answer(err: ProxyError) -> Response<Body> {
    let grpc_status = code(&err);
    let (_, description) = err.code_and_description();
    let keep_status = err.refusal() == Some(Refusal::GrpcNeedsH2);
    let mut response = err.into_response();
    if !keep_status {
        *response.status_mut() = StatusCode::OK;
    }
    *response.body_mut() = full("");
    let headers = response.headers_mut();
    headers.remove(http::header::CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(grpc_status)),
    );
    headers.insert(GRPC_MESSAGE.clone(), message(&description));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC;charset=x", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&headers), grpc, "{value}");
        }
    }

    #[test]
    fn auth_failures_are_grpc_statuses() {
        let answer = answer(ProxyError::MissingToken);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["grpc-status"], "16");
        assert_eq!(answer.headers()["content-type"], "application/grpc");
        assert!(answer.headers().contains_key("www-authenticate"));
        let scope = super::answer(ProxyError::InsufficientScope {
            required: "a b".into(),
        });
        assert_eq!(scope.headers()["grpc-status"], "7");
        assert_eq!(message("50% é").as_bytes(), b"50%25 %C3%A9");
    }
}
