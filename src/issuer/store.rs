//! The issuer's durable state, one API over two backends: an embedded SQLite file (the
//! default, `sqlite://scopegate.db`, created on first start) or PostgreSQL
//! (`postgres://...`, for several replicas sharing it). One code path through sqlx's Any
//! driver: every statement is plain SQL both dialects accept, with `$N` placeholders.
//!
//! Migrations run at [`Store::open`], versioned in `scopegate_migrations` (on PostgreSQL
//! under an advisory lock, so replicas starting together do not race).
//!
//! Secrets are never stored in the clear: refresh tokens, authorization codes, device
//! codes and session ids are kept as SHA-256 hashes ([`secret_hash`]); private keys as PKCS#8, encrypted
//! when a key-encryption key is configured (see `keys.rs`).
//!
//! Writes that must be atomic under concurrency are single conditional statements (or a
//! transaction that starts with one): refresh rotation, code redemption and device-code
//! consumption each let exactly one of several parallel callers win.
//!
//! Schema (version 2; times are Unix seconds, `BIGINT`):
//!
//! | table | columns |
//! |---|---|
//! | `signing_keys` | `kid` PK, `alg`, `private_key` (base64url PKCS#8 or `v1.` + AES-256-GCM), `encryption` (`none` \| `aes-256-gcm`), `public_jwk`, `created_at`, `rotated_at` |
//! | `refresh_families` | `id` PK, `client_id`, `subject`, `audience`, `scope`, `auth_time`, `created_at`, `revoked_at` |
//! | `refresh_tokens` | `token_hash` PK, `family_id`, `created_at`, `expires_at`, `used_at` |
//! | `authorization_codes` | `code_hash` PK, `client_id`, `redirect_uri`, `subject`, `audience`, `scope`, `nonce`, `code_challenge`, `code_challenge_method`, `auth_time`, `created_at`, `expires_at`, `used_at`; since v2 what it was redeemed for: `issued_jti`, `issued_until`, `issued_family`, and `replayed_at` |
//! | `device_codes` | `device_code_hash` PK, `user_code` UNIQUE, `client_id`, `audience`, `scope`, `status` (`pending` \| `approved` \| `denied` \| `consumed`), `subject`, `auth_time`, `created_at`, `expires_at`, `interval_secs`, `last_polled_at` |
//! | `revoked_tokens` | `jti` PK, `expires_at` |
//! | `login_throttle` | `throttle_key` PK (`user:<name>` \| `ip:<addr>` \| `user_code:<addr>`), `failures`, `window_start` |
//! | `sessions` (v2) | `session_hash` PK (SHA-256 of the cookie value), `subject`, `auth_time`, `created_at`, `expires_at` |
//! | `family_access_tokens` (v2) | `jti` PK, `family_id`, `expires_at`: access tokens minted by a refresh |

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A store error: the message is safe to log (no secrets; URLs are redacted).
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError(err.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The issuer's store. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
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

/// A stored signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub private_key: String,
    pub encryption: String,
    pub public_jwk: String,
    pub created_at: i64,
    pub rotated_at: Option<i64>,
}

/// A refresh-token family: one login, all its rotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub id: String,
    pub client_id: String,
    pub subject: String,
    pub audience: Option<String>,
    pub scope: String,
    pub auth_time: i64,
    pub created_at: i64,
}

/// A refresh token as found by its hash, with its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    pub token_hash: String,
    pub family: Family,
    pub family_revoked: bool,
    pub created_at: i64,
    pub expires_at: i64,
    pub used: bool,
}

/// An authorization code (redeemed by the code grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRecord {
    pub code_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub subject: String,
    pub audience: Option<String>,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub auth_time: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A code as found by its hash, redeemed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundCode {
    pub record: CodeRecord,
    pub used: bool,
}

/// What a code is redeemed for: the access token's `jti` and expiry, and the refresh
/// family (if a refresh token is issued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeIssue {
    pub jti: String,
    pub until: i64,
    pub family_id: Option<String>,
}

/// A browser session at the issuer (the cookie holds the id; the store its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_hash: String,
    pub subject: String,
    pub auth_time: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A device authorization (RFC 8628).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_code_hash: String,
    pub user_code: String,
    pub client_id: String,
    pub audience: Option<String>,
    pub scope: String,
    pub status: String,
    pub subject: Option<String>,
    pub auth_time: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
    pub interval_secs: i64,
    pub last_polled_at: Option<i64>,
}

/// What rotating a refresh token came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// This caller won: the old token is spent, the new one stored.
    Rotated,
    /// The token was already spent (reuse, or a parallel redemption won): the family is
    /// now revoked.
    Reused,
    /// Unknown, expired, or its family is revoked.
    Invalid,
}

/// The migrations, in order. Each entry is one version: statements run one by one.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS signing_keys (
        kid TEXT PRIMARY KEY,
        alg TEXT NOT NULL,
        private_key TEXT NOT NULL,
        encryption TEXT NOT NULL,
        public_jwk TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        rotated_at BIGINT)",
        "CREATE TABLE IF NOT EXISTS refresh_families (
        id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        audience TEXT,
        scope TEXT NOT NULL,
        auth_time BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT)",
        "CREATE TABLE IF NOT EXISTS refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        family_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT)",
        "CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family_id)",
        "CREATE TABLE IF NOT EXISTS authorization_codes (
        code_hash TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        subject TEXT NOT NULL,
        audience TEXT,
        scope TEXT NOT NULL,
        nonce TEXT,
        code_challenge TEXT,
        code_challenge_method TEXT,
        auth_time BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT)",
        "CREATE TABLE IF NOT EXISTS device_codes (
        device_code_hash TEXT PRIMARY KEY,
        user_code TEXT NOT NULL UNIQUE,
        client_id TEXT NOT NULL,
        audience TEXT,
        scope TEXT NOT NULL,
        status TEXT NOT NULL,
        subject TEXT,
        auth_time BIGINT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        interval_secs BIGINT NOT NULL,
        last_polled_at BIGINT)",
        "CREATE TABLE IF NOT EXISTS revoked_tokens (
        jti TEXT PRIMARY KEY,
        expires_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS login_throttle (
        throttle_key TEXT PRIMARY KEY,
        failures BIGINT NOT NULL,
        window_start BIGINT NOT NULL)",
    ],
    &[
        // Version 2: browser sessions, and what each authorization code was redeemed for
        // (so that a replayed code revokes those tokens).
        "CREATE TABLE IF NOT EXISTS sessions (
        session_hash TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        auth_time BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL)",
        "ALTER TABLE authorization_codes ADD COLUMN issued_jti TEXT",
        "ALTER TABLE authorization_codes ADD COLUMN issued_until BIGINT",
        "ALTER TABLE authorization_codes ADD COLUMN issued_family TEXT",
        "ALTER TABLE authorization_codes ADD COLUMN replayed_at BIGINT",
        // Access tokens minted by refreshing a family, so that a replayed code (which
        // revokes its family) revokes them too.
        "CREATE TABLE IF NOT EXISTS family_access_tokens (
            jti TEXT PRIMARY KEY,
            family_id TEXT NOT NULL,
            expires_at BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS family_access_tokens_family ON family_access_tokens (family_id)",
    ],
];

/// An arbitrary constant naming Scopegate's migration lock on PostgreSQL.
const PG_MIGRATION_LOCK: i64 = 0x5c09e6a7e;

impl Store {
    /// Connects to `url` (`sqlite://FILE`, `sqlite::memory:`, `postgres://...`), creating a
    /// SQLite file if missing, and applies migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let redacted = crate::config::issuer::redact_url(url);
        let (backend, connect_url, max) = Store::plan(url)?;
        let pool = Store::pool_options(backend, max)
            .connect(&connect_url)
            .await
            .map_err(|err| StoreError(format!("cannot open {redacted}: {err}")))?;
        let store = Store { pool, backend };
        if backend == Backend::Sqlite && max > 1 {
            // WAL lets readers work beside the one writer; the mode sticks to the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&store.pool)
                .await
                .map_err(|err| StoreError(format!("{redacted}: {err}")))?;
        }
        store
            .migrate()
            .await
            .map_err(|err| StoreError(format!("migrating {redacted}: {}", err.0)))?;
        Ok(store)
    }

    /// A pool that connects on first use (no I/O now), for a store that
    /// [`Store::open`] has already created and migrated.
    pub fn connect_lazy(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, connect_url, max) = Store::plan(url)?;
        let pool = Store::pool_options(backend, max)
            .connect_lazy(&connect_url)
            .map_err(|err| {
                StoreError(format!(
                    "cannot open {}: {err}",
                    crate::config::issuer::redact_url(url)
                ))
            })?;
        Ok(Store { pool, backend })
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
            Err(StoreError(format!(
                "{:?} is not a store URL",
                crate::config::issuer::redact_url(url)
            )))
        }
    }

    fn pool_options(backend: Backend, max: u32) -> AnyPoolOptions {
        let mut options = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10));
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

    /// Closes the pool (tests that reopen the same file).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS scopegate_migrations (
                version BIGINT PRIMARY KEY,
                applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let current: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) FROM scopegate_migrations")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError(format!(
                "the store's schema is version {current}, newer than this build knows ({known}); upgrade Scopegate"
            )));
        }
        for (index, statements) in MIGRATIONS.iter().enumerate() {
            let version = index as i64 + 1;
            if version <= current {
                continue;
            }
            for statement in *statements {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO scopegate_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(now())
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, backend = ?self.backend, "issuer store migrated");
        }
        tx.commit().await?;
        Ok(())
    }

    /// The schema version in the store.
    pub async fn schema_version(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COALESCE(MAX(version), 0) FROM scopegate_migrations")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    // ---- signing keys ----

    pub async fn load_keys(&self) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query(
            "SELECT kid, alg, private_key, encryption, public_jwk, created_at, rotated_at
             FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredKey {
                    kid: row.try_get(0)?,
                    alg: row.try_get(1)?,
                    private_key: row.try_get(2)?,
                    encryption: row.try_get(3)?,
                    public_jwk: row.try_get(4)?,
                    created_at: row.try_get(5)?,
                    rotated_at: row.try_get(6)?,
                })
            })
            .collect()
    }

    async fn insert_key_in<'c, E>(executor: E, key: &StoredKey) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, private_key, encryption, public_jwk, created_at, rotated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.private_key)
        .bind(&key.encryption)
        .bind(&key.public_jwk)
        .bind(key.created_at)
        .bind(key.rotated_at)
        .execute(executor)
        .await?;
        Ok(())
    }

    pub async fn insert_key(&self, key: &StoredKey) -> Result<()> {
        Store::insert_key_in(&self.pool, key).await
    }

    /// Retires `old_kid` and stores `new` in one transaction, only if `old_kid` is still
    /// active: false means another replica rotated first (reload and use its key).
    pub async fn rotate_key(&self, old_kid: &str, new: &StoredKey, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let retired = sqlx::query(
            "UPDATE signing_keys SET rotated_at = $1 WHERE kid = $2 AND rotated_at IS NULL",
        )
        .bind(now)
        .bind(old_kid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if retired != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        Store::insert_key_in(&mut *tx, new).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Retires a key that is still active. False if it was retired already.
    pub async fn retire_key(&self, kid: &str, now: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE signing_keys SET rotated_at = $1 WHERE kid = $2 AND rotated_at IS NULL",
        )
        .bind(now)
        .bind(kid)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Deletes keys retired before `before` (their tokens have all expired).
    pub async fn delete_keys_retired_before(&self, before: i64) -> Result<u64> {
        Ok(
            sqlx::query(
                "DELETE FROM signing_keys WHERE rotated_at IS NOT NULL AND rotated_at < $1",
            )
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected(),
        )
    }

    // ---- refresh tokens ----

    /// Starts a family with its first token.
    pub async fn create_family(
        &self,
        family: &Family,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO refresh_families (id, client_id, subject, audience, scope, auth_time, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        )
        .bind(&family.id)
        .bind(&family.client_id)
        .bind(&family.subject)
        .bind(&family.audience)
        .bind(&family.scope)
        .bind(family.auth_time)
        .bind(family.created_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, created_at, expires_at, used_at)
             VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(token_hash)
        .bind(&family.id)
        .bind(family.created_at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Finds a refresh token by its hash (read only).
    pub async fn find_refresh(&self, token_hash: &str) -> Result<Option<RefreshRecord>> {
        let row = sqlx::query(
            "SELECT t.token_hash, t.created_at, t.expires_at, t.used_at,
                    f.id, f.client_id, f.subject, f.audience, f.scope, f.auth_time, f.created_at, f.revoked_at
             FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id
             WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let used: Option<i64> = row.try_get(3)?;
        let revoked: Option<i64> = row.try_get(11)?;
        Ok(Some(RefreshRecord {
            token_hash: row.try_get(0)?,
            created_at: row.try_get(1)?,
            expires_at: row.try_get(2)?,
            used: used.is_some(),
            family: Family {
                id: row.try_get(4)?,
                client_id: row.try_get(5)?,
                subject: row.try_get(6)?,
                audience: row.try_get(7)?,
                scope: row.try_get(8)?,
                auth_time: row.try_get(9)?,
                created_at: row.try_get(10)?,
            },
            family_revoked: revoked.is_some(),
        }))
    }

    /// Spends `old_hash` and stores `new_hash` in the same family, atomically: of several
    /// parallel callers exactly one gets [`Rotation::Rotated`]; the others find the token
    /// spent, which is reuse, and the family is revoked.
    pub async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        new_expires_at: i64,
        now: i64,
    ) -> Result<Rotation> {
        let mut tx = self.pool.begin().await?;
        // The first statement writes, so SQLite takes its write lock at once (no
        // read-then-upgrade deadlock) and PostgreSQL locks the row.
        let spent = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1
             WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1
               AND family_id IN (SELECT id FROM refresh_families WHERE revoked_at IS NULL)",
        )
        .bind(now)
        .bind(old_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row =
            sqlx::query("SELECT family_id, used_at FROM refresh_tokens WHERE token_hash = $1")
                .bind(old_hash)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(Rotation::Invalid);
        };
        let family_id: String = row.try_get(0)?;
        if spent == 1 {
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, family_id, created_at, expires_at, used_at)
                 VALUES ($1, $2, $3, $4, NULL)",
            )
            .bind(new_hash)
            .bind(&family_id)
            .bind(now)
            .bind(new_expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Rotation::Rotated);
        }
        let used: Option<i64> = row.try_get(1)?;
        if used.is_some() {
            sqlx::query(
                "UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(&family_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Rotation::Reused);
        }
        tx.rollback().await?;
        Ok(Rotation::Invalid)
    }

    /// Records an access token minted by refreshing `family_id` (see
    /// [`Store::replay_code`]).
    pub async fn record_family_access(
        &self,
        family_id: &str,
        jti: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO family_access_tokens (jti, family_id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(family_id)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revokes a whole family. True if it was active.
    pub async fn revoke_family(&self, family_id: &str, now: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(family_id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    // ---- authorization codes ----

    pub async fn insert_code(&self, code: &CodeRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO authorization_codes (code_hash, client_id, redirect_uri, subject, audience, scope,
                nonce, code_challenge, code_challenge_method, auth_time, created_at, expires_at, used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL)",
        )
        .bind(&code.code_hash)
        .bind(&code.client_id)
        .bind(&code.redirect_uri)
        .bind(&code.subject)
        .bind(&code.audience)
        .bind(&code.scope)
        .bind(&code.nonce)
        .bind(&code.code_challenge)
        .bind(&code.code_challenge_method)
        .bind(code.auth_time)
        .bind(code.created_at)
        .bind(code.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Redeems a code: marks it used and returns it, atomically, if it exists, is unused
    /// and unexpired. Of several parallel callers exactly one gets `Some`.
    pub async fn consume_code(&self, code_hash: &str, now: i64) -> Result<Option<CodeRecord>> {
        let row = sqlx::query(
            "UPDATE authorization_codes SET used_at = $1
             WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1
             RETURNING code_hash, client_id, redirect_uri, subject, audience, scope, nonce,
                       code_challenge, code_challenge_method, auth_time, created_at, expires_at",
        )
        .bind(now)
        .bind(code_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| code_from_row(&row)).transpose()
    }

    /// Finds a code by its hash (read only), whether or not it was redeemed.
    pub async fn find_code(&self, code_hash: &str) -> Result<Option<FoundCode>> {
        let row = sqlx::query(
            "SELECT code_hash, client_id, redirect_uri, subject, audience, scope, nonce,
                    code_challenge, code_challenge_method, auth_time, created_at, expires_at, used_at
             FROM authorization_codes WHERE code_hash = $1",
        )
        .bind(code_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let used: Option<i64> = row.try_get(12)?;
        Ok(Some(FoundCode {
            record: code_from_row(&row)?,
            used: used.is_some(),
        }))
    }

    /// Redeems a code for the tokens about to be issued (the access token's `jti` and
    /// expiry, the refresh family if any), atomically: true for exactly one of several
    /// parallel callers, and only while the code is unused and unexpired. What it was
    /// redeemed for is kept with it, so that [`Store::replay_code`] can revoke it.
    pub async fn redeem_code(&self, code_hash: &str, now: i64, issued: &CodeIssue) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE authorization_codes
             SET used_at = $1, issued_jti = $2, issued_until = $3, issued_family = $4
             WHERE code_hash = $5 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(&issued.jti)
        .bind(issued.until)
        .bind(&issued.family_id)
        .bind(code_hash)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// A redeemed code was presented again: marks it replayed and, in one transaction,
    /// revokes what it was redeemed for: the access token (by `jti`), the refresh family,
    /// and the access tokens minted by refreshing that family.
    /// False if the code is unknown or was never redeemed.
    pub async fn replay_code(&self, code_hash: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE authorization_codes SET replayed_at = COALESCE(replayed_at, $1)
             WHERE code_hash = $2 AND used_at IS NOT NULL
             RETURNING issued_jti, issued_until, issued_family",
        )
        .bind(now)
        .bind(code_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let jti: Option<String> = row.try_get(0)?;
        let until: Option<i64> = row.try_get(1)?;
        let family: Option<String> = row.try_get(2)?;
        if let (Some(jti), Some(until)) = (jti, until) {
            sqlx::query(
                "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
            )
            .bind(jti)
            .bind(until)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(family) = family {
            sqlx::query(
                "UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(&family)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO revoked_tokens (jti, expires_at)
                 SELECT jti, expires_at FROM family_access_tokens WHERE family_id = $1
                 ON CONFLICT (jti) DO NOTHING",
            )
            .bind(&family)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// True if a code has been presented again since it was redeemed.
    pub async fn code_replayed(&self, code_hash: &str) -> Result<bool> {
        let row = sqlx::query("SELECT replayed_at FROM authorization_codes WHERE code_hash = $1")
            .bind(code_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<i64>, _>(0)?.is_some(),
            None => false,
        })
    }

    // ---- sessions ----

    pub async fn insert_session(&self, session: &SessionRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (session_hash, subject, auth_time, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.session_hash)
        .bind(&session.subject)
        .bind(session.auth_time)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A session by the hash of its id, if it has not expired.
    pub async fn find_session(
        &self,
        session_hash: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT session_hash, subject, auth_time, created_at, expires_at FROM sessions
             WHERE session_hash = $1 AND expires_at > $2",
        )
        .bind(session_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SessionRecord {
            session_hash: row.try_get(0)?,
            subject: row.try_get(1)?,
            auth_time: row.try_get(2)?,
            created_at: row.try_get(3)?,
            expires_at: row.try_get(4)?,
        }))
    }

    /// Ends a session. True if it existed.
    pub async fn delete_session(&self, session_hash: &str) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM sessions WHERE session_hash = $1")
            .bind(session_hash)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    // ---- device codes ----

    pub async fn insert_device_code(&self, device: &DeviceRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO device_codes (device_code_hash, user_code, client_id, audience, scope, status,
                subject, auth_time, created_at, expires_at, interval_secs, last_polled_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&device.device_code_hash)
        .bind(&device.user_code)
        .bind(&device.client_id)
        .bind(&device.audience)
        .bind(&device.scope)
        .bind(&device.status)
        .bind(&device.subject)
        .bind(device.auth_time)
        .bind(device.created_at)
        .bind(device.expires_at)
        .bind(device.interval_secs)
        .bind(device.last_polled_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn find_device_by_user_code(&self, user_code: &str) -> Result<Option<DeviceRecord>> {
        // Built from constants only.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEVICE_SELECT} WHERE user_code = $1"
        )))
        .bind(user_code)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| device_from_row(&row)).transpose()
    }

    pub async fn find_device(&self, device_code_hash: &str) -> Result<Option<DeviceRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEVICE_SELECT} WHERE device_code_hash = $1"
        )))
        .bind(device_code_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| device_from_row(&row)).transpose()
    }

    /// Approves (with the user who logged in) or denies a pending, unexpired device
    /// authorization. False if it was not pending any more.
    pub async fn decide_device(
        &self,
        user_code: &str,
        approved_subject: Option<&str>,
        auth_time: i64,
        now: i64,
    ) -> Result<bool> {
        let status = if approved_subject.is_some() {
            "approved"
        } else {
            "denied"
        };
        Ok(sqlx::query(
            "UPDATE device_codes SET status = $1, subject = $2, auth_time = $3
             WHERE user_code = $4 AND status = 'pending' AND expires_at > $5",
        )
        .bind(status)
        .bind(approved_subject)
        .bind(auth_time)
        .bind(user_code)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Records a poll; returns the previous poll time (for `slow_down`).
    pub async fn touch_device_poll(&self, device_code_hash: &str, now: i64) -> Result<Option<i64>> {
        let previous =
            sqlx::query("SELECT last_polled_at FROM device_codes WHERE device_code_hash = $1")
                .bind(device_code_hash)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get::<Option<i64>, _>(0))
                .transpose()?
                .flatten();
        sqlx::query("UPDATE device_codes SET last_polled_at = $1 WHERE device_code_hash = $2")
            .bind(now)
            .bind(device_code_hash)
            .execute(&self.pool)
            .await?;
        Ok(previous)
    }

    /// `slow_down`: lengthens a device code's polling interval by `by` seconds (RFC 8628
    /// §3.5) and returns the new interval.
    pub async fn slow_down_device(&self, device_code_hash: &str, by: i64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "UPDATE device_codes SET interval_secs = interval_secs + $1
             WHERE device_code_hash = $2 RETURNING interval_secs",
        )
        .bind(by)
        .bind(device_code_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| row.try_get(0).map_err(StoreError::from))
            .transpose()
    }

    /// Spends an approved device code atomically; exactly one of parallel callers gets it.
    pub async fn consume_device(
        &self,
        device_code_hash: &str,
        now: i64,
    ) -> Result<Option<DeviceRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE device_codes SET status = 'consumed'
             WHERE device_code_hash = $1 AND status = 'approved' AND expires_at > $2
             RETURNING {DEVICE_COLUMNS}"
        )))
        .bind(device_code_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| device_from_row(&row)).transpose()
    }

    // ---- access-token revocation ----

    /// Records a revoked access token until it would have expired anyway.
    pub async fn revoke_jti(&self, jti: &str, expires_at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    // ---- login throttling ----

    /// Failures counted for `key` in the window that is still open at `now`, and when that
    /// window closes.
    pub async fn failures(&self, key: &str, now: i64, window: i64) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT failures, window_start FROM login_throttle WHERE throttle_key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok((0, now)) };
        let failures: i64 = row.try_get(0)?;
        let start: i64 = row.try_get(1)?;
        if start + window <= now {
            return Ok((0, now));
        }
        Ok((failures, start + window))
    }

    /// Counts one failure for `key`; a window older than `window` seconds starts over.
    pub async fn record_failure(&self, key: &str, now: i64, window: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO login_throttle (throttle_key, failures, window_start) VALUES ($1, 1, $2)
             ON CONFLICT (throttle_key) DO UPDATE SET
               failures = CASE WHEN login_throttle.window_start + $3 <= $2 THEN 1
                               ELSE login_throttle.failures + 1 END,
               window_start = CASE WHEN login_throttle.window_start + $3 <= $2 THEN $2
                                   ELSE login_throttle.window_start END",
        )
        .bind(key)
        .bind(now)
        .bind(window)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn clear_failures(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_throttle WHERE throttle_key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- housekeeping ----

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

const DEVICE_COLUMNS: &str = "device_code_hash, user_code, client_id, audience, scope, status, subject, auth_time, created_at, expires_at, interval_secs, last_polled_at";
const DEVICE_SELECT: &str = "SELECT device_code_hash, user_code, client_id, audience, scope, status, subject, auth_time, created_at, expires_at, interval_secs, last_polled_at FROM device_codes";

fn code_from_row(row: &AnyRow) -> Result<CodeRecord> {
    Ok(CodeRecord {
        code_hash: row.try_get(0)?,
        client_id: row.try_get(1)?,
        redirect_uri: row.try_get(2)?,
        subject: row.try_get(3)?,
        audience: row.try_get(4)?,
        scope: row.try_get(5)?,
        nonce: row.try_get(6)?,
        code_challenge: row.try_get(7)?,
        code_challenge_method: row.try_get(8)?,
        auth_time: row.try_get(9)?,
        created_at: row.try_get(10)?,
        expires_at: row.try_get(11)?,
    })
}

fn device_from_row(row: &AnyRow) -> Result<DeviceRecord> {
    Ok(DeviceRecord {
        device_code_hash: row.try_get(0)?,
        user_code: row.try_get(1)?,
        client_id: row.try_get(2)?,
        audience: row.try_get(3)?,
        scope: row.try_get(4)?,
        status: row.try_get(5)?,
        subject: row.try_get(6)?,
        auth_time: row.try_get(7)?,
        created_at: row.try_get(8)?,
        expires_at: row.try_get(9)?,
        interval_secs: row.try_get(10)?,
        last_polled_at: row.try_get(11)?,
    })
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
