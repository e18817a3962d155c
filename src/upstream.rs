//! Upstreams: where a route sends its traffic, the pooled hyper-util client that takes it
//! there (HTTP/1.1, keep-alive, rustls for `https://`), and the timeouts that turn a dead
//! or slow upstream into 502 or 504. Also the small client that fetches JWKS documents.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Where a route forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// `builtin:echo`: answers with the request as it would have been forwarded.
    Echo,
    Http(HttpTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the upstream URL without a trailing slash (`""` for none).
    pub base_path: Box<str>,
    /// Value for the `Host` header sent upstream.
    pub host: HeaderValue,
}

impl UpstreamTarget {
    /// Parses `builtin:echo` or an `http(s)://host[:port][/base]` URL.
    pub fn parse(text: &str) -> Result<UpstreamTarget, String> {
        if text == "builtin:echo" {
            return Ok(UpstreamTarget::Echo);
        }
        let uri: Uri = text.parse().map_err(|_| {
            format!("{text:?} is not a URL; use http://host:port, https://host or builtin:echo")
        })?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(format!(
                    "{text:?}: an upstream is an http:// or https:// URL, or builtin:echo"
                ));
            }
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .cloned()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{text:?}: credentials in an upstream URL are not supported"));
        }
        if uri.query().is_some() || text.contains('#') {
            return Err(format!("{text:?}: an upstream URL has no query or fragment"));
        }
        let base_path = uri.path().trim_end_matches('/');
        crate::pipeline::router::normalize_path(if base_path.is_empty() { "/" } else { base_path })
            .map_err(|err| format!("{text:?}: {err}"))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{text:?} has an invalid host"))?;
        Ok(UpstreamTarget::Http(HttpTarget {
            scheme,
            authority,
            base_path: base_path.into(),
            host,
        }))
    }
}

type Connector = HttpsConnector<HttpConnector>;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the upstream failed: {0}")]
    Connect(String),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream exchange failed: {0}")]
    Exchange(String),
}

/// The pooled client every route shares.
#[derive(Clone)]
pub struct Upstreams {
    client: Client<Connector, Incoming>,
    response_timeout: Duration,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// rustls client settings: the system's roots plus an optional extra CA file.
pub fn tls_client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system store may hold certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|err| format!("{} is not a PEM certificate file: {err}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no certificate", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|err| format!("{}: {err}", path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| err.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn connector(tls: rustls::ClientConfig, connect_timeout: Duration) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

impl Upstreams {
    pub fn new(
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Upstreams {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector(tls, connect_timeout));
        Upstreams {
            client,
            response_timeout,
        }
    }

    /// Sends a prepared request; waits at most the response timeout for its head. The
    /// body then streams with no overall deadline (downloads may be long).
    pub async fn send(&self, request: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(classify(&err)),
        }
    }
}

fn classify(err: &hyper_util::client::legacy::Error) -> UpstreamError {
    let detail = error_chain(err);
    if err.is_connect() {
        if detail.contains("timed out") || detail.contains("timeout") {
            UpstreamError::Timeout
        } else {
            UpstreamError::Connect(detail)
        }
    } else {
        UpstreamError::Exchange(detail)
    }
}

/// An error with its causes, `a: b: c`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A GET-only client for JWKS and discovery documents, with a size cap and a deadline.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<Connector, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetcher")
    }
}

impl Fetcher {
    pub fn new(tls: rustls::ClientConfig) -> Fetcher {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector(tls, Duration::from_secs(5)));
        Fetcher {
            client,
            timeout: Duration::from_secs(10),
            max_bytes: 1024 * 1024,
        }
    }

    /// GETs `uri` and returns the body of a 200 answer.
    pub async fn get(&self, uri: &Uri) -> Result<Bytes, String> {
        let request = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("scopegate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|err| err.to_string())?;
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| error_chain(&err))?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), self.max_bytes)
                .collect()
                .await
                .map_err(|err| format!("reading the body failed: {err}"))?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| "timed out".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_urls() {
        assert_eq!(UpstreamTarget::parse("builtin:echo").unwrap(), UpstreamTarget::Echo);
        let UpstreamTarget::Http(t) = UpstreamTarget::parse("http://127.0.0.1:9001/base/").unwrap()
        else {
            panic!()
        };
        assert_eq!(t.authority.as_str(), "127.0.0.1:9001");
        assert_eq!(&*t.base_path, "/base");
        assert_eq!(t.scheme, Scheme::HTTP);
        for bad in [
            "builtin:nope",
            "ftp://x",
            "127.0.0.1:9001",
            "http://",
            "http://u:p@x",
            "http://x/?q=1",
            "/just/a/path",
            "http://x/a/../b",
        ] {
            assert!(UpstreamTarget::parse(bad).is_err(), "{bad:?}");
        }
    }
}
