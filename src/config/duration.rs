//! Human durations for `gateway.yaml`: `500ms`, `30s`, `10m`, `1h30m`, `30d`.
//!
//! A bare number is an error: `timeout: 30` could mean seconds or milliseconds, and
//! guessing wrong is worse than asking.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration written the way operators write them.
///
/// ```
/// use scopegate::config::Dur;
/// assert_eq!(Dur::parse("1h30m").unwrap().as_secs(), 5400);
/// assert!(Dur::parse("30").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(secs: u64) -> Self {
        Dur(Duration::from_secs(secs))
    }

    pub const fn millis(millis: u64) -> Self {
        Dur(Duration::from_millis(millis))
    }

    pub fn get(self) -> Duration {
        self.0
    }

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// Parses `<number><unit>` pairs, units `ms`, `s`, `m`, `h`, `d`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty duration; write e.g. 30s, 10m or 1h30m".into());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "duration {text:?} has no unit; write e.g. {text}s or {text}ms"
            ));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(format!(
                    "invalid duration {text:?}; write e.g. 500ms, 30s, 10m, 1h30m or 30d"
                ));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("duration {text:?} is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Some(Duration::from_millis(number)),
                "s" => Some(Duration::from_secs(number)),
                "m" => number.checked_mul(60).map(Duration::from_secs),
                "h" => number.checked_mul(3600).map(Duration::from_secs),
                "d" => number.checked_mul(86_400).map(Duration::from_secs),
                "" => {
                    return Err(format!(
                        "duration {text:?} ends without a unit (ms, s, m, h or d)"
                    ));
                }
                other => {
                    return Err(format!(
                        "unknown unit {other:?} in duration {text:?}; use ms, s, m, h or d"
                    ));
                }
            };
            total = part
                .and_then(|p| total.checked_add(p))
                .ok_or_else(|| format!("duration {text:?} is too large"))?;
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms % 1000 != 0 {
            return write!(f, "{ms}ms");
        }
        let mut secs = self.0.as_secs();
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as 500ms, 30s, 10m or 1h30m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit; write e.g. \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit; write e.g. \"{v}s\""
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit; write e.g. 500ms or 30s"
                )))
            }
        }
        deserializer.deserialize_any(DurVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(Dur::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(Dur::parse("30s").unwrap().as_secs(), 30);
        assert_eq!(Dur::parse("10m").unwrap().as_secs(), 600);
        assert_eq!(Dur::parse("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(Dur::parse("30d").unwrap().as_secs(), 30 * 86_400);
        assert_eq!(Dur::parse("0s").unwrap().as_secs(), 0);
    }

    #[test]
    fn refuses_bare_numbers_and_junk() {
        for bad in ["30", "", "s", "10x", "1h30", "-5s", "1.5s", "99999999999999999999d"] {
            assert!(Dur::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn displays_round_trip() {
        for text in ["500ms", "30s", "10m", "1h30m", "30d", "0s"] {
            assert_eq!(Dur::parse(text).unwrap().to_string(), text);
        }
    }
}
