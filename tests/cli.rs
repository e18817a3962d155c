//! The `scopegate` command line: `check` and `hash-password`, run as a process.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scopegate"))
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scopegate-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_prints_the_route_table_of_the_demo_config() {
    let out = bin()
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("NAME"), "no table header: {stdout}");
    assert!(stdout.contains("builtin:echo"), "{stdout}");
}

#[test]
fn check_names_file_key_path_and_line() {
    let path = temp_file(
        "badpath",
        "routes:\n  - name: a\n    match: { path: /a }\n    upstream: builtin:echo\n    auth: none\n  - name: b\n    match: { path: 'b/*' }\n    upstream: builtin:echo\n    auth: none\n",
    );
    let out = bin().arg("check").arg("-c").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gateway.yaml"), "no file name: {stderr}");
    assert!(
        stderr.contains("routes[1].match.path"),
        "no key path: {stderr}"
    );

    let path = temp_file("unknown", "server:\n  listen: 127.0.0.1:8080\n  lisen: 1\n");
    let out = bin().arg("check").arg("-c").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("server.lisen"), "{stderr}");
    assert!(
        stderr.contains("gateway.yaml:3"),
        "no line number: {stderr}"
    );
}

#[test]
fn check_refuses_a_missing_file_and_an_unset_variable() {
    let out = bin()
        .args(["check", "-c", "/nonexistent/gateway.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    let path = temp_file(
        "env",
        "routes:\n  - { name: a, match: { path: /a }, upstream: '${SCOPEGATE_TEST_SURELY_UNSET}', auth: none }\n",
    );
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env_remove("SCOPEGATE_TEST_SURELY_UNSET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SCOPEGATE_TEST_SURELY_UNSET"));
}

#[test]
fn config_comes_from_the_environment_variable() {
    let path = temp_file(
        "envcfg",
        "routes:\n  - { name: from-env, match: { path: /a }, upstream: builtin:echo, auth: none }\n",
    );
    let out = bin()
        .arg("check")
        .env("SCOPEGATE_CONFIG", &path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-env"));
}

#[test]
fn hash_password_prints_a_verifiable_argon2id_hash() {
    use argon2::password_hash::PasswordVerifier;
    use argon2::password_hash::phc::PasswordHash;

    let mut child = bin()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim_end();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let parsed = PasswordHash::new(hash).unwrap();
    // The trailing newline is not part of the password.
    assert!(
        argon2::Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"correct horse\n", &parsed)
            .is_err()
    );
}
