//! A Cloudflare Worker that connects PowerSync apps to Supabase:
//!
//! - **token issuer**: a Supabase session (or a third-party auth provider's session, as Supabase
//!   accepts them) in, an PowerSync token out (RS256, ES256 or EdDSA), plus the JWKS that
//!   PowerSync verifies it with;
//! - **upload bridge**: PowerSync CRUD transactions applied through Supabase's PostgREST API;
//! - **files**: signed Supabase Storage URLs (upload, download) and deletes, per mode as for rows.
//!
//! Everything except [`edge`] (the Workers adapter, wasm32 only) is plain Rust that builds and
//! tests natively: it reads no clock, no environment and does no I/O of its own.

pub mod api_keys;
pub mod app;
pub mod config;
pub mod credentials;
pub mod environment;
pub mod error;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod session;
pub mod storage;
pub mod token;
pub mod upload;

#[cfg(target_arch = "wasm32")]
mod edge;
