//! What several targets share: the fixed issuer configuration.

use scopegate::config::{Config, IssuerConfig};

/// The issuer section of `common/issuer.yaml`, parsed and validated.
pub fn issuer_config() -> IssuerConfig {
    let config = Config::from_yaml_with_env(include_str!("issuer.yaml"), |_| None)
        .expect("common/issuer.yaml is a valid config");
    config.issuer.expect("common/issuer.yaml has an issuer")
}

/// Splits `data` at NUL bytes into exactly `N` sections (missing ones empty; the last
/// takes the rest, NULs included).
pub fn sections<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&[][..]; N];
    let mut rest = data;
    for slot in out.iter_mut().take(N - 1) {
        match rest.iter().position(|&b| b == 0) {
            Some(nul) => {
                *slot = &rest[..nul];
                rest = &rest[nul + 1..];
            }
            None => {
                *slot = rest;
                rest = &[];
            }
        }
    }
    out[N - 1] = rest;
    out
}
