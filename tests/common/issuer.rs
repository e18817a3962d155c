//! Issuer test harness: throwaway stores (a SQLite file in a temp dir, or a database of
//! its own on a PostgreSQL server), the real gateway on 127.0.0.1:0, a small HTTP client,
//! and an independent JOSE verifier (`jsonwebtoken`) for issued tokens.
//!
//! PostgreSQL: `SCOPEGATE_TEST_POSTGRES_URL` if set; otherwise a server of our own is
//! started once per test binary (initdb + postgres from PATH or
//! /usr/lib/postgresql/*/bin, as the `postgres` user when running as root, data and
//! socket in a temp dir, a free port). A shell wrapper holds the server and reads its
//! stdin, which is a pipe from this process: when the test process ends, however it ends,
//! the pipe closes and the wrapper stops the server and deletes its directory.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use scopegate::clock::Clock;
use scopegate::config::Config;
use scopegate::issuer::Issuer;
use scopegate::issuer::keys::KeyEncryption;
use scopegate::metrics::Metrics;
use scopegate::state::{Gateway, Runtime};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).unwrap();
        let name = format!(
            "scopegate-{tag}-{}-{}",
            std::process::id(),
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty store: its URL and what keeps it alive.
pub struct TestStore {
    pub url: String,
    pub backend: Backend,
    _dir: Option<TempDir>,
}

impl TestStore {
    pub async fn new(backend: Backend) -> TestStore {
        match backend {
            Backend::Sqlite => {
                let dir = TempDir::new("sqlite");
                let url = format!("sqlite://{}", dir.path().join("issuer.db").display());
                TestStore {
                    url,
                    backend,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => TestStore {
                url: postgres_database().await,
                backend,
                _dir: None,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

struct PgServer {
    url: String,
    _wrapper: Mutex<Child>,
}

static PG: OnceLock<Result<PgServer, String>> = OnceLock::new();

fn find_pg_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return Some(dir);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn start_postgres() -> Result<PgServer, String> {
    let bin = find_pg_bin().ok_or(
        "PostgreSQL is not installed: `apt-get install -y postgresql` (or set SCOPEGATE_TEST_POSTGRES_URL to a server this test may create databases on)",
    )?;
    let root = is_root();
    // Not a TempDir: the wrapper deletes it once the server has stopped.
    let dir = std::env::temp_dir().join(format!(
        "scopegate-pg-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if root {
        let status = Command::new("chown")
            .arg("postgres:")
            .arg(&dir)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(
                "cannot chown the PostgreSQL temp dir to the postgres user (does the user exist?)"
                    .into(),
            );
        }
    }
    let port = free_port();
    let script = format!(
        r#"set -e
D='{dir}'
'{bin}/initdb' -D "$D/data" -U postgres --auth=trust -E UTF8 >"$D/initdb.log" 2>&1
'{bin}/postgres' -D "$D/data" -k "$D" -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 >"$D/pg.log" 2>&1 &
PID=$!
echo started >"$D/wrapper.state"
cat >/dev/null || true
kill -INT $PID 2>/dev/null || true
wait $PID 2>/dev/null || true
rm -rf "$D"
"#,
        dir = dir.display(),
        bin = bin.display(),
    );
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let child = command
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start PostgreSQL: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = dir.join("pg.log");
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&log) {
            let _ = f.read_to_string(&mut text);
        }
        if text.contains("ready to accept connections") {
            break;
        }
        if Instant::now() > deadline {
            let initdb = std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default();
            return Err(format!(
                "PostgreSQL did not start in 60s.\ninitdb: {initdb}\nserver: {text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(PgServer {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        _wrapper: Mutex::new(child),
    })
}

/// The URL of a PostgreSQL server's maintenance database.
pub fn postgres_base_url() -> String {
    if let Ok(url) = std::env::var("SCOPEGATE_TEST_POSTGRES_URL")
        && !url.is_empty()
    {
        return url;
    }
    match PG.get_or_init(start_postgres) {
        Ok(server) => server.url.clone(),
        Err(err) => panic!("{err}"),
    }
}

/// A new, empty database of its own on the test server.
pub async fn postgres_database() -> String {
    use sqlx::Connection;
    let base = tokio::task::spawn_blocking(postgres_base_url)
        .await
        .unwrap();
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&base)
        .await
        .expect("connect to the test PostgreSQL");
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    let name = format!(
        "sg_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let _ = conn.close().await;
    let (prefix, _) = base.rsplit_once('/').expect("a database URL");
    format!("{prefix}/{name}")
}

/// A PostgreSQL server of a test's own, which the test may stop and start again (an
/// outage): `pg_ctl` on a data directory in a temp dir, on a free port that it keeps
/// across restarts. Like the shared server, a shell wrapper reading a pipe from this
/// process stops it (`-m immediate`) and deletes its directory when the test process
/// ends, however it ends.
pub struct OwnPostgres {
    /// The maintenance database's URL.
    pub url: String,
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    _wrapper: Mutex<Child>,
}

impl OwnPostgres {
    /// initdb + start; blocks until the server accepts connections.
    pub async fn start() -> OwnPostgres {
        tokio::task::spawn_blocking(OwnPostgres::start_blocking)
            .await
            .expect("join")
    }

    fn start_blocking() -> OwnPostgres {
        let bin =
            find_pg_bin().expect("PostgreSQL is not installed: `apt-get install -y postgresql`");
        let dir = std::env::temp_dir().join(format!(
            "scopegate-ownpg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the PostgreSQL dir");
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "cannot chown the PostgreSQL dir to postgres"
            );
        }
        let port = free_port();
        let script = format!(
            r#"D='{dir}'
'{bin}/initdb' -D "$D/data" -U postgres --auth=trust -E UTF8 >"$D/initdb.log" 2>&1 || exit 1
{start} || exit 1
echo started >"$D/wrapper.state"
cat >/dev/null || true
'{bin}/pg_ctl' -D "$D/data" stop -m immediate >/dev/null 2>&1 || true
rm -rf "$D"
"#,
            dir = dir.display(),
            bin = bin.display(),
            start = OwnPostgres::start_command(&bin, &dir, port),
        );
        let child = as_postgres(&script)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL wrapper");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("wrapper.state").exists() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start in 60s: {}",
                std::fs::read_to_string(dir.join("pg.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnPostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            bin,
            port,
            _wrapper: Mutex::new(child),
        }
    }

    fn start_command(bin: &Path, dir: &Path, port: u16) -> String {
        format!(
            "'{bin}/pg_ctl' -D '{dir}/data' -w -t 60 -l '{dir}/pg.log' start -o \"-k '{dir}' -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200\" >/dev/null",
            bin = bin.display(),
            dir = dir.display(),
        )
    }

    /// A new, empty database on this server; its URL.
    pub async fn database(&self) -> String {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.url)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query("CREATE DATABASE scopegate_faults")
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let _ = conn.close().await;
        format!(
            "postgres://postgres@127.0.0.1:{}/scopegate_faults",
            self.port
        )
    }

    /// `pg_ctl stop -m fast`: sessions are ended, transactions in flight rolled back,
    /// new connections refused. Returns once the server is down.
    pub async fn stop(&self) {
        let script = format!(
            "'{}/pg_ctl' -D '{}/data' -w -t 60 stop -m fast >/dev/null",
            self.bin.display(),
            self.dir.display()
        );
        run_as_postgres(script).await;
    }

    /// Starts the stopped server again on the same port; returns once it accepts
    /// connections.
    pub async fn restart(&self) {
        run_as_postgres(OwnPostgres::start_command(&self.bin, &self.dir, self.port)).await;
    }
}

/// `sh -c script`, as the `postgres` user when running as root.
fn as_postgres(script: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }
}

async fn run_as_postgres(script: String) {
    let status = tokio::task::spawn_blocking(move || as_postgres(&script).status())
        .await
        .expect("join")
        .expect("run pg_ctl");
    assert!(status.success(), "pg_ctl failed: {status}");
}

// ---------------------------------------------------------------------------------------
// Users and configuration

pub const ALICE_PASSWORD: &str = "alice-test-password";
pub const BOB_PASSWORD: &str = "bob-test-password";
pub const M2M_SECRET: &str = "m2m-test-secret";
pub const WEB_SECRET: &str = "web-test-secret";
pub const WEBAPP_SECRET: &str = "webapp-test-secret";
/// The brand of the sign-in and device pages in the test configuration.
pub const BRAND: &str = "Acme Contacts";
/// A redirect URI of the public browser client `spa` (loopback: any port matches).
pub const SPA_CALLBACK: &str = "http://127.0.0.1:3000/callback";
pub const SPA_HTTPS_CALLBACK: &str = "https://spa.example.com/cb";
pub const SPA_LOGOUT: &str = "https://spa.example.com/bye";
pub const WEBAPP_CALLBACK: &str = "https://app.example.com/callback";
pub const WEBAPP_LOGOUT: &str = "https://app.example.com/signed-out";
pub const CONTACTS: &str = "https://contacts.example.com";
pub const CALENDAR: &str = "https://calendar.example.com";
pub const SHORT: &str = "https://short.example.com";

/// Argon2id hashes of the test passwords, made once per test binary (production
/// parameters; only the number of hashings is kept small).
pub fn hashes() -> &'static (String, String) {
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    HASHES.get_or_init(|| {
        (
            scopegate::config::hash_password(ALICE_PASSWORD).unwrap(),
            scopegate::config::hash_password(BOB_PASSWORD).unwrap(),
        )
    })
}

/// Knobs for [`config_yaml`].
#[derive(Debug, Clone)]
pub struct Options {
    pub algorithm: &'static str,
    pub rotate_after: &'static str,
    pub max_failures: u32,
    pub extra_routes: &'static str,
    pub access_ttl: &'static str,
    /// The issuer URL; default `http://127.0.0.1:<port>/`. Replicas share one.
    pub issuer_url: Option<String>,
    /// `issuer.device.ttl` and `issuer.device.interval`.
    pub device_ttl: &'static str,
    pub device_interval: &'static str,
    /// More keys for `server:` and for `issuer:`, each a line indented two spaces.
    pub server_extra: &'static str,
    pub issuer_extra: &'static str,
    /// More entries of `issuer.clients`, each starting `    - client_id: ...`.
    pub extra_clients: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            algorithm: "RS256",
            rotate_after: "30d",
            max_failures: 3,
            extra_routes: "",
            access_ttl: "1h",
            issuer_url: None,
            device_ttl: "10m",
            device_interval: "5s",
            server_extra: "",
            issuer_extra: "",
            extra_clients: String::new(),
        }
    }
}

/// A gateway config with the issuer at `http://127.0.0.1:<port>/`.
pub fn config_yaml(port: u16, store: &str, options: &Options) -> String {
    let (alice, bob) = hashes();
    format!(
        r#"
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:1
{server_extra}
forward:
  claims: {{ "https://contacts.example.com/roles": x-auth-roles }}
routes:
  - name: read-contacts
    match: {{ path: /api/contacts/*, methods: [GET] }}
    upstream: builtin:echo
    strip_prefix: /api
    audience: {CONTACTS}
    scopes: [read:contacts]
  - name: write-contacts
    match: {{ path: /api/contacts/*, methods: [POST] }}
    upstream: builtin:echo
    strip_prefix: /api
    audience: {CONTACTS}
    scopes: [write:contacts]
  - name: delete-contacts
    match: {{ path: /api/contacts/*, methods: [DELETE] }}
    upstream: builtin:echo
    strip_prefix: /api
    audience: {CONTACTS}
    scopes: [delete:contacts]
  - name: calendar
    match: {{ path: /api/calendar/* }}
    upstream: builtin:echo
    audience: {CALENDAR}
    scopes: [read:calendar]
{extra_routes}
issuer:
  url: {url}
  store: "{store}"
  keys: {{ algorithm: {algorithm}, rotate_after: {rotate_after} }}
  tokens: {{ access_ttl: {access_ttl} }}
  throttle: {{ max_failures: {max_failures}, window: 10m }}
  login: {{ title: {BRAND} }}
  device: {{ interval: {device_interval}, ttl: {device_ttl} }}
{issuer_extra}
  apis:
    - identifier: {CONTACTS}
      scopes:
        - {{ value: read:contacts, description: Read your contacts }}
        - {{ value: write:contacts }}
        - {{ value: delete:contacts }}
      allow_offline_access: true
    - identifier: {CALENDAR}
      scopes:
        - {{ value: read:calendar }}
        - {{ value: write:calendar }}
    - identifier: {SHORT}
      scopes: [{{ value: read:short }}]
      access_ttl: 1s
  roles:
    reader: {{ "{CONTACTS}": [read:contacts], "{CALENDAR}": [read:calendar], "{SHORT}": [read:short] }}
    editor: {{ "{CONTACTS}": [read:contacts, write:contacts] }}
  clients:
    - client_id: cli
      grant_types: [password, refresh_token, token_exchange]
    - client_id: web
      client_secret: {WEB_SECRET}
      grant_types: [password, refresh_token, urn:ietf:params:oauth:grant-type:token-exchange]
    - client_id: m2m
      client_secret: {M2M_SECRET}
      grant_types: [client_credentials]
      grants: {{ "{CONTACTS}": [read:contacts, write:contacts] }}
    - client_id: other
      client_secret: other-test-secret
      grant_types: [client_credentials]
      grants: {{ "{CALENDAR}": [read:calendar] }}
    - client_id: spa
      name: Contacts Web
      grant_types: [authorization_code, refresh_token, implicit]
      redirect_uris: [{SPA_CALLBACK}, {SPA_HTTPS_CALLBACK}]
      post_logout_redirect_uris: [{SPA_LOGOUT}]
    - client_id: webapp
      client_secret: {WEBAPP_SECRET}
      grant_types: [authorization_code, refresh_token]
      redirect_uris: [{WEBAPP_CALLBACK}]
      post_logout_redirect_uris: [{WEBAPP_LOGOUT}]
    - client_id: tv
      name: Living-room TV
      grant_types: [device_code, refresh_token]
{extra_clients}
  users:
    - username: alice
      password_hash: {alice}
      email: alice@example.com
      email_verified: true
      name: Alice Liddell
      roles: [reader]
      user_metadata: {{ favorite_color: blue }}
    - username: bob
      id: "bob-0001"
      password_hash: {bob}
      email: bob@example.com
      name: Bob Builder
      roles: [editor]
  claims:
    namespace: https://contacts.example.com/
    id_token: [roles, favorite_color]
    access_token: [roles]
"#,
        algorithm = options.algorithm,
        rotate_after = options.rotate_after,
        max_failures = options.max_failures,
        extra_routes = options.extra_routes,
        access_ttl = options.access_ttl,
        device_ttl = options.device_ttl,
        device_interval = options.device_interval,
        server_extra = options.server_extra,
        issuer_extra = options.issuer_extra,
        extra_clients = options.extra_clients,
        url = options
            .issuer_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}/")),
    )
}

// ---------------------------------------------------------------------------------------
// The gateway

/// A running gateway and issuer.
pub struct Running {
    pub addr: SocketAddr,
    pub base: String,
    pub gateway: Arc<Gateway>,
    pub issuer: Arc<Issuer>,
    /// The gateway's and its issuer's clock (manual): advancing it ages tokens, codes,
    /// sessions and keys.
    pub clock: Clock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The store [`Running::fresh`] made, dropped after the gateway.
    store: Option<TestStore>,
}

impl Running {
    /// A fresh store of `backend` and the gateway on it with the default [`Options`]; the
    /// store lives as long as the gateway.
    pub async fn fresh(backend: Backend) -> Running {
        let store = TestStore::new(backend).await;
        let mut running = Running::start(&store.url, &Options::default()).await;
        running.store = Some(store);
        running
    }

    /// Starts the real gateway (config → issuer → Gateway → serve) on 127.0.0.1:0, on a
    /// [`Clock::manual`] of its own.
    pub async fn start(store: &str, options: &Options) -> Running {
        Running::start_with(store, options, None)
            .await
            .expect("gateway starts")
    }

    pub async fn start_with(
        store: &str,
        options: &Options,
        encryption: Option<KeyEncryption>,
    ) -> Result<Running, String> {
        Running::start_on(store, options, encryption, Clock::manual()).await
    }

    /// [`Running::start_with`] on a given clock (replicas share one).
    pub async fn start_on(
        store: &str,
        options: &Options,
        encryption: Option<KeyEncryption>,
        clock: Clock,
    ) -> Result<Running, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let yaml = config_yaml(addr.port(), store, options);
        let config = Config::from_yaml_with_env(&yaml, |_| None).map_err(|e| e.to_string())?;
        let metrics = Metrics::new();
        let issuer_config = config
            .issuer
            .as_ref()
            .expect("the test config has an issuer");
        let issuer =
            Issuer::build(issuer_config, metrics.clone(), clock.clone(), encryption).await?;
        let runtime = Runtime {
            clock: clock.clone(),
            metrics: Some(metrics),
            issuer: Some(issuer.clone()),
            ..Runtime::default()
        };
        let gateway = Gateway::start_with(config, runtime).await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let gateway = gateway.clone();
            async move {
                let _ = scopegate::serve(listener, gateway, async {
                    let _ = rx.await;
                })
                .await;
            }
        });
        Ok(Running {
            addr,
            base: format!("http://{addr}"),
            gateway,
            issuer,
            clock,
            stop: Some(tx),
            server: Some(server),
            store: None,
        })
    }

    /// Stops serving and closes the store (so another gateway can open the same file).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        self.issuer.core.store.close().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn token(&self, params: &[(&str, &str)], basic: Option<(&str, &str)>) -> Answer {
        post_form(&self.url("/oauth/token"), params, basic).await
    }

    /// [`Running::login`] as alice.
    pub async fn alice(&self, scope: &str) -> Value {
        self.login("alice", ALICE_PASSWORD, scope).await
    }

    /// A password-grant token for a user through the public `cli` client.
    pub async fn login(&self, user: &str, password: &str, scope: &str) -> Value {
        login_at(&self.base, user, password, scope).await
    }

    pub async fn machine_token(&self) -> Value {
        let answer = self
            .token(
                &[("grant_type", "client_credentials"), ("audience", CONTACTS)],
                Some(("m2m", M2M_SECRET)),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.json);
        answer.json
    }

    /// The access token of [`Running::machine_token`].
    pub async fn machine_access_token(&self) -> String {
        let tokens = self.machine_token().await;
        tokens["access_token"].as_str().unwrap().to_string()
    }

    /// Applies the config of `options` on `store` (same port) to the running gateway.
    pub async fn apply_options(&self, store: &str, options: &Options) {
        let yaml = config_yaml(self.addr.port(), store, options);
        let config = Config::from_yaml_with_env(&yaml, |_| None).unwrap();
        self.gateway.apply(config).await.unwrap();
    }

    pub async fn jwks(&self) -> Value {
        get(&self.url("/.well-known/jwks.json"), None).await.json
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The issuer identifier (`iss`) of a running gateway's built-in issuer.
pub fn issuer_of(running: &Running) -> String {
    format!("{}/", running.base)
}

/// The userinfo endpoint (also an audience of tokens with `openid`).
pub fn userinfo_of(running: &Running) -> String {
    format!("{}/userinfo", running.base)
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A response, its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub json: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    /// The body as text (HTML pages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn form_encode(params: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `grant_type=password` for `user` through the public `cli` client, at the token
/// endpoint of the gateway at `base` (`http://addr`).
pub async fn cli_login(
    base: &str,
    user: &str,
    password: &str,
    audience: &str,
    scope: &str,
) -> Answer {
    let params = [
        ("grant_type", "password"),
        ("client_id", "cli"),
        ("username", user),
        ("password", password),
        ("audience", audience),
        ("scope", scope),
    ];
    post_form(&format!("{base}/oauth/token"), &params, None).await
}

/// A machine token (client_credentials of `m2m` with `m2m_secret`, by Basic) to the
/// contacts API from the gateway at `base` (`http://addr`); asserts the 200.
pub async fn machine_token_at(base: &str, m2m_secret: &str) -> String {
    let params = [("grant_type", "client_credentials"), ("audience", CONTACTS)];
    let url = format!("{base}/oauth/token");
    let answer = post_form(&url, &params, Some(("m2m", m2m_secret))).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer.json["access_token"].as_str().unwrap().to_string()
}

/// [`cli_login`] to the contacts API that must pass: the token response.
pub async fn login_at(base: &str, user: &str, password: &str, scope: &str) -> Value {
    let answer = cli_login(base, user, password, CONTACTS, scope).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer.json
}

/// `grant_type=refresh_token` through the public `cli` client, at the token endpoint of
/// the gateway at `base` (`http://addr`).
pub async fn cli_refresh(base: &str, refresh_token: &str) -> Answer {
    let params = [
        ("grant_type", "refresh_token"),
        ("client_id", "cli"),
        ("refresh_token", refresh_token),
    ];
    post_form(&format!("{base}/oauth/token"), &params, None).await
}

/// POST /oauth/introspect at the gateway at `base` as the confidential `client`; asserts
/// the 200 and returns the answer's JSON.
pub async fn introspect_as(base: &str, token: &str, client: (&str, &str)) -> Value {
    let url = format!("{base}/oauth/introspect");
    let answer = post_form(&url, &[("token", token)], Some(client)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer.json
}

/// Asserts each `(member, value)` of the JSON object `json`.
pub fn assert_members(json: &Value, expected: &[(&str, &str)]) {
    for (member, value) in expected {
        assert_eq!(json[*member], *value, "{member} in {json}");
    }
}

/// What a page's (first) form posts: its hidden fields, plus `fields` (which win over
/// hidden ones of the same name).
pub fn form_fields(html: &str, fields: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = hidden_fields(html)
        .into_iter()
        .filter(|(n, _)| !fields.iter().any(|(f, _)| f == n))
        .collect();
    params.extend(fields.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    params
}

/// Owned pairs as the `&str` pairs a form takes.
pub fn as_pairs(params: &[(String, String)]) -> Vec<(&str, &str)> {
    params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

pub fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

pub async fn send(request: http::Request<Full<Bytes>>) -> Answer {
    let response = client().request(request).await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        json,
    }
}

pub async fn post_raw(
    url: &str,
    content_type: &str,
    body: String,
    authorization: Option<String>,
) -> Answer {
    let mut builder = http::Request::post(url).header("content-type", content_type);
    if let Some(auth) = authorization {
        builder = builder.header("authorization", auth);
    }
    send(builder.body(Full::new(Bytes::from(body))).unwrap()).await
}

/// [`post_form`] with more headers (a `DPoP` proof, ...).
pub async fn post_form_with(
    url: &str,
    params: &[(&str, &str)],
    basic_auth: Option<(&str, &str)>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut builder =
        http::Request::post(url).header("content-type", "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic_auth {
        builder = builder.header("authorization", basic(id, secret));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(
        builder
            .body(Full::new(Bytes::from(form_encode(params))))
            .unwrap(),
    )
    .await
}

pub async fn post_form(
    url: &str,
    params: &[(&str, &str)],
    basic_auth: Option<(&str, &str)>,
) -> Answer {
    post_raw(
        url,
        "application/x-www-form-urlencoded",
        form_encode(params),
        basic_auth.map(|(id, secret)| basic(id, secret)),
    )
    .await
}

pub async fn get(url: &str, bearer: Option<&str>) -> Answer {
    request("GET", url, bearer).await
}

pub async fn request(method: &str, url: &str, bearer: Option<&str>) -> Answer {
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(token) = bearer {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    send(builder.body(Full::new(Bytes::new())).unwrap()).await
}

// ---------------------------------------------------------------------------------------
// Independent verification

/// Verifies `token` with `jsonwebtoken` against the served JWKS: signature, `iss`, `aud`
/// (one of `audiences`), `exp`. Returns the header and the claims.
pub fn verify_independently(
    jwks: &Value,
    token: &str,
    issuer: &str,
    audiences: &[&str],
) -> (jsonwebtoken::Header, Value) {
    let header = jsonwebtoken::decode_header(token).expect("a JWS header");
    let kid = header.kid.clone().expect("every token has a kid");
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).expect("a JWK set");
    let jwk = set.find(&kid).expect("the kid is in the served JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("a usable JWK");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(audiences);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the token verifies independently");
    (header, data.claims)
}

/// The unverified claims of a JWT.
pub fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// A browser: cookies, forms, redirects followed by hand

/// What a browser keeps between requests: cookies (one host, so names are enough), and
/// the origin it sends with form posts, as browsers do.
#[derive(Debug, Default, Clone)]
pub struct Browser {
    pub cookies: std::collections::BTreeMap<String, String>,
    /// The `Origin` header for POSTs; `None` sends none.
    pub origin: Option<String>,
}

impl Browser {
    /// A browser on the gateway's own origin.
    pub fn new(running: &Running) -> Browser {
        Browser {
            cookies: Default::default(),
            origin: Some(running.base.clone()),
        }
    }

    fn cookie_header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Takes the `Set-Cookie`s of an answer (`Max-Age=0` deletes).
    pub fn keep_cookies(&mut self, answer: &Answer) {
        for set in answer.all("set-cookie") {
            let mut parts = set.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
                continue;
            };
            let expired = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if expired || value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
    }

    pub async fn get(&mut self, url: &str) -> Answer {
        let mut builder = http::Request::get(url);
        if let Some(cookies) = self.cookie_header() {
            builder = builder.header("cookie", cookies);
        }
        let answer = send(builder.body(Full::new(Bytes::new())).unwrap()).await;
        self.keep_cookies(&answer);
        answer
    }

    pub async fn post(&mut self, url: &str, params: &[(&str, &str)]) -> Answer {
        let mut builder =
            http::Request::post(url).header("content-type", "application/x-www-form-urlencoded");
        if let Some(cookies) = self.cookie_header() {
            builder = builder.header("cookie", cookies);
        }
        if let Some(origin) = &self.origin {
            builder = builder.header("origin", origin);
        }
        let request = builder
            .body(Full::new(Bytes::from(form_encode(params))))
            .unwrap();
        let answer = send(request).await;
        self.keep_cookies(&answer);
        answer
    }

    /// Submits the (first) form of an HTML page: its action, its hidden fields, plus
    /// `fields` (which win over hidden ones of the same name).
    pub async fn submit(&mut self, base: &str, page: &Answer, fields: &[(&str, &str)]) -> Answer {
        let html = page.text();
        let action = form_action(&html).expect("the page has a form");
        let params = form_fields(&html, fields);
        let url = if action.starts_with("http") {
            action
        } else {
            format!("{base}{action}")
        };
        self.post(&url, &as_pairs(&params)).await
    }

    /// The sign-in: submit the page's form with a username and password.
    pub async fn sign_in(
        &mut self,
        base: &str,
        page: &Answer,
        username: &str,
        password: &str,
    ) -> Answer {
        self.submit(
            base,
            page,
            &[("username", username), ("password", password)],
        )
        .await
    }
}

/// Undoes the page template's escaping.
pub fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in one HTML tag.
pub fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = tag[start..].find('"')? + start;
    Some(unescape(&tag[start..end]))
}

/// Every `<tag ...>` of a kind in a page.
pub fn tags<'h>(html: &'h str, kind: &str) -> Vec<&'h str> {
    let open = format!("<{kind} ");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&open) {
        let tail = &rest[at..];
        let end = tail.find('>').map_or(tail.len(), |e| e + 1);
        out.push(&tail[..end]);
        rest = &tail[end..];
    }
    out
}

/// The hidden fields of a page's forms, in order.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    tags(html, "input")
        .into_iter()
        .filter(|t| attribute(t, "type").as_deref() == Some("hidden"))
        .filter_map(|t| {
            Some((
                attribute(t, "name")?,
                attribute(t, "value").unwrap_or_default(),
            ))
        })
        .collect()
}

/// The `action` of a page's first form.
pub fn form_action(html: &str) -> Option<String> {
    tags(html, "form")
        .first()
        .and_then(|t| attribute(t, "action"))
}

/// A PKCE pair: a random verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    let verifier = scopegate::jose::b64url(&bytes);
    (verifier.clone(), s256(&verifier))
}

/// base64url(SHA-256(text)), no padding.
pub fn s256(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    scopegate::jose::b64url(digest.as_ref())
}

/// `at_hash` / `c_hash` for RS256, computed here: the left half of SHA-256, base64url.
pub fn left_half_hash(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    scopegate::jose::b64url(&digest.as_ref()[..16])
}

/// A redirect's target split up: everything before `?`/`#`, the query and the fragment
/// parameters (decoded).
#[derive(Debug, Clone)]
pub struct Redirect {
    pub base: String,
    pub query: std::collections::BTreeMap<String, String>,
    pub fragment: std::collections::BTreeMap<String, String>,
}

fn decode_params(text: &str) -> std::collections::BTreeMap<String, String> {
    scopegate::issuer::form::Form::parse(text.as_bytes())
        .expect("well-formed parameters")
        .pairs()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

impl Redirect {
    pub fn parse(location: &str) -> Redirect {
        let (before_fragment, fragment) = location.split_once('#').unwrap_or((location, ""));
        let (base, query) = before_fragment
            .split_once('?')
            .unwrap_or((before_fragment, ""));
        Redirect {
            base: base.to_string(),
            query: decode_params(query),
            fragment: decode_params(fragment),
        }
    }

    /// A `303` answer's `Location`, parsed.
    pub fn of(answer: &Answer) -> Redirect {
        assert_eq!(answer.status, 303, "expected a 303: {}", answer.text());
        Redirect::parse(answer.header("location"))
    }
}

/// An `/authorize` URL with these parameters.
pub fn authorize_url(running: &Running, params: &[(&str, &str)]) -> String {
    format!("{}?{}", running.url("/authorize"), form_encode(params))
}

/// Generates one test per backend for each async fn taking a [`Backend`].
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::issuer::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::issuer::Backend::Postgres).await;
                }
            )*
        }
    };
}
