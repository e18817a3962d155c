//! Repeated warnings without a log flood: an upstream outage would otherwise log one
//! line per failed request (thousands a second) and descriptor exhaustion one per
//! failed accept. A [`Flood`] lets one line through per interval and counts the rest;
//! the next line that passes carries that count as `suppressed`.
//!
//! ```
//! use std::time::Duration;
//! use scopegate::flood::Flood;
//!
//! static ACCEPT_FAILED: Flood = Flood::per(Duration::from_secs(1));
//! if let Some(suppressed) = ACCEPT_FAILED.pass() {
//!     eprintln!("accept failed ({suppressed} more since the last line)");
//! }
//! assert_eq!(ACCEPT_FAILED.pass(), None); // within the same second
//! ```

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one line per interval; counts what it holds back.
#[derive(Debug)]
pub struct Flood {
    interval_ms: u64,
    /// Milliseconds since the process's first look at a flood, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Flood {
    pub const fn per(interval: Duration) -> Flood {
        Flood {
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` lines having been held back since
    /// the last one; `None` when this one is to be held back (and counted).
    pub fn pass(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        self.pass_at(START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1)
    }

    /// [`Flood::pass`] at `now` (milliseconds on any monotonic scale starting above 0).
    fn pass_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.interval_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Another thread took this interval's line.
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let flood = Flood::per(Duration::from_millis(50));
        assert_eq!(flood.pass_at(1), Some(0));
        for now in 2..101 {
            assert_eq!(flood.pass_at(now / 4), None);
        }
        assert_eq!(flood.pass_at(51), Some(99));
        assert_eq!(flood.pass_at(60), None);
    }
}
