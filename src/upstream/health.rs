//! Active health checks of a route's endpoints (`routes[].health`): every `interval` by
//! the gateway's clock, `GET <base path><path>` on each endpoint at once; a 2xx answer
//! within the interval (at most 5 s) passes. `unhealthy` failures in a row take an
//! endpoint out of rotation, `healthy` passes in a row bring it back. The checker stops
//! when its set is dropped (a reload that compiled a new one).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::set::EndpointSet;
use super::{Connector, Upstreams};

/// Starts the checker of `set`, if it has `health` configured. Needs a Tokio runtime.
pub fn spawn(set: &Arc<EndpointSet>, upstreams: &Upstreams) {
    let Some(health) = set.health.clone() else {
        return;
    };
    let client: Client<Connector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(upstreams.connector.clone());
    let weak: Weak<EndpointSet> = Arc::downgrade(set);
    let clock = set.clock.clone();
    let interval = health.interval.get();
    let timeout = interval.min(Duration::from_secs(5));
    let count = set.endpoints.len();
    tokio::spawn(async move {
        let mut passes = vec![0u32; count];
        let mut failures = vec![0u32; count];
        loop {
            let Some(set) = weak.upgrade() else { break };
            let mut checks = tokio::task::JoinSet::new();
            for (index, endpoint) in set.endpoints.iter().enumerate() {
                let uri = set.health_uri(endpoint, &health.path);
                let client = client.clone();
                checks.spawn(async move { (index, check(&client, uri, timeout).await) });
            }
            while let Some(done) = checks.join_next().await {
                let Ok((index, passed)) = done else { continue };
                let endpoint = &set.endpoints[index];
                let healthy = endpoint.checked_healthy.load(Ordering::Acquire);
                if passed {
                    passes[index] = passes[index].saturating_add(1);
                    failures[index] = 0;
                    if !healthy && passes[index] >= health.healthy {
                        endpoint.checked_healthy.store(true, Ordering::Release);
                        endpoint.refresh_gauge();
                        tracing::info!(route = &*set.route, endpoint = %endpoint.label, "upstream endpoint healthy again");
                    }
                } else {
                    failures[index] = failures[index].saturating_add(1);
                    passes[index] = 0;
                    if healthy && failures[index] >= health.unhealthy {
                        endpoint.checked_healthy.store(false, Ordering::Release);
                        endpoint.refresh_gauge();
                        tracing::warn!(route = &*set.route, endpoint = %endpoint.label, failures = failures[index], "upstream endpoint failed its health checks");
                    }
                }
            }
            drop(set);
            clock.sleep(interval).await;
        }
    });
}

/// One check: a 2xx answer within `timeout`.
async fn check(
    client: &Client<Connector, Empty<Bytes>>,
    uri: Option<Uri>,
    timeout: Duration,
) -> bool {
    let Some(uri) = uri else { return false };
    let Ok(request) = Request::get(uri)
        .header(
            http::header::USER_AGENT,
            concat!("scopegate-health/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(timeout, client.request(request)).await,
        Ok(Ok(response)) if response.status().is_success()
    )
}
