//! Revoked access tokens (`revoked_tokens`), by `jti`, kept until they would expire,
//! and the [`DenySet`] that mirrors them in memory for the proxy.
//!
//! Every revocation written here also reaches this replica's deny-set at once, and the
//! other replicas' through PostgreSQL's `NOTIFY scopegate_revoked` (payload: lines of
//! `<exp> <jti>`). Each replica [follows](Store::follow_revocations) the channel and,
//! as a fallback for lost notifications and restarts, re-reads the live rows in full
//! every [`FULL_SYNC`] (every [`FULL_SYNC_UNLISTENED`] while it cannot listen).

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;

use super::{Backend, Result, Store};
use crate::revoked::DenySet;

/// The PostgreSQL notification channel revocations are announced on.
pub const CHANNEL: &str = "scopegate_revoked";
/// A revoked access token: its `jti` and `exp`.
pub type Revoked = (String, i64);

/// How often the live rows are re-read in full while notifications arrive.
pub const FULL_SYNC: Duration = Duration::from_secs(30);
/// ... and on PostgreSQL while they cannot (a lost listener).
pub const FULL_SYNC_UNLISTENED: Duration = Duration::from_secs(1);
/// PostgreSQL's notification payload limit is 8000 bytes.
const PAYLOAD_BYTES: usize = 7_000;

impl Store {
    /// This replica's revoked `jti`s, kept equal to the store by
    /// [`Store::follow_revocations`].
    pub fn deny_set(&self) -> &Arc<DenySet> {
        &self.denied
    }

    /// Records a revoked access token until it would have expired anyway.
    pub async fn revoke_jti(&self, jti: &str, expires_at: i64) -> Result<()> {
        let insert = sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at);
        self.run(insert).await?;
        self.announce(&[(jti.to_string(), expires_at)]).await;
        Ok(())
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Every revocation that still matters at `now`.
    pub async fn live_revocations(&self, now: i64) -> Result<Vec<Revoked>> {
        let rows = sqlx::query("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Tells this replica's deny-set, and the other replicas, of revocations just
    /// committed. A failed announcement is only logged: the others catch up at their
    /// next full sync.
    pub(super) async fn announce(&self, revoked: &[Revoked]) {
        let now = self.clock.unix_secs();
        for (jti, exp) in revoked {
            self.denied.insert(jti, *exp, now);
        }
        if self.backend != Backend::Postgres {
            return;
        }
        for payload in payloads(revoked) {
            let notify = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&self.pool)
                .await;
            if let Err(err) = notify {
                tracing::warn!(error = %err, "revocation: notifying the other replicas failed; they catch up at their next full sync");
                return;
            }
        }
    }

    /// Re-reads the live revocations into the deny-set.
    pub async fn sync_revocations(&self) -> Result<usize> {
        let now = self.clock.unix_secs();
        let rows = self.live_revocations(now).await?;
        let count = rows.len();
        self.denied.replace(rows, now);
        Ok(count)
    }

    /// Keeps the deny-set equal to the store until `running` says stop: a full sync at
    /// once and then every [`FULL_SYNC`], expired entries dropped every second, and on
    /// PostgreSQL every announcement of another replica applied as it arrives.
    pub async fn follow_revocations(&self, running: impl Fn(usize) -> bool) {
        let mut listener = None;
        let mut last_full: Option<tokio::time::Instant> = None;
        loop {
            if !running(self.denied.len()) {
                return;
            }
            if self.backend == Backend::Postgres && listener.is_none() {
                listener = self.listen().await;
                // Whatever was announced while nobody listened: read it in full.
                last_full = None;
            }
            // One process on SQLite hears all its own revocations; PostgreSQL without a
            // listener reads often so other replicas' revocations still arrive quickly.
            let due = if self.backend == Backend::Postgres && listener.is_none() {
                FULL_SYNC_UNLISTENED
            } else {
                FULL_SYNC
            };
            if last_full.is_none_or(|at| at.elapsed() >= due) {
                match self.sync_revocations().await {
                    Ok(_) => last_full = Some(tokio::time::Instant::now()),
                    Err(err) => {
                        tracing::warn!(error = %err, "revocation: reading the store failed")
                    }
                }
            }
            self.denied.purge(self.clock.unix_secs());
            match listener.as_mut() {
                Some(live) => {
                    let next = tokio::time::timeout(Duration::from_secs(1), live.try_recv());
                    match next.await {
                        Err(_elapsed) => {}
                        Ok(Ok(Some(notification))) => self.apply(notification.payload()),
                        // The connection dropped (and notifications with it): listen anew.
                        Ok(Ok(None)) | Ok(Err(_)) => listener = None,
                    }
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    async fn listen(&self) -> Option<sqlx::postgres::PgListener> {
        let url = self.listen_url.as_deref()?;
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect(url).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(Duration::from_secs(2), listening).await {
            Ok(Ok(listener)) => Some(listener),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "revocation: cannot listen for other replicas; reading the store every second instead");
                None
            }
            Err(_elapsed) => None,
        }
    }

    /// Applies another replica's announcement; an unreadable one triggers nothing
    /// worse than the next full sync would.
    fn apply(&self, payload: &str) {
        let now = self.clock.unix_secs();
        for line in payload.lines() {
            if let Some((exp, jti)) = line.split_once(' ')
                && let Ok(exp) = exp.parse::<i64>()
            {
                self.denied.insert(jti, exp, now);
            }
        }
    }
}

/// The announcement of `revoked`, in payloads under PostgreSQL's limit.
fn payloads(revoked: &[Revoked]) -> Vec<String> {
    let mut out = vec![String::new()];
    for (jti, exp) in revoked {
        let line = format!("{exp} {jti}\n");
        if out
            .last()
            .is_some_and(|p| p.len() + line.len() > PAYLOAD_BYTES)
        {
            out.push(String::new());
        }
        if let Some(last) = out.last_mut() {
            last.push_str(&line);
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_fit_postgres_payloads() {
        let many: Vec<Revoked> = (0..1000)
            .map(|i| (format!("jti-{i:026}"), 1_900_000_000))
            .collect();
        let chunks = payloads(&many);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|p| p.len() <= PAYLOAD_BYTES));
        let lines: usize = chunks.iter().map(|p| p.lines().count()).sum();
        assert_eq!(lines, 1000);
        assert!(payloads(&[]).is_empty());
    }
}
