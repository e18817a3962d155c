//! `tracing:`: OpenTelemetry spans of the requests the gateway serves, exported over
//! OTLP/HTTP, and the head sampling of the traces it starts.

use schemars::JsonSchema;
use serde::Deserialize;

use super::ConfigError;

/// The `tracing` block of `gateway.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP/HTTP collector's base URL; spans are POSTed to `<otlp_endpoint>/v1/traces`.
    /// Unset: no spans are exported (sampling still sets the upstream's `traceparent`).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of every span.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of the traces the gateway starts that are sampled (0.0 to 1.0); a trace
    /// continued from a caller's `traceparent` keeps the caller's decision.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_service_name() -> String {
    "scopegate".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

impl TracingConfig {
    /// The URL spans are POSTed to: `<otlp_endpoint>/v1/traces`.
    pub fn traces_url(&self) -> Option<http::Uri> {
        let endpoint = self.otlp_endpoint.as_deref()?;
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            .parse()
            .ok()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let at = "tracing.otlp_endpoint";
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|err| ConfigError::at(at, format!("{endpoint:?} is not a URL: {err}")))?;
            // Plain http:// is fine on any host: spans carry no credentials, and
            // collectors usually listen in plain text next to the gateway.
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(ConfigError::at(
                    at,
                    format!("{endpoint:?} must be an http:// or https:// URL with a host"),
                ));
            }
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(ConfigError::at(
                    at,
                    "must not carry a user or password (they would be logged, and are never sent)",
                ));
            }
            if uri.query().is_some() {
                return Err(ConfigError::at(
                    at,
                    format!("{endpoint:?} must not have a query: /v1/traces is appended to it"),
                ));
            }
            if self.traces_url().is_none() {
                return Err(ConfigError::at(
                    at,
                    format!("{endpoint:?} with /v1/traces appended is not a URL"),
                ));
            }
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::at("tracing.service_name", "must not be empty"));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::at(
                "tracing.sample_ratio",
                format!("{} is not between 0.0 and 1.0", self.sample_ratio),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn error(yaml: &str) -> String {
        match Config::from_yaml(yaml) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn defaults_and_the_traces_url() {
        let config = Config::from_yaml("tracing: { otlp_endpoint: http://otel:4318/ }").unwrap();
        let tracing = config.tracing.unwrap();
        assert_eq!(tracing.service_name, "scopegate");
        assert_eq!(tracing.sample_ratio, 1.0);
        assert_eq!(
            tracing.traces_url().unwrap().to_string(),
            "http://otel:4318/v1/traces"
        );
        let config = Config::from_yaml("tracing: { sample_ratio: 0.25 }").unwrap();
        assert_eq!(config.tracing.unwrap().traces_url(), None);
        assert!(Config::from_yaml("{}").unwrap().tracing.is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, key) in [
            (
                "tracing: { otlp_endpoint: 'otel:4318' }",
                "tracing.otlp_endpoint",
            ),
            (
                "tracing: { otlp_endpoint: 'ftp://otel' }",
                "tracing.otlp_endpoint",
            ),
            (
                "tracing: { otlp_endpoint: 'http://otel?x=1' }",
                "tracing.otlp_endpoint",
            ),
            ("tracing: { service_name: ' ' }", "tracing.service_name"),
            ("tracing: { sample_ratio: 1.5 }", "tracing.sample_ratio"),
            ("tracing: { sample_ratio: -0.1 }", "tracing.sample_ratio"),
            ("tracing: { sample_ratio: .nan }", "tracing.sample_ratio"),
            ("tracing: { endpoint: 'http://otel' }", "tracing"),
        ] {
            let message = error(yaml);
            assert!(message.contains(key), "{yaml}: {message}");
        }
    }
}
