//! The real `scopegate` binary as a child process: `scopegate run -c FILE` with a config
//! that listens on `127.0.0.1:0` and logs JSON; the addresses it bound are read from its
//! `scopegate serving` log line. Its stderr is captured line by line for the whole run.
//!
//! The child is killed on drop; [`Process::stop`] ends it with SIGTERM instead and
//! waits until its stderr is read to the end, so a test can scan every line it wrote.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

/// The start of a config for [`Process::start`]: the `server:` map with both listeners
/// on ephemeral ports (more `server:` keys may follow, indented).
pub const LISTEN_ANY: &str = "server:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n";

/// A running `scopegate run`.
pub struct Process {
    child: Option<Child>,
    pid: u32,
    /// The proxy (and issuer) listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Process {
    /// Writes `config` to `dir/gateway.yaml` and starts the binary on it with `env` added
    /// (and `RUST_LOG`, `SCOPEGATE_CONFIG`, `SCOPEGATE_KEY_ENCRYPTION_KEY` removed unless
    /// given). `config` must set `listen: 127.0.0.1:0`, `admin_listen: 127.0.0.1:0` and
    /// `log: { format: json }`. Blocks until the process says it serves (it may have to
    /// generate keys and migrate its store first).
    pub fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Process {
        Process::launch(dir, config, env, None)
    }

    /// [`Process::start`] with the descriptor limit (`ulimit -n`) set to `nofile`.
    pub fn start_with_fd_limit(
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
        nofile: u32,
    ) -> Process {
        Process::launch(dir, config, env, Some(nofile))
    }

    fn launch(dir: &Path, config: &str, env: &[(&str, &str)], nofile: Option<u32>) -> Process {
        let path = dir.join("gateway.yaml");
        std::fs::write(&path, config).expect("write the config");
        let bin = env!("CARGO_BIN_EXE_scopegate");
        let mut command = match nofile {
            None => Command::new(bin),
            // `exec` keeps the pid, so signals still reach scopegate itself.
            Some(nofile) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
                    .arg(bin);
                shell
            }
        };
        command
            .arg("run")
            .arg("-c")
            .arg(&path)
            .env_remove("RUST_LOG")
            .env_remove("SCOPEGATE_CONFIG")
            .env_remove("SCOPEGATE_KEY_ENCRYPTION_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start scopegate");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("scopegate serving") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().expect("lock").push(line);
            }
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!(
                "scopegate did not start:\n{}",
                lines.lock().expect("lock").join("\n")
            );
        };
        let json: Value = serde_json::from_str(&line).expect("a JSON log line");
        let addr = |name: &str| -> SocketAddr {
            json[name]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        Process {
            addr: addr("listen"),
            admin: addr("admin_listen"),
            pid: child.id(),
            child: Some(child),
            config: path,
            lines,
            reader: Some(reader),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let url = self.admin_url("/readyz");
        super::eventually("the process is ready (/readyz 200)", async || {
            super::issuer::get(&url, None).await.status == 200
        })
        .await;
    }

    /// The process id.
    #[allow(dead_code)] // not every test binary looks into /proc
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a signal (`TERM`, `HUP`...) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Replaces the config file (write, then rename, as editors and Kubernetes do).
    pub fn rewrite(&self, config: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, config).expect("write the config");
        std::fs::rename(&tmp, &self.config).expect("replace the config");
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    /// Every stderr line so far parsed as JSON (lines that are not JSON are skipped).
    pub fn json_lines(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGTERM, then waits for the exit and for the last line of stderr. Returns the
    /// exit status and everything the process wrote to stderr.
    pub async fn stop(self) -> (ExitStatus, String) {
        self.signal("TERM");
        self.wait().await
    }

    /// Waits for the process to exit (after a signal the test sent) and for the last
    /// line of stderr. Returns the exit status and everything it wrote to stderr.
    pub async fn wait(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let reader = self.reader.take();
        let status = tokio::task::spawn_blocking(move || {
            let status = child.wait().expect("wait for scopegate");
            if let Some(reader) = reader {
                let _ = reader.join();
            }
            status
        })
        .await
        .expect("join");
        (status, self.lines().join("\n"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
