//! Routes generated from an API's OpenAPI document (`openapi:`): a 3.0 and a 3.1
//! document served by the real gateway in front of a real upstream and a real JWKS
//! server; `scopegate check` on files; a reload after the document is edited.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use scopegate::config::Config;
use scopegate::state::Gateway;
use serde_json::json;
use tokio::net::TcpListener;

/// OpenAPI 3.0: top-level security, per-operation overrides, alternatives, `security: []`,
/// a 3.0-only schema keyword (`exclusiveMinimum: true`), a parameter named with '-'.
const V30: &str = r##"openapi: 3.0.3
info: { title: Contacts, version: "1" }
security: [ { oauth: [contacts.read] } ]
paths:
  /contacts:
    get:
      operationId: listContacts
      parameters:
        - { name: limit, in: query, schema: { type: integer, minimum: 0, exclusiveMinimum: true, nullable: true } }
      responses: { "200": { description: ok } }
    post:
      operationId: createContact
      security: [ { oauth: [contacts.write] }, { oidc: [contacts.admin] } ]
      responses: { "201": { description: created } }
  /contacts/{contact-id}:
    get:
      responses: { "200": { description: ok } }
    delete:
      operationId: deleteContact
      security: [ { oauth: [contacts.write, contacts.delete] }, { oidc: [contacts.admin] }, { key: [] } ]
      responses: { "204": { description: gone } }
  /health:
    get:
      operationId: health
      security: []
      responses: { "200": { description: ok } }
  /override:
    get:
      operationId: overridden
      responses: { "200": { description: ok } }
components:
  schemas:
    Contact: { type: object, nullable: true, properties: { email: { type: string, format: email } } }
  securitySchemes:
    oauth: { type: oauth2, flows: { clientCredentials: { tokenUrl: "https://id.example.com/token", scopes: { contacts.read: r, contacts.write: w } } } }
    oidc: { type: openIdConnect, openIdConnectUrl: "https://id.example.com/.well-known/openid-configuration" }
    key: { type: apiKey, in: header, name: X-Key }
"##;

/// OpenAPI 3.1: `type` arrays, `webhooks`, a mutualTLS scheme, an operation with no
/// security anywhere (a token is still required).
const V31: &str = r##"openapi: 3.1.0
info: { title: Things, version: "1" }
jsonSchemaDialect: https://json-schema.org/draft/2020-12/schema
webhooks:
  thingChanged:
    post: { responses: { "200": { description: ok } } }
paths:
  /things/{id}:
    get:
      operationId: getThing
      security: [ { oauth: [things.read] }, { tls: [] } ]
      parameters:
        - { name: id, in: path, required: true, schema: { type: [string, "null"] } }
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: { $ref: "#/components/schemas/Thing", description: one thing }
  /anything:
    get:
      operationId: anyToken
      responses: { "200": { description: ok } }
components:
  schemas:
    Thing: { type: [object, "null"], properties: { n: { type: integer, exclusiveMinimum: 0 } } }
  securitySchemes:
    oauth: { type: oauth2, flows: { clientCredentials: { tokenUrl: "https://id.example.com/token", scopes: {} } } }
    tls: { type: mutualTLS }
"##;

/// A fresh folder for one test.
fn folder(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("scopegate-openapi-{test}")));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn gateway_yaml(v30: &Path, v31: &Path) -> String {
    format!(
        r#"trust:
  issuers:
    - issuer: "@issuer@"
      audiences: [{AUD}]
      algorithms: [RS256]
routes:
  - {{ name: override, match: {{ path: /api/override, methods: [GET] }}, upstream: builtin:echo, auth: none }}
openapi:
  - {{ file: "{v30}", upstream: "@upstream@", audience: "{AUD}", prefix: /api }}
  - {{ file: "{v31}", upstream: ["@upstream@"] }}
"#,
        v30 = v30.display(),
        v31 = v31.display(),
    )
}

fn request(method: &str, path: &str, token: Option<&str>) -> Request<Empty<Bytes>> {
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("a token"))
        .uri(path)
        .header("host", "gateway.test");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Empty::new()).expect("request")
}

async fn status(env: &Env, method: &str, path: &str, scope: Option<&str>) -> StatusCode {
    let token = scope.map(|scope| env.token(json!({ "scope": scope })));
    send(env.gw.addr, request(method, path, token.as_deref()))
        .await
        .status
}

#[tokio::test]
async fn a_30_and_a_31_document_become_routes_with_their_scopes() {
    let dir = folder("serve");
    let v30 = write(&dir, "contacts.yaml", V30);
    let v31 = write(&dir, "things.yaml", V31);
    let env = Env::start_yaml(&gateway_yaml(&v30, &v31)).await;

    // Document-level security; the upstream gets the path with the prefix.
    assert_eq!(status(&env, "GET", "/api/contacts", None).await, 401);
    assert_eq!(
        status(&env, "GET", "/api/contacts", Some("other")).await,
        403
    );
    assert_eq!(
        status(&env, "GET", "/api/contacts?limit=1", Some("contacts.read")).await,
        200
    );
    assert_eq!(env.upstream.last().target, "/api/contacts?limit=1");
    // The route's audience is the block's.
    let token = env.token(json!({ "scope": "contacts.read", "aud": AUD2 }));
    let reply = send(env.gw.addr, request("GET", "/api/contacts", Some(&token))).await;
    assert_eq!(reply.status, 401, "{}", reply.text());

    // Alternatives of one scope each: any of them.
    for scope in ["contacts.write", "contacts.admin"] {
        assert_eq!(
            status(&env, "POST", "/api/contacts", Some(scope)).await,
            200,
            "{scope}"
        );
    }
    assert_eq!(
        status(&env, "POST", "/api/contacts", Some("contacts.read")).await,
        403
    );

    // Path parameters; alternatives of several scopes: all of one of them (the apiKey
    // alternative is not one the gateway can check, so it does not open the route).
    assert_eq!(
        status(&env, "GET", "/api/contacts/42", Some("contacts.read")).await,
        200
    );
    assert_eq!(env.upstream.last().target, "/api/contacts/42");
    let reply = send(
        env.gw.addr,
        request(
            "DELETE",
            "/api/contacts/42",
            Some(&env.token(json!({ "scope": "contacts.write" }))),
        ),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|h| h.contains("contacts.write contacts.delete")),
        "{:?}",
        reply.headers
    );
    for scope in ["contacts.write contacts.delete", "contacts.admin"] {
        assert_eq!(
            status(&env, "DELETE", "/api/contacts/42", Some(scope)).await,
            200,
            "{scope}"
        );
    }

    // A method the document does not define on a path it has: 405 with Allow.
    let reply = send(
        env.gw.addr,
        request(
            "PUT",
            "/api/contacts/42",
            Some(&env.token(json!({ "scope": "contacts.admin" }))),
        ),
    )
    .await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, DELETE"));
    // Unknown paths: 404.
    assert_eq!(
        status(&env, "GET", "/api/nope", Some("contacts.read")).await,
        404
    );
    assert_eq!(
        status(&env, "GET", "/contacts", Some("contacts.read")).await,
        404
    );

    // `security: []`: open.
    assert_eq!(status(&env, "GET", "/api/health", None).await, 200);

    // The explicit route wins (builtin:echo, auth: none): the upstream is not asked.
    let before = env.upstream.count();
    assert_eq!(status(&env, "GET", "/api/override", None).await, 200);
    assert_eq!(env.upstream.count(), before);

    // OpenAPI 3.1, no prefix.
    assert_eq!(status(&env, "GET", "/things/a", None).await, 401);
    assert_eq!(status(&env, "GET", "/things/a", Some("x")).await, 403);
    assert_eq!(
        status(&env, "GET", "/things/a", Some("things.read")).await,
        200
    );
    assert_eq!(env.upstream.last().target, "/things/a");
    // No security anywhere: any valid token, but a token.
    assert_eq!(status(&env, "GET", "/anything", None).await, 401);
    assert_eq!(status(&env, "GET", "/anything", Some("x")).await, 200);
    assert_eq!(status(&env, "POST", "/anything", Some("x")).await, 405);

    // Route names label the metrics.
    let metrics = env.gw.metrics().await;
    assert!(
        metrics.contains(r#"route="openapi:listContacts""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="openapi:GET /contacts/{contact-id}""#),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn check(config: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .arg("check")
        .arg("-c")
        .arg(config)
        .output()
        .expect("scopegate runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CHECKED: &str = r#"trust:
  issuers:
    - issuer: https://id.example.com/
      audiences: [https://api.example.com]
routes:
  - { name: override, match: { path: /api/override }, upstream: builtin:echo, auth: none }
openapi:
  - { file: api.yaml, upstream: http://127.0.0.1:9001, audience: https://contacts.example.com, prefix: /api }
"#;

#[test]
fn check_prints_generated_routes_with_their_origin() {
    let dir = folder("check");
    write(&dir, "api.yaml", V30);
    let config = write(&dir, "gateway.yaml", CHECKED);
    let (ok, stdout, stderr) = check(&config);
    assert!(ok, "{stderr}");
    let header = stdout.lines().next().unwrap_or_default();
    assert!(header.ends_with("ORIGIN"), "{stdout}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .to_string()
    };
    assert!(line("override ").ends_with("routes"), "{stdout}");
    let list = line("openapi:listContacts ");
    assert!(list.contains("/api/contacts"), "{list}");
    assert!(list.contains("contacts.read"), "{list}");
    assert!(
        list.contains("[aud https://contacts.example.com]"),
        "{list}"
    );
    assert!(list.ends_with("openapi:api.yaml"), "{list}");
    let delete = line("openapi:deleteContact ");
    assert!(
        delete.contains("one of (contacts.write contacts.delete) | (contacts.admin)"),
        "{delete}"
    );
    assert!(line("openapi:health ").contains("none"), "{stdout}");
    assert!(line("openapi:GET /contacts/{contact-id} ").contains("/api/contacts/{contact_id}"));
    assert!(
        stdout.contains("openapi:overridden (GET /api/override, openapi:api.yaml) is not routed: route \"override\""),
        "{stdout}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("openapi:overridden")),
        "{stdout}"
    );
    assert!(stdout.contains("6 route(s)"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_document_fails_check_naming_its_key_and_position() {
    let dir = folder("bad");
    write(
        &dir,
        "api.yaml",
        "openapi: 3.0.3\npaths:\n  /a:\n    get:\n      security: oops\n",
    );
    let config = write(&dir, "gateway.yaml", CHECKED);
    let (ok, _, stderr) = check(&config);
    assert!(!ok);
    assert!(stderr.contains("openapi[0].file"), "{stderr}");
    assert!(stderr.contains("api.yaml:5"), "{stderr}");
    assert!(stderr.contains("paths./a.get.security"), "{stderr}");

    // A scheme the document does not define.
    write(
        &dir,
        "api.yaml",
        "openapi: 3.1.0\npaths:\n  /a:\n    get:\n      security: [ { nope: [x] } ]\n",
    );
    let (ok, _, stderr) = check(&config);
    assert!(!ok);
    assert!(stderr.contains("openapi[0].file"), "{stderr}");
    assert!(stderr.contains("paths./a.get"), "{stderr}");
    assert!(stderr.contains("\"nope\""), "{stderr}");

    // A missing file.
    std::fs::remove_file(dir.join("api.yaml")).expect("remove");
    let (ok, _, stderr) = check(&config);
    assert!(!ok);
    assert!(stderr.contains("openapi[0].file"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

const OPEN_DOC: &str =
    "openapi: 3.1.0\nsecurity: []\npaths:\n  /first:\n    get: { operationId: first }\n";

#[tokio::test]
async fn editing_the_document_reloads_the_routes() {
    let dir = folder("reload");
    let doc = write(&dir, "api.yaml", OPEN_DOC);
    let config = write(
        &dir,
        "gateway.yaml",
        "openapi:\n  - { file: api.yaml, upstream: builtin:echo }\n",
    );
    let loaded = Config::load(&config).expect("config loads");
    let gateway: Arc<Gateway> = Gateway::start(loaded, Some(config.clone()))
        .await
        .expect("gateway");
    let _watcher = scopegate::reload::watch(gateway.clone(), &config, std::fs::read(&config).ok())
        .expect("watch");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _server = tokio::spawn(scopegate::serve(
        listener,
        gateway.clone(),
        std::future::pending(),
    ));
    assert_eq!(get(addr, "/first", &[]).await.status, 200);
    assert_eq!(get(addr, "/second", &[]).await.status, 404);

    // A broken document is refused; the old routes keep serving.
    std::fs::write(&doc, "openapi: 3.1.0\npaths: [\n").expect("write");
    eventually("the refusal counted", async || {
        gateway
            .metrics
            .config_reloads_total
            .with_label_values(&["error"])
            .get()
            >= 1
    })
    .await;
    assert_eq!(get(addr, "/first", &[]).await.status, 200);

    std::fs::write(
        &doc,
        format!("{OPEN_DOC}  /second:\n    get: {{ operationId: second }}\n"),
    )
    .expect("write");
    eventually("the new path is served", async || {
        get(addr, "/second", &[]).await.status == 200
    })
    .await;
    assert_eq!(get(addr, "/first", &[]).await.status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
