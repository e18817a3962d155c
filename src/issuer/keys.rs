//! Signing keys: generated on first start and kept in the store, so a restart or another
//! replica signs with (and publishes) the same keys. The active key is held parsed in
//! memory behind an `ArcSwap`; issuing a token never parses a key or touches the store.
//!
//! **Rotation.** The active key is the newest unretired key of `issuer.keys.algorithm`.
//! Once it is older than `issuer.keys.rotate_after` it is retired and a new one
//! generated; replicas race for that through one conditional update, and the loser
//! reloads and uses the winner's key. When the algorithm changes, a key of the new
//! algorithm is added and the old one retires when it reaches `rotate_after` (so replicas
//! still on the old setting during a rolling change do not flip-flop). A retired key
//! stays in the JWKS until every token it signed has expired (the longest access or ID
//! token lifetime, plus a margin), then it is deleted.
//!
//! **RS256 for ID tokens.** OpenID Connect requires RS256 to be available for ID tokens
//! (Core §15.1). An issuer whose `keys.algorithm` is not RS256 therefore also keeps an
//! active RS256 key, generated, stored, rotated and published like the main one; it signs
//! the ID tokens of clients that ask for RS256 (`id_token_signed_response_alg`) and
//! nothing else. Replicas find it in the store like any key.
//!
//! **Encryption at rest.** When `SCOPEGATE_KEY_ENCRYPTION_KEY` is set (32 bytes as 64 hex
//! digits, or base64/base64url), new private keys are stored encrypted with AES-256-GCM:
//! `private_key` = `v1.` + base64url(12-byte random nonce ‖ ciphertext ‖ 16-byte tag),
//! the plaintext being the PKCS#8 DER, the associated data the key's `kid`;
//! `encryption` = `aes-256-gcm`. Without the variable, `private_key` is base64url(PKCS#8)
//! and `encryption` = `none`. A store holding encrypted keys cannot start without the
//! variable. Private keys are never served: the JWKS holds public members only.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::store::{KeyEncryptionScheme, Store, StoredKey};
use crate::clock::Clock;
use crate::config::issuer::SigningAlg;
use crate::jose::{Alg, Jws, SigningKey, VerifyKey, b64url, parse_jwks};

/// The environment variable holding the key-encryption key.
pub const KEY_ENCRYPTION_ENV: &str = "SCOPEGATE_KEY_ENCRYPTION_KEY";

/// AES-256-GCM for private keys at rest.
pub struct KeyEncryption {
    key: LessSafeKey,
}

impl std::fmt::Debug for KeyEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryption(..)")
    }
}

impl KeyEncryption {
    /// From 32 raw bytes.
    pub fn new(key: &[u8; 32]) -> Result<KeyEncryption, String> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| "unusable key-encryption key".to_string())?;
        Ok(KeyEncryption {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Parses the variable's text: 64 hex digits, or base64 / base64url of 32 bytes.
    /// The message never repeats the value.
    pub fn parse(text: &str) -> Result<KeyEncryption, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| format!("{KEY_ENCRYPTION_ENV} is not valid hex"))?
        } else {
            let unpadded = text.trim_end_matches('=');
            URL_SAFE_NO_PAD
                .decode(unpadded)
                .or_else(|_| STANDARD.decode(text))
                .map_err(|_| {
                    format!("{KEY_ENCRYPTION_ENV} must be 32 bytes as 64 hex digits or base64")
                })?
        };
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            format!("{KEY_ENCRYPTION_ENV} must be exactly 32 bytes (64 hex digits or base64)")
        })?;
        KeyEncryption::new(&key)
    }

    /// From the environment: `Ok(None)` when the variable is unset.
    pub fn from_env() -> Result<Option<KeyEncryption>, String> {
        match std::env::var(KEY_ENCRYPTION_ENV) {
            Ok(text) if !text.is_empty() => KeyEncryption::parse(&text).map(Some),
            _ => Ok(None),
        }
    }

    fn seal(&self, kid: &str, plaintext: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness".to_string())?;
        let mut data = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut data,
            )
            .map_err(|_| "encrypting the private key failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("v1.{}", b64url(&out)))
    }

    fn open(&self, kid: &str, sealed: &str) -> Result<Vec<u8>, String> {
        let bad = || format!("stored key {kid}: cannot decrypt (wrong {KEY_ENCRYPTION_ENV}?)");
        let body = sealed.strip_prefix("v1.").ok_or_else(bad)?;
        let mut data = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        if data.len() < NONCE_LEN + 16 {
            return Err(bad());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&data[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut data[NONCE_LEN..],
            )
            .map_err(|_| bad())?;
        Ok(plain.to_vec())
    }
}

/// What decides rotation and publication.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyPolicy {
    pub alg: Alg,
    pub rotate_after: Duration,
    /// How long a retired key stays published: the longest token lifetime plus a margin.
    pub retire_after: Duration,
}

pub fn alg_of(alg: SigningAlg) -> Alg {
    match alg {
        SigningAlg::RS256 => Alg::RS256,
        SigningAlg::ES256 => Alg::ES256,
        SigningAlg::EdDSA => Alg::EdDSA,
    }
}

/// The key that signs, parsed once, with its JOSE headers serialized once.
pub struct ActiveKey {
    pub kid: String,
    pub alg: Alg,
    pub key: SigningKey,
    /// `{"alg":..,"kid":..,"typ":"at+jwt"}`
    pub access_header: Vec<u8>,
    /// `{"alg":..,"kid":..,"typ":"JWT"}`
    pub id_header: Vec<u8>,
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl ActiveKey {
    fn new(kid: String, alg: Alg, key: SigningKey) -> ActiveKey {
        let header = |typ: &str| {
            serde_json::to_vec(&serde_json::json!({ "alg": alg.name(), "kid": kid, "typ": typ }))
                .unwrap_or_default()
        };
        ActiveKey {
            access_header: header("at+jwt"),
            id_header: header("JWT"),
            kid,
            alg,
            key,
        }
    }

    /// Signs claims already serialized as JSON.
    pub fn sign(&self, header: &[u8], claims: &[u8]) -> Result<String, String> {
        crate::jose::sign_compact(&self.key, self.alg, header, claims)
    }
}

/// The published side: verification keys and the JWKS document.
pub struct Published {
    pub active: Arc<ActiveKey>,
    /// The RS256 key for ID tokens, when `active` is of another algorithm.
    pub rs256: Option<Arc<ActiveKey>>,
    pub verify: Vec<VerifyKey>,
    pub algs: Vec<Alg>,
    /// The JWKS document served at `/.well-known/jwks.json`.
    pub jwks: Bytes,
}

/// A token verified against this issuer's own keys, header and payload parsed.
pub struct OwnToken {
    pub at_jwt: bool,
    pub claims: Map<String, Value>,
}

impl Published {
    /// Verifies the signature of one of our own tokens; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<OwnToken> {
        let jws = Jws::parse(token).ok()?;
        let header = jws.header().ok()?;
        if header.crit || header.embedded_key {
            return None;
        }
        let alg = Alg::from_name(&header.alg)?;
        let kid = header.kid.as_deref()?;
        let key = self
            .verify
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid) && k.supports(alg))?;
        if !key.verify(alg, jws.signing_input.as_bytes(), &jws.signature) {
            return None;
        }
        let at_jwt = header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt"));
        let claims: Map<String, Value> = serde_json::from_slice(&jws.payload).ok()?;
        Some(OwnToken { at_jwt, claims })
    }
}

/// The issuer's keys: the store's truth, mirrored in memory.
pub struct KeyRing {
    store: Store,
    encryption: Option<KeyEncryption>,
    policy: ArcSwap<KeyPolicy>,
    current: ArcSwap<Published>,
    refresh: tokio::sync::Mutex<()>,
    /// What rotation and retirement are timed by.
    clock: Clock,
    /// Unix milliseconds of the last refresh, by `clock`.
    refreshed_at: AtomicI64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.current.load().active.kid)
            .finish()
    }
}

impl KeyRing {
    /// Loads the keys from the store, generating (and storing) the first one or a
    /// rotated one as the policy says, at the time `clock` tells.
    pub async fn load(
        store: Store,
        encryption: Option<KeyEncryption>,
        policy: KeyPolicy,
        clock: Clock,
    ) -> Result<KeyRing, String> {
        let published = sync(&store, encryption.as_ref(), &policy, None, &clock).await?;
        Ok(KeyRing {
            store,
            encryption,
            policy: ArcSwap::from_pointee(policy),
            current: ArcSwap::from_pointee(published),
            refresh: tokio::sync::Mutex::new(()),
            refreshed_at: AtomicI64::new(clock.unix_millis()),
            clock,
        })
    }

    /// The key to sign with now.
    pub fn active(&self) -> Arc<ActiveKey> {
        self.current.load().active.clone()
    }

    /// The key to sign an ID token with: of `alg` when asked (RS256 is always there),
    /// else the active key.
    pub fn id_token_key(&self, alg: Option<Alg>) -> Arc<ActiveKey> {
        let published = self.current.load();
        match (alg, &published.rs256) {
            (Some(Alg::RS256), Some(rs256)) => rs256.clone(),
            _ => published.active.clone(),
        }
    }

    pub fn published(&self) -> Arc<Published> {
        self.current.load_full()
    }

    pub fn set_policy(&self, policy: KeyPolicy) {
        self.policy.store(Arc::new(policy));
    }

    pub fn policy(&self) -> KeyPolicy {
        **self.policy.load()
    }

    /// Re-reads the store (keys other replicas made), rotates if due, deletes keys whose
    /// tokens have all expired. Concurrent callers share one refresh.
    pub async fn refresh(&self) -> Result<(), String> {
        let _flight = self.refresh.lock().await;
        let previous = self.current.load_full();
        let policy = self.policy();
        let published = sync(
            &self.store,
            self.encryption.as_ref(),
            &policy,
            Some(&previous),
            &self.clock,
        )
        .await?;
        if published.active.kid != previous.active.kid {
            tracing::info!(kid = %published.active.kid, alg = %published.active.alg, "issuer signing key changed");
        }
        self.current.store(Arc::new(published));
        self.refreshed_at
            .store(self.clock.unix_millis(), Ordering::Release);
        Ok(())
    }

    /// [`KeyRing::refresh`], unless the last one is more recent than `age`.
    pub async fn refresh_if_older(&self, age: Duration) -> Result<(), String> {
        let since = self.clock.unix_millis() - self.refreshed_at.load(Ordering::Acquire);
        if since < age.as_millis() as i64 {
            return Ok(());
        }
        self.refresh().await
    }

    /// True if `token` is a JWS whose `kid` is not among the published keys.
    pub fn kid_unknown(&self, token: &str) -> bool {
        let Ok(jws) = Jws::parse(token) else {
            return false;
        };
        let Ok(header) = jws.header() else {
            return false;
        };
        let Some(kid) = header.kid.as_deref() else {
            return false;
        };
        !self
            .current
            .load()
            .verify
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Loads, rotates, prunes; returns what to publish. `previous` lends the parsed active
/// key when it has not changed.
async fn sync(
    store: &Store,
    encryption: Option<&KeyEncryption>,
    policy: &KeyPolicy,
    previous: Option<&Published>,
    clock: &Clock,
) -> Result<Published, String> {
    let rotate_secs = policy.rotate_after.as_secs() as i64;
    // The configured algorithm, and RS256 for ID tokens when that is another.
    let mut algs = vec![policy.alg];
    if policy.alg != Alg::RS256 {
        algs.push(Alg::RS256);
    }
    'attempt: for _attempt in 0..4 {
        let now = clock.unix_secs();
        let keys = store.load_keys().await.map_err(|e| e.to_string())?;
        let mut actives = Vec::with_capacity(algs.len());
        for &alg in &algs {
            let active = newest_active(&keys, alg);
            // No key of this algorithm yet (first start, or the algorithm changed): add
            // one, retiring nothing, so replicas still configured with another algorithm
            // keep theirs (no flip-flop during a rolling change). An active key past
            // rotate_after: replace it, conditionally, so one replica wins.
            match active.filter(|k| k.created_at + rotate_secs > now) {
                Some(active) => actives.push(active),
                None => {
                    rotate(store, active, alg, encryption, now).await?;
                    // Either way, read again: ours or the winner's key is there now.
                    continue 'attempt;
                }
            }
        }
        retire_strays(store, &keys, &actives, rotate_secs, now).await?;
        let parsed = |stored: &StoredKey, alg: Alg| -> Result<Arc<ActiveKey>, String> {
            let earlier = previous
                .into_iter()
                .flat_map(|p| std::iter::once(&p.active).chain(&p.rs256))
                .find(|key| key.kid == stored.kid);
            Ok(match earlier {
                Some(key) => key.clone(),
                None => Arc::new(ActiveKey::new(
                    stored.kid.clone(),
                    alg,
                    open_key(stored, alg, encryption)?,
                )),
            })
        };
        let active = parsed(actives[0], policy.alg)?;
        let rs256 = match actives.get(1) {
            Some(stored) => Some(parsed(stored, Alg::RS256)?),
            None => None,
        };
        return publish(store, &keys, active, rs256, policy.retire_after, now).await;
    }
    Err("could not settle on a signing key (keys keep changing in the store)".into())
}

/// The active key: the newest not retired, of the configured algorithm.
fn newest_active(keys: &[StoredKey], alg: Alg) -> Option<&StoredKey> {
    keys.iter()
        .filter(|k| k.rotated_at.is_none() && k.alg == alg)
        .max_by(|a, b| (a.created_at, &a.kid).cmp(&(b.created_at, &b.kid)))
}

/// Stores a new key: in place of `old` (if this replica is first to rotate it), or
/// beside the others when there is no active key of the algorithm.
async fn rotate(
    store: &Store,
    old: Option<&StoredKey>,
    alg: Alg,
    encryption: Option<&KeyEncryption>,
    now: i64,
) -> Result<(), String> {
    let new = generate(alg, encryption, now).await?;
    let stored = match old {
        Some(old) => store
            .rotate_key(&old.kid, &new, now)
            .await
            .map_err(|e| e.to_string())?,
        None => {
            store.insert_key(&new).await.map_err(|e| e.to_string())?;
            true
        }
    };
    if stored {
        tracing::info!(kid = %new.kid, alg = %alg, "issuer signing key generated");
    }
    Ok(())
}

/// Other unretired keys (another algorithm's, or a twin from replicas starting
/// together) retire once they are as old as rotate_after; they stay published until
/// their tokens have expired.
async fn retire_strays(
    store: &Store,
    keys: &[StoredKey],
    actives: &[&StoredKey],
    rotate_secs: i64,
    now: i64,
) -> Result<(), String> {
    for stray in keys.iter().filter(|k| {
        k.rotated_at.is_none()
            && actives.iter().all(|active| active.kid != k.kid)
            && k.created_at + rotate_secs <= now
    }) {
        store
            .retire_key(&stray.kid, now)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What to publish: the keys not retired longer than `retire_after` ago (older ones are
/// deleted from the store), as a JWKS and as verification keys.
async fn publish(
    store: &Store,
    keys: &[StoredKey],
    active: Arc<ActiveKey>,
    rs256: Option<Arc<ActiveKey>>,
    retire_after: Duration,
    now: i64,
) -> Result<Published, String> {
    let retire_secs = retire_after.as_secs() as i64;
    let live: Vec<&StoredKey> = keys
        .iter()
        .filter(|k| k.rotated_at.is_none_or(|r| r + retire_secs > now))
        .collect();
    let expired_before = now - retire_secs;
    if keys
        .iter()
        .any(|k| k.rotated_at.is_some_and(|r| r < expired_before))
    {
        store
            .delete_keys_retired_before(expired_before)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut jwks = Vec::with_capacity(live.len());
    for key in &live {
        let jwk: Value = serde_json::from_str(&key.public_jwk)
            .map_err(|_| format!("stored key {}: its public JWK is not JSON", key.kid))?;
        jwks.push(jwk);
    }
    let doc =
        serde_json::to_vec(&serde_json::json!({ "keys": jwks })).map_err(|e| e.to_string())?;
    let (verify, skipped) = parse_jwks(&doc, &[Alg::RS256, Alg::ES256, Alg::EdDSA])?;
    if let Some(problem) = skipped.first() {
        return Err(format!("stored public key unusable: {problem}"));
    }
    let mut algs: Vec<Alg> = Vec::new();
    for key in &live {
        if !algs.contains(&key.alg) {
            algs.push(key.alg);
        }
    }
    Ok(Published {
        active,
        rs256,
        verify,
        algs,
        jwks: Bytes::from(doc),
    })
}

async fn generate(
    alg: Alg,
    encryption: Option<&KeyEncryption>,
    now: i64,
) -> Result<StoredKey, String> {
    // RSA key generation takes a while: keep it off the async workers.
    let key = tokio::task::spawn_blocking(move || SigningKey::generate(alg))
        .await
        .map_err(|_| "key generation was interrupted".to_string())??;
    let mut id = [0u8; 12];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| "no randomness".to_string())?;
    let kid = b64url(&id);
    let der = key.to_pkcs8()?;
    let (private_key, encryption) = match encryption {
        Some(enc) => (enc.seal(&kid, &der)?, KeyEncryptionScheme::Aes256Gcm),
        None => (b64url(&der), KeyEncryptionScheme::Plain),
    };
    Ok(StoredKey {
        public_jwk: key.public_jwk(alg, &kid).to_string(),
        kid,
        alg,
        private_key,
        encryption,
        created_at: now,
        rotated_at: None,
    })
}

fn open_key(
    stored: &StoredKey,
    alg: Alg,
    encryption: Option<&KeyEncryption>,
) -> Result<SigningKey, String> {
    let der = match (stored.encryption, encryption) {
        (KeyEncryptionScheme::Plain, _) => URL_SAFE_NO_PAD
            .decode(&stored.private_key)
            .map_err(|_| format!("stored key {}: not base64url", stored.kid))?,
        (KeyEncryptionScheme::Aes256Gcm, Some(enc)) => {
            enc.open(&stored.kid, &stored.private_key)?
        }
        (KeyEncryptionScheme::Aes256Gcm, None) => {
            return Err(format!(
                "the store's signing keys are encrypted: set {KEY_ENCRYPTION_ENV} to the key they were encrypted with"
            ));
        }
    };
    SigningKey::from_pkcs8(alg, &der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_round_trip_binds_the_kid() {
        let enc = KeyEncryption::parse(&"ab".repeat(32)).unwrap();
        let sealed = enc.seal("kid1", b"secret der").unwrap();
        assert!(sealed.starts_with("v1."));
        assert_eq!(enc.open("kid1", &sealed).unwrap(), b"secret der");
        assert!(enc.open("kid2", &sealed).is_err());
        let other = KeyEncryption::parse(&b64url(&[7u8; 32])).unwrap();
        assert!(other.open("kid1", &sealed).is_err());
        assert!(KeyEncryption::parse("short").is_err());
    }
}
