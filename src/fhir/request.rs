//! Request classification: method + path + query -> [`Interaction`](super::Interaction).
//!
//! Refuses before any decision what cannot be read unambiguously. In order:
//!
//! 1. lengths ([`Limits`]): path (before `?`) and query, else `TooLong`;
//! 2. a fragment `#` anywhere, else `Malformed`;
//! 3. the whole path, base included: it starts with `/`; raw bytes are RFC 3986 path characters
//!    without `;` (no path parameters) or `\`; no empty segment (`//`, or a trailing `/`: only
//!    the root path `/` with an empty base may end in `/`); each segment percent-decodes once to
//!    valid UTF-8 without control characters, `/`, `\`, `;` or `%` (double encoding); no segment
//!    is `.` or `..`, raw or decoded;
//! 4. the path is under `fhir_base`, segment-wise and case-sensitively (`/fhirx` and `/FHIR` are
//!    not under `/fhir`), else `OutsideBase`;
//! 5. the query parses ([`Query::parse_with_limits`]);
//! 6. the method is one FHIR uses (`HEAD` reads like `GET`), else `UnsupportedMethod`;
//! 7. the decoded segments form an R4 interaction: resource types are R4 names (exact case, else
//!    `UnknownResourceType`), ids and version ids have FHIR id syntax (and are not `.`/`..`),
//!    operation names are `$` + `[A-Za-z0-9_-]+`, compartments are the five R4 defines.

use std::fmt;

use super::compartment::is_compartment_type;
use super::query::{is_fhir_id, percent_decode, Query};
use super::resource_types::is_resource_type;
use super::{FhirRequest, Interaction, Method, OperationTarget};

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

impl fmt::Display for ClassifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassifyError::OutsideBase => f.write_str("path is not under the FHIR base"),
            ClassifyError::Malformed(what) => write!(f, "malformed request: {what}"),
            ClassifyError::TooLong => f.write_str("path or query too long"),
            ClassifyError::UnknownResourceType => f.write_str("not an R4 resource type"),
            ClassifyError::UnsupportedMethod => f.write_str("method not supported on this path"),
            ClassifyError::UnsupportedPath(what) => write!(f, "not a FHIR interaction: {what}"),
        }
    }
}

impl std::error::Error for ClassifyError {}

/// Bounds on what classification reads, to keep memory and work bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest path (before `?`), in bytes.
    pub max_path_bytes: usize,
    /// Longest query (after `?`), in bytes.
    pub max_query_bytes: usize,
    /// Most query parameters.
    pub max_params: usize,
    /// Most values over all parameters (each comma-separated value counts).
    pub max_values: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_path_bytes: 2048,
            max_query_bytes: 8192,
            max_params: 100,
            max_values: 1000,
        }
    }
}

/// Classifies a request within the default [`Limits`]. `fhir_base` is `/fhir`-like or empty for
/// the root, without trailing `/`.
pub fn classify(method: &str, path_and_query: &str, fhir_base: &str) -> Result<FhirRequest, ClassifyError> {
    classify_with_limits(method, path_and_query, fhir_base, &Limits::default())
}

/// Classifies a request within `limits` (see the module documentation for what is refused).
pub fn classify_with_limits(
    method: &str,
    path_and_query: &str,
    fhir_base: &str,
    limits: &Limits,
) -> Result<FhirRequest, ClassifyError> {
    let (path, raw_query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, query),
        None => (path_and_query, ""),
    };
    if path.len() > limits.max_path_bytes || raw_query.len() > limits.max_query_bytes {
        return Err(ClassifyError::TooLong);
    }
    if path_and_query.contains('#') {
        return Err(ClassifyError::Malformed("fragment (#)"));
    }
    let segments = checked_segments(path)?;
    let segments = strip_base(path, &segments, fhir_base)?;
    let query = Query::parse_with_limits(raw_query, limits)?;
    let method = Method::parse(method).ok_or(ClassifyError::UnsupportedMethod)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let interaction = route(method, &segments, &query)?;
    Ok(FhirRequest {
        method,
        interaction,
        query,
    })
}

/// Checks the whole raw path and returns its decoded segments (none for `/`).
fn checked_segments(path: &str) -> Result<Vec<String>, ClassifyError> {
    let Some(after_root) = path.strip_prefix('/') else {
        return Err(ClassifyError::Malformed("path does not start with /"));
    };
    for b in path.bytes() {
        let allowed = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'%'
            );
        if !allowed {
            return Err(ClassifyError::Malformed(match b {
                b';' => "path parameter (;)",
                b'\\' => "backslash in path",
                _ if b.is_ascii_control() => "control character in path",
                _ => "character not allowed in a path",
            }));
        }
    }
    if after_root.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments = Vec::new();
    for raw in after_root.split('/') {
        if raw.is_empty() {
            return Err(ClassifyError::Malformed("empty path segment (// or trailing /)"));
        }
        let decoded = percent_decode(raw, false)?;
        if decoded == "." || decoded == ".." {
            return Err(ClassifyError::Malformed("dot segment (. or ..)"));
        }
        if decoded.contains(['/', '\\']) {
            return Err(ClassifyError::Malformed("encoded slash or backslash"));
        }
        if decoded.contains(';') {
            return Err(ClassifyError::Malformed("path parameter (;)"));
        }
        if decoded.contains('%') {
            return Err(ClassifyError::Malformed("double percent-encoding"));
        }
        segments.push(decoded);
    }
    Ok(segments)
}

/// The decoded segments after `fhir_base`, when the raw path is under it segment-wise.
fn strip_base<'s>(
    path: &str,
    segments: &'s [String],
    fhir_base: &str,
) -> Result<&'s [String], ClassifyError> {
    if fhir_base.is_empty() {
        return Ok(segments);
    }
    // A base that is not `/a/b` (validated by the configuration) matches nothing: fail closed.
    let Some(base_segments) = fhir_base.strip_prefix('/') else {
        return Err(ClassifyError::OutsideBase);
    };
    if base_segments.is_empty() || base_segments.ends_with('/') {
        return Err(ClassifyError::OutsideBase);
    }
    let under = match path.strip_prefix(fhir_base) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    };
    if !under {
        return Err(ClassifyError::OutsideBase);
    }
    let count = base_segments.split('/').count();
    segments.get(count..).ok_or(ClassifyError::OutsideBase)
}

fn route(method: Method, segments: &[&str], query: &Query) -> Result<Interaction, ClassifyError> {
    use Interaction as I;
    let reads = matches!(method, Method::Get | Method::Head);
    let only = |allowed: bool, interaction: Interaction| {
        if allowed {
            Ok(interaction)
        } else {
            Err(ClassifyError::UnsupportedMethod)
        }
    };
    match segments {
        [] => match method {
            Method::Get | Method::Head => Ok(I::SearchSystem { via_post: false }),
            Method::Post => Ok(I::BatchOrTransaction),
            _ => Err(ClassifyError::UnsupportedMethod),
        },
        ["metadata"] => only(reads, I::Capabilities),
        ["_history"] => only(reads, I::HistorySystem),
        ["_search"] => only(method == Method::Post, I::SearchSystem { via_post: true }),
        [op] if op.starts_with('$') => operation(method, op, OperationTarget::System),
        [resource_type] => {
            let resource_type = known_type(resource_type)?;
            match method {
                Method::Get | Method::Head => Ok(I::SearchType {
                    resource_type,
                    via_post: false,
                }),
                Method::Post => Ok(I::Create { resource_type }),
                Method::Put => conditional(query, I::ConditionalUpdate { resource_type }),
                Method::Patch => conditional(query, I::ConditionalPatch { resource_type }),
                Method::Delete => conditional(query, I::ConditionalDelete { resource_type }),
            }
        }
        [resource_type, "_history"] => only(
            reads,
            I::HistoryType {
                resource_type: known_type(resource_type)?,
            },
        ),
        [resource_type, "_search"] => only(
            method == Method::Post,
            I::SearchType {
                resource_type: known_type(resource_type)?,
                via_post: true,
            },
        ),
        [resource_type, op] if op.starts_with('$') => {
            let resource_type = known_type(resource_type)?;
            operation(method, op, OperationTarget::Type { resource_type })
        }
        [resource_type, id] => {
            let resource_type = known_type(resource_type)?;
            let id = fhir_id(id)?;
            match method {
                Method::Get | Method::Head => Ok(I::Read { resource_type, id }),
                Method::Put => Ok(I::Update { resource_type, id }),
                Method::Patch => Ok(I::Patch { resource_type, id }),
                Method::Delete => Ok(I::Delete { resource_type, id }),
                Method::Post => Err(ClassifyError::UnsupportedMethod),
            }
        }
        [resource_type, id, "_history"] => {
            let resource_type = known_type(resource_type)?;
            let id = fhir_id(id)?;
            only(reads, I::HistoryInstance { resource_type, id })
        }
        [resource_type, id, op] if op.starts_with('$') => {
            let resource_type = known_type(resource_type)?;
            let id = fhir_id(id)?;
            operation(method, op, OperationTarget::Instance { resource_type, id })
        }
        [compartment, id, target] => {
            let interaction = compartment_search(compartment, id, target, false)?;
            only(reads, interaction)
        }
        [resource_type, id, "_history", version_id] => {
            let resource_type = known_type(resource_type)?;
            let id = fhir_id(id)?;
            let version_id = fhir_id(version_id)?;
            only(
                reads,
                I::Vread {
                    resource_type,
                    id,
                    version_id,
                },
            )
        }
        [compartment, id, target, "_search"] => {
            let interaction = compartment_search(compartment, id, target, true)?;
            only(method == Method::Post, interaction)
        }
        _ => Err(ClassifyError::UnsupportedPath("no R4 interaction has this path")),
    }
}

/// `[compartment]/[id]/[type or *]`.
fn compartment_search(
    compartment: &str,
    id: &str,
    target: &str,
    via_post: bool,
) -> Result<Interaction, ClassifyError> {
    let compartment = known_type(compartment)?;
    if !is_compartment_type(&compartment) {
        return Err(ClassifyError::UnsupportedPath("not an R4 compartment type"));
    }
    let id = fhir_id(id)?;
    let resource_type = match target {
        "*" => None,
        _ => Some(known_type(target)?),
    };
    Ok(Interaction::SearchCompartment {
        compartment,
        id,
        resource_type,
        via_post,
    })
}

fn operation(method: Method, name: &str, target: OperationTarget) -> Result<Interaction, ClassifyError> {
    let well_formed = name.strip_prefix('$').is_some_and(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !well_formed {
        return Err(ClassifyError::Malformed(
            "operation name is not $ + [A-Za-z0-9_-]",
        ));
    }
    match method {
        Method::Get | Method::Head | Method::Post => Ok(Interaction::Operation {
            name: name.to_string(),
            target,
        }),
        _ => Err(ClassifyError::UnsupportedMethod),
    }
}

/// Conditional update/patch/delete need search criteria: without any they would match everything.
fn conditional(query: &Query, interaction: Interaction) -> Result<Interaction, ClassifyError> {
    if query.is_empty() {
        Err(ClassifyError::UnsupportedPath(
            "conditional interaction without search criteria",
        ))
    } else {
        Ok(interaction)
    }
}

fn known_type(segment: &str) -> Result<String, ClassifyError> {
    if is_resource_type(segment) {
        Ok(segment.to_string())
    } else {
        Err(ClassifyError::UnknownResourceType)
    }
}

fn fhir_id(segment: &str) -> Result<String, ClassifyError> {
    // `.` and `..` match the id pattern but are dot segments; they are refused before this.
    if is_fhir_id(segment) && segment != "." && segment != ".." {
        Ok(segment.to_string())
    } else {
        Err(ClassifyError::Malformed(
            "id is not FHIR id syntax [A-Za-z0-9-.]{1,64}",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction as I;

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn op(name: &str, target: OperationTarget) -> Interaction {
        I::Operation {
            name: s(name),
            target,
        }
    }

    fn compartment(c: &str, id: &str, t: Option<&str>, via_post: bool) -> Interaction {
        I::SearchCompartment {
            compartment: s(c),
            id: s(id),
            resource_type: t.map(s),
            via_post,
        }
    }

    #[test]
    fn classifies_every_interaction() {
        let instance = |t: &str, id: &str| OperationTarget::Instance {
            resource_type: s(t),
            id: s(id),
        };
        let type_target = |t: &str| OperationTarget::Type { resource_type: s(t) };
        let cases: Vec<(&str, &str, Interaction)> = vec![
            ("GET", "/fhir/metadata", I::Capabilities),
            ("HEAD", "/fhir/metadata", I::Capabilities),
            ("GET", "/fhir/metadata?_format=json", I::Capabilities),
            (
                "GET",
                "/fhir/Patient/123",
                I::Read {
                    resource_type: s("Patient"),
                    id: s("123"),
                },
            ),
            (
                "HEAD",
                "/fhir/Patient/123",
                I::Read {
                    resource_type: s("Patient"),
                    id: s("123"),
                },
            ),
            (
                "GET",
                "/fhir/Observation/a-B.9",
                I::Read {
                    resource_type: s("Observation"),
                    id: s("a-B.9"),
                },
            ),
            (
                "GET",
                "/fhir/Patient/%31%32",
                I::Read {
                    resource_type: s("Patient"),
                    id: s("12"),
                },
            ),
            (
                "GET",
                "/fhir/Patient/123/_history/4",
                I::Vread {
                    resource_type: s("Patient"),
                    id: s("123"),
                    version_id: s("4"),
                },
            ),
            (
                "PUT",
                "/fhir/Patient/123",
                I::Update {
                    resource_type: s("Patient"),
                    id: s("123"),
                },
            ),
            (
                "PATCH",
                "/fhir/Patient/123",
                I::Patch {
                    resource_type: s("Patient"),
                    id: s("123"),
                },
            ),
            (
                "DELETE",
                "/fhir/Patient/123",
                I::Delete {
                    resource_type: s("Patient"),
                    id: s("123"),
                },
            ),
            (
                "PUT",
                "/fhir/Patient?identifier=x|1",
                I::ConditionalUpdate {
                    resource_type: s("Patient"),
                },
            ),
            (
                "PATCH",
                "/fhir/Observation?_id=1",
                I::ConditionalPatch {
                    resource_type: s("Observation"),
                },
            ),
            (
                "DELETE",
                "/fhir/Observation?code=x",
                I::ConditionalDelete {
                    resource_type: s("Observation"),
                },
            ),
            (
                "POST",
                "/fhir/Observation",
                I::Create {
                    resource_type: s("Observation"),
                },
            ),
            (
                "GET",
                "/fhir/Patient/123/_history",
                I::HistoryInstance {
                    resource_type: s("Patient"),
                    id: s("123"),
                },
            ),
            (
                "GET",
                "/fhir/Patient/_history",
                I::HistoryType {
                    resource_type: s("Patient"),
                },
            ),
            ("GET", "/fhir/_history", I::HistorySystem),
            (
                "GET",
                "/fhir/Observation",
                I::SearchType {
                    resource_type: s("Observation"),
                    via_post: false,
                },
            ),
            (
                "GET",
                "/fhir/Observation?patient=1&code=x",
                I::SearchType {
                    resource_type: s("Observation"),
                    via_post: false,
                },
            ),
            (
                "POST",
                "/fhir/Observation/_search",
                I::SearchType {
                    resource_type: s("Observation"),
                    via_post: true,
                },
            ),
            ("GET", "/fhir", I::SearchSystem { via_post: false }),
            ("GET", "/fhir?_type=Patient", I::SearchSystem { via_post: false }),
            ("POST", "/fhir/_search", I::SearchSystem { via_post: true }),
            (
                "GET",
                "/fhir/Patient/123/Observation",
                compartment("Patient", "123", Some("Observation"), false),
            ),
            (
                "GET",
                "/fhir/Patient/123/*",
                compartment("Patient", "123", None, false),
            ),
            (
                "GET",
                "/fhir/Encounter/e1/Observation?code=x",
                compartment("Encounter", "e1", Some("Observation"), false),
            ),
            (
                "GET",
                "/fhir/RelatedPerson/r/*",
                compartment("RelatedPerson", "r", None, false),
            ),
            (
                "GET",
                "/fhir/Practitioner/p/Encounter",
                compartment("Practitioner", "p", Some("Encounter"), false),
            ),
            (
                "GET",
                "/fhir/Device/d/Observation",
                compartment("Device", "d", Some("Observation"), false),
            ),
            (
                "POST",
                "/fhir/Patient/123/Observation/_search",
                compartment("Patient", "123", Some("Observation"), true),
            ),
            (
                "POST",
                "/fhir/Patient/123/*/_search",
                compartment("Patient", "123", None, true),
            ),
            ("POST", "/fhir", I::BatchOrTransaction),
            ("POST", "/fhir?_format=json", I::BatchOrTransaction),
            (
                "GET",
                "/fhir/$everything-x_1",
                op("$everything-x_1", OperationTarget::System),
            ),
            ("POST", "/fhir/$convert", op("$convert", OperationTarget::System)),
            (
                "GET",
                "/fhir/Patient/$match",
                op("$match", type_target("Patient")),
            ),
            (
                "POST",
                "/fhir/Observation/$lastn",
                op("$lastn", type_target("Observation")),
            ),
            (
                "GET",
                "/fhir/Patient/123/$everything",
                op("$everything", instance("Patient", "123")),
            ),
            (
                "HEAD",
                "/fhir/Patient/123/$everything",
                op("$everything", instance("Patient", "123")),
            ),
            (
                "POST",
                "/fhir/Patient/123/$everything",
                op("$everything", instance("Patient", "123")),
            ),
            (
                "GET",
                "/fhir/Patient/%24everything",
                op("$everything", type_target("Patient")),
            ),
        ];
        for (method, path, expected) in cases {
            let got = classify(method, path, "/fhir").unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(got.interaction, expected, "{method} {path}");
            assert_eq!(got.method, Method::parse(method).unwrap());
        }
    }

    #[test]
    fn keeps_the_parsed_query() {
        let got = classify("GET", "/fhir/Observation?patient=123&code=a,b", "/fhir").unwrap();
        assert_eq!(got.query, Query::parse("patient=123&code=a,b").unwrap());
        assert_eq!(got.query.params_named("patient").next().unwrap().values, ["123"]);
        let got = classify("GET", "/fhir/Patient/1", "/fhir").unwrap();
        assert!(got.query.is_empty());
        let got = classify("GET", "/fhir/Patient?", "/fhir").unwrap();
        assert!(got.query.is_empty());
    }

    #[test]
    fn reads_paths_under_any_base() {
        let read = |t: &str, id: &str| I::Read {
            resource_type: s(t),
            id: s(id),
        };
        let cases = [
            ("", "/Patient/1", Ok(read("Patient", "1"))),
            ("", "/metadata", Ok(I::Capabilities)),
            ("", "/", Ok(I::SearchSystem { via_post: false })),
            ("", "/?_type=Patient", Ok(I::SearchSystem { via_post: false })),
            ("", "/fhir/Patient/1", Err(ClassifyError::UnknownResourceType)),
            ("/fhir", "/fhir/Patient/1", Ok(read("Patient", "1"))),
            ("/r4/tenant-a", "/r4/tenant-a/Patient/1", Ok(read("Patient", "1"))),
            (
                "/r4/tenant-a",
                "/r4/tenant-a",
                Ok(I::SearchSystem { via_post: false }),
            ),
            (
                "/r4/tenant-a",
                "/r4/tenant-b/Patient/1",
                Err(ClassifyError::OutsideBase),
            ),
            ("/r4/tenant-a", "/r4/Patient/1", Err(ClassifyError::OutsideBase)),
            ("/fhir", "/fhirx/Patient/1", Err(ClassifyError::OutsideBase)),
            ("/fhir", "/fhirPatient/1", Err(ClassifyError::OutsideBase)),
            ("/fhir", "/FHIR/Patient/1", Err(ClassifyError::OutsideBase)),
            ("/fhir", "/Fhir/Patient/1", Err(ClassifyError::OutsideBase)),
            ("/fhir", "/f%68ir/Patient/1", Err(ClassifyError::OutsideBase)),
            ("/fhir", "/other/fhir/Patient/1", Err(ClassifyError::OutsideBase)),
            ("/fhir", "/Patient/1", Err(ClassifyError::OutsideBase)),
            ("/fhir", "/", Err(ClassifyError::OutsideBase)),
            (
                "/fhir",
                "/fhir/",
                Err(ClassifyError::Malformed("empty path segment (// or trailing /)")),
            ),
            // A base that the configuration would refuse matches nothing.
            ("fhir", "/fhir/Patient/1", Err(ClassifyError::OutsideBase)),
            ("/fhir/", "/fhir/Patient/1", Err(ClassifyError::OutsideBase)),
            ("/", "/Patient/1", Err(ClassifyError::OutsideBase)),
        ];
        for (base, path, expected) in cases {
            assert_eq!(
                classify("GET", path, base).map(|r| r.interaction),
                expected,
                "{base:?} {path}"
            );
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        let long_path = format!("/fhir/Patient/{}", "1".repeat(2048));
        let long_query = format!("/fhir/Patient?name={}", "x".repeat(8192));
        let long_id = format!("/fhir/Patient/{}", "a".repeat(65));
        let cases: Vec<(&str, ClassifyError)> = vec![
            (
                "/fhir/Patient/../Observation",
                ClassifyError::Malformed("dot segment (. or ..)"),
            ),
            (
                "/fhir/Patient/./1",
                ClassifyError::Malformed("dot segment (. or ..)"),
            ),
            (
                "/fhir/Patient/1/..",
                ClassifyError::Malformed("dot segment (. or ..)"),
            ),
            (
                "/fhir/../fhir/Patient/1",
                ClassifyError::Malformed("dot segment (. or ..)"),
            ),
            (
                "/fhir/%2e%2e/x",
                ClassifyError::Malformed("dot segment (. or ..)"),
            ),
            (
                "/fhir/Patient/%2E%2E/Observation",
                ClassifyError::Malformed("dot segment (. or ..)"),
            ),
            (
                "/fhir/Patient/.%2e",
                ClassifyError::Malformed("dot segment (. or ..)"),
            ),
            (
                "/fhir/Patient/%2e",
                ClassifyError::Malformed("dot segment (. or ..)"),
            ),
            (
                "/fhir/Patient%2F1",
                ClassifyError::Malformed("encoded slash or backslash"),
            ),
            (
                "/fhir/Patient%2f1",
                ClassifyError::Malformed("encoded slash or backslash"),
            ),
            (
                "/fhir/Patient/1%2F..%2FObservation",
                ClassifyError::Malformed("encoded slash or backslash"),
            ),
            (
                "/fhir/Patient%5C1",
                ClassifyError::Malformed("encoded slash or backslash"),
            ),
            (
                "/fhir/Patient%5c1",
                ClassifyError::Malformed("encoded slash or backslash"),
            ),
            ("/fhir/Patient\\1", ClassifyError::Malformed("backslash in path")),
            (
                "/fhir//Patient",
                ClassifyError::Malformed("empty path segment (// or trailing /)"),
            ),
            (
                "//fhir/Patient",
                ClassifyError::Malformed("empty path segment (// or trailing /)"),
            ),
            (
                "/fhir/Patient//1",
                ClassifyError::Malformed("empty path segment (// or trailing /)"),
            ),
            (
                "/fhir/Patient/",
                ClassifyError::Malformed("empty path segment (// or trailing /)"),
            ),
            (
                "/fhir/Patient/1/",
                ClassifyError::Malformed("empty path segment (// or trailing /)"),
            ),
            (
                "/fhir/Patient/?name=x",
                ClassifyError::Malformed("empty path segment (// or trailing /)"),
            ),
            (
                "/fhir/Patient/1%00",
                ClassifyError::Malformed("control character"),
            ),
            (
                "/fhir/Patient/1%0a",
                ClassifyError::Malformed("control character"),
            ),
            (
                "/fhir/Patient/1%7F",
                ClassifyError::Malformed("control character"),
            ),
            (
                "/fhir/Patient/1\0",
                ClassifyError::Malformed("control character in path"),
            ),
            (
                "/fhir/Patient/1\r\n",
                ClassifyError::Malformed("control character in path"),
            ),
            (
                "/fhir/Patient/1\t",
                ClassifyError::Malformed("control character in path"),
            ),
            (
                "/fhir/Patient/1;x=y",
                ClassifyError::Malformed("path parameter (;)"),
            ),
            (
                "/fhir/Patient;x/1",
                ClassifyError::Malformed("path parameter (;)"),
            ),
            (
                "/fhir/Patient/1%3Bx=y",
                ClassifyError::Malformed("path parameter (;)"),
            ),
            (
                "/fhir/Patient/%ZZ",
                ClassifyError::Malformed("malformed percent-encoding"),
            ),
            (
                "/fhir/Patient/1%",
                ClassifyError::Malformed("malformed percent-encoding"),
            ),
            (
                "/fhir/Patient/1%2",
                ClassifyError::Malformed("malformed percent-encoding"),
            ),
            (
                "/fhir/Patient/%FF",
                ClassifyError::Malformed("percent-encoding is not UTF-8"),
            ),
            (
                "/fhir/Patient/%C0%AE%C0%AE",
                ClassifyError::Malformed("percent-encoding is not UTF-8"),
            ),
            (
                "/fhir/Patient/%252e%252e",
                ClassifyError::Malformed("double percent-encoding"),
            ),
            (
                "/fhir/Patient/%2541",
                ClassifyError::Malformed("double percent-encoding"),
            ),
            ("/fhir/Patient/1#x", ClassifyError::Malformed("fragment (#)")),
            ("/fhir/Patient/1?a=1#x", ClassifyError::Malformed("fragment (#)")),
            (
                "/fhir/Patient/1 2",
                ClassifyError::Malformed("character not allowed in a path"),
            ),
            (
                "/fhir/Patient/1\"",
                ClassifyError::Malformed("character not allowed in a path"),
            ),
            (
                "/fhir/Patient/<1>",
                ClassifyError::Malformed("character not allowed in a path"),
            ),
            (
                "/fhir/Patient/1|2",
                ClassifyError::Malformed("character not allowed in a path"),
            ),
            (
                "/fhir/Patient/\u{e9}",
                ClassifyError::Malformed("character not allowed in a path"),
            ),
            (
                "fhir/Patient/1",
                ClassifyError::Malformed("path does not start with /"),
            ),
            ("", ClassifyError::Malformed("path does not start with /")),
            ("*", ClassifyError::Malformed("path does not start with /")),
            (
                "https://evil/fhir/Patient/1",
                ClassifyError::Malformed("path does not start with /"),
            ),
            ("/FHIR/Patient/1", ClassifyError::OutsideBase),
            ("/fhirx/Patient/1", ClassifyError::OutsideBase),
            (&long_path, ClassifyError::TooLong),
            (&long_query, ClassifyError::TooLong),
            (
                "/fhir/Patient?name=%ZZ",
                ClassifyError::Malformed("malformed percent-encoding"),
            ),
            (
                "/fhir/Patient?name=a%00",
                ClassifyError::Malformed("control character"),
            ),
            (
                "/fhir/Patient?name=a b",
                ClassifyError::Malformed("raw space or non-ASCII byte in query"),
            ),
            (
                "/fhir/Patient/1%20",
                ClassifyError::Malformed("id is not FHIR id syntax [A-Za-z0-9-.]{1,64}"),
            ),
            (
                "/fhir/Patient/1_2",
                ClassifyError::Malformed("id is not FHIR id syntax [A-Za-z0-9-.]{1,64}"),
            ),
            (
                "/fhir/Patient/1@2",
                ClassifyError::Malformed("id is not FHIR id syntax [A-Za-z0-9-.]{1,64}"),
            ),
            (
                &long_id,
                ClassifyError::Malformed("id is not FHIR id syntax [A-Za-z0-9-.]{1,64}"),
            ),
            (
                "/fhir/Patient/1/_history/v_1",
                ClassifyError::Malformed("id is not FHIR id syntax [A-Za-z0-9-.]{1,64}"),
            ),
            ("/fhir/patient/1", ClassifyError::UnknownResourceType),
            ("/fhir/PATIENT/1", ClassifyError::UnknownResourceType),
            ("/fhir/Patients", ClassifyError::UnknownResourceType),
            ("/fhir/Resource/1", ClassifyError::UnknownResourceType),
            ("/fhir/DomainResource", ClassifyError::UnknownResourceType),
            ("/fhir/Metadata", ClassifyError::UnknownResourceType),
            (
                "/fhir/.well-known/smart-configuration",
                ClassifyError::UnknownResourceType,
            ),
            ("/fhir/Patient/1/observation", ClassifyError::UnknownResourceType),
            ("/fhir/Patient/1/Foo", ClassifyError::UnknownResourceType),
            ("/fhir/patient/1/Observation", ClassifyError::UnknownResourceType),
            (
                "/fhir/Observation/1/Patient",
                ClassifyError::UnsupportedPath("not an R4 compartment type"),
            ),
            (
                "/fhir/Group/1/*",
                ClassifyError::UnsupportedPath("not an R4 compartment type"),
            ),
            (
                "/fhir/$",
                ClassifyError::Malformed("operation name is not $ + [A-Za-z0-9_-]"),
            ),
            (
                "/fhir/Patient/$ev.il",
                ClassifyError::Malformed("operation name is not $ + [A-Za-z0-9_-]"),
            ),
            (
                "/fhir/Patient/1/$a$b",
                ClassifyError::Malformed("operation name is not $ + [A-Za-z0-9_-]"),
            ),
            (
                "/fhir/Patient/1/_history/2/x",
                ClassifyError::UnsupportedPath("no R4 interaction has this path"),
            ),
            (
                "/fhir/Patient/1/_history/2/$meta",
                ClassifyError::UnsupportedPath("no R4 interaction has this path"),
            ),
            (
                "/fhir/Patient/1/Observation/2",
                ClassifyError::UnsupportedPath("no R4 interaction has this path"),
            ),
        ];
        for (path, expected) in cases {
            for method in ["GET", "POST", "DELETE"] {
                // Refusals of the path come before any reading of the method.
                if matches!(
                    expected,
                    ClassifyError::UnsupportedPath(_) | ClassifyError::UnknownResourceType
                ) && method != "GET"
                {
                    continue;
                }
                let got = classify(method, path, "/fhir").map(|r| r.interaction);
                assert_eq!(got, Err(expected.clone()), "{method} {path:?}");
            }
        }
    }

    #[test]
    fn refuses_methods_fhir_does_not_use_on_a_path() {
        let cases = [
            ("OPTIONS", "/fhir/Patient/1"),
            ("TRACE", "/fhir/Patient/1"),
            ("CONNECT", "/fhir/Patient/1"),
            ("PROPFIND", "/fhir/Patient/1"),
            ("get", "/fhir/Patient/1"),
            ("", "/fhir/Patient/1"),
            ("POST", "/fhir/Patient/1"),
            ("PUT", "/fhir/metadata"),
            ("POST", "/fhir/metadata"),
            ("DELETE", "/fhir/_history"),
            ("POST", "/fhir/Patient/_history"),
            ("DELETE", "/fhir/Patient/1/_history"),
            ("PUT", "/fhir/Patient/1/_history/2"),
            ("DELETE", "/fhir/Patient/1/_history/2"),
            ("GET", "/fhir/_search"),
            ("GET", "/fhir/Patient/_search"),
            ("PUT", "/fhir/Patient/_search"),
            ("GET", "/fhir/Patient/1/Observation/_search"),
            ("POST", "/fhir/Patient/1/Observation"),
            ("DELETE", "/fhir/Patient/1/*"),
            ("PUT", "/fhir"),
            ("DELETE", "/fhir"),
            ("PATCH", "/fhir"),
            ("PUT", "/fhir/$op"),
            ("DELETE", "/fhir/Patient/$op"),
            ("PATCH", "/fhir/Patient/1/$op"),
        ];
        for (method, path) in cases {
            assert_eq!(
                classify(method, path, "/fhir").map(|r| r.interaction),
                Err(ClassifyError::UnsupportedMethod),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn refuses_conditional_writes_without_criteria() {
        for method in ["PUT", "PATCH", "DELETE"] {
            for path in ["/fhir/Patient", "/fhir/Patient?", "/fhir/Patient?&&"] {
                assert_eq!(
                    classify(method, path, "/fhir").map(|r| r.interaction),
                    Err(ClassifyError::UnsupportedPath(
                        "conditional interaction without search criteria"
                    )),
                    "{method} {path}"
                );
            }
        }
    }

    #[test]
    fn bounds_lengths_as_configured() {
        let limits = Limits::default();
        let id_len = limits.max_path_bytes - "/fhir/Patient/".len();
        // Within the path limit, the id rule is what refuses a long id.
        let at_limit = format!("/fhir/Patient/{}", "a".repeat(id_len));
        assert!(matches!(
            classify("GET", &at_limit, "/fhir"),
            Err(ClassifyError::Malformed(_))
        ));
        let over = format!("/fhir/Patient/{}", "a".repeat(id_len + 1));
        assert_eq!(classify("GET", &over, "/fhir"), Err(ClassifyError::TooLong));

        let query_at = format!("/fhir/Patient?name={}", "x".repeat(limits.max_query_bytes - 5));
        assert!(classify("GET", &query_at, "/fhir").is_ok());
        let query_over = format!("{query_at}x");
        assert_eq!(classify("GET", &query_over, "/fhir"), Err(ClassifyError::TooLong));

        let tight = Limits {
            max_path_bytes: 15,
            max_query_bytes: 8,
            ..Limits::default()
        };
        assert!(classify_with_limits("GET", "/fhir/Patient/1", "/fhir", &tight).is_ok());
        assert_eq!(
            classify_with_limits("GET", "/fhir/Patient/12", "/fhir", &tight),
            Err(ClassifyError::TooLong)
        );
        assert_eq!(
            classify_with_limits("GET", "/fhir/Patient?name=abcd", "/fhir", &tight),
            Err(ClassifyError::TooLong)
        );
        let many = (0..=limits.max_params)
            .map(|i| format!("p{i}=1"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            classify("GET", &format!("/fhir/Patient?{many}"), "/fhir"),
            Err(ClassifyError::TooLong)
        );
    }

    #[test]
    fn reads_every_r4_type_by_its_exact_name_only() {
        for name in crate::fhir::resource_types::all() {
            let path = format!("/fhir/{name}/1");
            let expected = I::Read {
                resource_type: s(name),
                id: s("1"),
            };
            assert_eq!(classify("GET", &path, "/fhir").unwrap().interaction, expected);
            for other in [name.to_lowercase(), name.to_uppercase()] {
                let path = format!("/fhir/{other}/1");
                assert_eq!(
                    classify("GET", &path, "/fhir"),
                    Err(ClassifyError::UnknownResourceType),
                    "{path}"
                );
            }
            let compartment_path = format!("/fhir/Patient/p1/{name}");
            let expected = compartment("Patient", "p1", Some(name), false);
            assert_eq!(
                classify("GET", &compartment_path, "/fhir").unwrap().interaction,
                expected
            );
        }
    }

    #[test]
    fn describes_refusals_without_echoing_the_request() {
        let secret = "/fhir/Patient/secret-value%00";
        let err = classify("GET", secret, "/fhir").unwrap_err();
        assert_eq!(err.to_string(), "malformed request: control character");
        assert!(!format!("{err} {err:?}").contains("secret"));
    }
}
