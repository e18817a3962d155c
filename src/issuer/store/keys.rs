//! Signing keys (`signing_keys`): stored, rotated once among replicas, retired, deleted.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError};
use crate::jose::Alg;

/// How a private key is kept: `none` (base64url PKCS#8) or `aes-256-gcm` (sealed with
/// the key-encryption key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEncryptionScheme {
    Plain,
    Aes256Gcm,
}

impl KeyEncryptionScheme {
    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEncryptionScheme::Plain => "none",
            KeyEncryptionScheme::Aes256Gcm => "aes-256-gcm",
        }
    }

    fn parse(text: String) -> Result<KeyEncryptionScheme> {
        match text.as_str() {
            "none" => Ok(KeyEncryptionScheme::Plain),
            "aes-256-gcm" => Ok(KeyEncryptionScheme::Aes256Gcm),
            _ => Err(StoreError::UnknownValue {
                column: "signing_keys.encryption",
                value: text,
            }),
        }
    }
}

/// A stored signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub alg: Alg,
    pub private_key: String,
    pub encryption: KeyEncryptionScheme,
    pub public_jwk: String,
    pub created_at: i64,
    pub rotated_at: Option<i64>,
}

impl Store {
    pub async fn load_keys(&self) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query(
            "SELECT kid, alg, private_key, encryption, public_jwk, created_at, rotated_at
             FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
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
        .bind(key.alg.name())
        .bind(&key.private_key)
        .bind(key.encryption.as_str())
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
        let update = sqlx::query(
            "UPDATE signing_keys SET rotated_at = $1 WHERE kid = $2 AND rotated_at IS NULL",
        )
        .bind(now)
        .bind(kid);
        self.changed_one(update).await
    }

    /// Deletes keys retired before `before` (their tokens have all expired).
    pub async fn delete_keys_retired_before(&self, before: i64) -> Result<u64> {
        let delete = sqlx::query(
            "DELETE FROM signing_keys WHERE rotated_at IS NOT NULL AND rotated_at < $1",
        )
        .bind(before);
        self.rows_affected(delete).await
    }
}

fn key_from_row(row: &AnyRow) -> Result<StoredKey> {
    let alg: String = row.try_get(1)?;
    Ok(StoredKey {
        kid: row.try_get(0)?,
        alg: Alg::from_name(&alg).ok_or(StoreError::UnknownValue {
            column: "signing_keys.alg",
            value: alg,
        })?,
        private_key: row.try_get(2)?,
        encryption: KeyEncryptionScheme::parse(row.try_get(3)?)?,
        public_jwk: row.try_get(4)?,
        created_at: row.try_get(5)?,
        rotated_at: row.try_get(6)?,
    })
}
