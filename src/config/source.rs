//! What a running config came from, for the admin `/config` page: the file as written
//! (`${VAR}` references left unexpanded, so values from the environment never show),
//! with every secret redacted, its SHA-256 and the time it was loaded.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Shown instead of a secret.
pub const REDACTED: &str = "[redacted]";

/// The source of one loaded config.
#[derive(Debug, Clone)]
pub struct Source {
    /// Lower-case hex SHA-256 of the file's bytes (what `sha256sum gateway.yaml` prints).
    pub sha256: String,
    /// Seconds since the Unix epoch when it was loaded.
    pub loaded_at: u64,
    /// The document as written, secrets redacted.
    pub document: Value,
}

impl Source {
    /// Describes `text`, loaded now. A document that is not a YAML mapping (it would not
    /// have parsed as a config) is kept as `null`.
    pub fn of(text: &str) -> Source {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        let mut sha256 = String::with_capacity(64);
        for byte in digest.as_ref() {
            let _ = write!(sha256, "{byte:02x}");
        }
        let mut document = serde_norway::from_str::<Value>(text).unwrap_or(Value::Null);
        redact(&mut document);
        let loaded_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Source {
            sha256,
            loaded_at,
            document,
        }
    }

    /// The `/config` answer: `{sha256, loaded_at (RFC 3339, UTC), loaded_at_unix, config}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "sha256": self.sha256,
            "loaded_at": rfc3339(self.loaded_at),
            "loaded_at_unix": self.loaded_at,
            "config": self.document,
        })
    }
}

/// Whether a key names a secret: client secrets, passwords and their hashes, and any
/// key a later section calls `*secret*`, `*password*` or `*private*`. (Not `*token*`:
/// `issuer.tokens`, `token_cache_size` and `forward.token` are settings.)
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "password", "private"]
        .iter()
        .any(|word| key.contains(word))
}

/// Replaces secrets in place: values under secret keys, and the password of any URL
/// with credentials (`postgres://user:password@host/db`).
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => redact_map(map),
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) => {
            if let Some(clean) = redact_url_password(text) {
                *text = clean;
            }
        }
        _ => {}
    }
}

fn redact_map(map: &mut Map<String, Value>) {
    for (key, value) in map.iter_mut() {
        if is_secret_key(key) && !value.is_null() {
            *value = Value::String(REDACTED.to_owned());
        } else {
            redact(value);
        }
    }
}

/// `scheme://user:password@rest` → `scheme://user:[redacted]@rest`; `None` when the text
/// is not a URL with a password.
fn redact_url_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!(
        "{scheme}://{user}:{REDACTED}@{host}{}",
        &rest[authority_end..]
    ))
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (proleptic Gregorian, UTC).
fn rfc3339(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(i64::MAX / 2);
    let seconds = unix % 86_400;
    // Civil date from a day count (the era-based algorithm: 400-year eras of 146,097 days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_255_999), "2026-12-02T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn secrets_and_url_passwords_are_redacted_and_nothing_else() {
        let source = Source::of(
            "issuer:\n  store: postgres://gw:hunter2@db:5432/scopegate?sslmode=require\n  \
             clients:\n    - client_id: web\n      client_secret: s3cr3t-value\n  users:\n    \
             - username: alice\n      password_hash: $argon2id$v=19$abc\n  tokens: { access_ttl: 1h }\n\
             forward:\n  token: keep\n\
             trust:\n  issuers:\n    - issuer: https://idp.example.com/\n      \
             introspection: { url: https://idp/introspect, client_secret: \"${S}\" }\n",
        );
        let text = source.document.to_string();
        for secret in ["hunter2", "s3cr3t-value", "argon2id", "${S}"] {
            assert!(!text.contains(secret), "{secret} shows in {text}");
        }
        let doc = &source.document;
        assert_eq!(
            doc["issuer"]["store"],
            "postgres://gw:[redacted]@db:5432/scopegate?sslmode=require"
        );
        assert_eq!(doc["issuer"]["clients"][0]["client_id"], "web");
        assert_eq!(doc["issuer"]["users"][0]["username"], "alice");
        assert_eq!(doc["forward"]["token"], "keep");
        assert_eq!(doc["issuer"]["tokens"]["access_ttl"], "1h");
        assert_eq!(
            doc["trust"]["issuers"][0]["issuer"],
            "https://idp.example.com/"
        );
        assert_eq!(source.sha256.len(), 64);
    }
}
