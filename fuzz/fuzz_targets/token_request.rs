//! The token endpoint as the gateway calls it (`Issuer::serve(Endpoint::Token, ..)`):
//! media type and size checks, the form (`form::read`), `grant_type` → the grant,
//! client authentication (Basic or form), and each grant's input validation and
//! issuance, against the issuer of `common/issuer.yaml` (SQLite in memory, ES256).
//!
//! Input, NUL-separated: `Authorization` value (empty: none) · `Content-Type` (empty:
//! `application/x-www-form-urlencoded`) · the body. In the body, `@AT@` is replaced by
//! a live access token of alice (contacts-cli, for token exchange) and `@RT@` by a
//! refresh token minted for this input, so the fuzzer reaches past the token look-ups.
//! The password grant is not allowed to any client here (argon2 would dominate).
//!
//! Invariants besides "no panic": never a 500 (a malformed request is the client's
//! error, and the store is local); every answer is `no-store`; a 200 is JSON with an
//! `access_token` and `token_type` Bearer.

#![no_main]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use scopegate::http::ConnInfo;
use scopegate::issuer::mint::{self, Subject};
use scopegate::issuer::{Endpoint, Issuer};
use scopegate::metrics::Metrics;

const API: &str = "https://contacts.example.com";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    issuer: Arc<Issuer>,
    access_token: String,
    conn: ConnInfo,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let issuer = runtime
            .block_on(Issuer::with_encryption(
                &common::issuer_config(),
                Metrics::new(),
                None,
            ))
            .expect("issuer starts");
        let model = &issuer.model;
        let client = model.clients.get("contacts-cli").expect("client");
        let alice = model.user_by_login("alice").expect("alice");
        let access_token = mint::access_token(
            &issuer,
            client,
            Subject::User(alice),
            model.apis.get(API),
            "read:contacts",
            false,
            None,
            None,
        )
        .expect("access token")
        .token;
        Fixture {
            runtime,
            issuer,
            access_token,
            conn: ConnInfo::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000), false),
        }
    })
}

fn replace(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

async fn refresh_token(issuer: &Issuer) -> String {
    let model = &issuer.model;
    let client = model.clients.get("contacts-cli").expect("client");
    let alice = model.user_by_login("alice").expect("alice");
    let family = mint::random_token(16).expect("random");
    mint::refresh_token(
        issuer,
        client,
        alice,
        model.apis.get(API),
        "read:contacts offline_access",
        issuer.now(),
        family,
        None,
    )
    .await
    .expect("refresh token")
}

fuzz_target!(|data: &[u8]| {
    let [authorization, content_type, body] = common::sections::<3>(data);
    let f = fixture();
    f.runtime.block_on(async {
        let mut body = replace(body, b"@AT@", f.access_token.as_bytes());
        if body.windows(4).any(|w| w == b"@RT@") {
            let token = refresh_token(&f.issuer).await;
            body = replace(&body, b"@RT@", token.as_bytes());
        }
        let mut request = Request::post("https://issuer.example.com/oauth/token");
        if !authorization.is_empty() {
            let Ok(value) = HeaderValue::from_bytes(authorization) else {
                return;
            };
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let content_type = if content_type.is_empty() {
            &b"application/x-www-form-urlencoded"[..]
        } else {
            content_type
        };
        let Ok(value) = HeaderValue::from_bytes(content_type) else {
            return;
        };
        let request = request
            .header(http::header::CONTENT_TYPE, value)
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = f.issuer.serve(Endpoint::Token, request, &f.conn).await;
        let status = response.status();
        assert_ne!(status, 500, "server_error for a client's request");
        assert_eq!(
            response.headers().get(http::header::CACHE_CONTROL).map(|v| v.as_bytes()),
            Some(&b"no-store"[..]),
            "{status} without Cache-Control: no-store"
        );
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        if status == 200 {
            let json: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
            assert!(json["access_token"].is_string());
            assert_eq!(json["token_type"], "Bearer");
        }
    });
});
