//! The issuer's durable state, one API over two backends: an embedded SQLite file (the
//! default, `sqlite://scopegate.db`, created on first start) or PostgreSQL
//! (`postgres://...`, for several replicas sharing it). One code path through sqlx's Any
//! driver: every statement is plain SQL both dialects accept, with `$N` placeholders.
//!
//! Migrations run at [`Store::open`], versioned in `scopegate_migrations` (on PostgreSQL
//! under an advisory lock, so replicas starting together do not race).
//!
//! One file per kind of record: [`keys`], [`refresh`], [`codes`], [`devices`],
//! [`sessions`], [`revocations`], [`throttle`], [`pushed`], [`once`]; the schema in [`migrations`]. Columns
//! with a closed set of values (a device's status, a key's algorithm and encryption) are
//! parsed into enums where a row is read, and written back from them.
//!
//! The store takes every time it compares or records as an argument (`now`), read by
//! the caller from the issuer's [`Clock`]; the clock it is opened with stamps migrations.
//!
//! Secrets are never stored in the clear: refresh tokens, authorization codes, device
//! codes and session ids are kept as SHA-256 hashes ([`secret_hash`]); private keys as PKCS#8, encrypted
//! when a key-encryption key is configured (see `keys.rs`).
//!
//! **Outages.** A store that cannot be reached (PostgreSQL stopped, restarting, or the
//! pool unable to hand out a connection within [`ACQUIRE_TIMEOUT`]) is told apart from
//! other failures ([`StoreError::is_unavailable`]): a request meeting it is answered 503
//! `temporarily_unavailable` with `Retry-After` ([`RETRY_AFTER_SECS`]), not 500, within
//! about a second. [`Store::probe`] (a `SELECT 1`, run every [`PROBE_INTERVAL`] by the
//! issuer) keeps a cached verdict for `/readyz` ([`Store::reachable`]). Nothing is
//! lost in an outage: every write is one statement or one transaction, so a request the
//! store failed changed nothing (a refresh token not rotated stays redeemable); the pool
//! drops dead connections and reconnects once the database is back, without a restart.
//!
//! Writes that must be atomic under concurrency are single conditional statements (or a
//! transaction that starts with one): refresh rotation, code redemption and device-code
//! consumption each let exactly one of several parallel callers win.
//!
//! Schema (version 3; times are Unix seconds, `BIGINT`):
//!
//! | table | columns |
//! |---|---|
//! | `signing_keys` | `kid` PK, `alg`, `private_key` (base64url PKCS#8 or `v1.` + AES-256-GCM), `encryption` (`none` \| `aes-256-gcm`), `public_jwk`, `created_at`, `rotated_at` |
//! | `refresh_families` | `id` PK, `client_id`, `subject`, `audience`, `scope`, `auth_time`, `created_at`, `revoked_at`; since v3 `dpop_jkt` |
//! | `refresh_tokens` | `token_hash` PK, `family_id`, `created_at`, `expires_at`, `used_at` |
//! | `authorization_codes` | `code_hash` PK, `client_id`, `redirect_uri`, `subject`, `audience`, `scope`, `nonce`, `code_challenge`, `code_challenge_method`, `auth_time`, `created_at`, `expires_at`, `used_at`; since v2 what it was redeemed for: `issued_jti`, `issued_until`, `issued_family`, and `replayed_at` |
//! | `device_codes` | `device_code_hash` PK, `user_code` UNIQUE, `client_id`, `audience`, `scope`, `status` (`pending` \| `approved` \| `denied` \| `consumed`), `subject`, `auth_time`, `created_at`, `expires_at`, `interval_secs`, `last_polled_at` |
//! | `revoked_tokens` | `jti` PK, `expires_at` |
//! | `login_throttle` | `throttle_key` PK (`user:<name>` \| `ip:<addr>` \| `user_code:<addr>`), `failures`, `window_start` |
//! | `sessions` (v2) | `session_hash` PK (SHA-256 of the cookie value), `subject`, `auth_time`, `created_at`, `expires_at` |
//! | `family_access_tokens` (v2) | `jti` PK, `family_id`, `expires_at`: access tokens minted by a refresh |
//! | `pushed_requests` (v3) | `uri_hash` PK (SHA-256 of the `request_uri`), `client_id`, `params` (form-encoded), `expires_at`, `used_at` |
//! | `used_once` (v3) | `once_key` PK (SHA-256 of kind, client and value: a client assertion's `jti`), `expires_at` |

mod codes;
mod devices;
mod keys;
mod migrations;
mod once;
mod pushed;
mod refresh;
pub mod revocations;
mod sessions;
mod throttle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::clock::Clock;
use crate::error::OAuthError;

pub use codes::{CodeIssue, CodeRecord, FoundCode};
pub use devices::{DeviceRecord, DeviceStatus};
pub use keys::{KeyEncryptionScheme, StoredKey};
pub use pushed::PushedRequest;
pub use refresh::{Family, RefreshRecord, Rotation};
pub use sessions::SessionRecord;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A store error. Its message is safe to log: no secrets, URLs redacted.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The database could not be reached or set up.
    #[error("store: cannot open {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("store: migrating {url}: {source}")]
    Migrate {
        url: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("store: {0:?} is not a store URL")]
    NotAStoreUrl(String),
    #[error(
        "the store's schema is version {found}, newer than this build knows ({known}); upgrade Scopegate"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// A column holds a value outside its closed set (a row written by something else).
    #[error("{column} holds {value:?}, which this build does not know")]
    UnknownValue { column: &'static str, value: String },
}

impl StoreError {
    /// True when the store could not be reached, rather than refusing or failing a
    /// statement: no connection within the acquire timeout, the connection lost, or the
    /// server shutting down or starting up (SQLSTATE class 08, 57P01–57P03, 53300).
    /// Worth retrying later; nothing was changed.
    pub fn is_unavailable(&self) -> bool {
        let sqlx = match self {
            StoreError::Database(err) | StoreError::Open { source: err, .. } => err,
            StoreError::Migrate { source, .. } => return source.is_unavailable(),
            _ => return false,
        };
        is_unreachable(sqlx)
    }
}

/// See [`StoreError::is_unavailable`].
fn is_unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Repeated "store unreachable" lines during an outage: one a second.
static UNREACHABLE: crate::flood::Flood = crate::flood::Flood::per(Duration::from_secs(1));

/// A store that cannot be reached is answered 503 `temporarily_unavailable` with
/// `Retry-After` (the request changed nothing; trying again later is right). Any other
/// store failure is the issuer's fault, not the client's: logged with its cause,
/// answered `server_error`.
impl From<StoreError> for OAuthError {
    fn from(err: StoreError) -> OAuthError {
        if err.is_unavailable() {
            if let Some(suppressed) = UNREACHABLE.pass() {
                tracing::warn!(error = %err, suppressed, "issuer store unreachable");
            }
            return OAuthError::temporarily_unavailable(RETRY_AFTER_SECS);
        }
        tracing::error!(error = %err, "issuer store failed");
        OAuthError::server_error()
    }
}

/// How long a request waits for a PostgreSQL connection (opening one included) before
/// it is answered 503: an outage costs a client about this long, not a hang.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long [`Store::open`] keeps trying to reach the database at start (a replica may
/// start before its database is up).
const OPEN_PATIENCE: Duration = Duration::from_secs(10);
/// `Retry-After` on a 503 for an unreachable store.
pub const RETRY_AFTER_SECS: u64 = 2;
/// How often the issuer probes its store for `/readyz`.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

pub type Result<T> = std::result::Result<T, StoreError>;

/// The issuer's store. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    clock: Clock,
    /// The last probe's verdict (see [`Store::probe`]); shared by clones.
    reachable: Arc<AtomicBool>,
    /// The revoked `jti`s, in memory (see [`revocations`]); shared by clones.
    denied: Arc<crate::revoked::DenySet>,
    /// PostgreSQL: where to listen for other replicas' revocations.
    listen_url: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

/// SHA-256 of a secret (token, code), base64url: what the store keeps instead of it.
pub fn secret_hash(secret: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    crate::jose::b64url(digest.as_ref())
}

impl Store {
    /// Connects to `url` (`sqlite://FILE`, `sqlite::memory:`, `postgres://...`), creating a
    /// SQLite file if missing, and applies migrations (stamped with `clock`).
    pub async fn open(url: &str, clock: Clock) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let redacted = crate::config::issuer::redact_url(url);
        let (backend, connect_url, max) = Store::plan(url)?;
        let open_failed = |source| StoreError::Open {
            url: redacted.clone(),
            source,
        };
        let options: sqlx::any::AnyConnectOptions = connect_url.parse().map_err(open_failed)?;
        let pool = Store::pool_options(backend, max).connect_lazy_with(options);
        // The pool's acquire timeout is short (a request must not hang on an outage);
        // at start, wait longer for a database that is still coming up.
        let started = Instant::now();
        loop {
            match pool.acquire().await {
                Ok(_) => break,
                Err(err) if is_unreachable(&err) && started.elapsed() < OPEN_PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(open_failed(err)),
            }
        }
        let store = Store {
            pool,
            backend,
            clock,
            reachable: Arc::new(AtomicBool::new(true)),
            denied: Arc::default(),
            listen_url: (backend == Backend::Postgres).then(|| connect_url.clone()),
        };
        if backend == Backend::Sqlite && max > 1 {
            // WAL lets readers work beside the one writer; the mode sticks to the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&store.pool)
                .await
                .map_err(open_failed)?;
        }
        store
            .migrate()
            .await
            .map_err(|source| StoreError::Migrate {
                url: redacted.clone(),
                source: Box::new(source),
            })?;
        Ok(store)
    }

    /// The backend, the URL to connect to, the pool size.
    fn plan(url: &str) -> Result<(Backend, String, u32)> {
        if url.starts_with("sqlite:") {
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let connect = if url.contains('?') || memory {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            // An in-memory database exists once per connection: keep exactly one.
            Ok((Backend::Sqlite, connect, if memory { 1 } else { 8 }))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok((Backend::Postgres, url.to_string(), 10))
        } else {
            Err(StoreError::NotAStoreUrl(crate::config::issuer::redact_url(
                url,
            )))
        }
    }

    fn pool_options(backend: Backend, max: u32) -> AnyPoolOptions {
        // PostgreSQL: a short acquire timeout bounds both waiting for a free connection
        // and opening one (sqlx retries a refused connect until then), so an outage is
        // answered 503 in about a second. SQLite is a local file: its writers queue
        // behind the busy timeout, as before.
        let acquire = match backend {
            Backend::Postgres => ACQUIRE_TIMEOUT,
            Backend::Sqlite => Duration::from_secs(10),
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire);
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        options
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `SELECT 1`, bounded by [`ACQUIRE_TIMEOUT`] (a half-open connection cannot hold it
    /// longer); records the verdict for [`Store::reachable`] and returns it. Logs the
    /// transitions (down, back).
    pub async fn probe(&self) -> bool {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        let result = match tokio::time::timeout(ACQUIRE_TIMEOUT * 2, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(StoreError::Database(err).to_string()),
            Err(_) => Err("store: the probe timed out".to_string()),
        };
        let ok = result.is_ok();
        let was = self.reachable.swap(ok, Ordering::AcqRel);
        match result {
            Err(err) if was => {
                tracing::warn!(error = %err, "issuer store unreachable; /readyz says so")
            }
            Ok(()) if !was => tracing::info!("issuer store reachable again"),
            _ => {}
        }
        ok
    }

    /// The last [`Store::probe`]'s verdict (true until a probe fails): cheap, for
    /// `/readyz`.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// Closes the pool (tests that reopen the same file).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Deletes what can no longer matter: expired codes, device codes, sessions,
    /// revocations, throttle windows, and refresh tokens (with their families once empty).
    pub async fn purge_expired(&self, now: i64, throttle_window: i64) -> Result<()> {
        for (sql, bind) in [
            // A redeemed code is kept while the access token it gave may be in use, so
            // a replay can still revoke it.
            (
                "DELETE FROM authorization_codes WHERE expires_at < $1
                 AND (issued_until IS NULL OR issued_until < $1)",
                now,
            ),
            ("DELETE FROM sessions WHERE expires_at < $1", now),
            ("DELETE FROM pushed_requests WHERE expires_at < $1", now),
            ("DELETE FROM used_once WHERE expires_at < $1", now),
            ("DELETE FROM family_access_tokens WHERE expires_at < $1", now),
            ("DELETE FROM device_codes WHERE expires_at < $1", now),
            ("DELETE FROM revoked_tokens WHERE expires_at < $1", now),
            ("DELETE FROM refresh_tokens WHERE expires_at < $1", now),
            ("DELETE FROM login_throttle WHERE window_start < $1", now - throttle_window),
            (
                "DELETE FROM refresh_families WHERE created_at < $1
                 AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.family_id = refresh_families.id)",
                now,
            ),
        ] {
            sqlx::query(sql).bind(bind).execute(&self.pool).await?;
        }
        Ok(())
    }
}

/// A statement with its values bound, not yet run.
type Statement<'q> = sqlx::query::Query<'q, sqlx::Any, <sqlx::Any as sqlx::Database>::Arguments>;

impl Store {
    /// Runs a statement on the pool; the number of rows it changed.
    async fn rows_affected(&self, statement: Statement<'_>) -> Result<u64> {
        Ok(statement.execute(&self.pool).await?.rows_affected())
    }

    /// Runs a statement on the pool for its effect.
    async fn run(&self, statement: Statement<'_>) -> Result<()> {
        self.rows_affected(statement).await.map(drop)
    }

    /// Runs a conditional change of one row: true if it happened (of parallel callers,
    /// exactly one sees true).
    async fn changed_one(&self, statement: Statement<'_>) -> Result<bool> {
        Ok(self.rows_affected(statement).await? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_store_is_503_with_retry_after_and_other_failures_500() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for unreachable in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(refused),
        ] {
            let err = StoreError::Database(unreachable);
            assert!(err.is_unavailable(), "{err}");
            let response = OAuthError::from(err).into_response();
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "2");
        }
        for other in [
            StoreError::Database(sqlx::Error::RowNotFound),
            StoreError::UnknownValue {
                column: "status",
                value: "odd".into(),
            },
        ] {
            assert!(!other.is_unavailable(), "{other}");
            let response = OAuthError::from(other).into_response();
            assert_eq!(response.status(), 500);
            assert!(response.headers().get("retry-after").is_none());
        }
    }
}
