//! `/metrics` read as Prometheus reads it: the real binary, proxy and issuer traffic and
//! two reloads (one good, one refused), then the exposition is parsed with
//! `prometheus-parse`. Every family the README names must be there with its type and its
//! label names; histograms must have sub-millisecond buckets (and reach seconds);
//! `build_info{version,commit}` is 1; the `process_*` series are there; `in_flight_requests` is a gauge; the counters count what
//! the test did. `prometheus-parse` skips lines it cannot read, so the test also checks
//! that every line of the exposition is a `# HELP`, a `# TYPE` or a sample it reads,
//! with a number for a value, of a family with a `# TYPE`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use prometheus_parse::{LineInfo, SampleType, Scrape, Value as Sample};
use serde_json::json;

use common::eventually;
use common::issuer::{CONTACTS, TempDir};
use common::process::{LISTEN_ANY, Process};
use common::{AUD, rsa};

/// Every metric family of the contract (README, Metrics): name, type, label names.
const FAMILIES: &[(&str, SampleType, &[&str])] = &[
    (
        "scopegate_requests_total",
        SampleType::Counter,
        &["route", "method", "status"],
    ),
    (
        "scopegate_request_duration_seconds",
        SampleType::Histogram,
        &["route"],
    ),
    (
        "scopegate_upstream_duration_seconds",
        SampleType::Histogram,
        &["route"],
    ),
    (
        "scopegate_auth_failures_total",
        SampleType::Counter,
        &["route", "reason"],
    ),
    (
        "scopegate_jwks_fetches_total",
        SampleType::Counter,
        &["issuer", "result"],
    ),
    (
        "scopegate_tokens_issued_total",
        SampleType::Counter,
        &["grant_type"],
    ),
    (
        "scopegate_token_errors_total",
        SampleType::Counter,
        &["grant_type", "error"],
    ),
    (
        "scopegate_config_reloads_total",
        SampleType::Counter,
        &["result"],
    ),
    (
        "scopegate_build_info",
        SampleType::Gauge,
        &["version", "commit"],
    ),
    ("scopegate_in_flight_requests", SampleType::Gauge, &[]),
    ("scopegate_open_connections", SampleType::Gauge, &[]),
    // The standard process series, unprefixed.
    ("process_cpu_seconds_total", SampleType::Counter, &[]),
    ("process_resident_memory_bytes", SampleType::Gauge, &[]),
    ("process_virtual_memory_bytes", SampleType::Gauge, &[]),
    ("process_open_fds", SampleType::Gauge, &[]),
    ("process_max_fds", SampleType::Gauge, &[]),
    ("process_start_time_seconds", SampleType::Gauge, &[]),
    ("process_threads", SampleType::Gauge, &[]),
];

fn config(external: &str, upstream: &str, store: &str, extra_route: &str) -> String {
    format!(
        r#"{LISTEN_ANY}log: {{ format: json, level: info }}
trust:
  leeway: 5s
  issuers:
    - issuer: "{external}"
      audiences: [{AUD}]
      algorithms: [RS256]
routes:
  - name: partner
    match: {{ path: /partner/* }}
    upstream: "{upstream}"
    audience: {AUD}
    scopes: [read:contacts]
  - name: contacts
    match: {{ path: /api/contacts/* }}
    upstream: builtin:echo
    audience: {CONTACTS}
    scopes: [read:contacts]
{extra_route}issuer:
  url: https://issuer.scopegate.test/
  store: "sqlite://{store}/issuer.db"
  apis:
    - identifier: {CONTACTS}
      scopes: [{{ value: read:contacts }}]
  clients:
    - client_id: m2m
      client_secret: m2m-metrics-secret
      grant_types: [client_credentials]
      grants: {{ "{CONTACTS}": [read:contacts] }}
"#
    )
}

async fn scrape(process: &Process) -> String {
    let answer = common::issuer::get(&process.admin_url("/metrics"), None).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        answer.header("content-type")
    );
    String::from_utf8(answer.body.to_vec()).expect("UTF-8 exposition")
}

/// The value of a counter or gauge sample with exactly these labels.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && s.labels.len() == labels.len())
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => v,
            ref other => panic!("{name} is not a single value: {other:?}"),
        })
}

/// Every line of the exposition is one the parser reads (nothing is silently skipped):
/// a `# HELP`, a `# TYPE`, or a sample with a number of a family typed before it.
/// Returns each family's type.
fn every_line_parses(text: &str) -> BTreeMap<String, SampleType> {
    let mut typed: BTreeMap<String, SampleType> = BTreeMap::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } | LineInfo::Empty => {}
            LineInfo::Type {
                metric_name,
                metric_alias,
                sample_type,
            } => {
                typed.insert(metric_alias.unwrap_or(metric_name), sample_type);
            }
            LineInfo::Sample {
                metric_name, value, ..
            } => {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        metric_name
                            .strip_suffix(suffix)
                            .filter(|f| typed.get(*f) == Some(&SampleType::Histogram))
                    })
                    .unwrap_or(metric_name);
                assert!(
                    typed.contains_key(family),
                    "sample before (or without) its # TYPE: {line}"
                );
                let number = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    other => other
                        .parse::<f64>()
                        .unwrap_or_else(|_| panic!("not a number in {line}")),
                };
                assert!(!number.is_nan(), "NaN in {line}");
            }
            LineInfo::Ignored => panic!("a line no Prometheus parser would read: {line:?}"),
        }
    }
    typed
}

/// Every family the README documents is there with its type and label names; histograms have
/// sub-millisecond buckets, reach seconds, end in `+Inf` and are cumulative.
fn every_family_of_the_contract(text: &str, typed: &BTreeMap<String, SampleType>, scrape: &Scrape) {
    for (name, kind, labels) in FAMILIES {
        assert_eq!(typed.get(*name), Some(kind), "# TYPE of {name}");
        let samples: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == *name)
            .collect();
        assert!(!samples.is_empty(), "no samples of {name}:\n{text}");
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        for sample in &samples {
            let got: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
            assert_eq!(got, want, "label names of {name}: {sample:?}");
            let type_ok = matches!(
                (kind, &sample.value),
                (SampleType::Counter, Sample::Counter(_))
                    | (SampleType::Gauge, Sample::Gauge(_))
                    | (SampleType::Histogram, Sample::Histogram(_))
            );
            assert!(type_ok, "{name} parsed as {:?}", sample.value);
            if let Sample::Histogram(buckets) = &sample.value {
                let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
                assert!(
                    bounds.iter().any(|&le| le < 0.001),
                    "{name}: no sub-millisecond bucket in {bounds:?}"
                );
                assert!(
                    bounds.iter().any(|&le| (1.0..f64::INFINITY).contains(&le)),
                    "{name}: no bucket of seconds in {bounds:?}"
                );
                assert!(bounds.contains(&f64::INFINITY), "{name}: no +Inf bucket");
                let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
                assert!(
                    counts.windows(2).all(|w| w[0] <= w[1]),
                    "{name}: buckets are not cumulative: {counts:?}"
                );
            }
        }
    }
}

/// What the counters must then show: a token issued and one refused, proxy requests
/// through an upstream (3 × 200), refused (expired, missing token) and unmatched, the
/// issuer's token on a proxy route, and two reloads (one good, one refused). Returns the
/// external and the issued token (never a label).
async fn traffic(
    process: &Process,
    external: &common::Issuer,
    upstream: &str,
    store: &str,
) -> (String, String) {
    // Issuer traffic: one token issued, one refused.
    let issued = common::issuer::post_form(
        &process.url("/oauth/token"),
        &[("grant_type", "client_credentials"), ("audience", CONTACTS)],
        Some(("m2m", "m2m-metrics-secret")),
    )
    .await;
    assert_eq!(issued.status, 200, "{:?}", issued.json);
    let machine_token = issued.json["access_token"].as_str().unwrap().to_string();
    let refused = common::issuer::post_form(
        &process.url("/oauth/token"),
        &[("grant_type", "client_credentials"), ("audience", CONTACTS)],
        Some(("m2m", "not-the-secret")),
    )
    .await;
    assert_eq!(refused.status, 401);

    // Proxy traffic: through a real upstream, refused, unmatched, and the issuer's token.
    let token = rsa().token(&external.claims(json!({ "sub": "subject-never-a-label" })));
    for _ in 0..3 {
        let ok = common::issuer::get(&process.url("/partner/secret-path"), Some(&token)).await;
        assert_eq!(ok.status, 200);
    }
    let expired = rsa().token(&external.claims(json!({ "exp": common::now() - 600 })));
    let answer = common::issuer::get(&process.url("/partner/x"), Some(&expired)).await;
    assert_eq!(answer.status, 401);
    let answer = common::issuer::get(&process.url("/partner/x"), None).await;
    assert_eq!(answer.status, 401);
    let answer = common::issuer::get(&process.url("/nowhere"), None).await;
    assert_eq!(answer.status, 404);
    let answer = common::issuer::get(&process.url("/api/contacts/1"), Some(&machine_token)).await;
    assert_eq!(answer.status, 200);

    // A good reload, then a refused one.
    process.rewrite(&config(
        &external.url,
        upstream,
        store,
        "  - { name: extra, match: { path: /extra }, upstream: builtin:echo, auth: none }\n",
    ));
    process.signal("HUP");
    // Watched on the admin port, so the wait adds no proxy request to the counts.
    reload_counted(process, "the good reload is counted", "success").await;
    let answer = common::issuer::get(&process.url("/extra"), None).await;
    assert_eq!(answer.status, 200, "the reloaded config serves");
    process.rewrite("routes: [ {\n");
    process.signal("HUP");
    reload_counted(process, "the refused reload is counted", "error").await;
    (token, machine_token)
}

/// Waits until `scopegate_config_reloads_total{result}` counts at least one reload,
/// watched on the admin port (so the wait adds no proxy request to the counts).
async fn reload_counted(process: &Process, what: &str, result: &str) {
    eventually(what, async || {
        let text = scrape(process).await;
        let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let counted = value(
            &parsed,
            "scopegate_config_reloads_total",
            &[("result", result)],
        );
        counted.is_some_and(|v| v >= 1.0)
    })
    .await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_with_every_family_of_the_contract() {
    let external = common::Issuer::start(&[rsa()]).await;
    let upstream = common::Upstream::start().await;
    let dir = TempDir::new("ops-metrics");
    let store = dir.path().display().to_string();
    let text = config(&external.url, &upstream.url, &store, "");
    let process = Process::start(dir.path(), &text, &[]);
    process.wait_ready().await;

    let (token, machine_token) = traffic(&process, &external, &upstream.url, &store).await;
    let text = scrape(&process).await;

    let typed = every_line_parses(&text);
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    every_family_of_the_contract(&text, &typed, &scrape);

    // What the traffic must show.
    let build = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", env!("SCOPEGATE_COMMIT")),
    ];
    assert_eq!(value(&scrape, "scopegate_build_info", &build), Some(1.0));
    // The process series read this process: it holds memory, descriptors and threads.
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(
            value(&scrape, name, &[]).is_some_and(|v| v > 0.0),
            "{name} is positive"
        );
    }
    assert!(value(&scrape, "scopegate_in_flight_requests", &[]).is_some_and(|v| v >= 0.0));
    assert_eq!(
        value(
            &scrape,
            "scopegate_tokens_issued_total",
            &[("grant_type", "client_credentials")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "scopegate_token_errors_total",
            &[
                ("grant_type", "client_credentials"),
                ("error", "invalid_client")
            ]
        ),
        Some(1.0)
    );
    for result in ["success", "error"] {
        assert!(
            value(
                &scrape,
                "scopegate_config_reloads_total",
                &[("result", result)]
            )
            .is_some_and(|v| v >= 1.0),
            "config_reloads_total{{result={result:?}}}"
        );
    }
    assert_eq!(
        value(
            &scrape,
            "scopegate_requests_total",
            &[("route", "partner"), ("method", "GET"), ("status", "200")]
        ),
        Some(3.0)
    );
    for (route, reason) in [("partner", "expired"), ("partner", "missing_token")] {
        assert_eq!(
            value(
                &scrape,
                "scopegate_auth_failures_total",
                &[("route", route), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}"
        );
    }
    assert_eq!(
        value(
            &scrape,
            "scopegate_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &scrape,
            "scopegate_requests_total",
            &[("route", "issuer"), ("method", "POST"), ("status", "200")]
        )
        .is_some_and(|v| v >= 1.0)
    );
    assert!(
        value(
            &scrape,
            "scopegate_jwks_fetches_total",
            &[("issuer", external.url.as_str()), ("result", "success")]
        )
        .is_some_and(|v| v >= 1.0)
    );
    let upstream_count = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "scopegate_upstream_duration_seconds_count"
                && s.labels.get("route") == Some("partner")
        })
        .map(|s| s.value.clone());
    assert_eq!(upstream_count, Some(Sample::Untyped(3.0)));
    // Labels never carry a path, a subject or a token.
    for sample in &scrape.samples {
        for value in sample.labels.values() {
            for never in [
                "/partner/secret-path",
                "subject-never-a-label",
                token.as_str(),
                machine_token.as_str(),
            ] {
                assert!(!value.contains(never), "{never:?} in a label: {sample:?}");
            }
        }
    }

    let (status, _) = process.stop().await;
    assert_eq!(status.code(), Some(0));
    drop(dir);
}
