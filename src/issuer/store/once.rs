//! Values that may be used once (`used_once`): a client assertion's `jti` until the
//! assertion expires (RFC 7523 §3). In the store, so a replay fails on every replica.

use super::{Result, Store, secret_hash};

impl Store {
    /// Records `value` of `kind` for `client_id` as used until `expires_at`: true the
    /// first time (of parallel callers, exactly one), false while it is remembered. A
    /// value whose record has expired may be used again.
    pub async fn use_once(
        &self,
        kind: &str,
        client_id: &str,
        value: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool> {
        // Hashed: a fixed-size key whatever the client sends.
        let key = secret_hash(&format!("{kind}\n{client_id}\n{value}"));
        let upsert = sqlx::query(
            "INSERT INTO used_once (once_key, expires_at) VALUES ($1, $2)
             ON CONFLICT (once_key) DO UPDATE SET expires_at = excluded.expires_at
             WHERE used_once.expires_at <= $3",
        )
        .bind(key)
        .bind(expires_at)
        .bind(now);
        self.changed_one(upsert).await
    }
}
