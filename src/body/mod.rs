//! Body-aware checks: what the edge verifies in request and response bodies when the URL alone
//! cannot decide (patient-level and granular grants).
//!
//! * [`membership`]: Patient compartment membership of a resource, from its JSON;
//! * [`granular`]: whether a resource meets a granular scope's constraints;
pub mod membership;
pub mod granular;
