//! Whether a resource meets the constraints of a granular scope (`Observation.rs?category=…`).
//!
//! A constraint is checked on the resource the way a server evaluates the token search parameter
//! of the same name: the element paths come from the R4 SearchParameter expressions
//! (`data/token_params_r4.json`: the token parameters whose expression is a plain path to a
//! `code`, `Coding`, `CodeableConcept`, `Identifier`, `boolean` or `id` element, plus `_id`, `_tag`
//! and `_security` on every type). Values match as FHIR token search matches (`search.html#token`):
//!
//! * `code` matches a `code`/`id` element equal to it, a boolean written `true`/`false`, any
//!   Coding (alone or in a CodeableConcept) with that `code`, an Identifier with that `value`;
//! * `system|code` matches a Coding with that `system` and `code`, an Identifier with that
//!   `system` and `value`; never a plain `code` element (its system is implicit);
//! * `|code` matches a Coding or Identifier without `system`;
//! * `system|` matches any Coding or Identifier with that `system`.
//!
//! A constraint with a modifier, or on a parameter outside the table (string, date, reference,
//! choice-type expressions...), cannot be checked: [`Check::Unsupported`], which callers treat as
//! not met (fail closed).

use serde_json::Value;

use crate::scope::{Constraint, Context, GrantedScopes, Permission, Scope};

/// The datatype a token parameter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Code,
    Id,
    Boolean,
    Coding,
    CodeableConcept,
    Identifier,
}

/// The token parameters of one base: name -> (element path, datatype).
type TokenParams = &'static [(&'static str, &'static [(&'static str, TokenKind)])];

include!(concat!(env!("OUT_DIR"), "/r4_token_params.rs"));

/// The element paths a token parameter reads on `resource_type` (its own, else the `Resource` ones).
pub fn token_paths(resource_type: &str, param: &str) -> Option<&'static [(&'static str, TokenKind)]> {
    let lookup = |base: &str| {
        let i = TOKEN_PARAMS.binary_search_by(|(b, _)| (*b).cmp(base)).ok()?;
        let (_, params) = TOKEN_PARAMS.get(i)?;
        let j = params.binary_search_by(|(p, _)| (*p).cmp(param)).ok()?;
        params.get(j).map(|(_, paths)| *paths)
    };
    lookup(resource_type).or_else(|| lookup("Resource"))
}

/// The outcome of checking a constraint or scope on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Met,
    NotMet,
    /// The edge cannot evaluate it (modifier, parameter type): treated as not met.
    Unsupported,
}

/// Whether `resource` (of type `resource_type`) meets one constraint.
pub fn meets_constraint(resource: &Value, resource_type: &str, c: &Constraint) -> Check {
    if c.modifier.is_some() {
        return Check::Unsupported;
    }
    let Some(paths) = token_paths(resource_type, &c.name) else {
        return Check::Unsupported;
    };
    for (path, kind) in paths {
        for node in values_at(resource, path) {
            if c.values.iter().any(|v| token_matches(node, *kind, v)) {
                return Check::Met;
            }
        }
    }
    Check::NotMet
}

/// Whether `resource` meets every constraint of a granular scope.
pub fn meets_scope(resource: &Value, resource_type: &str, scope: &Scope) -> Check {
    let mut result = Check::Met;
    for c in &scope.constraints {
        match meets_constraint(resource, resource_type, c) {
            Check::Met => {}
            Check::NotMet => return Check::NotMet,
            Check::Unsupported => result = Check::Unsupported,
        }
    }
    result
}

/// Whether some granular scope of `ctx` granting `permission` on `resource_type` is met by the
/// resource.
pub fn granted_by_granular(
    resource: &Value,
    resource_type: &str,
    ctx: Context,
    permission: Permission,
    granted: &GrantedScopes,
) -> bool {
    granted
        .granular(ctx, Some(resource_type))
        .filter(|s| s.permissions.contains(permission))
        .any(|s| meets_scope(resource, resource_type, s) == Check::Met)
}

/// The values at a dotted path, arrays flattened at every step; shapes that are not objects on the
/// way yield nothing.
fn values_at<'v>(resource: &'v Value, path: &str) -> Vec<&'v Value> {
    let mut nodes = vec![resource];
    for step in path.split('.') {
        let mut next = Vec::new();
        for node in nodes {
            match node.get(step) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(v) => next.push(v),
                None => {}
            }
        }
        nodes = next;
    }
    nodes
}

/// Whether one element value matches one token search value.
fn token_matches(node: &Value, kind: TokenKind, token: &str) -> bool {
    let (system, code) = match token.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, token),
    };
    match kind {
        TokenKind::Code | TokenKind::Id => system.is_none() && node.as_str() == Some(code),
        TokenKind::Boolean => system.is_none() && node.as_bool().is_some_and(|b| b.to_string() == code),
        TokenKind::Coding => coded(node, "code", system, code),
        TokenKind::Identifier => coded(node, "value", system, code),
        TokenKind::CodeableConcept => match node.get("coding") {
            Some(Value::Array(codings)) => codings.iter().any(|c| coded(c, "code", system, code)),
            _ => false,
        },
    }
}

/// A Coding (`code`) or Identifier (`value`) against `[system|]code`.
fn coded(node: &Value, code_field: &str, system: Option<&str>, code: &str) -> bool {
    let node_system = node.get("system").and_then(Value::as_str);
    let node_code = node.get(code_field).and_then(Value::as_str);
    match system {
        None => node_code == Some(code),
        Some("") => node_system.is_none() && node.get("system").is_none() && node_code == Some(code),
        Some(s) if code.is_empty() => node_system == Some(s),
        Some(s) => node_system == Some(s) && node_code == Some(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lab_observation() -> Value {
        json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
            ]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
            "identifier": [{"system": "urn:lab", "value": "A1"}],
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]},
            "subject": {"reference": "Patient/123"}
        })
    }

    fn scope(word: &str) -> Scope {
        Scope::parse(word).unwrap()
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases
    fn finds_token_paths_from_the_r4_expressions() {
        let cases: &[(&str, &str, Option<&[(&str, TokenKind)]>)] = &[
            (
                "Observation",
                "category",
                Some(&[("category", TokenKind::CodeableConcept)]),
            ),
            ("Observation", "status", Some(&[("status", TokenKind::Code)])),
            (
                "Condition",
                "clinical-status",
                Some(&[("clinicalStatus", TokenKind::CodeableConcept)]),
            ),
            ("Patient", "active", Some(&[("active", TokenKind::Boolean)])),
            (
                "Observation",
                "_security",
                Some(&[("meta.security", TokenKind::Coding)]),
            ),
            ("Condition", "_id", Some(&[("id", TokenKind::Id)])),
            // Not plain paths or not tokens: not checkable.
            ("Observation", "value-concept", None),
            ("Observation", "subject", None),
            ("Observation", "date", None),
        ];
        for (rt, param, want) in cases {
            assert_eq!(token_paths(rt, param), *want, "{rt}.{param}");
        }
    }

    #[test]
    fn checks_granular_constraints_on_a_resource_as_token_search_does() {
        let obs = lab_observation();
        let cases: &[(&str, Check)] = &[
            ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", Check::Met),
            ("patient/Observation.rs?category=laboratory", Check::Met),
            ("patient/Observation.rs?category=vital-signs", Check::NotMet),
            ("patient/Observation.rs?category=http://other|laboratory", Check::NotMet),
            ("patient/Observation.rs?category=%7Claboratory", Check::NotMet),
            ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category%7C", Check::Met),
            ("patient/Observation.rs?category=vital-signs,laboratory", Check::Met),
            ("patient/Observation.rs?category=laboratory&code=http://loinc.org|2339-0", Check::Met),
            ("patient/Observation.rs?category=laboratory&code=http://loinc.org|1111-1", Check::NotMet),
            ("patient/Observation.rs?status=final", Check::Met),
            ("patient/Observation.rs?status=http://hl7.org/fhir/observation-status|final", Check::NotMet),
            ("patient/Observation.rs?identifier=urn:lab|A1", Check::Met),
            ("patient/Observation.rs?identifier=A1", Check::Met),
            ("patient/Observation.rs?_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R", Check::Met),
            ("patient/*.rs?_security=R", Check::Met),
            ("patient/*.rs?_security=N", Check::NotMet),
            ("patient/Observation.rs?category:not=laboratory", Check::Unsupported),
            ("patient/Observation.rs?date=2020", Check::Unsupported),
            ("patient/Observation.rs?category=laboratory&date=2020", Check::Unsupported),
            ("patient/Observation.rs?category=social-history&date=2020", Check::NotMet),
        ];
        for (word, want) in cases {
            assert_eq!(meets_scope(&obs, "Observation", &scope(word)), *want, "{word}");
        }
        let patient = json!({"resourceType": "Patient", "id": "123", "active": true, "gender": "female"});
        let cases: &[(&str, Check)] = &[
            ("patient/Patient.rs?active=true", Check::Met),
            ("patient/Patient.rs?active=false", Check::NotMet),
            ("patient/Patient.rs?gender=female", Check::Met),
            ("patient/Patient.rs?_id=123", Check::Met),
            ("patient/Patient.rs?_id=456", Check::NotMet),
        ];
        for (word, want) in cases {
            assert_eq!(meets_scope(&patient, "Patient", &scope(word)), *want, "{word}");
        }
    }

    #[test]
    fn a_resource_is_granted_when_any_granular_scope_with_the_permission_is_met() {
        let obs = lab_observation();
        let cases: &[(&str, Permission, bool)] = &[
            (
                "patient/Observation.rs?category=laboratory",
                Permission::Read,
                true,
            ),
            (
                "patient/Observation.s?category=laboratory",
                Permission::Read,
                false,
            ),
            (
                "patient/Observation.s?category=laboratory",
                Permission::Search,
                true,
            ),
            (
                "patient/Observation.rs?category=vital-signs patient/Observation.rs?category=laboratory",
                Permission::Read,
                true,
            ),
            (
                "patient/Condition.rs?category=laboratory",
                Permission::Read,
                false,
            ),
            ("user/Observation.rs?category=laboratory", Permission::Read, false),
            ("patient/Observation.rs", Permission::Read, false),
        ];
        for (words, perm, want) in cases {
            let g = GrantedScopes::parse(&words.split(' ').map(str::to_string).collect::<Vec<_>>());
            assert_eq!(
                granted_by_granular(&obs, "Observation", Context::Patient, *perm, &g),
                *want,
                "{words} {perm:?}"
            );
        }
    }
}
