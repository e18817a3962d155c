//! Browser sessions at the issuer (`sessions`), by the hash of the cookie value.

use sqlx::Row;

use super::refresh::{deny_in, revoke_family_in};
use super::revocations::Revoked;
use super::{Result, Store};

/// A browser session at the issuer (the cookie holds the id; the store its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_hash: String,
    pub subject: String,
    pub auth_time: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

impl Store {
    pub async fn insert_session(&self, session: &SessionRecord) -> Result<()> {
        let insert = sqlx::query(
            "INSERT INTO sessions (session_hash, subject, auth_time, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.session_hash)
        .bind(&session.subject)
        .bind(session.auth_time)
        .bind(session.created_at)
        .bind(session.expires_at);
        self.run(insert).await
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
        let delete = sqlx::query("DELETE FROM sessions WHERE session_hash = $1").bind(session_hash);
        self.changed_one(delete).await
    }

    /// Ends a session (sign-out) and revokes what was issued from it: the refresh
    /// families and the code-redeemed access tokens of its sign-in (same `sub` and
    /// `auth_time`), with every access token recorded for those families. True if the
    /// session existed.
    pub async fn end_session(&self, session_hash: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "DELETE FROM sessions WHERE session_hash = $1 RETURNING subject, auth_time",
        )
        .bind(session_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let subject: String = row.try_get(0)?;
        let auth_time: i64 = row.try_get(1)?;
        let families = sqlx::query(
            "SELECT id FROM refresh_families
             WHERE subject = $1 AND auth_time = $2 AND revoked_at IS NULL",
        )
        .bind(&subject)
        .bind(auth_time)
        .fetch_all(&mut *tx)
        .await?;
        let mut revoked: Vec<Revoked> = Vec::new();
        for family in families {
            let id: String = family.try_get(0)?;
            revoked.extend(revoke_family_in(&mut tx, &id, now).await?.1);
        }
        let codes = sqlx::query(
            "SELECT issued_jti, issued_until FROM authorization_codes
             WHERE subject = $1 AND auth_time = $2 AND issued_jti IS NOT NULL AND issued_until > $3",
        )
        .bind(&subject)
        .bind(auth_time)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for code in codes {
            let jti: String = code.try_get(0)?;
            let until: i64 = code.try_get(1)?;
            deny_in(&mut tx, &jti, until).await?;
            revoked.push((jti, until));
        }
        tx.commit().await?;
        self.announce(&revoked).await;
        Ok(true)
    }
}
