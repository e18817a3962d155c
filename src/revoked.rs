//! The deny-set: access tokens of the built-in issuer revoked before they expire, by
//! `jti`, each kept until its `exp`. The proxy consults it on every request of that
//! issuer's tokens (cached or not); the issuer adds to it as it revokes, and a sync task
//! keeps it equal to the store's `revoked_tokens` across replicas.
//!
//! Memory is bounded: at most [`DenySet::MAX_ENTRIES`] live entries (about 100 bytes
//! each). Past that, [`DenySet::check`] answers [`Presence::Unknown`] for a `jti` it does
//! not hold, and the caller asks the store: full means slower, never more permissive.
//! An empty set costs one atomic load.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What the deny-set knows of one `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Revoked,
    /// Not revoked, as far as anyone has revoked it.
    Clear,
    /// The set overflowed and does not hold this `jti`: ask the store.
    Unknown,
}

#[derive(Debug)]
pub struct DenySet {
    /// `jti` → `exp` (seconds since the epoch).
    entries: RwLock<HashMap<Box<str>, i64>>,
    len: AtomicUsize,
    overflowed: AtomicBool,
    max: usize,
}

impl Default for DenySet {
    fn default() -> Self {
        DenySet::with_capacity(DenySet::MAX_ENTRIES)
    }
}

impl DenySet {
    /// Live entries held before the set answers [`Presence::Unknown`] for the rest.
    pub const MAX_ENTRIES: usize = 1_000_000;

    pub fn with_capacity(max: usize) -> DenySet {
        DenySet {
            entries: RwLock::new(HashMap::new()),
            len: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            max,
        }
    }

    /// Records `jti` as revoked until `exp`; entries already expired at `now` are not
    /// kept. False when the set is full (the store still has it; see [`Presence`]).
    pub fn insert(&self, jti: &str, exp: i64, now: i64) -> bool {
        if exp <= now {
            return true;
        }
        let mut entries = self.write();
        if !entries.contains_key(jti) && entries.len() >= self.max {
            entries.retain(|_, &mut until| until > now);
            if entries.len() >= self.max {
                self.overflowed.store(true, Ordering::Relaxed);
                self.len.store(entries.len(), Ordering::Release);
                return false;
            }
        }
        entries.insert(jti.into(), exp);
        self.len.store(entries.len(), Ordering::Release);
        true
    }

    /// Is `jti` revoked?
    pub fn check(&self, jti: &str) -> Presence {
        if self.len.load(Ordering::Acquire) == 0 && !self.overflowed.load(Ordering::Relaxed) {
            return Presence::Clear;
        }
        if self.read().contains_key(jti) {
            Presence::Revoked
        } else if self.overflowed.load(Ordering::Relaxed) {
            Presence::Unknown
        } else {
            Presence::Clear
        }
    }

    /// Replaces the whole set with the store's live rows (a full sync), dropping what
    /// expired. Rows past the capacity leave the set overflowed.
    pub fn replace(&self, rows: impl IntoIterator<Item = (String, i64)>, now: i64) {
        let mut fresh = HashMap::new();
        let mut overflowed = false;
        for (jti, exp) in rows {
            if exp <= now {
                continue;
            }
            if fresh.len() >= self.max {
                overflowed = true;
                break;
            }
            fresh.insert(jti.into_boxed_str(), exp);
        }
        let mut entries = self.write();
        *entries = fresh;
        self.overflowed.store(overflowed, Ordering::Relaxed);
        self.len.store(entries.len(), Ordering::Release);
    }

    /// Forgets entries whose tokens have expired by `now`. An overflow stays until a
    /// full sync ([`DenySet::replace`]) fits: only the store knows what it left out.
    pub fn purge(&self, now: i64) {
        let mut entries = self.write();
        entries.retain(|_, &mut until| until > now);
        self.len.store(entries.len(), Ordering::Release);
    }

    /// True while the set overflowed (cleared by a [`DenySet::replace`] that fits).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, i64>> {
        // A panic while holding the lock cannot leave the map half-changed (each change
        // is one call), so a poisoned lock is still a good map.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, i64>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_until_expiry_then_forgotten() {
        let set = DenySet::default();
        assert_eq!(set.check("a"), Presence::Clear);
        assert!(set.insert("a", 200, 100));
        assert!(
            set.insert("gone", 50, 100),
            "already expired: nothing to keep"
        );
        assert_eq!(set.check("a"), Presence::Revoked);
        assert_eq!(set.check("b"), Presence::Clear);
        assert_eq!(set.len(), 1);
        set.purge(199);
        assert_eq!(set.check("a"), Presence::Revoked);
        set.purge(200);
        assert_eq!(set.check("a"), Presence::Clear);
        assert!(set.is_empty());
    }

    #[test]
    fn a_full_set_says_unknown_never_clear() {
        let set = DenySet::with_capacity(2);
        assert!(set.insert("a", 200, 100));
        assert!(set.insert("b", 300, 100));
        assert!(!set.insert("c", 300, 100));
        assert!(set.overflowed());
        assert_eq!(set.check("a"), Presence::Revoked);
        assert_eq!(set.check("c"), Presence::Unknown);
        // Room again once "a" expires: the insert purges first.
        assert!(set.insert("c", 300, 250));
        assert_eq!(set.check("c"), Presence::Revoked);
        // Still unknown for anything else until a full sync that fits.
        assert_eq!(set.check("d"), Presence::Unknown);
        set.replace(vec![("c".to_string(), 300), ("e".to_string(), 100)], 250);
        assert!(!set.overflowed());
        assert_eq!(set.check("d"), Presence::Clear);
        assert_eq!(set.check("e"), Presence::Clear);
        assert_eq!(set.len(), 1);
    }
}
