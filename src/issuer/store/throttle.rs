//! Login throttling windows (`login_throttle`), shared by replicas.

use sqlx::Row;

use super::{Result, Store};

impl Store {
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
        let insert = sqlx::query(
            "INSERT INTO login_throttle (throttle_key, failures, window_start) VALUES ($1, 1, $2)
             ON CONFLICT (throttle_key) DO UPDATE SET
               failures = CASE WHEN login_throttle.window_start + $3 <= $2 THEN 1
                               ELSE login_throttle.failures + 1 END,
               window_start = CASE WHEN login_throttle.window_start + $3 <= $2 THEN $2
                                   ELSE login_throttle.window_start END",
        )
        .bind(key)
        .bind(now)
        .bind(window);
        self.run(insert).await
    }

    pub async fn clear_failures(&self, key: &str) -> Result<()> {
        let delete = sqlx::query("DELETE FROM login_throttle WHERE throttle_key = $1").bind(key);
        self.run(delete).await
    }
}
