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

/// Wall-clock time as Unix time. Cheap to clone and to read.
#[derive(Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system time; `None` for the plain system clock.
    offset_ms: Option<Arc<AtomicI64>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.offset_ms {
            None => f.write_str("Clock::system"),
            Some(offset) => write!(f, "Clock::manual(+{}ms)", offset.load(Ordering::Relaxed)),
        }
    }
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock { offset_ms: None }
    }

    /// A clock that runs with the system clock but can be moved forward with
    /// [`Clock::advance`]; clones share the offset.
    pub fn manual() -> Clock {
        Clock {
            offset_ms: Some(Arc::new(AtomicI64::new(0))),
        }
    }

    /// Moves a manual clock (and all its clones) forward. Does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(offset) = &self.offset_ms {
            let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            offset.fetch_add(ms, Ordering::AcqRel);
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> i64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        match &self.offset_ms {
            None => system,
            Some(offset) => system.saturating_add(offset.load(Ordering::Acquire)),
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
}
