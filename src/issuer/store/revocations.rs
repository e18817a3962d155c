//! Revoked access tokens (`revoked_tokens`), by `jti`, kept until they would expire.

use super::{Result, Store};

impl Store {
    /// Records a revoked access token until it would have expired anyway.
    pub async fn revoke_jti(&self, jti: &str, expires_at: i64) -> Result<()> {
        let insert = sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at);
        self.run(insert).await
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}
