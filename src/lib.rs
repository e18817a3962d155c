//! Scopegate: an API gateway that enforces OAuth 2.0 access tokens.
//!
//! A request's journey: [`server`] accepts it, [`pipeline::handle`] routes it
//! ([`pipeline::router`]), authenticates its bearer token ([`pipeline::authn`], keys from
//! [`jwks`]), authorizes it against the route's scopes ([`pipeline::authz`]), rewrites
//! headers ([`pipeline::forward`]) and sends it on ([`upstream`]). Configuration
//! ([`config`]) is parsed and validated once, then compiled into a [`state::State`].
//!
//! Tests and benches start the real thing with [`state::Gateway::new`] and
//! [`server::serve`] on `127.0.0.1:0`.

#![forbid(unsafe_code)]

pub mod claims;
pub mod clock;
pub mod config;
pub mod error;
pub mod flood;
pub mod http;
pub mod issuer;
pub mod jose;
pub mod jwks;
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod reload;
pub mod revoked;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use server::{Workers, serve, serve_admin, serve_on};
pub use state::{Gateway, Runtime};
