//! The schema, versioned in `scopegate_migrations` and applied at [`Store::open`] (on
//! PostgreSQL under an advisory lock, so replicas starting together do not race).

use sqlx::Row;

use super::{Backend, Result, Store, StoreError};

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
    &[
        // Version 3: pushed authorization requests (RFC 9126), and values that may be
        // used once (client assertion `jti`s, RFC 7523 §3).
        "CREATE TABLE IF NOT EXISTS pushed_requests (
            uri_hash TEXT PRIMARY KEY,
            client_id TEXT NOT NULL,
            params TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT)",
        // The DPoP key a public client's refresh family is bound to (RFC 9449 §5).
        "ALTER TABLE refresh_families ADD COLUMN dpop_jkt TEXT",
        "CREATE TABLE IF NOT EXISTS used_once (
            once_key TEXT PRIMARY KEY,
            expires_at BIGINT NOT NULL)",
    ],
];

/// An arbitrary constant naming Scopegate's migration lock on PostgreSQL.
const PG_MIGRATION_LOCK: i64 = 0x5c09e6a7e;

impl Store {
    pub(super) async fn migrate(&self) -> Result<()> {
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
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
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
                .bind(self.clock.unix_secs())
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
}
