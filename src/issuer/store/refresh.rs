//! Refresh tokens (`refresh_tokens`) in families (`refresh_families`), with atomic
//! rotation, and the access tokens a family's refreshes minted (`family_access_tokens`).

use sqlx::Row;

use super::revocations::Revoked;
use super::{Result, Store};

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
    /// The DPoP key (RFC 7638 thumbprint) its tokens are bound to, for a public client
    /// that sent a proof (RFC 9449 §5).
    pub dpop_jkt: Option<String>,
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
    /// When it was spent, if it was.
    pub used_at: Option<i64>,
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

impl Store {
    /// Starts a family with its first token.
    pub async fn create_family(
        &self,
        family: &Family,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO refresh_families (id, client_id, subject, audience, scope, auth_time, created_at, revoked_at, dpop_jkt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8)",
        )
        .bind(&family.id)
        .bind(&family.client_id)
        .bind(&family.subject)
        .bind(&family.audience)
        .bind(&family.scope)
        .bind(family.auth_time)
        .bind(family.created_at)
        .bind(&family.dpop_jkt)
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
                    f.id, f.client_id, f.subject, f.audience, f.scope, f.auth_time, f.created_at, f.revoked_at,
                    f.dpop_jkt
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
            used_at: used,
            family: Family {
                id: row.try_get(4)?,
                client_id: row.try_get(5)?,
                subject: row.try_get(6)?,
                audience: row.try_get(7)?,
                scope: row.try_get(8)?,
                auth_time: row.try_get(9)?,
                created_at: row.try_get(10)?,
                dpop_jkt: row.try_get(12)?,
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
        self.rotate_refresh_with_grace(old_hash, new_hash, new_expires_at, now, i64::MAX)
            .await
    }

    /// [`Store::rotate_refresh`] with a grace window (`issuer.refresh_grace`): a token
    /// spent at or after `grace_since` (a parallel redemption that lost the race), of an
    /// unrevoked family and unexpired, gets `new_hash` stored in its family as well
    /// ([`Rotation::Rotated`]) instead of revoking the family. Spent before that, it is
    /// reuse, as ever.
    pub async fn rotate_refresh_with_grace(
        &self,
        old_hash: &str,
        new_hash: &str,
        new_expires_at: i64,
        now: i64,
        grace_since: i64,
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
        let row = sqlx::query(
            "SELECT t.family_id, t.used_at, f.revoked_at, t.expires_at
             FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id
             WHERE t.token_hash = $1",
        )
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(Rotation::Invalid);
        };
        let family_id: String = row.try_get(0)?;
        let used: Option<i64> = row.try_get(1)?;
        let revoked: Option<i64> = row.try_get(2)?;
        let expires_at: i64 = row.try_get(3)?;
        let in_grace =
            used.is_some_and(|at| at >= grace_since) && revoked.is_none() && expires_at > now;
        if spent == 1 || in_grace {
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
        if used.is_some() {
            let (_, revoked) = revoke_family_in(&mut tx, &family_id, now).await?;
            tx.commit().await?;
            self.announce(&revoked).await;
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
        let insert = sqlx::query(
            "INSERT INTO family_access_tokens (jti, family_id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(family_id)
        .bind(expires_at);
        self.run(insert).await
    }

    /// Revokes a whole family and the access tokens it gave (RFC 7009 §2.1), at once
    /// for the proxy too. True if it was active.
    pub async fn revoke_family(&self, family_id: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let (was_active, revoked) = revoke_family_in(&mut tx, family_id, now).await?;
        tx.commit().await?;
        self.announce(&revoked).await;
        Ok(was_active)
    }
}

/// Puts `jti` (good until `until`) in the deny-list inside `tx`; announce it once
/// committed.
pub(super) async fn deny_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    jti: &str,
    until: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(until)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes a family inside `tx`, with every access token recorded for it
/// (`family_access_tokens`): whether it was active, and those tokens (to announce once
/// committed).
pub(super) async fn revoke_family_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    family_id: &str,
    now: i64,
) -> Result<(bool, Vec<Revoked>)> {
    let was_active = sqlx::query(
        "UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family_id)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, expires_at)
         SELECT jti, expires_at FROM family_access_tokens WHERE family_id = $1 AND expires_at > $2
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(family_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query(
        "SELECT jti, expires_at FROM family_access_tokens WHERE family_id = $1 AND expires_at > $2",
    )
    .bind(family_id)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let revoked = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<Revoked>>>()?;
    Ok((was_active, revoked))
}
