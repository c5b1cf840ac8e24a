//! smart-fhir-edge: SMART on FHIR authorization at the edge.
//!
//! The crate is a **pure core** and a **thin adapter**:
//!
//! * the core (every module but [`adapter`]) never talks to the host. It takes time, headers,
//!   properties and callout answers as parameters and returns decisions as values, so it is unit
//!   tested natively with `cargo test`;
//! * [`adapter`] is the only code that calls the proxy-wasm host (Envoy). It turns host events into
//!   core calls and core decisions into host actions.

pub mod audit;
pub mod audit_event;
pub mod authz;
pub mod body;
pub mod brake;
pub mod claims;
pub mod config;
pub mod decision;
pub mod denial;
pub mod fhir;
pub mod header_map;
pub mod introspection;
pub mod jwks;
pub mod metrics;
pub mod outcome;
pub mod revocation;
pub mod scope;
pub mod shared;
pub mod token;
pub mod token_cache;

pub mod adapter;

/// This build's version: logged at start, and stamped on responses as `x-smart-fhir-edge` when `version_header` asks.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
