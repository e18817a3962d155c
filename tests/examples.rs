//! Every recipe in `examples/` passes `scopegate check` (the real binary) and has the
//! routes it promises. `check` compiles the config as `run` would without opening the
//! issuer's store or fetching any key, so no identity provider needs to be reachable.

use std::path::Path;
use std::process::Command;

/// The secrets the built-in issuer's recipe takes from the environment.
const ENV: [(&str, &str); 2] = [
    ("ORDERS_SYNC_SECRET", "a-long-enough-test-secret"),
    (
        "ADMIN_PASSWORD_HASH",
        "$argon2id$v=19$m=19456,t=2,p=1$Sey33Law2smPDKMXM0gApQ$56lNDyuMtjfbVtprtVHruu3iIByQCZJ5fXYeSv9nJ4A",
    ),
];

/// Runs `scopegate check` on `examples/<name>` and returns the route table.
fn check(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .arg("check")
        .arg("-c")
        .arg(&path)
        .envs(ENV)
        // Not the caller's: the recipe's own default must do.
        .env_remove("SCOPEGATE_DATABASE_URL")
        .output()
        .expect("scopegate runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("NAME"),
        "{name}: no route table: {stdout}"
    );
    stdout
}

/// The route names of a route table, in order.
fn routes(table: &str) -> Vec<&str> {
    table
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with("built-in issuer") && !line.contains(" route(s)"))
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

#[test]
fn auth0() {
    let table = check("auth0.yaml");
    assert_eq!(routes(&table), ["orders-read", "orders-write", "health"]);
    assert!(
        table.contains("[aud https://orders.example.com]"),
        "{table}"
    );
    assert!(table.contains("1 trusted issuer(s)"), "{table}");
}

#[test]
fn okta() {
    let table = check("okta.yaml");
    assert_eq!(routes(&table), ["orders-read", "orders-write"]);
    assert!(table.contains("1 trusted issuer(s)"), "{table}");
}

#[test]
fn keycloak() {
    let table = check("keycloak.yaml");
    assert_eq!(routes(&table), ["orders-read", "orders-admin"]);
    assert!(
        table.contains("[http://orders-0.orders:8080, http://orders-1.orders:8080]"),
        "{table}"
    );
}

#[test]
fn entra_id() {
    let table = check("entra-id.yaml");
    assert_eq!(routes(&table), ["orders-read", "orders-write"]);
    assert!(
        table.contains("one of (Orders.Read Orders.Sync)"),
        "{table}"
    );
    // v1 and v2 issuers.
    assert!(table.contains("2 trusted issuer(s)"), "{table}");
}

#[test]
fn google() {
    let table = check("google.yaml");
    assert_eq!(routes(&table), ["orders"]);
    assert!(
        table.contains("[aud https://orders.example.com]"),
        "{table}"
    );
}

#[test]
fn builtin_issuer() {
    let table = check("builtin-issuer.yaml");
    assert_eq!(routes(&table), ["orders-read", "orders-write"]);
    assert!(
        table.contains("built-in issuer https://api.example.com/"),
        "{table}"
    );
}

#[test]
fn every_recipe_is_tested() {
    let mut names: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
            .expect("examples/")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".yaml"))
            .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "auth0.yaml",
            "builtin-issuer.yaml",
            "entra-id.yaml",
            "google.yaml",
            "keycloak.yaml",
            "okta.yaml"
        ],
        "a new recipe needs a test here"
    );
}
