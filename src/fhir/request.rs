//! Request classification: method + path + query -> [`Interaction`](super::Interaction).
//!
//! Refuses before any decision what cannot be read unambiguously.

/// Why a request could not be classified. Every variant becomes a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassifyError {
    /// The path is not under `fhir_base`.
    OutsideBase,
    /// The path or query cannot be read unambiguously (dot segments, encoded slash or backslash,
    /// double slashes, control characters, malformed percent-encoding, ...): what was wrong.
    Malformed(&'static str),
    /// The path or query is absurdly long.
    TooLong,
    /// The first path segment is not an R4 resource type.
    UnknownResourceType,
    /// A method FHIR does not use on this path.
    UnsupportedMethod,
    /// A well-formed path that is no FHIR interaction: what was wrong.
    UnsupportedPath(&'static str),
}

use super::FhirRequest;

/// Classifies a request (stub until the classifier lands).
pub fn classify(
    _method: &str,
    _path_and_query: &str,
    _fhir_base: &str,
) -> Result<FhirRequest, ClassifyError> {
    Err(ClassifyError::UnsupportedPath("classification not built yet"))
}
