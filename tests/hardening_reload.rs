//! The config watcher reacts to the config file (and Kubernetes' `..data` swap) only,
//! and its debounce is bounded: another file in the folder written every ~50 ms (the
//! gateway's own log, as in `scopegate run > gateway.log`) used to postpone the reload
//! forever, and so did the config file itself when rewritten faster than the debounce.
//! The real gateway serves HTTP from a config file; the test waits for the new route.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use scopegate::config::Config;
use scopegate::state::Gateway;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn yaml(route: &str) -> String {
    format!(
        "routes:\n  - {{ name: {route}, match: {{ path: /{route} }}, upstream: builtin:echo, auth: none }}\n"
    )
}

/// A fresh folder for one test.
fn folder(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("scopegate-{test}")));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

struct Running {
    addr: std::net::SocketAddr,
    _gateway: Arc<Gateway>,
    _watcher: notify::RecommendedWatcher,
    _server: JoinHandle<std::io::Result<()>>,
}

/// The gateway from the config file at `path`, served and watched.
async fn start(path: &Path) -> Running {
    let text = std::fs::read_to_string(path).expect("config");
    let config = Config::from_yaml(&text).expect("config parses");
    let gateway = Gateway::start(config, Some(path.to_path_buf()))
        .await
        .expect("gateway");
    let watcher =
        scopegate::reload::watch(gateway.clone(), path, Some(text.into_bytes())).expect("watch");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(scopegate::serve(
        listener,
        gateway.clone(),
        std::future::pending(),
    ));
    Running {
        addr,
        _gateway: gateway,
        _watcher: watcher,
        _server: server,
    }
}

/// Calls `write(n)` every 50 ms (n = 1, 2, …) until aborted.
fn every_50ms(mut write: impl FnMut(u64) + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for n in 1u64.. {
            tick.tick().await;
            write(n);
        }
    })
}

/// Appends a line to `file` every 50 ms until aborted.
fn scribble(file: PathBuf) -> JoinHandle<()> {
    every_50ms(move |n| {
        let mut text = std::fs::read(&file).unwrap_or_default();
        text.extend_from_slice(format!("log line {n}\n").as_bytes());
        let _ = std::fs::write(&file, text);
    })
}

/// A fresh folder for `test` whose `gateway.yaml` serves `/first`, and the gateway
/// watching it.
async fn start_first(test: &str) -> (PathBuf, PathBuf, Running) {
    let dir = folder(test);
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml("first")).expect("write");
    let gw = start(&path).await;
    (dir, path, gw)
}

async fn serves(addr: std::net::SocketAddr, path: &str) -> bool {
    get(addr, path, &[]).await.status == 200
}

#[tokio::test]
async fn a_log_file_written_every_50ms_beside_the_config_does_not_starve_the_reload() {
    let (dir, path, gw) = start_first("log").await;
    assert!(serves(gw.addr, "/first").await);
    let log = scribble(dir.join("gateway.log"));

    std::fs::write(&path, yaml("second")).expect("write");
    eventually(
        "the changed config is served while the log is written",
        || serves(gw.addr, "/second"),
    )
    .await;
    assert_eq!(get(gw.addr, "/first", &[]).await.status, 404);
    log.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_config_rewritten_faster_than_the_debounce_is_still_reloaded() {
    let (dir, path, gw) = start_first("busy").await;
    // Rewrite the config every 50 ms, each time with a new comment: events never stop.
    let writer = {
        let path = path.clone();
        every_50ms(move |n| {
            let _ = std::fs::write(&path, format!("# revision {n}\n{}", yaml("second")));
        })
    };
    eventually("the config is reloaded while it keeps changing", || {
        serves(gw.addr, "/second")
    })
    .await;
    writer.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// How Kubernetes updates a mounted ConfigMap: the file is a link through `..data`,
/// which is swapped for a link to a new timestamped folder by a rename.
#[cfg(unix)]
#[tokio::test]
async fn a_kubernetes_configmap_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let dir = folder("k8s");
    let first = dir.join("..2026_01_01_00_00_00.1");
    std::fs::create_dir_all(&first).expect("dir");
    std::fs::write(first.join("gateway.yaml"), yaml("first")).expect("write");
    symlink("..2026_01_01_00_00_00.1", dir.join("..data")).expect("link");
    symlink("..data/gateway.yaml", dir.join("gateway.yaml")).expect("link");
    let path = dir.join("gateway.yaml");
    let gw = start(&path).await;
    assert!(serves(gw.addr, "/first").await);
    let log = scribble(dir.join("gateway.log"));

    let second = dir.join("..2026_01_01_00_01_00.2");
    std::fs::create_dir_all(&second).expect("dir");
    std::fs::write(second.join("gateway.yaml"), yaml("second")).expect("write");
    symlink("..2026_01_01_00_01_00.2", dir.join("..data_tmp")).expect("link");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap");
    eventually("the swapped ConfigMap is served", || {
        serves(gw.addr, "/second")
    })
    .await;
    log.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
