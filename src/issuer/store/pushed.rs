//! Pushed authorization requests (`pushed_requests`, RFC 9126): the parameters a client
//! pushed, under the hash of their `request_uri`, redeemable once before they expire.
//! In the store, so the replica that answers `/authorize` need not be the one that
//! took the push.

use sqlx::Row;

use super::{Result, Store};

/// A pushed authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedRequest {
    /// SHA-256 of the `request_uri` ([`super::secret_hash`]).
    pub uri_hash: String,
    pub client_id: String,
    /// The request's parameters, form-encoded.
    pub params: String,
    pub expires_at: i64,
}

impl Store {
    pub async fn insert_pushed(&self, pushed: &PushedRequest) -> Result<()> {
        let insert = sqlx::query(
            "INSERT INTO pushed_requests (uri_hash, client_id, params, expires_at, used_at)
             VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(&pushed.uri_hash)
        .bind(&pushed.client_id)
        .bind(&pushed.params)
        .bind(pushed.expires_at);
        self.run(insert).await
    }

    /// A pushed request that is unused and unexpired (read only: a sign-in page may come
    /// between finding it and redeeming it).
    pub async fn find_pushed(&self, uri_hash: &str, now: i64) -> Result<Option<PushedRequest>> {
        let row = sqlx::query(
            "SELECT uri_hash, client_id, params, expires_at FROM pushed_requests
             WHERE uri_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(uri_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(PushedRequest {
            uri_hash: row.try_get(0)?,
            client_id: row.try_get(1)?,
            params: row.try_get(2)?,
            expires_at: row.try_get(3)?,
        }))
    }

    /// Redeems a pushed request: true for exactly one of several parallel callers, and
    /// only while it is unused and unexpired.
    pub async fn redeem_pushed(&self, uri_hash: &str, now: i64) -> Result<bool> {
        let update = sqlx::query(
            "UPDATE pushed_requests SET used_at = $1
             WHERE uri_hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(uri_hash);
        self.changed_one(update).await
    }
}
