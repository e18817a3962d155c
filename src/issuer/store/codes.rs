//! Authorization codes (`authorization_codes`): single use, and what each was redeemed
//! for, so that a replay revokes it.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::refresh::{deny_in, revoke_family_in};
use super::{Result, Store};

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

impl Store {
    pub async fn insert_code(&self, code: &CodeRecord) -> Result<()> {
        let insert = sqlx::query(
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
        .bind(code.expires_at);
        self.run(insert).await
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
        let update = sqlx::query(
            "UPDATE authorization_codes
             SET used_at = $1, issued_jti = $2, issued_until = $3, issued_family = $4
             WHERE code_hash = $5 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(&issued.jti)
        .bind(issued.until)
        .bind(&issued.family_id)
        .bind(code_hash);
        self.changed_one(update).await
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
        let mut revoked = Vec::new();
        if let (Some(jti), Some(until)) = (jti, until) {
            deny_in(&mut tx, &jti, until).await?;
            revoked.push((jti, until));
        }
        if let Some(family) = family {
            revoked.extend(revoke_family_in(&mut tx, &family, now).await?.1);
        }
        tx.commit().await?;
        self.announce(&revoked).await;
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
}

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
