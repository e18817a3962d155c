//! `scopegate check` and `scopegate run` go through the same compile step
//! (`State::compile`), so `check` refuses whatever `run` would: files the config names
//! (TLS certificate and key, an extra CA), the key-encryption key's length, header names.
//! Each case runs both commands as processes and expects both to refuse it, naming the
//! same key; and every config in the repository passes `check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scopegate"))
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("scopegate-check-run-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, text.replace("{DIR}", &dir.display().to_string())).unwrap();
    path
}

/// Runs `scopegate <command> -c path` with `env` and waits at most 60 s (a `run` that
/// is not refused would serve forever: it is killed and reported).
fn scopegate(command: &str, path: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = bin();
    cmd.arg(command)
        .arg("-c")
        .arg(path)
        .env_remove("SCOPEGATE_KEY_ENCRYPTION_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`scopegate {command}` did not refuse the config: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LISTEN: &str = "server:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n";
const ROUTE: &str =
    "routes:\n  - { name: a, match: { path: /a }, upstream: builtin:echo, auth: none }\n";

struct Case {
    name: &'static str,
    yaml: String,
    env: Vec<(&'static str, &'static str)>,
    /// The key path the error must name.
    key: &'static str,
}

fn cases() -> Vec<Case> {
    let issuer = "issuer:\n  enabled: true\n  url: http://127.0.0.1:8080/\n  store: sqlite://{DIR}/issuer.db\n";
    vec![
        Case {
            name: "tls-cert-missing",
            yaml: format!(
                "{LISTEN}  tls: {{ cert_file: /nonexistent/cert.pem, key_file: /nonexistent/key.pem }}\n{ROUTE}"
            ),
            env: vec![],
            key: "server.tls.cert_file",
        },
        Case {
            name: "upstream-ca-missing",
            yaml: format!("{LISTEN}  upstream_ca_file: /nonexistent/ca.pem\n{ROUTE}"),
            env: vec![],
            key: "server.upstream_ca_file",
        },
        Case {
            name: "key-encryption-too-short",
            yaml: format!("{LISTEN}{ROUTE}{issuer}"),
            env: vec![("SCOPEGATE_KEY_ENCRYPTION_KEY", "00112233")],
            key: "SCOPEGATE_KEY_ENCRYPTION_KEY",
        },
        Case {
            name: "key-encryption-not-hex-or-base64",
            yaml: format!("{LISTEN}{ROUTE}{issuer}"),
            env: vec![("SCOPEGATE_KEY_ENCRYPTION_KEY", "not a key!")],
            key: "SCOPEGATE_KEY_ENCRYPTION_KEY",
        },
    ]
}

#[test]
fn check_refuses_what_run_refuses_and_names_the_key() {
    for case in cases() {
        let path = temp_config(case.name, &case.yaml);
        for command in ["check", "run"] {
            let out = scopegate(command, &path, &case.env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{}: `{command}` accepted it: {stderr}",
                case.name
            );
            assert!(
                stderr.contains(case.key),
                "{}: `{command}` does not name {}: {stderr}",
                case.name,
                case.key
            );
        }
    }
}

#[test]
fn check_prints_every_problem_once() {
    let path = temp_config(
        "two-problems",
        &format!(
            "{LISTEN}  upstream_ca_file: /nonexistent/ca.pem\n  tls: {{ cert_file: /nonexistent/cert.pem, key_file: /nonexistent/key.pem }}\n{ROUTE}"
        ),
    );
    let out = scopegate("check", &path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    for key in ["server.upstream_ca_file", "server.tls.cert_file"] {
        assert_eq!(stderr.matches(key).count(), 1, "{key}: {stderr}");
    }
}

#[test]
fn the_repository_configs_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = scopegate("check", &root.join("gateway.yaml"), &[]);
    assert!(
        out.status.success(),
        "gateway.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The compose demo's config takes its secrets from the environment.
    let out = scopegate(
        "check",
        &root.join("deploy/compose/gateway.yaml"),
        &[
            (
                "SCOPEGATE_DATABASE_URL",
                "postgres://scopegate@db/scopegate",
            ),
            ("DEMO_WEB_SECRET", "compose-demo-secret"),
            ("DEMO_SERVICE_SECRET", "compose-demo-secret"),
        ],
    );
    assert!(
        out.status.success(),
        "deploy/compose/gateway.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
