//! Token issuance by the built-in issuer, RS256 and ES256: the raw signature (aws-lc-rs,
//! the floor), minting an access token (claims + signature), and the whole
//! `client_credentials` token request after the form is read (client authentication,
//! scope decision, minting, JSON answer, metrics).
//!
//! `cargo bench --bench issuance`. The target: full RS256 issuance at ≥ 0.85× the raw
//! RSA signatures per second.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use scopegate::config::Config;
use scopegate::issuer::Issuer;
use scopegate::issuer::form::Form;
use scopegate::issuer::mint::{self, Subject};
use scopegate::jose::{Alg, SigningKey, sign_compact};
use scopegate::metrics::Metrics;

const SECRET: &str = "bench-m2m-secret";

fn issuer(runtime: &tokio::runtime::Runtime, alg: &str, dir: &std::path::Path) -> Arc<Issuer> {
    let yaml = format!(
        r#"
issuer:
  url: https://issuer.example.com/
  store: "sqlite://{}/{alg}.db"
  keys: {{ algorithm: {alg} }}
  apis:
    - identifier: https://contacts.example.com
      scopes: [{{ value: read:contacts }}, {{ value: write:contacts }}]
  clients:
    - client_id: m2m
      client_secret: {SECRET}
      grant_types: [client_credentials]
      grants: {{ "https://contacts.example.com": [read:contacts, write:contacts] }}
"#,
        dir.display()
    );
    let config = Config::from_yaml_with_env(&yaml, |_| None).expect("bench config");
    runtime
        .block_on(Issuer::with_encryption(
            config.issuer.as_ref().expect("issuer"),
            Metrics::new(),
            None,
        ))
        .expect("issuer starts")
}

fn issuance(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("scopegate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("m2m:{SECRET}")
            )
        ))
        .expect("header"),
    );
    let form =
        Form::parse(b"grant_type=client_credentials&audience=https%3A%2F%2Fcontacts.example.com")
            .expect("form");
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);

    for (name, alg) in [("RS256", Alg::RS256), ("ES256", Alg::ES256)] {
        let mut group = c.benchmark_group(format!("issuance/{name}"));
        group
            .sample_size(30)
            .measurement_time(Duration::from_secs(4));

        let key = SigningKey::generate(alg).expect("key");
        let header = format!(r#"{{"alg":"{name}","kid":"0123456789abcdef","typ":"at+jwt"}}"#);
        let payload = br#"{"iss":"https://issuer.example.com/","sub":"m2m@clients","aud":"https://contacts.example.com","azp":"m2m","client_id":"m2m","iat":1700000000,"exp":1700003600,"jti":"AAAAAAAAAAAAAAAAAAAAAA","scope":"read:contacts write:contacts"}"#;
        group.bench_function("raw_sign", |b| {
            b.iter(|| {
                sign_compact(&key, alg, black_box(header.as_bytes()), black_box(payload))
                    .expect("sign")
            })
        });

        let issuer = issuer(&runtime, name, &dir);
        let client = issuer.model.clients.get("m2m").expect("client");
        let api = issuer.model.apis.get("https://contacts.example.com");
        group.bench_function("mint_access", |b| {
            b.iter(|| {
                mint::access_token(
                    &issuer,
                    client,
                    Subject::Machine,
                    api,
                    black_box("read:contacts write:contacts"),
                    false,
                    None,
                    None,
                )
                .expect("mint")
            })
        });
        group.bench_function("client_credentials_request", |b| {
            b.iter(|| {
                let response = runtime.block_on(issuer.token(&headers, &form, ip));
                assert_eq!(response.status(), 200);
                response
            })
        });
        group.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, issuance);
criterion_main!(benches);
