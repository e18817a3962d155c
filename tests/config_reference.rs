//! The configuration contract stays true mechanically:
//! - `docs/gateway.schema.json` is what `scopegate schema` prints (it cannot go stale);
//! - every key of the schema has a row in `docs/configuration.md`, every row names a key
//!   that exists, and a row's default and "required" agree with the code;
//! - every gateway config in the repository fits the schema.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    let full = Path::new(ROOT).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

fn committed_schema() -> Value {
    serde_json::from_str(&read("docs/gateway.schema.json")).expect("the schema file is JSON")
}

#[test]
fn the_committed_schema_is_what_scopegate_schema_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .arg("schema")
        .output()
        .expect("scopegate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        printed == read("docs/gateway.schema.json"),
        "docs/gateway.schema.json is stale; regenerate it with\n  cargo run -q -- schema > docs/gateway.schema.json"
    );
    let schema: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "the validator below and the docs assume draft 2020-12"
    );
}

/// One key of the file: its dotted path (`routes[].rate_limit.burst`), its property
/// schema (where `default` sits) and whether its object requires it.
struct Key {
    path: String,
    property: Value,
    required: bool,
}

/// Every key path the schema allows, in schema order.
fn keys(schema: &Value) -> Vec<Key> {
    let mut out = Vec::new();
    walk(schema, schema, "", &mut out);
    out
}

fn resolve<'s>(root: &'s Value, node: &'s Value) -> &'s Value {
    match node["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/$defs/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            resolve(root, &root["$defs"][name])
        }
        None => node,
    }
}

fn walk(root: &Value, node: &Value, path: &str, out: &mut Vec<Key>) {
    let node = resolve(root, node);
    for alternatives in ["anyOf", "oneOf", "allOf"] {
        for alternative in node[alternatives].as_array().into_iter().flatten() {
            walk(root, alternative, path, out);
        }
    }
    if let Some(properties) = node["properties"].as_object() {
        let required: Vec<&str> = node["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (name, property) in properties {
            let key = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            out.push(Key {
                path: key.clone(),
                property: property.clone(),
                required: required.contains(&name.as_str()),
            });
            walk(root, property, &key, out);
        }
    }
    if node["items"].is_object() {
        walk(root, &node["items"], &format!("{path}[]"), out);
    }
}

/// The reference's table rows by key: a row is a Markdown table line whose first cell
/// names one or more keys in backticks; the value is the row's cells.
fn documented_rows(markdown: &str) -> BTreeMap<String, Vec<String>> {
    let mut rows = BTreeMap::new();
    for line in markdown.lines() {
        let Some(inner) = line.trim().strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<String> = split_cells(&format!("`{inner}"));
        let first = &cells[0];
        for (index, part) in first.split('`').enumerate() {
            if index % 2 == 1 {
                let previous = rows.insert(part.to_string(), cells.clone());
                assert!(previous.is_none(), "{part} has two rows");
            }
        }
    }
    rows
}

/// Splits a table line on `|` that are not escaped as `\|`.
fn split_cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut escaped = false;
    for c in line.chars() {
        match c {
            '|' if !escaped => cells.push(String::new()),
            _ => {
                if let Some(cell) = cells.last_mut() {
                    cell.push(c);
                }
            }
        }
        escaped = c == '\\';
    }
    let mut cells: Vec<String> = cells.into_iter().map(|c| c.trim().to_string()).collect();
    if cells.last().is_some_and(String::is_empty) {
        cells.pop();
    }
    cells
}

/// A default as the reference writes it, in YAML flow style.
fn yaml_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(yaml_of).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) if map.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

#[test]
fn every_key_is_in_the_reference_and_every_row_is_a_key() {
    let schema = committed_schema();
    let keys = keys(&schema);
    let markdown = read("docs/configuration.md");
    let rows = documented_rows(&markdown);
    let mut problems = Vec::new();
    for key in &keys {
        let Some(cells) = rows.get(&key.path) else {
            problems.push(format!(
                "`{}` has no row in docs/configuration.md",
                key.path
            ));
            continue;
        };
        // | key | type | default | what it does |
        let default_cell = cells.get(2).map(String::as_str).unwrap_or_default();
        if key.required && !default_cell.contains("required") {
            problems.push(format!(
                "`{}` is required; its row's default cell should say so: {default_cell:?}",
                key.path
            ));
        }
        if let Some(default) = key.property.get("default")
            && !default.is_null()
        {
            let written = format!("`{}`", yaml_of(default));
            if !default_cell.contains(&written) {
                problems.push(format!(
                    "`{}` defaults to {written} in the code; its row says {default_cell:?}",
                    key.path
                ));
            }
        }
    }
    for key in rows.keys() {
        if !keys.iter().any(|k| &k.path == key) {
            problems.push(format!(
                "docs/configuration.md has a row for `{key}`, which is not a key of gateway.yaml"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_walk_finds_nested_list_keys() {
    let keys = keys(&committed_schema());
    for expected in [
        "server.tls.cert_file",
        "trust.issuers[].scope_claims",
        "routes[].rate_limit.burst",
        "routes[].cors.allow_origins",
        "cors.max_age",
        "issuer.apis[].scopes[].value",
        "issuer.users[].password_hash",
    ] {
        assert!(keys.iter().any(|k| k.path == expected), "{expected}");
    }
}

/// Every gateway config file in the repository, with its YAML text.
fn repository_configs() -> Vec<(PathBuf, String)> {
    let mut configs = Vec::new();
    for path in [
        "gateway.yaml",
        "deploy/compose/gateway.yaml",
        "fuzz/corpus/config/seed-gateway.yaml",
    ] {
        configs.push((PathBuf::from(path), read(path)));
    }
    // The gateway.yaml inside the Kubernetes ConfigMap.
    let configmap: Value =
        serde_norway::from_str(&read("deploy/kubernetes/configmap.yaml")).expect("YAML");
    let text = configmap["data"]["gateway.yaml"]
        .as_str()
        .expect("the ConfigMap holds gateway.yaml");
    configs.push((
        PathBuf::from("deploy/kubernetes/configmap.yaml#gateway.yaml"),
        text.to_string(),
    ));
    let mut examples: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .expect("examples/")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 6, "examples/*.yaml: {examples:?}");
    for path in examples {
        let text = std::fs::read_to_string(&path).expect("readable");
        configs.push((path, text));
    }
    configs
}

/// The schema, compiled by an independent validator.
fn validator() -> (boon::Schemas, boon::SchemaIndex) {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let url = "file:///docs/gateway.schema.json";
    compiler
        .add_resource(url, committed_schema())
        .expect("the schema loads");
    let index = compiler
        .compile(url, &mut schemas)
        .unwrap_or_else(|err| panic!("the schema compiles: {err}"));
    (schemas, index)
}

#[test]
fn every_config_in_the_repository_fits_the_schema() {
    let (schemas, index) = validator();
    let mut problems = Vec::new();
    for (path, text) in repository_configs() {
        // The document as an editor sees it: `${VAR}` unexpanded.
        let document: Value = serde_norway::from_str(&text)
            .unwrap_or_else(|err| panic!("{}: not YAML: {err}", path.display()));
        if let Err(err) = schemas.validate(&document, index) {
            problems.push(format!("{}: {err:#}", path.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn the_schema_refuses_what_the_loader_refuses() {
    let (schemas, index) = validator();
    for (text, why) in [
        ("server: { lisen: 127.0.0.1:8080 }", "an unknown key"),
        (
            "server: { timeouts: { idle: 30 } }",
            "a duration without a unit",
        ),
        (
            "routes: [{ name: a, match: { path: /a } }]",
            "a route without an upstream",
        ),
        (
            "routes: [{ name: a, match: { path: a }, upstream: builtin:echo }]",
            "a path without a leading slash",
        ),
        (
            "routes: [{ name: a, match: { path: /a }, upstream: builtin:echo, max_body: 10MB }]",
            "a decimal size unit",
        ),
        (
            "routes: [{ name: a, match: { path: /a }, upstream: builtin:echo, rate_limit: { key: sub, requests: 1, per: 1s } }]",
            "an unknown rate limit key",
        ),
        ("cors: true", "cors: true"),
        (
            "trust: { issuers: [{ issuer: https://x/, audiences: [a], algorithms: [HS256] }] }",
            "a symmetric algorithm",
        ),
        (
            "issuer: { url: https://x/, clients: [{ client_id: c, grant_types: [magic] }] }",
            "an unknown grant type",
        ),
    ] {
        let document: Value = serde_norway::from_str(text).expect("YAML");
        assert!(
            schemas.validate(&document, index).is_err(),
            "the schema took {why}: {text}"
        );
        assert!(
            scopegate::config::Config::from_yaml_with_env(text, |_| None).is_err(),
            "the loader took {why}: {text}"
        );
    }
}
