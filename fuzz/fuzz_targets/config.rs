//! `gateway.yaml`: `${VAR}` expansion, YAML parsing into the serde types, validation
//! (`config::Config::from_yaml_with_env` with a fixed environment), and for a config that
//! loads, `state::State::compile` (trusted issuers, forward headers, routes and the
//! router; the built-in issuer is left out, as its store is I/O), then a few look-ups on
//! the compiled router.
//!
//! Kept cheap and hermetic: `SSL_CERT_FILE`/`SSL_CERT_DIR` point at an empty file and
//! folder, so the upstream TLS client config does not read the system's certificate
//! store on every input; configs naming files (`server.tls`, `server.upstream_ca_file`)
//! stop after validation. Nothing is started, so nothing touches the network.
//!
//! Invariants besides "no panic": a config that loads validates again; one that
//! compiles has a route table that names every route.

#![no_main]

use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use scopegate::clock::Clock;
use scopegate::config::Config;
use scopegate::metrics::Metrics;
use scopegate::pipeline::router::normalize_path;
use scopegate::state::{Builtin, Shared, State};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    shared: Shared,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("scopegate-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("no-roots.pem");
        std::fs::write(&empty, b"").expect("empty roots file");
        // SAFETY: runs once, in the fuzz target's first call, before this process starts
        // any other thread (the runtime below is built afterwards).
        unsafe {
            std::env::set_var("SSL_CERT_FILE", &empty);
            std::env::set_var("SSL_CERT_DIR", &dir);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Shared::new(Metrics::new(), Clock::system()).expect("shared");
        Fixture { runtime, shared }
    })
}

/// A fixed environment: a few set variables, one empty, everything else unset.
fn env(name: &str) -> Option<String> {
    match name {
        "DEMO_M2M_SECRET" => Some("fuzz-m2m-secret".into()),
        "UPSTREAM" => Some("http://127.0.0.1:9".into()),
        "PORT" => Some("8080".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let Ok(config) = Config::from_yaml_with_env(text, env) else {
        return;
    };
    config.validate().expect("a loaded config validates again");
    if config.server.tls.is_some() || config.server.upstream_ca_file.is_some() {
        return;
    }
    let routes = config.routes.len();
    let names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
    let _guard = f.runtime.enter();
    let Ok(state) = State::compile(config, &f.shared, None, Builtin::Absent) else {
        return;
    };
    let table = state.route_table();
    for name in &names {
        assert!(table.contains(name.as_str()), "route {name:?} missing from the table");
    }
    assert!(state.pipeline.routes.len() >= routes);
    for route in state.pipeline.routes.iter() {
        if let Ok(path) = normalize_path(&route.path) {
            let _ = state.pipeline.router.lookup(&path, &Method::GET);
        }
    }
});
