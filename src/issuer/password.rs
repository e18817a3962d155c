//! Password checks: argon2id verification whose working memory goes back to the system
//! once password checks stop.
//!
//! The argon2 working memory (19 MiB at OWASP's `m=19456`) is reserved here, kept for
//! the next check and dropped after [`KEEP_IDLE`] unused: mapping fresh memory for every
//! check cost a third of the password grant's rate (page faults on 19 MiB). Dropping it
//! must give the pages back. The `scopegate` binary's allocator (jemalloc) serves
//! anything over 8 MiB from an arena that purges freed pages at once. Under glibc (the
//! library's tests, other embedders) a block that size is `mmap`ed the first time, then
//! glibc raises its mmap threshold to the block's size, so later ones come from the
//! hashing threads' arenas and stay resident after they are freed (a five-second burst
//! of password grants left the process at ~450 MB); so the reservation is made above
//! glibc's largest mmap threshold (32 MiB), which it always maps on its own and unmaps on
//! free. Only the blocks argon2 uses are ever written (the rest is never touched, so
//! never resident, under either allocator).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use subtle::ConstantTimeEq;

/// Blocks (1 KiB each) reserved for a check: 33 MiB, over glibc's 32 MiB ceiling.
const RESERVED_BLOCKS: usize = 33 * 1024;

/// How long a reservation no check used is kept for the next one.
pub const KEEP_IDLE: Duration = Duration::from_secs(10);

/// Reservations between checks, with when each was last used: at most as many as
/// checks ran at once.
static SPARE: Mutex<Vec<(Vec<Block>, Instant)>> = Mutex::new(Vec::new());

fn spare() -> MutexGuard<'static, Vec<(Vec<Block>, Instant)>> {
    // Nothing can panic while the lock is held; a poisoned list is still sound.
    SPARE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Zeroed working memory of `blocks` blocks, reusing a spare reservation.
fn memory_for(blocks: usize) -> Vec<Block> {
    let spare = spare().pop();
    let mut memory = match spare {
        Some((memory, _)) if memory.capacity() >= blocks => memory,
        _ => Vec::with_capacity(blocks.max(RESERVED_BLOCKS)),
    };
    memory.clear();
    memory.resize(blocks, Block::new());
    memory
}

/// Unmaps the reservations no check has used for [`KEEP_IDLE`]; returns how long until
/// the next of those kept will have been idle that long (`None`: none are kept).
pub fn release_idle() -> Option<Duration> {
    release_from(&mut spare())
}

fn release_from(spare: &mut Vec<(Vec<Block>, Instant)>) -> Option<Duration> {
    spare.retain(|(_, used)| used.elapsed() < KEEP_IDLE);
    spare
        .iter()
        .map(|(_, used)| KEEP_IDLE.saturating_sub(used.elapsed()))
        .min()
}

/// Whether any reservation is kept.
pub fn has_spare() -> bool {
    !spare().is_empty()
}

/// Whether `password` matches the PHC string `phc` (argon2id, argon2i or argon2d, any
/// parameters the string names). A malformed string is a mismatch. Blocking: run it
/// off the async workers, and call [`release_idle`] [`KEEP_IDLE`] later.
pub fn verify(password: &[u8], phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let mut memory = memory_for(params.block_count());
    let expected = expected.as_bytes();
    let mut computed = vec![0u8; expected.len()];
    let salt: &[u8] = salt;
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password,
        salt,
        &mut computed,
        &mut memory[..],
    );
    spare().push((memory, Instant::now()));
    hashed.is_ok() && bool::from(computed.ct_eq(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;

    #[test]
    fn verifies_what_the_crate_hashes_and_nothing_else() {
        let argon2 = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).expect("params"),
        );
        let phc = argon2
            .hash_password_with_salt(b"correct horse", b"saltsaltsalt")
            .expect("hash")
            .to_string();
        assert!(verify(b"correct horse", &phc));
        assert!(!verify(b"correct horsf", &phc));
        assert!(!verify(b"", &phc));
        // The demo users' hash (OWASP parameters), as gateway.yaml ships it.
        let demo = "$argon2id$v=19$m=19456,t=2,p=1$Sey33Law2smPDKMXM0gApQ$56lNDyuMtjfbVtprtVHruu3iIByQCZJ5fXYeSv9nJ4A";
        assert!(verify(b"alice-demo-password", demo));
        assert!(!verify(b"bob-demo-password", demo));
    }

    #[test]
    fn a_used_reservation_is_kept_for_keep_idle_then_released() {
        let demo = "$argon2id$v=19$m=19456,t=2,p=1$Sey33Law2smPDKMXM0gApQ$56lNDyuMtjfbVtprtVHruu3iIByQCZJ5fXYeSv9nJ4A";
        assert!(verify(b"alice-demo-password", demo));
        assert!(has_spare());
        // Just used: kept, and due no later than KEEP_IDLE from now.
        let next = release_idle().expect("the reservation is kept");
        assert!(next <= KEEP_IDLE);
        assert!(has_spare());
        // Aged past KEEP_IDLE (as if unused since): unmapped, nothing left to wait for.
        // Under one lock: other tests' checks return reservations meanwhile.
        let mut spare = spare();
        for (_, used) in spare.iter_mut() {
            *used = Instant::now() - KEEP_IDLE - Duration::from_secs(1);
        }
        assert_eq!(release_from(&mut spare), None);
        assert!(spare.is_empty());
    }

    #[test]
    fn malformed_strings_are_mismatches() {
        for phc in [
            "",
            "plain",
            "$argon2id$v=19$m=19456,t=2,p=1$Sey33Law2smPDKMXM0gApQ",
            "$argon2id$v=99$m=19456,t=2,p=1$Sey33Law2smPDKMXM0gApQ$56lNDyuMtjfbVtprtVHruu3iIByQCZJ5fXYeSv9nJ4A",
            "$argon2id$v=19$m=1,t=2,p=1$Sey33Law2smPDKMXM0gApQ$56lNDyuMtjfbVtprtVHruu3iIByQCZJ5fXYeSv9nJ4A",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
        ] {
            assert!(!verify(b"alice-demo-password", phc), "{phc}");
        }
    }
}
