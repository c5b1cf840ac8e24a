//! Test support for smart-fhir-edge: a proxy-wasm host emulator that drives the built module
//! (in progress on the harness branch), and fixtures for the real-Envoy suite.

pub mod http1;
pub mod node_idp;
pub mod real_envoy;
pub mod stack;
