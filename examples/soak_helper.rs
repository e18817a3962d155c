//! What `benches/soak.sh` needs besides the gateway and wrk:
//!
//! - `soak_helper mint DIR ISSUER AUDIENCE SCOPE COUNT`: a fresh P-256 key, its JWKS in
//!   `DIR/jwks.json`, and COUNT distinct ES256 access tokens (one a line, each with its
//!   own `sub` and `jti`, valid for a day) in `DIR/tokens.txt`.
//! - `soak_helper serve DIR`: an upstream and JWKS server on `127.0.0.1:0` (never
//!   anything else): `GET /jwks.json` is `DIR/jwks.json`, every other request `200 ok`.
//!   Prints `listening 127.0.0.1:PORT` on stdout, then serves until killed.
//!
//! Uses Scopegate's own JOSE code to sign (aws-lc-rs), so 200,000 tokens take seconds.

use std::convert::Infallible;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use scopegate::jose::{Alg, SigningKey, sign_compact};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["mint", dir, issuer, audience, scope, count] => {
            let count: usize = count.parse().map_err(|_| "COUNT must be a number")?;
            mint(Path::new(dir), issuer, audience, scope, count)
        }
        ["serve", dir] => serve(Path::new(dir)),
        _ => Err("usage: soak_helper mint DIR ISSUER AUDIENCE SCOPE COUNT | serve DIR".into()),
    }
}

fn mint(dir: &Path, issuer: &str, audience: &str, scope: &str, count: usize) -> Result<(), String> {
    let kid = "soak-ec";
    let key = SigningKey::generate(Alg::ES256)?;
    let jwks = serde_json::json!({ "keys": [key.public_jwk(Alg::ES256, kid)] });
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let header = serde_json::json!({ "alg": "ES256", "kid": kid, "typ": "at+jwt" }).to_string();
    let file = std::fs::File::create(dir.join("tokens.txt")).map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::new(file);
    for n in 0..count {
        let claims = serde_json::json!({
            "iss": issuer,
            "aud": audience,
            "sub": format!("soak-user-{n}"),
            "client_id": "soak-client",
            "scope": scope,
            "iat": now,
            "exp": now + 86_400,
            "jti": format!("soak-{now}-{n}"),
        })
        .to_string();
        let token = sign_compact(&key, Alg::ES256, header.as_bytes(), claims.as_bytes())?;
        writeln!(out, "{token}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

fn serve(dir: &Path) -> Result<(), String> {
    let jwks = Bytes::from(std::fs::read(dir.join("jwks.json")).map_err(|e| e.to_string())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening {addr}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let body = if request.uri().path() == "/jwks.json" {
                        jwks.clone()
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
