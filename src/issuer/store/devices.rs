//! Device authorizations (`device_codes`, RFC 8628): pending until decided, consumed
//! once.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError};

/// Where a device authorization stands: `pending` until the person at `/activate`
/// decides, then `approved` or `denied`; `consumed` once its tokens were issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Pending,
    Approved,
    Denied,
    Consumed,
}

impl DeviceStatus {
    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Denied => "denied",
            DeviceStatus::Consumed => "consumed",
        }
    }

    fn parse(text: String) -> Result<DeviceStatus> {
        match text.as_str() {
            "pending" => Ok(DeviceStatus::Pending),
            "approved" => Ok(DeviceStatus::Approved),
            "denied" => Ok(DeviceStatus::Denied),
            "consumed" => Ok(DeviceStatus::Consumed),
            _ => Err(StoreError::UnknownValue {
                column: "device_codes.status",
                value: text,
            }),
        }
    }
}

/// A device authorization (RFC 8628).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_code_hash: String,
    pub user_code: String,
    pub client_id: String,
    pub audience: Option<String>,
    pub scope: String,
    pub status: DeviceStatus,
    pub subject: Option<String>,
    pub auth_time: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
    pub interval_secs: i64,
    pub last_polled_at: Option<i64>,
}

impl Store {
    pub async fn insert_device_code(&self, device: &DeviceRecord) -> Result<()> {
        let insert = sqlx::query(
            "INSERT INTO device_codes (device_code_hash, user_code, client_id, audience, scope, status,
                subject, auth_time, created_at, expires_at, interval_secs, last_polled_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&device.device_code_hash)
        .bind(&device.user_code)
        .bind(&device.client_id)
        .bind(&device.audience)
        .bind(&device.scope)
        .bind(device.status.as_str())
        .bind(&device.subject)
        .bind(device.auth_time)
        .bind(device.created_at)
        .bind(device.expires_at)
        .bind(device.interval_secs)
        .bind(device.last_polled_at);
        self.run(insert).await
    }

    pub async fn find_device_by_user_code(&self, user_code: &str) -> Result<Option<DeviceRecord>> {
        self.find_device_where("user_code", user_code).await
    }

    pub async fn find_device(&self, device_code_hash: &str) -> Result<Option<DeviceRecord>> {
        self.find_device_where("device_code_hash", device_code_hash)
            .await
    }

    /// The device authorization whose `column` (a unique one) is `value`.
    async fn find_device_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<DeviceRecord>> {
        // Built from constants only.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEVICE_SELECT} WHERE {column} = $1"
        )))
        .bind(value)
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
            DeviceStatus::Approved
        } else {
            DeviceStatus::Denied
        };
        let update = sqlx::query(
            "UPDATE device_codes SET status = $1, subject = $2, auth_time = $3
             WHERE user_code = $4 AND status = 'pending' AND expires_at > $5",
        )
        .bind(status.as_str())
        .bind(approved_subject)
        .bind(auth_time)
        .bind(user_code)
        .bind(now);
        self.changed_one(update).await
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
        let update =
            sqlx::query("UPDATE device_codes SET last_polled_at = $1 WHERE device_code_hash = $2")
                .bind(now)
                .bind(device_code_hash);
        self.run(update).await?;
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
}

const DEVICE_COLUMNS: &str = "device_code_hash, user_code, client_id, audience, scope, status, subject, auth_time, created_at, expires_at, interval_secs, last_polled_at";
const DEVICE_SELECT: &str = "SELECT device_code_hash, user_code, client_id, audience, scope, status, subject, auth_time, created_at, expires_at, interval_secs, last_polled_at FROM device_codes";

fn device_from_row(row: &AnyRow) -> Result<DeviceRecord> {
    Ok(DeviceRecord {
        device_code_hash: row.try_get(0)?,
        user_code: row.try_get(1)?,
        client_id: row.try_get(2)?,
        audience: row.try_get(3)?,
        scope: row.try_get(4)?,
        status: DeviceStatus::parse(row.try_get(5)?)?,
        subject: row.try_get(6)?,
        auth_time: row.try_get(7)?,
        created_at: row.try_get(8)?,
        expires_at: row.try_get(9)?,
        interval_secs: row.try_get(10)?,
        last_polled_at: row.try_get(11)?,
    })
}
