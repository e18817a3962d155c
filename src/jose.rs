//! JWS compact serialization, JWK parsing and publishing, signing and verification on
//! aws-lc-rs (the one crypto backend of the project, shared with rustls).
//!
//! Why not `jsonwebtoken` here: it re-parses the private key on every signature
//! (`RsaKeyPair::from_der` per call), clones key material on every verification, and
//! silently ignores a `crit` header. A gateway must refuse `crit` it does not
//! understand, must keep keys parsed between requests, and decides algorithms from
//! configuration. What remains is small: split, base64url, JSON, and one aws-lc-rs call.
//! `jsonwebtoken` (same backend) is used in the tests as an independent verifier.

pub mod dpop;

use std::borrow::Cow;
use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair,
    RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

/// Signature algorithms Scopegate accepts. `none` and the HMAC family do not exist
/// here: a gateway holding an issuer's public key must never treat it as a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|alg| alg.name() == name)
    }

    /// The JWK `kty` (and `crv`) a key must have to verify this algorithm.
    fn fits(self, kty: &str, crv: Option<&str>) -> bool {
        match self {
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                kty == "RSA"
            }
            Alg::ES256 => kty == "EC" && crv == Some("P-256"),
            Alg::ES384 => kty == "EC" && crv == Some("P-384"),
            Alg::EdDSA => kty == "OKP" && crv == Some("Ed25519"),
        }
    }

    fn rsa_params(self) -> Option<&'static signature::RsaParameters> {
        Some(match self {
            Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Alg {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if name.eq_ignore_ascii_case("none") || name.to_ascii_uppercase().starts_with("HS") {
            return Err(serde::de::Error::custom(format!(
                "algorithm {name:?} is never allowed: Scopegate verifies tokens with the issuer's public keys only"
            )));
        }
        Alg::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown algorithm {name:?}; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
            ))
        })
    }
}

/// Why a compact JWS could not even be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the token is not a compact JWS (three base64url parts separated by dots)")]
    Shape,
    #[error("the token's {0} is not valid base64url")]
    Base64(&'static str),
    #[error("the token's {0} is not a JSON object")]
    Json(&'static str),
    #[error("the token header has no alg")]
    NoAlg,
}

/// The protected header fields a verifier looks at.
#[derive(Debug, Clone, Default)]
pub struct Header<'a> {
    pub alg: Cow<'a, str>,
    pub kid: Option<Cow<'a, str>>,
    pub typ: Option<Cow<'a, str>>,
    /// `crit` present: extensions that must be understood. Scopegate understands none.
    pub crit: bool,
    /// `jku`, `x5u`, `jwk` or `x5c` present: a key or key URL named by the token itself.
    pub embedded_key: bool,
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    typ: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
    #[serde(default)]
    jku: Option<IgnoredAny>,
    #[serde(default)]
    x5u: Option<IgnoredAny>,
    #[serde(default)]
    jwk: Option<IgnoredAny>,
    #[serde(default)]
    x5c: Option<IgnoredAny>,
}

/// A compact JWS split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Jws<'t> {
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'t str,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
    header_json: Vec<u8>,
}

impl<'t> Jws<'t> {
    pub fn parse(token: &'t str) -> Result<Jws<'t>, ParseError> {
        let mut parts = token.splitn(4, '.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ParseError::Shape);
        };
        // An empty signature is a well-formed (unsigned) JWS: it parses, so its `alg`
        // (`none`, typically) decides how it is refused, and it can never verify.
        if header.is_empty() || payload.is_empty() {
            return Err(ParseError::Shape);
        }
        let header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| ParseError::Base64("header"))?;
        let payload_bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| ParseError::Base64("payload"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| ParseError::Base64("signature"))?;
        Ok(Jws {
            signing_input: &token[..header.len() + 1 + payload.len()],
            payload: payload_bytes,
            signature,
            header_json,
        })
    }

    /// The decoded protected header, as JSON bytes (for headers with members
    /// [`Jws::header`] does not read, such as a DPoP proof's `jwk`).
    pub fn header_json(&self) -> &[u8] {
        &self.header_json
    }

    pub fn header(&self) -> Result<Header<'_>, ParseError> {
        // A JOSE header is a JSON object (RFC 7515 §4). serde would also read a struct
        // from an array, field by field (`["RS256","kid"]`); refuse that shape here.
        let first = self.header_json.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(ParseError::Json("header"));
        }
        let raw: RawHeader<'_> =
            serde_json::from_slice(&self.header_json).map_err(|_| ParseError::Json("header"))?;
        Ok(Header {
            alg: raw.alg.ok_or(ParseError::NoAlg)?,
            kid: raw.kid,
            typ: raw.typ,
            crit: raw.crit.is_some(),
            embedded_key: raw.jku.is_some()
                || raw.x5u.is_some()
                || raw.jwk.is_some()
                || raw.x5c.is_some(),
        })
    }
}

/// One JWK as found in a JWK Set. Only public members are read; every member but `kty`
/// is optional (serde reads a missing `Option` as `None`).
#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub kid: Option<String>,
    #[serde(rename = "use")]
    pub use_: Option<String>,
    pub alg: Option<String>,
    pub key_ops: Option<Vec<String>>,
    pub crv: Option<String>,
    pub n: Option<String>,
    pub e: Option<String>,
    pub x: Option<String>,
    pub y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JwkSetDoc {
    keys: Vec<serde_json::Value>,
}

/// A verification key, parsed once, usable for each algorithm it fits.
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The key's identity: its RFC 7638 JWK thumbprint (SHA-256 of the required public
    /// members). A JWKS that keeps a `kid` but changes the key changes this.
    pub thumbprint: [u8; 32],
    parsed: Vec<(Alg, ParsedPublicKey)>,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<_> = self.parsed.iter().map(|(alg, _)| alg.name()).collect();
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algs", &algs)
            .finish()
    }
}

impl VerifyKey {
    /// Builds a key from a JWK, for those of `allowed` that the JWK fits.
    ///
    /// Returns `Ok(None)` for keys that are fine but useless here (encryption keys,
    /// algorithms not allowed); `Err` for keys that are malformed.
    pub fn from_jwk(jwk: &Jwk, allowed: &[Alg]) -> Result<Option<VerifyKey>, String> {
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        if let Some(ops) = &jwk.key_ops
            && !ops.iter().any(|op| op == "verify")
        {
            return Ok(None);
        }
        let declared = match jwk.alg.as_deref() {
            Some(name) => match Alg::from_name(name) {
                Some(alg) => Some(alg),
                None => return Ok(None),
            },
            None => None,
        };
        let mut parsed = Vec::new();
        for &alg in allowed {
            if declared.is_some_and(|d| d != alg) || !alg.fits(&jwk.kty, jwk.crv.as_deref()) {
                continue;
            }
            parsed.push((alg, parse_public(jwk, alg)?));
        }
        if parsed.is_empty() {
            return Ok(None);
        }
        Ok(Some(VerifyKey {
            kid: jwk.kid.clone(),
            thumbprint: thumbprint(jwk),
            parsed,
        }))
    }

    /// True if this key can verify `alg`.
    pub fn supports(&self, alg: Alg) -> bool {
        self.parsed.iter().any(|(a, _)| *a == alg)
    }

    /// Checks `signature` over `message` for `alg`; false on any mismatch.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }
}

/// RFC 7638 JWK thumbprint: SHA-256 of the required public members, in lexicographic
/// order, as JSON without whitespace. Members are taken as published, so a key re-encoded
/// differently counts as a different key (which only costs a re-verification).
pub fn thumbprint(jwk: &Jwk) -> [u8; 32] {
    let member = |value: &Option<String>| {
        serde_json::Value::String(value.clone().unwrap_or_default()).to_string()
    };
    let kty = serde_json::Value::String(jwk.kty.clone()).to_string();
    let canonical = match jwk.kty.as_str() {
        "RSA" => format!(
            r#"{{"e":{},"kty":{kty},"n":{}}}"#,
            member(&jwk.e),
            member(&jwk.n)
        ),
        "EC" => format!(
            r#"{{"crv":{},"kty":{kty},"x":{},"y":{}}}"#,
            member(&jwk.crv),
            member(&jwk.x),
            member(&jwk.y)
        ),
        "OKP" => format!(
            r#"{{"crv":{},"kty":{kty},"x":{}}}"#,
            member(&jwk.crv),
            member(&jwk.x)
        ),
        _ => format!(
            r#"{{"crv":{},"e":{},"kty":{kty},"n":{},"x":{},"y":{}}}"#,
            member(&jwk.crv),
            member(&jwk.e),
            member(&jwk.n),
            member(&jwk.x),
            member(&jwk.y)
        ),
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn b64_field(value: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    let text = value
        .as_deref()
        .ok_or_else(|| format!("JWK is missing {name:?}"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("JWK member {name:?} is not base64url"))
}

fn parse_public(jwk: &Jwk, alg: Alg) -> Result<ParsedPublicKey, String> {
    let rejected = |err: aws_lc_rs::error::KeyRejected| format!("JWK rejected for {alg}: {err}");
    match alg {
        Alg::ES256 | Alg::ES384 => {
            let x = b64_field(&jwk.x, "x")?;
            let y = b64_field(&jwk.y, "y")?;
            let size = if alg == Alg::ES256 { 32 } else { 48 };
            if x.len() != size || y.len() != size {
                return Err(format!("JWK coordinates have the wrong length for {alg}"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let params = if alg == Alg::ES256 {
                &signature::ECDSA_P256_SHA256_FIXED
            } else {
                &signature::ECDSA_P384_SHA384_FIXED
            };
            ParsedPublicKey::new(params, point).map_err(rejected)
        }
        Alg::EdDSA => {
            let x = b64_field(&jwk.x, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 JWK x must be 32 bytes".into());
            }
            ParsedPublicKey::new(&signature::ED25519, x).map_err(rejected)
        }
        _ => {
            let n = b64_field(&jwk.n, "n")?;
            let e = b64_field(&jwk.e, "e")?;
            let params = alg.rsa_params().ok_or("not an RSA algorithm")?;
            RsaPublicKeyComponents { n: &n, e: &e }
                .to_parsed_public_key(params)
                .map_err(rejected)
        }
    }
}

/// Parses a JWK Set document into the verification keys usable with `allowed`.
/// Unusable members are skipped and reported in the second element.
pub fn parse_jwks(body: &[u8], allowed: &[Alg]) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    let doc: JwkSetDoc =
        serde_json::from_slice(body).map_err(|err| format!("not a JWK Set: {err}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for value in doc.keys {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(err) => {
                skipped.push(format!("malformed JWK: {err}"));
                continue;
            }
        };
        match VerifyKey::from_jwk(&jwk, allowed) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(err) => skipped.push(format!("kid {:?}: {err}", jwk.kid.as_deref().unwrap_or(""))),
        }
    }
    Ok((keys, skipped))
}

/// A private signing key held parsed in memory.
pub enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SigningKey::Rsa(_) => "SigningKey::Rsa(..)",
            SigningKey::Ec(_) => "SigningKey::Ec(..)",
            SigningKey::Ed(_) => "SigningKey::Ed(..)",
        })
    }
}

impl SigningKey {
    /// Generates a fresh key for `alg` (RS*/PS* → RSA-2048, ES256 → P-256, ES384 →
    /// P-384, EdDSA → Ed25519).
    pub fn generate(alg: Alg) -> Result<SigningKey, String> {
        let failed = |_| format!("could not generate a {alg} key");
        Ok(match alg {
            Alg::ES256 => SigningKey::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(failed)?,
            ),
            Alg::ES384 => SigningKey::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING)
                    .map_err(failed)?,
            ),
            Alg::EdDSA => SigningKey::Ed(Ed25519KeyPair::generate().map_err(failed)?),
            _ => SigningKey::Rsa(
                RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(failed)?,
            ),
        })
    }

    /// The PKCS#8 DER of the private key, for storage.
    pub fn to_pkcs8(&self) -> Result<Vec<u8>, String> {
        use aws_lc_rs::encoding::AsDer;
        let failed = |_| "could not encode the private key".to_string();
        Ok(match self {
            SigningKey::Rsa(key) => key.as_der().map_err(failed)?.as_ref().to_vec(),
            SigningKey::Ec(key) => key.to_pkcs8v1().map_err(failed)?.as_ref().to_vec(),
            SigningKey::Ed(key) => key.to_pkcs8().map_err(failed)?.as_ref().to_vec(),
        })
    }

    /// Loads a PKCS#8 private key for `alg`.
    pub fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<SigningKey, String> {
        let rejected =
            |err: aws_lc_rs::error::KeyRejected| format!("stored {alg} key rejected: {err}");
        Ok(match alg {
            Alg::ES256 => SigningKey::Ec(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(rejected)?,
            ),
            Alg::ES384 => SigningKey::Ec(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der)
                    .map_err(rejected)?,
            ),
            Alg::EdDSA => SigningKey::Ed(Ed25519KeyPair::from_pkcs8(der).map_err(rejected)?),
            _ => SigningKey::Rsa(RsaKeyPair::from_pkcs8(der).map_err(rejected)?),
        })
    }

    /// The public half as a JWK object (`kty`, `kid`, `use: sig`, `alg`, key members).
    pub fn public_jwk(&self, alg: Alg, kid: &str) -> serde_json::Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self {
            SigningKey::Rsa(key) => {
                let public = key.public_key();
                serde_json::json!({
                    "kty": "RSA", "kid": kid, "use": "sig", "alg": alg.name(),
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
            SigningKey::Ec(key) => {
                let point = key.public_key().as_ref();
                let size = (point.len() - 1) / 2;
                let crv = if size == 32 { "P-256" } else { "P-384" };
                serde_json::json!({
                    "kty": "EC", "kid": kid, "use": "sig", "alg": alg.name(), "crv": crv,
                    "x": b64(&point[1..1 + size]), "y": b64(&point[1 + size..]),
                })
            }
            SigningKey::Ed(key) => serde_json::json!({
                "kty": "OKP", "kid": kid, "use": "sig", "alg": alg.name(), "crv": "Ed25519",
                "x": b64(key.public_key().as_ref()),
            }),
        }
    }

    /// Signs `signing_input` with `alg`; returns the raw signature.
    pub fn sign(&self, alg: Alg, signing_input: &[u8]) -> Result<Vec<u8>, String> {
        let failed = |_| format!("{alg} signing failed");
        match self {
            SigningKey::Rsa(key) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_SHA384,
                    Alg::PS512 => &signature::RSA_PSS_SHA512,
                    _ => return Err(format!("an RSA key cannot sign {alg}")),
                };
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(padding, &SystemRandom::new(), signing_input, &mut out)
                    .map_err(failed)?;
                Ok(out)
            }
            SigningKey::Ec(key) => Ok(key
                .sign(&SystemRandom::new(), signing_input)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            SigningKey::Ed(key) => Ok(key.sign(signing_input).as_ref().to_vec()),
        }
    }
}

/// Builds a compact JWS from a header and claims already serialized as JSON.
pub fn sign_compact(
    key: &SigningKey,
    alg: Alg,
    header_json: &[u8],
    payload_json: &[u8],
) -> Result<String, String> {
    let mut token = String::with_capacity((header_json.len() + payload_json.len()) * 4 / 3 + 360);
    URL_SAFE_NO_PAD.encode_string(header_json, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload_json, &mut token);
    let signature = key.sign(alg, token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

/// base64url without padding, as JOSE writes it.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(alg: Alg) {
        let key = SigningKey::generate(alg).unwrap();
        let header = format!(r#"{{"alg":"{alg}","kid":"k1","typ":"at+jwt"}}"#);
        let token = sign_compact(&key, alg, header.as_bytes(), br#"{"sub":"x"}"#).unwrap();
        let jwks = serde_json::json!({ "keys": [key.public_jwk(alg, "k1")] });
        let (keys, skipped) = parse_jwks(jwks.to_string().as_bytes(), &Alg::ALL).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(keys.len(), 1);
        let jws = Jws::parse(&token).unwrap();
        let parsed = jws.header().unwrap();
        assert_eq!(parsed.alg, alg.name());
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert!(keys[0].verify(alg, jws.signing_input.as_bytes(), &jws.signature));
        // A different message must not verify.
        assert!(!keys[0].verify(alg, b"other", &jws.signature));
        // Stored and loaded again, the key signs tokens the old public key accepts.
        let again = SigningKey::from_pkcs8(alg, &key.to_pkcs8().unwrap()).unwrap();
        let token2 = sign_compact(&again, alg, header.as_bytes(), b"{}").unwrap();
        let jws2 = Jws::parse(&token2).unwrap();
        assert!(keys[0].verify(alg, jws2.signing_input.as_bytes(), &jws2.signature));
    }

    #[test]
    fn rs256_es256_eddsa_round_trip() {
        round_trip(Alg::RS256);
        round_trip(Alg::ES256);
        round_trip(Alg::EdDSA);
        round_trip(Alg::PS256);
        round_trip(Alg::ES384);
    }

    #[test]
    fn jwk_alg_and_use_restrict_the_key() {
        let key = SigningKey::generate(Alg::ES256).unwrap();
        let mut jwk = key.public_jwk(Alg::ES256, "k");
        let parsed: Jwk = serde_json::from_value(jwk.clone()).unwrap();
        // An EC P-256 key never serves RS256 or ES384.
        let vk = VerifyKey::from_jwk(&parsed, &Alg::ALL).unwrap().unwrap();
        assert!(vk.supports(Alg::ES256));
        assert!(!vk.supports(Alg::RS256) && !vk.supports(Alg::ES384));
        jwk["use"] = "enc".into();
        let parsed: Jwk = serde_json::from_value(jwk).unwrap();
        assert!(VerifyKey::from_jwk(&parsed, &Alg::ALL).unwrap().is_none());
    }

    #[test]
    fn malformed_tokens_are_parse_errors() {
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "..",
            "a..c",
            "!!.e30.c2ln",
            "e30.!!.c2ln",
        ] {
            assert!(Jws::parse(bad).is_err(), "{bad:?}");
        }
        let jws = Jws::parse("bm90IGpzb24.e30.c2ln").unwrap();
        assert_eq!(jws.header().unwrap_err(), ParseError::Json("header"));
        let jws = Jws::parse("e30.e30.c2ln").unwrap();
        assert_eq!(jws.header().unwrap_err(), ParseError::NoAlg);
        // ["RS256"] is not a header, though serde could read RawHeader from it.
        let jws = Jws::parse("WyJSUzI1NiJd.e30.c2ln").unwrap();
        assert_eq!(jws.header().unwrap_err(), ParseError::Json("header"));
        // Unsigned (`alg: none`) tokens parse; their signature is empty and never verifies.
        let jws = Jws::parse("eyJhbGciOiJub25lIn0.e30.").unwrap();
        assert_eq!(jws.header().unwrap().alg, "none");
        assert!(jws.signature.is_empty());
    }

    #[test]
    fn header_flags_crit_and_embedded_keys() {
        let header = |json: &str| {
            let token = format!("{}.e30.c2ln", b64url(json.as_bytes()));
            let jws = Jws::parse(&token).unwrap();
            let h = jws.header().unwrap();
            (h.crit, h.embedded_key)
        };
        assert_eq!(header(r#"{"alg":"RS256"}"#), (false, false));
        assert_eq!(header(r#"{"alg":"RS256","crit":["exp"]}"#), (true, false));
        assert_eq!(header(r#"{"alg":"RS256","jku":"http://x"}"#), (false, true));
        assert_eq!(header(r#"{"alg":"RS256","x5c":["MII"]}"#), (false, true));
    }
}
