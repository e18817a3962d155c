//! OpenTelemetry spans over OTLP/HTTP (`tracing:`): a real collector receiver, a real
//! upstream and the real gateway. The span of a request carries the caller's trace, and
//! its span id is the parent the upstream saw; head sampling sets the upstream's
//! `traceparent` flags; a collector that is away costs requests nothing.

mod common;

use common::*;
use serde_json::{Value, json};

/// A caller's sampled trace.
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// [`standard_yaml`] with `tracing` as the tracing block and two routes: `open`
/// (`/open/*`, no token) and `api` (`/api/*`, read:contacts).
fn yaml(tracing: &str) -> String {
    let routes = format!("{}{API_ROUTE}", open_route("open", "/open"));
    format!("tracing: {tracing}\n{}", standard_yaml(&routes))
}

fn spans_total(metrics: &str, result: &str) -> f64 {
    metric(metrics, "scopegate_otlp_spans_total", &[("result", result)])
}

fn string(attributes: &Value, key: &str) -> Option<String> {
    otlp_attribute(attributes, key)
        .and_then(|v| v["stringValue"].as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_span_continues_the_callers_trace_and_parents_the_upstream() {
    let collector = Collector::start().await;
    let env = Env::start_yaml(&yaml(&format!(
        "{{ otlp_endpoint: \"{}\", service_name: edge }}",
        collector.url
    )))
    .await;

    let reply = env
        .get(
            "/open/a?access_token=query-secret",
            &[("traceparent", PARENT), ("cookie", "session=cookie-secret")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let sent = env.upstream.last().one("traceparent").map(str::to_string);
    let sent = sent.expect("a traceparent upstream");
    let token = env.token(json!({"scope": "read:contacts"}));
    assert_eq!(env.get_bearer("/api/x", &token).await.status, 200);
    assert_eq!(env.get("/api/y", &[]).await.status, 401);
    // Graceful shutdown's flush: what was queued has reached the collector once it returns.
    env.gw.gateway.flush_spans(DEADLINE).await;

    let (content_type, _) = collector.received().into_iter().next().expect("a POST");
    assert_eq!(content_type, "application/json");
    let spans = collector.trace(TRACE_ID);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["spanId"], &sent[36..52], "the parent the upstream saw");
    assert_eq!(span["name"], "GET open");
    assert_eq!(span["kind"], 2, "SPAN_KIND_SERVER");
    let attributes = &span["attributes"];
    assert_eq!(
        string(attributes, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(string(attributes, "url.path").as_deref(), Some("/open/a"));
    assert_eq!(string(attributes, "http.route").as_deref(), Some("open"));
    assert_eq!(
        otlp_attribute(attributes, "http.response.status_code"),
        Some(&json!({"intValue": "200"}))
    );
    assert_eq!(
        string(attributes, "server.address").as_deref(),
        Some("gateway.test")
    );
    assert_eq!(
        string(attributes, "client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        string(attributes, "scopegate.auth").as_deref(),
        Some("none")
    );
    assert_eq!(
        string(&span["resource"], "service.name").as_deref(),
        Some("edge")
    );
    assert_eq!(
        string(&span["resource"], "service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && end >= start, "{start} {end}");

    // The other two started traces of their own (sampled: the ratio is 1.0).
    let others: Vec<Value> = collector
        .spans()
        .into_iter()
        .filter(|s| s["traceId"] != TRACE_ID)
        .collect();
    assert_eq!(others.len(), 2, "{others:#?}");
    for other in &others {
        assert!(other.get("parentSpanId").is_none(), "{other}");
        assert_eq!(
            string(&other["attributes"], "http.route").as_deref(),
            Some("api")
        );
    }
    let auths: Vec<(Option<String>, Option<String>)> = others
        .iter()
        .map(|s| {
            (
                string(&s["attributes"], "scopegate.auth"),
                string(&s["attributes"], "scopegate.auth.reason"),
            )
        })
        .collect();
    assert!(auths.contains(&(Some("ok".into()), None)), "{auths:?}");
    assert!(
        auths.contains(&(Some("refused".into()), Some("missing_token".into()))),
        "{auths:?}"
    );

    // Nothing secret leaves in a span: no token, cookie or query.
    for (_, body) in collector.received() {
        let text = String::from_utf8_lossy(&body);
        for secret in [token.as_str(), "cookie-secret", "query-secret", "Bearer"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    assert_eq!(spans_total(&env.gw.metrics().await, "exported"), 3.0);

    // A reload with another service name applies to the next requests.
    env.gw
        .apply(&render(
            &yaml(&format!(
                "{{ otlp_endpoint: \"{}\", service_name: edge-2 }}",
                collector.url
            )),
            &[("issuer", &env.issuer.url), ("upstream", &env.upstream.url)],
        ))
        .await;
    let parent = "00-11111111111111111111111111111111-2222222222222222-01";
    assert_eq!(
        env.get("/open/b", &[("traceparent", parent)]).await.status,
        200
    );
    env.gw.gateway.flush_spans(DEADLINE).await;
    let spans = collector.trace("11111111111111111111111111111111");
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(
        string(&spans[0]["resource"], "service.name").as_deref(),
        Some("edge-2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_starts_unsampled_traces_and_keeps_a_callers_decision() {
    let collector = Collector::start().await;
    let env = Env::start_yaml(&yaml(&format!(
        "{{ otlp_endpoint: \"{}\", sample_ratio: 0.0 }}",
        collector.url
    )))
    .await;

    assert_eq!(env.get("/open/started", &[]).await.status, 200);
    let started = env.upstream.last().one("traceparent").map(str::to_string);
    let started = started.expect("a traceparent upstream");
    assert!(started.ends_with("-00"), "not sampled: {started}");
    let unsampled = PARENT.replace("-01", "-00");
    assert_eq!(
        env.get("/open/unsampled", &[("traceparent", &unsampled)])
            .await
            .status,
        200
    );
    assert!(
        env.upstream
            .last()
            .one("traceparent")
            .unwrap()
            .ends_with("-00")
    );

    // A caller that sampled its trace is followed, whatever the ratio.
    assert_eq!(
        env.get("/open/sampled", &[("traceparent", PARENT)])
            .await
            .status,
        200
    );
    assert!(
        env.upstream
            .last()
            .one("traceparent")
            .unwrap()
            .ends_with("-01")
    );
    eventually("the sampled span reaches the collector", async || {
        !collector.trace(TRACE_ID).is_empty()
    })
    .await;
    // The spans queue in order: had the earlier requests been exported, they would be
    // here by now.
    let spans = collector.spans();
    assert_eq!(
        spans.len(),
        1,
        "only the caller-sampled request: {spans:#?}"
    );
    assert_eq!(
        string(&spans[0]["resource"], "service.name").as_deref(),
        Some("scopegate"),
        "the default service name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_away_costs_requests_nothing_and_is_counted() {
    let dead = dead_addr().await;
    let env = Env::start_yaml(&yaml(&format!("{{ otlp_endpoint: \"http://{dead}\" }}"))).await;
    for _ in 0..3 {
        assert_eq!(
            env.get("/open/a", &[("traceparent", PARENT)]).await.status,
            200
        );
    }
    eventually("the failed export is counted", async || {
        spans_total(&env.gw.metrics().await, "failed") == 3.0
    })
    .await;
    assert_eq!(spans_total(&env.gw.metrics().await, "exported"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_collector_gets_the_batch_again() {
    let collector = Collector::start().await;
    collector.refuse(2);
    let env = Env::start_yaml(&yaml(&format!(
        "{{ otlp_endpoint: \"{}\" }}",
        collector.url
    )))
    .await;
    assert_eq!(
        env.get("/open/a", &[("traceparent", PARENT)]).await.status,
        200
    );
    eventually("the batch is exported on the third try", async || {
        spans_total(&env.gw.metrics().await, "exported") == 1.0
    })
    .await;
    assert_eq!(collector.received().len(), 3, "two 503s, then accepted");
    assert_eq!(spans_total(&env.gw.metrics().await, "failed"), 0.0);
}

/// `scopegate run`: on SIGTERM, the spans still queued reach the collector before the
/// process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_the_queued_spans_before_exit() {
    let collector = Collector::start().await;
    let dir = issuer::TempDir::new("otlp");
    let config = format!(
        "{}log: {{ format: json }}\ntracing: {{ otlp_endpoint: \"{}\" }}\nroutes:\n  - {{ name: echo, match: {{ path: /echo }}, upstream: builtin:echo, auth: none }}\n",
        process::LISTEN_ANY,
        collector.url
    );
    let running = process::Process::start(dir.path(), &config, &[]);
    running.wait_ready().await;
    let reply = get(running.addr, "/echo", &[("traceparent", PARENT)]).await;
    assert_eq!(reply.status, 200);
    let (status, stderr) = running.stop().await;
    assert!(status.success(), "{stderr}");
    let spans = collector.trace(TRACE_ID);
    assert_eq!(spans.len(), 1, "{spans:#?}\n{stderr}");
    assert_eq!(spans[0]["name"], "GET echo");
}
