//! Hot-path micro-benchmarks: route lookup over 1,000 routes, token verification
//! (verified-token cache hit — also with the built-in issuer's deny-set, empty and
//! holding 10,000 revoked tokens — and the uncached path that checks a signature), the
//! upstream header rewrite, and one whole request through `Gateway::handle` (HTTP/1.1
//! over an in-memory pipe, route `builtin:echo`) with logging as chosen by
//! `SCOPEGATE_BENCH_LOG`: `none` (no subscriber), `json-warn` (the JSON subscriber with
//! the request span and access line filtered out), `json-info` or `pretty-info` (both
//! written, to a sink). One setting per process: a subscriber is global.
//!
//! `cargo bench --bench proxy`, `SCOPEGATE_BENCH_LOG=json-info cargo bench --bench proxy -- pipeline`

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use scopegate::clock::Clock;
use scopegate::config::{Dur, ForwardConfig, TrustedIssuerConfig};
use scopegate::http::ConnInfo;
use scopegate::issuer::store::Store;
use scopegate::jose::{Alg, SigningKey, sign_compact};
use scopegate::jwks::{KeySource, LocalJwks, TrustedIssuer};
use scopegate::metrics::Metrics;
use scopegate::pipeline::authn::{Revocations, Verifier};
use scopegate::pipeline::forward::{ForwardHeaders, Origin, upstream_headers};
use scopegate::pipeline::router::{MethodSet, Pattern, Router};
use scopegate::tls::tls_client_config;
use scopegate::upstream::Fetcher;

fn thousand_routes() -> Router {
    let mut routes = Vec::new();
    for i in 0..250 {
        let methods = MethodSet::from_names(Some(&["GET".to_string()]));
        routes.push((Pattern::parse(&format!("/svc{i}/items")).unwrap(), methods));
        routes.push((
            Pattern::parse(&format!("/svc{i}/items/{{id}}")).unwrap(),
            MethodSet::any(),
        ));
        routes.push((
            Pattern::parse(&format!("/svc{i}/admin/*")).unwrap(),
            MethodSet::any(),
        ));
        routes.push((
            Pattern::parse(&format!("/svc{i}/*")).unwrap(),
            MethodSet::any(),
        ));
    }
    Router::new(&routes)
}

fn bench_router(c: &mut Criterion) {
    let router = thousand_routes();
    let mut group = c.benchmark_group("route_lookup_1000");
    group.bench_function("exact", |b| {
        b.iter(|| router.lookup(std::hint::black_box("/svc137/items"), &Method::GET))
    });
    group.bench_function("param", |b| {
        b.iter(|| router.lookup(std::hint::black_box("/svc137/items/42"), &Method::GET))
    });
    group.bench_function("prefix_deep", |b| {
        b.iter(|| {
            router.lookup(
                std::hint::black_box("/svc249/admin/users/42/roles"),
                &Method::POST,
            )
        })
    });
    group.bench_function("not_found", |b| {
        b.iter(|| router.lookup(std::hint::black_box("/nothing/here"), &Method::GET))
    });
    group.finish();
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    token: String,
    cached: Verifier,
    uncached: Verifier,
    /// Cached, honouring revocations of this issuer: an empty deny-set, and one holding
    /// 10,000 other revoked tokens.
    deny_empty: Verifier,
    deny_10k: Verifier,
}

fn fixture(alg: Alg) -> Fixture {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = SigningKey::generate(alg).unwrap();
    let jwks = serde_json::json!({ "keys": [key.public_jwk(alg, "bench")] })
        .to_string()
        .into_bytes();
    let source: LocalJwks = Arc::new(move || {
        let jwks = jwks.clone();
        Box::pin(async move { Ok(jwks) })
    });
    let config = TrustedIssuerConfig {
        issuer: "https://issuer.example.com/".into(),
        jwks_uri: None,
        audiences: vec!["https://api.example.com".into()],
        algorithms: vec![alg],
        jwks_ttl: Dur::secs(600),
        jwks_min_refresh: Dur::secs(30),
        clients: None,
        scope_claims: None,
        introspection: None,
        token_exchange: None,
    };
    let fetcher = Fetcher::new(tls_client_config(None).unwrap());
    let make = |cache| {
        let issuer = runtime.block_on(async {
            let issuer = TrustedIssuer::new(
                config.clone(),
                KeySource::Local(source.clone()),
                fetcher.clone(),
                Metrics::new(),
                Clock::system(),
            )
            .unwrap();
            issuer.keys_for(Some("bench"), alg).await;
            issuer
        });
        Verifier::new(
            vec![issuer],
            Duration::from_secs(30),
            8192,
            Vec::new(),
            cache,
            Clock::system(),
        )
    };
    let now = Clock::system().unix_secs();
    let claims = serde_json::json!({
        "iss": "https://issuer.example.com/", "sub": "user|alice",
        "aud": ["https://api.example.com", "https://issuer.example.com/userinfo"],
        "azp": "web", "client_id": "web", "iat": now, "exp": now + 3600,
        "jti": "abc", "scope": "openid profile read:contacts write:contacts",
    });
    let header = format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"bench"}}"#);
    let token = sign_compact(&key, alg, header.as_bytes(), claims.to_string().as_bytes()).unwrap();
    let revocations = |held: usize| {
        let store = runtime
            .block_on(Store::open("sqlite::memory:", Clock::system()))
            .unwrap();
        for i in 0..held {
            store
                .deny_set()
                .insert(&format!("revoked-{i}"), now + 3600, now);
        }
        Some(Revocations {
            issuer_index: 0,
            store,
        })
    };
    Fixture {
        cached: make(10_000),
        uncached: make(0),
        deny_empty: make(10_000).with_revocations(revocations(0)),
        deny_10k: make(10_000).with_revocations(revocations(10_000)),
        runtime,
        token,
    }
}

fn bench_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify_and_authorize");
    for alg in [Alg::RS256, Alg::ES256] {
        let f = fixture(alg);
        let route = scopegate::config::RouteConfig {
            name: "r".into(),
            matcher: scopegate::config::MatchConfig {
                path: Pattern::parse("/x").unwrap(),
                methods: None,
            },
            upstream: scopegate::config::UpstreamList::one(scopegate::config::UpstreamTarget::Echo),
            strip_prefix: None,
            auth: Default::default(),
            audience: Some("https://api.example.com".into()),
            scopes: vec!["read:contacts".into()],
            any_scopes: Vec::new(),
            balance: Default::default(),
            health: None,
            rate_limit: None,
            max_body: None,
            timeouts: Default::default(),
            cors: None,
            protocol: Default::default(),
            websocket: false,
            revocation: Default::default(),
            upstream_token: None,
            dpop: Default::default(),
        };
        let policy = scopegate::pipeline::authz::Policy::from_route(&route);
        group.bench_function(format!("{alg}_cached"), |b| {
            b.iter(|| {
                let identity = f.runtime.block_on(f.cached.verify(&f.token)).unwrap();
                policy.authorize(&identity).unwrap();
            })
        });
        for (name, verifier) in [
            ("cached_denyset_empty", &f.deny_empty),
            ("cached_denyset_10k", &f.deny_10k),
        ] {
            group.bench_function(format!("{alg}_{name}"), |b| {
                b.iter(|| {
                    let identity = f.runtime.block_on(verifier.verify(&f.token)).unwrap();
                    policy.authorize(&identity).unwrap();
                })
            });
        }
        group.bench_function(format!("{alg}_uncached"), |b| {
            b.iter(|| {
                let identity = f.runtime.block_on(f.uncached.verify(&f.token)).unwrap();
                policy.authorize(&identity).unwrap();
            })
        });
    }
    group.finish();
}

fn bench_headers(c: &mut Criterion) {
    let forward = ForwardHeaders::new(&ForwardConfig::default()).unwrap();
    let mut client = HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        ("x-auth-subject", "spoofed"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "203.0.113.9"),
        ("cookie", "session=abc"),
    ] {
        client.append(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let id = HeaderValue::from_static("0123456789abcdef");
    let upstream = HeaderValue::from_static("127.0.0.1:9001");
    let trace = scopegate::http::trace::Trace::from_headers(&client);
    c.bench_function("header_rewrite", |b| {
        b.iter(|| {
            let origin = Origin {
                client_ip: HeaderValue::from_static("127.0.0.1"),
                proto: "http",
                host: Some(HeaderValue::from_static("api.example.com")),
                request_id: &id,
                upstream_host: Some(&upstream),
                trace: &trace,
            };
            upstream_headers(&forward, client.clone(), None, &origin)
        })
    });
}

fn bench_pipeline(c: &mut Criterion) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use scopegate::config::LogFormat;
    use tracing_subscriber::EnvFilter;

    let log = std::env::var("SCOPEGATE_BENCH_LOG").unwrap_or_else(|_| "none".into());
    let subscriber = |format, level| {
        scopegate::telemetry::subscriber(format, EnvFilter::new(level), false, std::io::sink)
    };
    let installed = match log.as_str() {
        "none" => Ok(()),
        "json-warn" => tracing::subscriber::set_global_default(subscriber(LogFormat::Json, "warn")),
        "json-info" => tracing::subscriber::set_global_default(subscriber(LogFormat::Json, "info")),
        "pretty-info" => {
            tracing::subscriber::set_global_default(subscriber(LogFormat::Pretty, "info"))
        }
        other => {
            panic!("SCOPEGATE_BENCH_LOG={other:?}: none | json-warn | json-info | pretty-info")
        }
    };
    installed.expect("the only subscriber in this process");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let yaml =
        "routes:\n  - { name: echo, match: { path: /echo }, upstream: builtin:echo, auth: none }\n";
    let gateway = runtime.block_on(async {
        scopegate::Gateway::start(scopegate::config::Config::from_yaml(yaml).unwrap(), None)
            .await
            .unwrap()
    });
    let conn = std::sync::Arc::new(ConnInfo::new("127.0.0.1:50000".parse().unwrap(), false));
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    runtime.spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            let gateway = gateway.clone();
            let conn = conn.clone();
            async move { Ok::<_, std::convert::Infallible>(gateway.handle(request, &conn).await) }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await
    });
    let mut sender = runtime.block_on(async {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    });
    c.bench_function(&format!("pipeline_echo/{log}"), |b| {
        b.iter(|| {
            runtime.block_on(async {
                sender.ready().await.unwrap();
                let request = http::Request::get("/echo")
                    .header(http::header::HOST, "bench.example")
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), http::StatusCode::OK);
                response.into_body().collect().await.unwrap()
            })
        })
    });
}

/// Tiny upstreams on their own thread (so the gateway has the bench thread to itself):
/// `count` listeners on 127.0.0.1:0 answering 200 "ok".
fn ok_upstreams(count: usize) -> Vec<std::net::SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut addrs = Vec::new();
            for _ in 0..count {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addrs.push(listener.local_addr().unwrap());
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(|_request| async {
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                                ))
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            }
            tx.send(addrs).unwrap();
            std::future::pending::<()>().await
        });
    });
    rx.recv().unwrap()
}

/// The A/B of upstream sets: one request at a time through the whole gateway to a real
/// upstream on loopback, on a one-URL route (`one`) and on a route with three endpoints
/// and a rate limit that is never hit (`set`), in two interleaved rounds.
/// `cargo bench --bench proxy -- upstream_set`
fn bench_upstream_set(c: &mut Criterion) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;

    let addrs = ok_upstreams(3);
    let yaml = format!(
        "routes:\n  - {{ name: one, match: {{ path: /one }}, upstream: http://{a}, auth: none }}\n  - name: set\n    match: {{ path: /set }}\n    upstream: [http://{a}, http://{b}, http://{c}]\n    auth: none\n    rate_limit: {{ key: ip, requests: 1000000000, per: 1s }}\n  - {{ name: set-only, match: {{ path: /set-only }}, upstream: [http://{a}, http://{b}, http://{c}], auth: none }}\n  - {{ name: limit-only, match: {{ path: /limit-only }}, upstream: http://{a}, auth: none, rate_limit: {{ key: ip, requests: 1000000000, per: 1s }} }}\n",
        a = addrs[0],
        b = addrs[1],
        c = addrs[2]
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gateway = runtime.block_on(async {
        scopegate::Gateway::start(scopegate::config::Config::from_yaml(&yaml).unwrap(), None)
            .await
            .unwrap()
    });
    let conn = std::sync::Arc::new(ConnInfo::new("127.0.0.1:50000".parse().unwrap(), false));
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    runtime.spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            let gateway = gateway.clone();
            let conn = conn.clone();
            async move { Ok::<_, std::convert::Infallible>(gateway.handle(request, &conn).await) }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await
    });
    let mut sender = runtime.block_on(async {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    });
    let mut group = c.benchmark_group("upstream_set");
    // Interleaved: A, B, A, B, so a neighbour's load falls on both.
    // `set-only` and `limit-only` tell the two costs apart. Five short interleaved rounds:
    // on a shared machine a neighbour's load drifts, and the per-round ratio is what
    // holds still.
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let paths = ["/one", "/set", "/set-only", "/limit-only"];
    for (round, path) in (1..=5).flat_map(|r| paths.map(|p| (r, p))) {
        group.bench_function(format!("{}-{round}", &path[1..]), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    sender.ready().await.unwrap();
                    let request = http::Request::get(path)
                        .header(http::header::HOST, "bench.example")
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap();
                    let response = sender.send_request(request).await.unwrap();
                    assert_eq!(response.status(), http::StatusCode::OK);
                    response.into_body().collect().await.unwrap()
                })
            })
        });
    }
    group.finish();
}

/// What a rate limit adds to a request that passes it: the bucket check by client
/// address and the two answer headers.
fn bench_rate_limit(c: &mut Criterion) {
    use scopegate::config::{RateLimitConfig, RateLimitKey};
    use scopegate::pipeline::ratelimit::RateLimit;

    let config = RateLimitConfig {
        key: RateLimitKey::Ip,
        requests: 1_000_000_000,
        per: Dur::secs(1),
        burst: 0,
    };
    let counter = prometheus::IntCounter::new("x", "x").unwrap();
    let limit = RateLimit::new(
        "r",
        &config,
        |_| None,
        Arc::from([]),
        Clock::system(),
        counter,
    )
    .unwrap();
    let conn = ConnInfo::new("127.0.0.1:50000".parse().unwrap(), false);
    let headers = HeaderMap::new();
    c.bench_function("rate_limit_admit", |b| {
        b.iter(|| {
            let mut out = HeaderMap::new();
            limit.admit(None, &conn, &headers).unwrap().apply(&mut out);
            out
        })
    });
}

criterion_group!(
    benches,
    bench_rate_limit,
    bench_router,
    bench_verify,
    bench_headers,
    bench_pipeline,
    bench_upstream_set
);
criterion_main!(benches);
