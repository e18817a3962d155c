//! Byte sizes for `gateway.yaml`, in binary units: `512B`, `64KiB`, `10MiB`, `1GiB`
//! (`1KiB` = 1024 bytes).
//!
//! A bare number is an error, as for durations; so are decimal units (`10MB`), which
//! half the readers would take for 10^6 bytes and half for 2^20.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A size in bytes, written with a binary unit.
///
/// ```
/// use scopegate::config::Size;
/// assert_eq!(Size::parse("10MiB").unwrap().bytes(), 10 * 1024 * 1024);
/// assert!(Size::parse("10MB").is_err());
/// assert!(Size::parse("1024").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

impl Size {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `<integer><unit>`, units `B`, `KiB`, `MiB`, `GiB`, `TiB`.
    pub fn parse(text: &str) -> Result<Size, String> {
        let text = text.trim();
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid size {text:?}; write e.g. 512B, 64KiB or 10MiB"
            ));
        }
        let number: u64 = text[..digits]
            .parse()
            .map_err(|_| format!("size {text:?} is too large"))?;
        let factor: u64 = match text[digits..].trim_start() {
            "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "" => {
                return Err(format!(
                    "size {text:?} has no unit; write e.g. {number}B or {number}KiB"
                ));
            }
            unit @ ("kB" | "KB" | "k" | "K" | "MB" | "M" | "GB" | "G" | "TB") => {
                return Err(format!(
                    "size {text:?}: {unit:?} is ambiguous; use binary units B, KiB, MiB or GiB (1KiB = 1024 bytes)"
                ));
            }
            unit => {
                return Err(format!(
                    "unknown unit {unit:?} in size {text:?}; use B, KiB, MiB or GiB"
                ));
            }
        };
        number
            .checked_mul(factor)
            .map(Size)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, factor) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= factor && self.0 % factor == 0 {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 512B, 64KiB or 10MiB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "size {v} has no unit; write e.g. \"{v}B\" or \"{v}KiB\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                Err(E::custom(format!("size {v} has no unit; write e.g. 10MiB")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
                Err(E::custom(format!("size {v} has no unit; write e.g. 10MiB")))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_units_only() {
        assert_eq!(Size::parse("1KiB").unwrap().bytes(), 1024);
        assert_eq!(Size::parse("512B").unwrap().bytes(), 512);
        assert_eq!(Size::parse("10MiB").unwrap().bytes(), 10 << 20);
        assert_eq!(Size::parse("2GiB").unwrap().bytes(), 2 << 30);
        for bad in [
            "",
            "10",
            "10MB",
            "10kB",
            "1.5MiB",
            "-1B",
            "MiB",
            "10 parsecs",
            "99999999999TiB",
        ] {
            assert!(Size::parse(bad).is_err(), "{bad:?} should be refused");
        }
        for text in ["1KiB", "10MiB", "1000B", "3GiB"] {
            assert_eq!(Size::parse(text).unwrap().to_string(), text);
        }
    }
}
