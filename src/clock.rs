//! The one clock everything reads the time from: token checks (`exp`/`nbf`/`iat`), JWKS
//! refresh timing, the issuer's store (expiries) and key rotation.
//!
//! Production uses [`Clock::system`]. Tests build a [`Clock::manual`] clock, hand it to the
//! gateway they start, and [`Clock::advance`] it instead of sleeping: a token expires, a
//! key rotates or a refresh interval passes at once, and events are ordered by the test,
//! not by the scheduler.
//!
//! ```
//! use std::time::Duration;
//! use scopegate::clock::Clock;
//!
//! let clock = Clock::manual();
//! let before = clock.unix_secs();
//! clock.advance(Duration::from_secs(90));
//! assert!(clock.unix_secs() >= before + 90);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Wall-clock time as Unix time. Cheap to clone and to read.
#[derive(Clone, Default)]
pub struct Clock {
    /// The manual clock's offset; `None` for the plain system clock.
    manual: Option<Arc<Manual>>,
}

#[derive(Default)]
struct Manual {
    /// Milliseconds added to the system time.
    offset_ms: AtomicI64,
    /// Wakes [`Clock::sleep`]ers when the clock is advanced.
    advanced: Notify,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::system"),
            Some(manual) => write!(
                f,
                "Clock::manual(+{}ms)",
                manual.offset_ms.load(Ordering::Relaxed)
            ),
        }
    }
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that runs with the system clock but can be moved forward with
    /// [`Clock::advance`]; clones share the offset.
    pub fn manual() -> Clock {
        Clock {
            manual: Some(Arc::default()),
        }
    }

    /// Moves a manual clock (and all its clones) forward, waking whatever
    /// [`Clock::sleep`]s on it. Does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(manual) = &self.manual {
            let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            manual.offset_ms.fetch_add(ms, Ordering::AcqRel);
            manual.advanced.notify_waiters();
        }
    }

    /// Waits until this clock has moved `duration` forward: as `tokio::time::sleep` on
    /// the system clock; on a manual clock, also ends early when [`Clock::advance`] moves
    /// it past the deadline (periodic work such as a JWKS refresh runs when a test
    /// advances the clock, not after real time passes).
    pub async fn sleep(&self, duration: Duration) {
        let Some(manual) = &self.manual else {
            return tokio::time::sleep(duration).await;
        };
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let deadline = self.unix_millis().saturating_add(ms);
        loop {
            let advanced = manual.advanced.notified();
            let left = deadline.saturating_sub(self.unix_millis());
            if left <= 0 {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(left.unsigned_abs())) => {}
                () = advanced => {}
            }
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> i64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        match &self.manual {
            None => system,
            Some(manual) => system.saturating_add(manual.offset_ms.load(Ordering::Acquire)),
        }
    }

    /// Whole seconds since the Unix epoch.
    pub fn unix_secs(&self) -> i64 {
        self.unix_millis().div_euclid(1000)
    }

    /// Seconds since the Unix epoch, with the fraction (for claim checks with leeway).
    pub fn unix_secs_f64(&self) -> f64 {
        self.unix_millis() as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward_when_told_and_clones_share_it() {
        let clock = Clock::manual();
        let other = clock.clone();
        let start = clock.unix_millis();
        other.advance(Duration::from_secs(3600));
        assert!(clock.unix_millis() - start >= 3_600_000);
        let system = Clock::system();
        system.advance(Duration::from_secs(3600));
        assert!(system.unix_millis() < clock.unix_millis());
    }

    #[tokio::test]
    async fn advancing_a_manual_clock_ends_a_sleep_on_it() {
        let clock = Clock::manual();
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep(Duration::from_secs(3600)).await }
        });
        // Until the sleeper has registered, an advance may come first; it still wakes,
        // because the deadline is then already behind the clock.
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("the sleep ended when the clock passed its deadline")
            .expect("the sleeper did not panic");
    }
}
