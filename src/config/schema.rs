//! The JSON Schema of `gateway.yaml` (`scopegate schema`, `docs/gateway.schema.json`).
//!
//! Derived from the config types: structs and enums derive [`JsonSchema`] beside
//! `Deserialize`, so a key added to a struct is in the schema at once. The types that
//! parse a string themselves (durations, sizes, paths, upstreams, address blocks, rate
//! limit keys, `cors: false`, algorithms, grant types) say here what the YAML holds.
//!
//! The schema describes the document after `${VAR}` expansion; a `${VAR}` where a
//! number or a duration belongs is expanded before the loader (and so the schema's
//! rules) sees it.
//!
//! ```
//! let schema = scopegate::config::schema::schema();
//! assert_eq!(schema["additionalProperties"], false);
//! assert!(schema["properties"]["routes"].is_object());
//! ```

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

use super::issuer::GrantType;
use super::{Cidr, Config, CorsSetting, Dur, Pattern, RateLimitKey, Size, UpstreamList};
use crate::jose::Alg;

/// The schema of the whole file, draft 2020-12, as `scopegate schema` prints it.
pub fn schema() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Config>();
    schema.insert("title".into(), "Scopegate gateway.yaml".into());
    schema.insert(
        "description".into(),
        "The configuration of the Scopegate gateway and its built-in issuer. Reference: docs/configuration.md".into(),
    );
    schema.to_value()
}

/// The schema as pretty JSON with a final newline (the text of `docs/gateway.schema.json`).
pub fn schema_text() -> String {
    // A `Value` always serialises.
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}

// Durations, sizes and algorithms serialise as they are written in the file, so the
// schema shows the defaults the code uses (`"default": "30s"`).

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Serialize for Alg {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: <number><unit> pairs, units ms, s, m, h, d (500ms, 30s, 10m, 1h30m, 30d). A bare number is refused.",
            "type": "string",
            "pattern": r"^\s*([0-9]+(ms|s|m|h|d))+\s*$",
            "examples": ["500ms", "30s", "10m", "1h30m"]
        })
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size in bytes with a binary unit: B, KiB, MiB, GiB or TiB (1KiB = 1024 bytes). Bare numbers and decimal units (MB) are refused.",
            "type": "string",
            "pattern": r"^\s*[0-9]+\s*(B|KiB|MiB|GiB|TiB)\s*$",
            "examples": ["64KiB", "10MiB"]
        })
    }
}

impl JsonSchema for Pattern {
    fn schema_name() -> Cow<'static, str> {
        "PathPattern".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A route path: /x matches exactly, /x/{id} matches one segment in place of {id}, /x/* matches /x and everything below it.",
            "type": "string",
            "pattern": "^/",
            "examples": ["/api/contacts/*", "/api/contacts/{id}", "/healthz"]
        })
    }
}

impl JsonSchema for UpstreamList {
    fn schema_name() -> Cow<'static, str> {
        "Upstream".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "One upstream (an http:// or https:// URL, or builtin:echo), or a list of http(s) URLs that differ only in scheme, host or port.",
            "anyOf": [
                {
                    "type": "string",
                    "examples": ["http://contacts-api:8080", "https://api.internal/base", "builtin:echo"]
                },
                {
                    "type": "array",
                    "items": { "type": "string" },
                    "minItems": 1
                }
            ]
        })
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "AddressBlock".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An IP address block (10.0.0.0/8, fd00::/8) or one address; host bits must be zero.",
            "type": "string",
            "examples": ["10.0.0.0/8", "127.0.0.1"]
        })
    }
}

impl JsonSchema for RateLimitKey {
    fn schema_name() -> Cow<'static, str> {
        "RateLimitKey".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "What a rate limit counts by: subject (the token's sub), client_id, ip (the client's address), or claim:<name>.",
            "type": "string",
            "pattern": "^(subject|client_id|ip|claim:.+)$"
        })
    }
}

impl JsonSchema for CorsSetting {
    fn schema_name() -> Cow<'static, str> {
        "CorsSetting".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let block = generator.subschema_for::<super::CorsBlock>();
        json_schema!({
            "description": "false switches CORS off; a block sets it up (a route's block overrides the top-level one key by key).",
            "anyOf": [{ "const": false }, block]
        })
    }
}

impl JsonSchema for Alg {
    fn schema_name() -> Cow<'static, str> {
        "Algorithm".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = Alg::ALL.iter().map(|alg| alg.name()).collect();
        json_schema!({
            "description": "A JWS signature algorithm (asymmetric only: none and HS* are refused).",
            "type": "string",
            "enum": names
        })
    }
}

impl JsonSchema for GrantType {
    fn schema_name() -> Cow<'static, str> {
        "GrantType".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut names: Vec<&str> = GrantType::ALL.iter().map(|grant| grant.as_str()).collect();
        names.extend(["device_code", "token_exchange"]);
        json_schema!({
            "description": "An OAuth grant type, by its RFC name or the short aliases device_code and token_exchange.",
            "type": "string",
            "enum": names
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_in_the_schema_are_the_ones_the_loader_takes() {
        let schema = schema();
        let names = &schema["$defs"]["GrantType"]["enum"];
        for name in names.as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            assert!(GrantType::from_config_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn structs_that_deny_unknown_keys_say_so() {
        let schema = schema();
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["$defs"]["RouteConfig"]["additionalProperties"],
            false
        );
        assert_eq!(
            schema["$defs"]["IssuerConfig"]["additionalProperties"],
            false
        );
    }
}
