//! Descriptor exhaustion, against the real binary run with a small `ulimit -n`:
//! - with the default `max_connections` (derived from the limit, with a reserve) a flood
//!   of idle connections never starves the admin listener or upstream connections;
//! - with a `max_connections` above what the limit allows, accepting fails (EMFILE): the
//!   gateway backs off, keeps serving the connections it has, logs one warning a second
//!   with the count of the others, and serves new clients once descriptors free up.

mod common;

use std::time::Duration;

use common::issuer::TempDir;
use common::process::Process;
use common::{eventually, get, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NOFILE: u32 = 64;
/// Connections a flood opens: more than the descriptors, fewer than a listen backlog
/// (the kernel drops SYNs beyond it, and the client's connect would time out).
const FLOOD: usize = 120;

fn config(server_extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  timeouts: {{ client_header: 10m, idle: 10m }}\n{server_extra}log: {{ format: json, level: info }}\nroutes:\n  - {{ name: echo, match: {{ path: /echo }}, upstream: builtin:echo, auth: none }}\n"
    )
}

/// Opens `count` connections that send nothing (the gateway may leave some in its
/// backlog).
async fn idle_connections(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(TcpStream::connect(addr).await.expect("connect"));
    }
    out
}

/// One request on an open keep-alive connection; the status line.
async fn request_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
        .await
        .expect("no answer on the open connection")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_default_cap_keeps_descriptors_for_the_admin_listener() {
    let dir = TempDir::new("fd-default");
    let gw = Process::start_with_fd_limit(dir.path(), &config(""), &[], NOFILE);
    let flood = idle_connections(gw.addr, FLOOD).await;
    let admin = gw.admin;
    eventually(
        "the admin listener answers during the flood",
        || async move { get(admin, "/healthz", &[]).await.status == 200 },
    )
    .await;
    // The flood sits in the accept queue until the gateway takes what its cap allows.
    let open = async move || {
        let text = get(admin, "/metrics", &[]).await.text();
        metric(&text, "scopegate_open_connections", &[])
    };
    eventually("the gateway accepts part of the flood", async || {
        open().await > 0.0
    })
    .await;
    let open = open().await;
    assert!(
        open * 2.0 < f64::from(NOFILE),
        "open_connections {open} with ulimit -n {NOFILE}"
    );
    drop(flood);
    let addr = gw.addr;
    eventually(
        "a new client is served once the flood is gone",
        || async move { get(addr, "/echo", &[]).await.status == 200 },
    )
    .await;
}

#[tokio::test]
async fn accepting_survives_running_out_of_descriptors() {
    let dir = TempDir::new("fd-emfile");
    let gw = Process::start_with_fd_limit(
        dir.path(),
        &config("  max_connections: 10000\n"),
        &[],
        NOFILE,
    );
    let mut kept = TcpStream::connect(gw.addr).await.expect("connect");
    assert_eq!(request_on(&mut kept).await, "HTTP/1.1 200 OK");

    let flood = idle_connections(gw.addr, FLOOD).await;
    eventually("accepting fails for want of descriptors", || async {
        gw.lines().iter().any(|l| l.contains("accept failed"))
    })
    .await;
    // The connection it already had is still served.
    assert_eq!(request_on(&mut kept).await, "HTTP/1.1 200 OK");
    // Repeated failures are summed up, not logged one by one.
    eventually("a warning counts the suppressed ones", || async {
        gw.json_lines().iter().any(|l| {
            l["message"] == "accept failed; backing off"
                && l["suppressed"].as_u64().is_some_and(|n| n > 0)
        })
    })
    .await;

    drop(flood);
    let addr = gw.addr;
    eventually(
        "new clients are served once descriptors free up",
        || async move { get(addr, "/echo", &[]).await.status == 200 },
    )
    .await;
}
