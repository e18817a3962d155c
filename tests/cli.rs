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

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    let commit = env!("SCOPEGATE_COMMIT");
    assert!(!commit.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("scopegate {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

/// A terminal session through `script(1)`'s pseudo-terminal: each answer is typed only
/// after its prompt appeared, and the terminal shows prompts, never the password.
struct Terminal {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
    /// Where the shell inside the pseudoterminal writes its `tty` name.
    tty_file: PathBuf,
}

impl Terminal {
    fn run(name: &str, command: &str) -> Terminal {
        let tty_file =
            std::env::temp_dir().join(format!("scopegate-cli-{}-{name}.tty", std::process::id()));
        let _ = std::fs::remove_file(&tty_file);
        let shell = format!("tty > {}; exec {command}", tty_file.display());
        let mut child = Command::new("script")
            .args(["-qec", &shell, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            child,
            stdin,
            output,
            seen: String::new(),
            tty_file,
        }
    }

    /// Waits until the program has turned echo off on its terminal. A prompt is
    /// printed before the terminal mode changes, so typing on the prompt alone
    /// races the program (a person never types that fast; a test does).
    fn wait_for_echo_off(&mut self) {
        for _ in 0..3000 {
            let tty = std::fs::read_to_string(&self.tty_file).unwrap_or_default();
            let tty = tty.trim();
            if tty.starts_with("/dev/") {
                let modes = Command::new("stty").args(["-F", tty, "-a"]).output();
                if let Ok(modes) = modes {
                    let modes = String::from_utf8_lossy(&modes.stdout).into_owned();
                    if modes.split_whitespace().any(|mode| mode == "-echo") {
                        return;
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("echo never turned off; the terminal showed {:?}", self.seen);
    }

    /// Waits until the terminal has shown `text` (a hang guard, not a timing assertion).
    fn wait_for(&mut self, text: &str) {
        while !self.seen.contains(text) {
            let chunk = self
                .output
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("never saw {text:?} in {:?}", self.seen));
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        self.stdin.flush().unwrap();
    }

    fn finish(mut self) -> (bool, String) {
        drop(self.stdin);
        let status = self.child.wait().unwrap();
        let _ = std::fs::remove_file(&self.tty_file);
        while let Ok(chunk) = self.output.recv_timeout(std::time::Duration::from_secs(30)) {
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        (status.success(), self.seen)
    }
}

#[test]
fn hash_password_at_a_terminal_asks_twice_without_echo() {
    let command = format!("{} hash-password", env!("CARGO_BIN_EXE_scopegate"));
    let mut terminal = Terminal::run("same", &command);
    terminal.wait_for("Password: ");
    terminal.wait_for_echo_off();
    terminal.type_line("tr0ub4dor&3");
    terminal.wait_for("Password (again): ");
    terminal.wait_for_echo_off();
    terminal.type_line("tr0ub4dor&3");
    let (ok, shown) = terminal.finish();
    assert!(ok, "{shown}");
    assert!(shown.contains("$argon2id$"), "{shown}");
    assert!(
        !shown.contains("tr0ub4dor"),
        "the password was echoed: {shown}"
    );

    let mut terminal = Terminal::run("differ", &command);
    terminal.wait_for("Password: ");
    terminal.wait_for_echo_off();
    terminal.type_line("first-try");
    terminal.wait_for("Password (again): ");
    terminal.wait_for_echo_off();
    terminal.type_line("second-try");
    let (ok, shown) = terminal.finish();
    assert!(!ok, "{shown}");
    assert!(shown.contains("the two passwords differ"), "{shown}");
    assert!(
        !shown.contains("$argon2id$") && !shown.contains("-try"),
        "{shown}"
    );
}
