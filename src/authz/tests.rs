//! Decision tables: (scopes, patient claim, request, config) -> decision.

use super::*;
use crate::config::{OperationRule, UnconstrainedSearch};
use crate::fhir::{Method, Query, SearchParam};
use std::collections::BTreeSet;

// ---- builders ----------------------------------------------------------------------------------

/// Test-only query reader (the real `Query::parse` lives on the fhir branch): `&`-separated,
/// `name[:modifier][.chain]=v1,v2`, no decoding.
fn query(q: &str) -> Query {
    let params = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name_part, values) = pair.split_once('=').unwrap_or((pair, ""));
            let (name, rest) = match name_part.split_once(':') {
                Some((n, r)) => (n, Some(r)),
                None => (name_part, None),
            };
            let (name, modifier, chain) = match rest {
                Some(r) => match r.split_once('.') {
                    Some((m, c)) => (name, Some(m), Some(c)),
                    None => (name, Some(r), None),
                },
                None => match name.split_once('.') {
                    Some((n, c)) => (n, None, Some(c)),
                    None => (name, None, None),
                },
            };
            SearchParam {
                name: name.into(),
                modifier: modifier.map(str::to_string),
                chain: chain.map(str::to_string),
                values: values
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .collect(),
            }
        })
        .collect();
    Query { params }
}

fn s(v: &str) -> String {
    v.to_string()
}

fn read(rt: &str, id: &str) -> Interaction {
    Interaction::Read {
        resource_type: s(rt),
        id: s(id),
    }
}
fn vread(rt: &str, id: &str) -> Interaction {
    Interaction::Vread {
        resource_type: s(rt),
        id: s(id),
        version_id: s("2"),
    }
}
fn history(rt: &str, id: &str) -> Interaction {
    Interaction::HistoryInstance {
        resource_type: s(rt),
        id: s(id),
    }
}
fn update(rt: &str, id: &str) -> Interaction {
    Interaction::Update {
        resource_type: s(rt),
        id: s(id),
    }
}
fn patch(rt: &str, id: &str) -> Interaction {
    Interaction::Patch {
        resource_type: s(rt),
        id: s(id),
    }
}
fn delete(rt: &str, id: &str) -> Interaction {
    Interaction::Delete {
        resource_type: s(rt),
        id: s(id),
    }
}
fn create(rt: &str) -> Interaction {
    Interaction::Create { resource_type: s(rt) }
}
fn cond_update(rt: &str) -> Interaction {
    Interaction::ConditionalUpdate { resource_type: s(rt) }
}
fn cond_patch(rt: &str) -> Interaction {
    Interaction::ConditionalPatch { resource_type: s(rt) }
}
fn cond_delete(rt: &str) -> Interaction {
    Interaction::ConditionalDelete { resource_type: s(rt) }
}
fn type_history(rt: &str) -> Interaction {
    Interaction::HistoryType { resource_type: s(rt) }
}
fn search(rt: &str) -> Interaction {
    Interaction::SearchType {
        resource_type: s(rt),
        via_post: false,
    }
}
fn search_post(rt: &str) -> Interaction {
    Interaction::SearchType {
        resource_type: s(rt),
        via_post: true,
    }
}
fn compartment(c: &str, id: &str, rt: Option<&str>) -> Interaction {
    Interaction::SearchCompartment {
        compartment: s(c),
        id: s(id),
        resource_type: rt.map(s),
        via_post: false,
    }
}
fn system_search() -> Interaction {
    Interaction::SearchSystem { via_post: false }
}
fn op(name: &str, target: OperationTarget) -> Interaction {
    Interaction::Operation {
        name: s(name),
        target,
    }
}
fn on_instance(rt: &str, id: &str) -> OperationTarget {
    OperationTarget::Instance {
        resource_type: s(rt),
        id: s(id),
    }
}
fn on_type(rt: &str) -> OperationTarget {
    OperationTarget::Type { resource_type: s(rt) }
}

fn method_of(i: &Interaction) -> Method {
    match i {
        Interaction::Update { .. } | Interaction::ConditionalUpdate { .. } => Method::Put,
        Interaction::Patch { .. } | Interaction::ConditionalPatch { .. } => Method::Patch,
        Interaction::Delete { .. } | Interaction::ConditionalDelete { .. } => Method::Delete,
        Interaction::Create { .. } | Interaction::BatchOrTransaction => Method::Post,
        Interaction::SearchType { via_post: true, .. }
        | Interaction::SearchSystem { via_post: true }
        | Interaction::SearchCompartment { via_post: true, .. } => Method::Post,
        _ => Method::Get,
    }
}

fn request(interaction: Interaction, q: &str) -> FhirRequest {
    FhirRequest {
        method: method_of(&interaction),
        interaction,
        query: query(q),
    }
}

fn config(unconstrained_search: UnconstrainedSearch, operations: Vec<OperationRule>) -> Config {
    Config {
        fhir_base: s("/fhir"),
        providers: vec![],
        clock_skew_s: 60,
        public_paths: vec![],
        max_token_bytes: 16384,
        realm: s("smart-fhir-edge"),
        patient_claim: s("patient"),
        unconstrained_search,
        operations,
        smart_configuration: None,
        mode: crate::config::Mode::Enforce,
        fhir_base_urls: vec![s("https://ehr.example/fhir")],
        response_denial: crate::config::ResponseDenial::Forbidden,
        max_request_body_bytes: crate::body::DEFAULT_MAX_REQUEST_BODY_BYTES,
        max_response_body_bytes: crate::body::DEFAULT_MAX_RESPONSE_BODY_BYTES,
        body_checks: true,
        audit: Default::default(),
        revocation: Default::default(),
        anomaly_brake: None,
        forward_headers: crate::config::ForwardHeaders::DEFAULT,
        version_header: false,
    }
}

fn default_config() -> Config {
    config(UnconstrainedSearch::Constrain, vec![])
}

fn claims(scopes: &str, patient: Option<&str>) -> VerifiedClaims {
    VerifiedClaims {
        issuer: s("https://idp.example.org"),
        scopes: scopes.split_whitespace().map(s).collect(),
        patient: patient.map(s),
        ..VerifiedClaims::default()
    }
}

fn decide_with(
    scopes: &str,
    patient: Option<&str>,
    req: &FhirRequest,
    conditional_create: bool,
    cfg: &Config,
) -> Result<Authorized, Forbidden> {
    let c = claims(scopes, patient);
    let granted = GrantedScopes::parse(&c.scopes);
    authorize(req, conditional_create, &c, &granted, cfg)
}

fn decide(
    scopes: &str,
    patient: Option<&str>,
    interaction: Interaction,
    q: &str,
) -> Result<Authorized, Forbidden> {
    decide_with(
        scopes,
        patient,
        &request(interaction, q),
        false,
        &default_config(),
    )
}

// ---- expectations ------------------------------------------------------------------------------

/// What a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Allowed through this context, without anything appended.
    Allow(Context),
    /// Allowed through patient-level scopes, appending this parameter.
    Append(&'static str, &'static str),
    /// Refused with this kind (reason strings are compared by [`ForbiddenKind::code`]).
    Deny(&'static str),
}

const INSUFFICIENT: Want = Want::Deny("insufficient-scope");
const GRANULAR_NOT_MET: Want = Want::Deny("granular-scope-not-met");
const NO_PATIENT: Want = Want::Deny("patient-context-missing");
const OUTSIDE: Want = Want::Deny("outside-patient-compartment");
const NOT_AT_EDGE: Want = Want::Deny("not-enforceable-at-edge");
const OP_NOT_ALLOWED: Want = Want::Deny("operation-not-allowed");
const PATIENT: Want = Want::Allow(Context::Patient);
const USER: Want = Want::Allow(Context::User);
const SYSTEM: Want = Want::Allow(Context::System);

fn check(label: &str, got: &Result<Authorized, Forbidden>, want: Want) {
    match (got, want) {
        (Ok(a), Want::Allow(ctx)) => {
            assert_eq!(a.context, Some(ctx), "{label}: {a:?}");
            assert_eq!(a.append_query, None, "{label}: {a:?}");
            assert_eq!(a.patient_scoped, ctx == Context::Patient, "{label}: {a:?}");
        }
        (Ok(a), Want::Append(name, value)) => {
            assert_eq!(a.context, Some(Context::Patient), "{label}: {a:?}");
            assert!(a.patient_scoped, "{label}");
            assert_eq!(
                a.append_query,
                Some((name.to_string(), value.to_string())),
                "{label}"
            );
        }
        (Err(f), Want::Deny(code)) => assert_eq!(f.kind.code(), code, "{label}: {f:?}"),
        _ => panic!("{label}: expected {want:?}, got {got:?}"),
    }
}

type Row = (
    &'static str,
    Option<&'static str>,
    Interaction,
    &'static str,
    Want,
);

fn run(rows: Vec<Row>) {
    for (scopes, patient, interaction, q, want) in rows {
        let label = format!(
            "[{scopes}] patient={patient:?} {} {interaction:?} ?{q}",
            interaction.kind()
        );
        let got = decide(scopes, patient, interaction, q);
        check(&label, &got, want);
    }
}

const P: Option<&str> = Some("123");

// ---- permissions per interaction ---------------------------------------------------------------

#[test]
fn each_interaction_needs_the_permission_smart_assigns_it() {
    // (interaction, exactly the letters it needs)
    let cases: Vec<(Interaction, &str)> = vec![
        (read("Observation", "a"), "r"),
        (vread("Observation", "a"), "r"),
        (history("Observation", "a"), "r"),
        (update("Observation", "a"), "u"),
        (patch("Observation", "a"), "u"),
        (delete("Observation", "a"), "d"),
        (create("Observation"), "c"),
        (cond_update("Observation"), "us"),
        (cond_patch("Observation"), "us"),
        (cond_delete("Observation"), "ds"),
        (search("Observation"), "s"),
        (type_history("Observation"), "s"),
        (compartment("Patient", "123", Some("Observation")), "s"),
    ];
    for (interaction, letters) in cases {
        let label = format!("{} needs {letters}", interaction.kind());
        let scope = format!("user/Observation.{letters}");
        check(&label, &decide(&scope, None, interaction.clone(), "code=x"), USER);
        // Every proper subset lacks something and is refused naming the scope that would allow it.
        for drop in letters.chars() {
            let fewer: String = letters.chars().filter(|c| *c != drop).collect();
            let scopes = if fewer.is_empty() {
                "user/Condition.cruds".to_string()
            } else {
                format!("user/Observation.{fewer}")
            };
            let got = decide(&scopes, None, interaction.clone(), "code=x");
            check(&format!("{label} without {drop}"), &got, INSUFFICIENT);
            let f = got.unwrap_err();
            assert_eq!(
                f.required_scope,
                Some(format!("user/Observation.{letters}")),
                "{label}"
            );
            assert_eq!(
                f.missing_permission.map(Permission::letter),
                Some(drop),
                "{label}"
            );
        }
    }
}

#[test]
fn conditional_create_also_needs_search() {
    let req = request(create("Observation"), "");
    let cfg = default_config();
    check(
        "plain create",
        &decide_with("user/Observation.c", None, &req, false, &cfg),
        USER,
    );
    let got = decide_with("user/Observation.c", None, &req, true, &cfg);
    check("conditional create without s", &got, INSUFFICIENT);
    assert_eq!(got.unwrap_err().missing_permission, Some(Permission::Search));
    check(
        "conditional create",
        &decide_with("user/Observation.cs", None, &req, true, &cfg),
        USER,
    );
}

#[test]
fn capabilities_need_no_scope() {
    let got = decide("", None, Interaction::Capabilities, "");
    let a = got.unwrap();
    assert_eq!(a.context, None);
    assert!(!a.patient_scoped && !a.granular && a.append_query.is_none());
}

#[test]
fn v1_and_v2_scopes_grant_alike() {
    run(vec![
        ("user/Observation.read", None, read("Observation", "a"), "", USER),
        ("user/Observation.read", None, search("Observation"), "", USER),
        (
            "user/Observation.read",
            None,
            update("Observation", "a"),
            "",
            INSUFFICIENT,
        ),
        ("user/Observation.write", None, create("Observation"), "", USER),
        (
            "user/Observation.write",
            None,
            update("Observation", "a"),
            "",
            USER,
        ),
        (
            "user/Observation.write",
            None,
            delete("Observation", "a"),
            "",
            USER,
        ),
        (
            "user/Observation.write",
            None,
            read("Observation", "a"),
            "",
            INSUFFICIENT,
        ),
        ("user/Observation.*", None, patch("Observation", "a"), "", USER),
        ("user/*.*", None, search("Condition"), "", USER),
        ("user/*.read", None, read("Condition", "a"), "", USER),
        ("user/*.rs", None, read("Condition", "a"), "", USER),
        ("user/*.cud", None, read("Condition", "a"), "", INSUFFICIENT),
        (
            "user/Observation.r user/Observation.s",
            None,
            cond_delete("Observation"),
            "code=x",
            INSUFFICIENT,
        ),
        (
            "user/Observation.rs user/Observation.d",
            None,
            cond_delete("Observation"),
            "code=x",
            USER,
        ),
        (
            "user/Observation.sr",
            None,
            read("Observation", "a"),
            "",
            INSUFFICIENT,
        ),
        (
            "User/Observation.rs",
            None,
            read("Observation", "a"),
            "",
            INSUFFICIENT,
        ),
        (
            "user/observation.rs",
            None,
            read("Observation", "a"),
            "",
            INSUFFICIENT,
        ),
        (
            "openid fhirUser launch offline_access",
            None,
            read("Observation", "a"),
            "",
            INSUFFICIENT,
        ),
        (
            "system/Observation.rs",
            None,
            read("Observation", "a"),
            "",
            SYSTEM,
        ),
        ("system/*.cruds", None, delete("Patient", "9"), "", SYSTEM),
    ]);
}

#[test]
fn system_level_interactions_need_a_wildcard_scope() {
    run(vec![
        (
            "user/Observation.rs user/Patient.rs",
            None,
            system_search(),
            "_type=Observation",
            INSUFFICIENT,
        ),
        ("user/*.s", None, system_search(), "_type=Observation", USER),
        ("system/*.rs", None, Interaction::HistorySystem, "", SYSTEM),
        (
            "system/Patient.cruds",
            None,
            Interaction::HistorySystem,
            "",
            INSUFFICIENT,
        ),
        (
            "user/Observation.s",
            None,
            compartment("Patient", "9", None),
            "",
            INSUFFICIENT,
        ),
        ("user/*.s", None, compartment("Patient", "9", None), "", USER),
        (
            "patient/*.rs",
            P,
            compartment("Patient", "123", None),
            "",
            PATIENT,
        ),
        (
            "patient/*.rs",
            P,
            compartment("Patient", "456", None),
            "",
            OUTSIDE,
        ),
    ]);
    let f = decide("user/Observation.rs", None, system_search(), "").unwrap_err();
    assert_eq!(f.required_scope.as_deref(), Some("user/*.s"));
}

#[test]
fn contexts_are_not_combined_for_one_request() {
    run(vec![
        // u from user, s from system: neither context alone covers a conditional update.
        (
            "user/Observation.u system/Observation.s",
            None,
            cond_update("Observation"),
            "code=x",
            INSUFFICIENT,
        ),
        (
            "user/Observation.us system/Observation.s",
            None,
            cond_update("Observation"),
            "code=x",
            USER,
        ),
        // A user scope allows without patient restriction even when patient scopes also exist.
        (
            "patient/Observation.rs user/Observation.rs",
            P,
            read("Observation", "a"),
            "",
            USER,
        ),
        (
            "patient/*.rs system/Observation.s",
            P,
            search("Observation"),
            "",
            SYSTEM,
        ),
    ]);
}

#[test]
fn user_and_system_scopes_carry_no_patient_restriction() {
    run(vec![
        ("user/*.cruds", None, read("Observation", "a"), "", USER),
        (
            "user/*.cruds",
            P,
            search("Observation"),
            "subject=Patient/456",
            USER,
        ),
        (
            "user/*.cruds",
            None,
            search("Observation"),
            "subject.name=x&_has:Group:member:_id=1",
            USER,
        ),
        (
            "user/*.cruds",
            None,
            search("Observation"),
            "_revinclude=Provenance:target&_include=*",
            USER,
        ),
        ("user/*.cruds", None, search_post("Observation"), "", USER),
        ("user/*.cruds", None, update("Observation", "a"), "", USER),
        ("system/*.rs", None, read("Patient", "456"), "", SYSTEM),
        ("system/*.rs", None, search("Patient"), "", SYSTEM),
    ]);
}

// ---- patient context ---------------------------------------------------------------------------

#[test]
fn patient_scopes_need_a_patient_in_context() {
    run(vec![
        ("patient/*.rs", None, read("Patient", "123"), "", NO_PATIENT),
        (
            "patient/*.rs",
            None,
            search("Observation"),
            "subject=123",
            NO_PATIENT,
        ),
        ("patient/*.rs", None, read("Practitioner", "9"), "", NO_PATIENT),
        ("patient/*.rs", Some(""), read("Patient", "123"), "", NO_PATIENT),
        (
            "patient/*.rs",
            Some("Patient/123"),
            read("Patient", "123"),
            "",
            NO_PATIENT,
        ),
        (
            "patient/*.rs",
            Some("12 3"),
            read("Patient", "12 3"),
            "",
            NO_PATIENT,
        ),
        ("patient/*.rs", P, read("Patient", "123"), "", PATIENT),
    ]);
}

#[test]
fn patient_scopes_confine_patient_instance_interactions_to_that_patient() {
    run(vec![
        ("patient/Patient.r", P, read("Patient", "123"), "", PATIENT),
        ("patient/Patient.r", P, read("Patient", "456"), "", OUTSIDE),
        ("patient/Patient.r", P, vread("Patient", "123"), "", PATIENT),
        ("patient/Patient.r", P, vread("Patient", "456"), "", OUTSIDE),
        ("patient/Patient.r", P, history("Patient", "123"), "", PATIENT),
        ("patient/Patient.r", P, history("Patient", "456"), "", OUTSIDE),
        ("patient/Patient.u", P, update("Patient", "123"), "", PATIENT),
        ("patient/Patient.u", P, update("Patient", "456"), "", OUTSIDE),
        ("patient/Patient.u", P, patch("Patient", "123"), "", PATIENT),
        ("patient/Patient.u", P, patch("Patient", "456"), "", OUTSIDE),
        ("patient/Patient.d", P, delete("Patient", "123"), "", PATIENT),
        ("patient/Patient.d", P, delete("Patient", "456"), "", OUTSIDE),
        ("patient/Patient.c", P, create("Patient"), "", OUTSIDE),
        (
            "patient/Patient.rs",
            P,
            compartment("Patient", "123", Some("Observation")),
            "",
            INSUFFICIENT,
        ),
        (
            "patient/Observation.rs",
            P,
            compartment("Patient", "123", Some("Observation")),
            "",
            PATIENT,
        ),
        (
            "patient/Observation.rs",
            P,
            compartment("Patient", "456", Some("Observation")),
            "",
            OUTSIDE,
        ),
        // ids compare exactly
        ("patient/Patient.r", P, read("Patient", "1234"), "", OUTSIDE),
        (
            "patient/Patient.r",
            Some("abc"),
            read("Patient", "ABC"),
            "",
            OUTSIDE,
        ),
    ]);
}

#[test]
fn patient_scoped_searches_accept_every_reference_form_of_the_patient() {
    let o = "patient/Observation.rs";
    run(vec![
        (o, P, search("Observation"), "subject=123", PATIENT),
        (o, P, search("Observation"), "subject=Patient/123", PATIENT),
        (
            o,
            P,
            search("Observation"),
            "subject=https://ehr.example.org/fhir/Patient/123",
            PATIENT,
        ),
        (o, P, search("Observation"), "subject:Patient=123", PATIENT),
        // A version-specific reference names the same patient; so does any absolute base.
        (
            o,
            P,
            search("Observation"),
            "subject=Patient/123/_history/2",
            PATIENT,
        ),
        (
            o,
            P,
            search("Observation"),
            "subject=http://other.example/Patient/123",
            PATIENT,
        ),
        (o, P, search("Observation"), "performer=Patient/123", PATIENT),
        (o, P, search("Observation"), "patient=123", PATIENT),
        (
            o,
            P,
            search("Observation"),
            "code=x&patient=Patient/123&date=ge2020",
            PATIENT,
        ),
        (o, P, search("Observation"), "subject=Patient/123,123", PATIENT),
        (
            "patient/AllergyIntolerance.rs",
            P,
            search("AllergyIntolerance"),
            "patient=123",
            PATIENT,
        ),
        (
            "patient/Coverage.rs",
            P,
            search("Coverage"),
            "beneficiary=Patient/123",
            PATIENT,
        ),
        ("patient/Group.rs", P, search("Group"), "member=123", PATIENT),
        ("patient/Patient.rs", P, search("Patient"), "_id=123", PATIENT),
        (
            "patient/Patient.rs",
            P,
            search("Patient"),
            "_id=123&name=smith",
            PATIENT,
        ),
        // `patient` is not a parameter of Account in the compartment table nor clinical-patient:
        // it does not confine, so the first compartment parameter is appended.
        (
            "patient/Account.rs",
            P,
            search("Account"),
            "patient=123",
            Want::Append("subject", "Patient/123"),
        ),
    ]);
}

#[test]
fn patient_scoped_searches_refuse_any_mention_of_another_patient() {
    let o = "patient/Observation.rs";
    run(vec![
        (o, P, search("Observation"), "patient=123,456", OUTSIDE),
        (o, P, search("Observation"), "patient=123&patient=456", OUTSIDE),
        (o, P, search("Observation"), "subject=456", OUTSIDE),
        (o, P, search("Observation"), "subject=Patient/456", OUTSIDE),
        (
            o,
            P,
            search("Observation"),
            "subject=https://ehr.example.org/fhir/Patient/456",
            OUTSIDE,
        ),
        (o, P, search("Observation"), "subject:Patient=456", OUTSIDE),
        (
            o,
            P,
            search("Observation"),
            "subject=Patient/456/_history/2",
            OUTSIDE,
        ),
        (
            o,
            P,
            search("Observation"),
            "subject=123&performer=Patient/456",
            OUTSIDE,
        ),
        (
            o,
            P,
            search("Observation"),
            "subject=Patient/123,Patient/456",
            OUTSIDE,
        ),
        (
            o,
            P,
            compartment("Patient", "123", Some("Observation")),
            "patient=456",
            OUTSIDE,
        ),
        (
            o,
            P,
            compartment("Patient", "123", Some("Observation")),
            "subject=Patient/456",
            OUTSIDE,
        ),
        (
            o,
            P,
            compartment("Patient", "123", Some("Observation")),
            "patient:missing=true",
            OUTSIDE,
        ),
        (
            o,
            P,
            compartment("Patient", "123", Some("Observation")),
            "patient=123&code=1",
            PATIENT,
        ),
        (
            o,
            P,
            compartment("Patient", "123", Some("Observation")),
            "code=1",
            PATIENT,
        ),
        ("patient/Patient.rs", P, search("Patient"), "_id=123,456", OUTSIDE),
        (
            "patient/Patient.rs",
            P,
            search("Patient"),
            "_id=123&_id=456",
            OUTSIDE,
        ),
        ("patient/Patient.rs", P, search("Patient"), "_id=456", OUTSIDE),
        (
            "patient/Patient.rs",
            P,
            search("Patient"),
            "_id=123&link=Patient/456",
            OUTSIDE,
        ),
        (
            "patient/Observation.ds",
            P,
            cond_delete("Observation"),
            "subject=Patient/456",
            OUTSIDE,
        ),
    ]);
}

#[test]
fn references_to_other_types_and_other_modifiers_do_not_confine_a_search() {
    let o = "patient/Observation.rs";
    let appended = Want::Append("subject", "Patient/123");
    run(vec![
        (o, P, search("Observation"), "subject=Group/5", appended),
        (o, P, search("Observation"), "subject:Group=5", appended),
        (o, P, search("Observation"), "subject:Group=123", appended),
        (o, P, search("Observation"), "subject=Group/123", appended),
        (
            o,
            P,
            search("Observation"),
            "subject=Patient/123,Group/5",
            appended,
        ),
        (
            o,
            P,
            search("Observation"),
            "subject:identifier=http://mrn|123",
            appended,
        ),
        (o, P, search("Observation"), "subject:not=Patient/123", appended),
        (o, P, search("Observation"), "subject=urn:uuid:123", appended),
        (o, P, search("Observation"), "subject:Foo=123", appended),
        (
            o,
            P,
            search("Observation"),
            "code=http://loinc.org|1234-5",
            appended,
        ),
        // A parameter that is not a compartment parameter of the type never confines.
        (o, P, search("Observation"), "encounter=Patient/123", appended),
        (
            "patient/Patient.rs",
            P,
            search("Patient"),
            "link=Patient/123",
            Want::Append("_id", "123"),
        ),
        // ... while another constraining occurrence ANDs it back into the patient.
        (
            o,
            P,
            search("Observation"),
            "subject=Patient/123,Group/5&patient=123",
            PATIENT,
        ),
    ]);
}

#[test]
fn missing_modifier_on_a_compartment_parameter_is_refused() {
    run(vec![
        (
            "patient/Observation.rs",
            P,
            search("Observation"),
            "subject:missing=true",
            OUTSIDE,
        ),
        (
            "patient/Observation.rs",
            P,
            search("Observation"),
            "subject=123&performer:missing=false",
            OUTSIDE,
        ),
        (
            "patient/Observation.rs",
            P,
            search("Observation"),
            "patient:missing=true",
            OUTSIDE,
        ),
        (
            "patient/Patient.rs",
            P,
            search("Patient"),
            "_id:missing=false",
            OUTSIDE,
        ),
        // Not a compartment parameter: governed by the ordinary rules.
        (
            "patient/Observation.rs",
            P,
            search("Observation"),
            "subject=123&value-quantity:missing=true",
            PATIENT,
        ),
    ]);
}

#[test]
fn unconstrained_patient_searches_are_confined_or_refused_per_configuration() {
    let cases: Vec<(&str, Interaction, &str, Want, Want)> = vec![
        (
            "patient/Observation.rs",
            search("Observation"),
            "code=x",
            Want::Append("subject", "Patient/123"),
            OUTSIDE,
        ),
        (
            "patient/AllergyIntolerance.rs",
            search("AllergyIntolerance"),
            "",
            Want::Append("patient", "Patient/123"),
            OUTSIDE,
        ),
        (
            "patient/Patient.rs",
            search("Patient"),
            "name=smith",
            Want::Append("_id", "123"),
            OUTSIDE,
        ),
        (
            "patient/Coverage.rs",
            search("Coverage"),
            "",
            Want::Append("policy-holder", "Patient/123"),
            OUTSIDE,
        ),
        // A search in another compartment is the type search narrowed further.
        (
            "patient/Observation.rs",
            compartment("Practitioner", "9", Some("Observation")),
            "",
            Want::Append("subject", "Patient/123"),
            OUTSIDE,
        ),
        (
            "patient/Observation.rs",
            compartment("Encounter", "9", Some("Observation")),
            "subject=123",
            PATIENT,
            PATIENT,
        ),
        // Conditional deletes are never widened or silently rewritten.
        (
            "patient/Observation.ds",
            cond_delete("Observation"),
            "code=x",
            OUTSIDE,
            OUTSIDE,
        ),
        (
            "patient/Observation.ds",
            cond_delete("Observation"),
            "subject=123&code=x",
            PATIENT,
            PATIENT,
        ),
        // Types outside the compartment are never confined.
        (
            "patient/Practitioner.rs",
            search("Practitioner"),
            "name=x",
            PATIENT,
            PATIENT,
        ),
    ];
    for (scopes, interaction, q, constrain, refuse) in cases {
        let req = request(interaction, q);
        for (mode, want) in [
            (UnconstrainedSearch::Constrain, constrain),
            (UnconstrainedSearch::Refuse, refuse),
        ] {
            let got = decide_with(scopes, P, &req, false, &config(mode, vec![]));
            check(
                &format!("{mode:?} [{scopes}] {:?} ?{q}", req.interaction),
                &got,
                want,
            );
        }
    }
}

#[test]
fn types_outside_the_compartment_are_governed_by_scope_alone() {
    run(vec![
        (
            "patient/Practitioner.rs",
            P,
            read("Practitioner", "9"),
            "",
            PATIENT,
        ),
        (
            "patient/Practitioner.rs",
            P,
            search("Practitioner"),
            "name=x",
            PATIENT,
        ),
        (
            "patient/Organization.rs",
            P,
            vread("Organization", "9"),
            "",
            PATIENT,
        ),
        (
            "patient/Medication.rs",
            P,
            history("Medication", "9"),
            "",
            PATIENT,
        ),
        ("patient/Location.rs", P, type_history("Location"), "", PATIENT),
        ("patient/Location.d", P, delete("Location", "9"), "", PATIENT),
        (
            "patient/Observation.rs",
            P,
            read("Practitioner", "9"),
            "",
            INSUFFICIENT,
        ),
        ("patient/*.rs", P, read("Medication", "9"), "", PATIENT),
        (
            "patient/*.rs",
            P,
            compartment("Practitioner", "9", Some("Organization")),
            "",
            PATIENT,
        ),
    ]);
}

/// What the adapter must check before forwarding or passing on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    Nothing,
    /// A write body of this mode name (`create`, `update`, `conditional-update`, `patch`).
    Write(&'static str),
    SearchForm,
    Bundle,
    /// A response check of this shape (`resource`, `history`, `searchset`).
    Response(&'static str),
}

fn owed(a: &Authorized) -> Owed {
    use crate::body::{BodyCheck, ResponseCheck, WriteMode};
    match (&a.body_check, &a.response_check) {
        (None, None) => Owed::Nothing,
        (Some(BodyCheck::Write(w)), None) => Owed::Write(match w.mode {
            WriteMode::Create => "create",
            WriteMode::Update { .. } => "update",
            WriteMode::ConditionalUpdate => "conditional-update",
            WriteMode::Patch => "patch",
        }),
        (Some(BodyCheck::SearchForm), None) => Owed::SearchForm,
        (Some(BodyCheck::Bundle), None) => Owed::Bundle,
        (None, Some(ResponseCheck::Resource { .. })) => Owed::Response("resource"),
        (None, Some(ResponseCheck::History { .. })) => Owed::Response("history"),
        (None, Some(ResponseCheck::Searchset { .. })) => Owed::Response("searchset"),
        other => panic!("unexpected combination {other:?}"),
    }
}

#[test]
fn patient_scopes_owe_body_and_response_checks_where_the_url_cannot_decide() {
    let all = "patient/*.cruds";
    let allowed: Vec<(Interaction, &str, Owed)> = vec![
        (read("Observation", "abc"), "", Owed::Response("resource")),
        (vread("Observation", "abc"), "", Owed::Response("resource")),
        (history("Condition", "abc"), "", Owed::Response("history")),
        (read("Patient", "123"), "", Owed::Nothing),
        (read("Practitioner", "9"), "", Owed::Nothing),
        (create("Observation"), "", Owed::Write("create")),
        (create("Practitioner"), "", Owed::Write("create")),
        (update("Patient", "123"), "", Owed::Write("update")),
        (update("Practitioner", "9"), "", Owed::Write("update")),
        (patch("Patient", "123"), "", Owed::Write("patch")),
        (patch("Practitioner", "9"), "", Owed::Nothing),
        (
            cond_update("Observation"),
            "subject=123",
            Owed::Write("conditional-update"),
        ),
        (cond_patch("Observation"), "subject=123", Owed::Write("patch")),
        (
            cond_update("Practitioner"),
            "identifier=x",
            Owed::Write("conditional-update"),
        ),
        (search("Observation"), "subject=123", Owed::Response("searchset")),
        (search("Practitioner"), "", Owed::Response("searchset")),
        (
            compartment("Patient", "123", Some("Observation")),
            "",
            Owed::Response("searchset"),
        ),
        (search_post("Observation"), "", Owed::SearchForm),
        (delete("Practitioner", "9"), "", Owed::Nothing),
        (cond_delete("Observation"), "subject=123", Owed::Nothing),
    ];
    for (interaction, q, want) in allowed {
        let label = format!("{interaction:?} ?{q}");
        let a = decide(all, P, interaction, q).unwrap_or_else(|f| panic!("{label}: {f:?}"));
        assert_eq!(owed(&a), want, "{label}");
        assert!(a.patient_scoped || want == Owed::SearchForm, "{label}");
    }
    // The checks carry the patient in context.
    let a = decide(all, P, read("Observation", "abc"), "").unwrap();
    let Some(crate::body::ResponseCheck::Resource { access, .. }) = &a.response_check else {
        panic!("{a:?}")
    };
    assert_eq!(access.patient.as_deref(), Some("123"));
    let a = decide(all, P, create("Observation"), "").unwrap();
    let Some(crate::body::BodyCheck::Write(w)) = &a.body_check else {
        panic!("{a:?}")
    };
    assert_eq!(w.patient.as_deref(), Some("123"));
    let a = decide(all, P, create("Practitioner"), "").unwrap();
    let Some(crate::body::BodyCheck::Write(w)) = &a.body_check else {
        panic!("{a:?}")
    };
    assert_eq!(w.patient, None, "no compartment rule outside the compartment");

    run(vec![
        // The stored resource decides; the edge does not see it.
        (all, P, delete("Observation", "abc"), "", NOT_AT_EDGE),
        (all, P, update("Observation", "abc"), "", NOT_AT_EDGE),
        (all, P, patch("Observation", "abc"), "", NOT_AT_EDGE),
        (all, P, update("Patient", "456"), "", OUTSIDE),
        (all, P, patch("Patient", "456"), "", OUTSIDE),
        // Conditional writes must be confined by the client (nothing is appended to a write).
        (all, P, cond_update("Observation"), "code=x", OUTSIDE),
        (all, P, cond_patch("Observation"), "code=x", OUTSIDE),
        (all, P, cond_update("Observation"), "subject=456", OUTSIDE),
        (all, P, create("Patient"), "", OUTSIDE),
        (all, P, type_history("Observation"), "", NOT_AT_EDGE),
        (all, P, system_search(), "_type=Observation", NOT_AT_EDGE),
        (all, P, Interaction::HistorySystem, "", NOT_AT_EDGE),
        (all, P, compartment("Practitioner", "9", None), "", NOT_AT_EDGE),
    ]);
    let conditional_create = decide_with(
        all,
        P,
        &request(create("Observation"), ""),
        true,
        &default_config(),
    );
    check("conditional create", &conditional_create, NOT_AT_EDGE);
    let why = decide(all, P, update("Observation", "abc"), "").unwrap_err();
    assert!(
        why.diagnostics().contains("cannot be verified at the edge"),
        "{}",
        why.diagnostics()
    );
}

// ---- what the edge cannot see ------------------------------------------------------------------

#[test]
fn joins_and_includes_are_allowed_with_their_results_filtered() {
    let granular = "user/Observation.rs?category=laboratory";
    let with_lab = |rest: &str| format!("category=laboratory&{rest}");
    // Each query, tried with a patient grant (confined search) and a granular-only grant (met
    // constraints): allowed, owing a searchset check; a plain user grant owes nothing.
    let filtered: &[&str] = &[
        "subject:Patient.name=smith",
        "performer.name=smith",
        "_has:Observation:patient:code=x",
        "_include:iterate=Observation:performer:Practitioner",
        "_include=*",
        "_include=Observation:*",
        "_include=Observation:performer",
        "_include=Condition:subject:Patient",
        "_include=Observation:subject:Patient",
        "_revinclude=Provenance:target",
        "_revinclude:iterate=Provenance:target",
    ];
    for q in filtered {
        let patient_q = format!("subject=123&{q}");
        let got = decide("patient/*.rs", P, search("Observation"), &patient_q).unwrap();
        assert_eq!(owed(&got), Owed::Response("searchset"), "patient: {q}");
        let got = decide(
            &format!("{granular} user/*.r"),
            None,
            search("Observation"),
            &with_lab(q),
        )
        .unwrap();
        assert_eq!(owed(&got), Owed::Response("searchset"), "granular: {q}");
        let got = decide("user/*.rs", None, search("Observation"), &patient_q).unwrap();
        assert_eq!(owed(&got), Owed::Nothing, "plain user: {q}");
    }
    // A chained compartment parameter does not confine: the patient is appended.
    check(
        "chained subject",
        &decide("patient/*.rs", P, search("Observation"), "subject.name=smith"),
        Want::Append("subject", "Patient/123"),
    );
    // Server-defined semantics stay refused.
    for q in ["_query=everything", "_filter=code eq x"] {
        let got = decide(
            "patient/*.rs",
            P,
            search("Observation"),
            &format!("subject=123&{q}"),
        );
        check(&format!("patient: {q}"), &got, NOT_AT_EDGE);
        let got = decide(
            &format!("{granular} user/*.r"),
            None,
            search("Observation"),
            &with_lab(q),
        );
        check(&format!("granular: {q}"), &got, NOT_AT_EDGE);
        let got = decide("user/*.rs", None, search("Observation"), q);
        check(&format!("plain user: {q}"), &got, USER);
    }
}

#[test]
fn post_search_is_decided_on_the_form_body_unless_the_url_settles_it() {
    // Plain user grants: nothing in the body can change the answer.
    let got = decide("user/*.rs", None, search_post("Observation"), "").unwrap();
    assert_eq!(owed(&got), Owed::Nothing);
    // Patient and granular grants: the body may name another patient or carry the constraints.
    for (scopes, patient, q) in [
        ("patient/*.rs", P, "subject=123"),
        ("patient/*.rs", P, ""),
        ("user/Observation.rs?category=laboratory", None, ""),
        (
            "user/Observation.rs?category=laboratory",
            None,
            "category=laboratory",
        ),
    ] {
        let got = decide(scopes, patient, search_post("Observation"), q).unwrap();
        assert_eq!(owed(&got), Owed::SearchForm, "[{scopes}] ?{q}");
    }
    // Refusals no body parameter can lift are answered at once.
    run(vec![
        (
            "patient/*.rs",
            P,
            search_post("Observation"),
            "subject=456",
            OUTSIDE,
        ),
        (
            "patient/Condition.rs",
            P,
            search_post("Observation"),
            "",
            INSUFFICIENT,
        ),
        ("patient/*.rs", None, search_post("Observation"), "", NO_PATIENT),
        (
            "patient/*.rs",
            P,
            search_post("Observation"),
            "_filter=x",
            NOT_AT_EDGE,
        ),
    ]);
    let refuse = config(UnconstrainedSearch::Refuse, vec![]);
    let got = decide_with(
        "patient/*.rs",
        P,
        &request(search_post("Observation"), ""),
        false,
        &refuse,
    )
    .unwrap();
    assert_eq!(owed(&got), Owed::SearchForm, "the body may confine it");
}

#[test]
fn batch_and_transaction_are_checked_entry_by_entry_without_full_wildcard_access() {
    let bundle = || Interaction::BatchOrTransaction;
    run(vec![
        ("user/*.cruds", None, bundle(), "", USER),
        ("system/*.*", None, bundle(), "", SYSTEM),
    ]);
    for scopes in [
        "patient/*.cruds",
        "user/*.cruds?_security=R",
        "user/*.rs",
        "user/Observation.cruds user/Patient.cruds",
    ] {
        let got = decide(scopes, P, bundle(), "").unwrap();
        assert_eq!(owed(&got), Owed::Bundle, "{scopes}");
        assert_eq!(got.context, None, "{scopes}: decided per entry");
    }
    let f = decide("openid launch", None, bundle(), "").unwrap_err();
    assert_eq!(f.kind, ForbiddenKind::InsufficientScope);
    assert_eq!(f.required_scope.as_deref(), Some("user/*.cruds"));
}

// ---- granular scopes ---------------------------------------------------------------------------

#[test]
fn granular_scopes_allow_only_searches_carrying_their_constraints() {
    let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let by_system =
        "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let code_only = "user/Observation.rs?category=laboratory";
    let lab_q = format!("category={lab}");
    let lab_q_code = format!("category={lab}&code=1234-5");
    let lab_or_other = format!("category={lab},social-history");
    let rows: Vec<(&str, Option<&str>, Interaction, String, Want)> = vec![
        (by_system, None, search("Observation"), lab_q.clone(), USER),
        (by_system, None, search("Observation"), lab_q_code.clone(), USER),
        (
            by_system,
            None,
            search("Observation"),
            "category=laboratory".into(),
            GRANULAR_NOT_MET,
        ),
        (
            by_system,
            None,
            search("Observation"),
            lab_or_other,
            GRANULAR_NOT_MET,
        ),
        (
            by_system,
            None,
            search("Observation"),
            "code=1234-5".into(),
            GRANULAR_NOT_MET,
        ),
        (
            by_system,
            None,
            search("Observation"),
            format!("category:not={lab}"),
            GRANULAR_NOT_MET,
        ),
        (
            code_only,
            None,
            search("Observation"),
            "category=laboratory".into(),
            USER,
        ),
        (
            code_only,
            None,
            search("Observation"),
            lab_q.clone(),
            GRANULAR_NOT_MET,
        ),
        (
            code_only,
            None,
            search("Condition"),
            "category=laboratory".into(),
            INSUFFICIENT,
        ),
        (
            code_only,
            None,
            compartment("Patient", "9", Some("Observation")),
            "category=laboratory".into(),
            USER,
        ),
        // Several granular scopes are a union: any one met suffices.
        (
            "user/Observation.rs?category=vital-signs user/Observation.rs?category=laboratory",
            None,
            search("Observation"),
            "category=laboratory".into(),
            USER,
        ),
        // Granular search plus plain delete: a conditional delete carrying the constraint.
        (
            "user/Observation.s?category=laboratory user/Observation.d",
            None,
            cond_delete("Observation"),
            "category=laboratory".into(),
            USER,
        ),
        // Patient granular scopes also confine to the patient.
        (
            "patient/Observation.rs?category=laboratory",
            P,
            search("Observation"),
            "category=laboratory&subject=123".into(),
            PATIENT,
        ),
        (
            "patient/Observation.rs?category=laboratory",
            P,
            search("Observation"),
            "category=laboratory".into(),
            Want::Append("subject", "Patient/123"),
        ),
        (
            "patient/Observation.rs?category=laboratory",
            P,
            search("Observation"),
            "category=laboratory&subject=456".into(),
            OUTSIDE,
        ),
        (
            "patient/Observation.rs?category=laboratory",
            P,
            search("Observation"),
            "subject=123".into(),
            GRANULAR_NOT_MET,
        ),
        (
            "patient/Observation.rs?category=laboratory",
            None,
            search("Observation"),
            "category=laboratory".into(),
            NO_PATIENT,
        ),
    ];
    for (scopes, patient, interaction, q, want) in rows {
        let label = format!("[{scopes}] {:?} ?{q}", interaction);
        let got = decide(scopes, patient, interaction, &q);
        check(&label, &got, want);
        if let Ok(a) = got {
            assert!(a.granular, "{label}: decided by a granular scope");
        }
    }
}

#[test]
fn granular_scopes_check_reads_on_the_response_and_creates_on_the_body() {
    let g = "user/Observation.cruds?category=laboratory";
    for (interaction, want) in [
        (read("Observation", "a"), Owed::Response("resource")),
        (vread("Observation", "a"), Owed::Response("resource")),
        (history("Observation", "a"), Owed::Response("history")),
        (create("Observation"), Owed::Write("create")),
    ] {
        let label = format!("{interaction:?}");
        let a = decide(g, None, interaction, "").unwrap_or_else(|f| panic!("{label}: {f:?}"));
        assert!(a.granular, "{label}");
        assert_eq!(a.context, Some(Context::User), "{label}");
        assert_eq!(owed(&a), want, "{label}");
    }
    let a = decide(g, None, create("Observation"), "").unwrap();
    let Some(crate::body::BodyCheck::Write(w)) = &a.body_check else {
        panic!("{a:?}")
    };
    assert_eq!(w.granular, Some(Context::User));
    let a = decide("patient/Patient.rs?gender=female", P, read("Patient", "123"), "").unwrap();
    assert_eq!(owed(&a), Owed::Response("resource"), "granular patient read");
    run(vec![
        (g, None, update("Observation", "a"), "", NOT_AT_EDGE),
        (g, None, patch("Observation", "a"), "", NOT_AT_EDGE),
        (g, None, delete("Observation", "a"), "", NOT_AT_EDGE),
        (
            g,
            None,
            cond_update("Observation"),
            "category=laboratory",
            NOT_AT_EDGE,
        ),
        (
            g,
            None,
            type_history("Observation"),
            "category=laboratory",
            NOT_AT_EDGE,
        ),
    ]);
    // A plain scope next to the granular one still allows, owing nothing.
    let both = format!("{g} user/Observation.r");
    let a = decide(&both, None, read("Observation", "a"), "").unwrap();
    assert_eq!(owed(&a), Owed::Nothing);
}

// ---- operations --------------------------------------------------------------------------------

fn rule(name: &str, levels: &[OperationLevel], types: &[&str], permissions: &str) -> OperationRule {
    OperationRule {
        name: s(name),
        levels: levels.iter().copied().collect::<BTreeSet<_>>(),
        resource_types: types.iter().map(|t| s(t)).collect(),
        permissions: s(permissions),
    }
}

#[test]
fn everything_on_a_patient_is_built_in_and_needs_wildcard_read_and_search() {
    let everything = |id: &str| op("$everything", on_instance("Patient", id));
    run(vec![
        ("patient/*.rs", P, everything("123"), "", PATIENT),
        (
            "patient/*.read",
            P,
            everything("123"),
            "_since=2020-01-01",
            PATIENT,
        ),
        ("patient/*.rs", P, everything("456"), "", OUTSIDE),
        ("patient/*.rs", None, everything("123"), "", NO_PATIENT),
        ("patient/*.r", P, everything("123"), "", INSUFFICIENT),
        (
            "patient/Patient.rs patient/Observation.rs",
            P,
            everything("123"),
            "",
            INSUFFICIENT,
        ),
        ("user/*.rs", None, everything("456"), "", USER),
        ("system/*.rs", None, everything("456"), "", SYSTEM),
        (
            "user/*.rs?category=laboratory",
            None,
            everything("456"),
            "",
            INSUFFICIENT,
        ),
        // Only at instance level on Patient.
        (
            "user/*.cruds",
            None,
            op("$everything", on_type("Patient")),
            "",
            OP_NOT_ALLOWED,
        ),
        (
            "user/*.cruds",
            None,
            op("$everything", on_instance("Encounter", "1")),
            "",
            OP_NOT_ALLOWED,
        ),
    ]);
    let f = decide("patient/Observation.rs", P, everything("123"), "").unwrap_err();
    assert_eq!(f.required_scope.as_deref(), Some("patient/*.rs"));
}

#[test]
fn operations_are_refused_unless_configured() {
    let cfg = config(
        UnconstrainedSearch::Constrain,
        vec![
            rule("$lastn", &[OperationLevel::Type], &["Observation"], "s"),
            rule(
                "$validate",
                &[OperationLevel::Type, OperationLevel::Instance],
                &[],
                "r",
            ),
            rule("$reindex", &[OperationLevel::System], &["Observation"], "cruds"),
            rule("$summary", &[OperationLevel::Instance], &["Patient"], "rs"),
        ],
    );
    let rows: Vec<(&str, Option<&str>, Interaction, Want)> = vec![
        (
            "user/*.cruds",
            None,
            op("$unknown", on_type("Observation")),
            OP_NOT_ALLOWED,
        ),
        ("user/*.cruds", None, op("$lastn", on_type("Observation")), USER),
        (
            "user/Observation.s",
            None,
            op("$lastn", on_type("Observation")),
            USER,
        ),
        (
            "user/Observation.r",
            None,
            op("$lastn", on_type("Observation")),
            INSUFFICIENT,
        ),
        (
            "user/*.cruds",
            None,
            op("$lastn", on_type("Condition")),
            OP_NOT_ALLOWED,
        ),
        (
            "user/*.cruds",
            None,
            op("$lastn", on_instance("Observation", "a")),
            OP_NOT_ALLOWED,
        ),
        (
            "user/*.cruds",
            None,
            op("$lastn", OperationTarget::System),
            OP_NOT_ALLOWED,
        ),
        (
            "user/Condition.r",
            None,
            op("$validate", on_type("Condition")),
            USER,
        ),
        (
            "user/Condition.r",
            None,
            op("$validate", on_instance("Condition", "a")),
            USER,
        ),
        (
            "user/Condition.r",
            None,
            op("$validate", on_type("Observation")),
            INSUFFICIENT,
        ),
        (
            "system/*.cruds",
            None,
            op("$reindex", OperationTarget::System),
            SYSTEM,
        ),
        (
            "system/Observation.cruds",
            None,
            op("$reindex", OperationTarget::System),
            INSUFFICIENT,
        ),
        // Under patient scopes operations stay with the patient or outside the compartment.
        (
            "patient/Patient.rs",
            P,
            op("$summary", on_instance("Patient", "123")),
            PATIENT,
        ),
        (
            "patient/Patient.rs",
            P,
            op("$summary", on_instance("Patient", "456")),
            OUTSIDE,
        ),
        (
            "patient/Observation.s",
            P,
            op("$lastn", on_type("Observation")),
            NOT_AT_EDGE,
        ),
        (
            "patient/*.r",
            P,
            op("$validate", on_type("Questionnaire")),
            PATIENT,
        ),
        (
            "patient/*.r",
            P,
            op("$validate", on_instance("Condition", "a")),
            NOT_AT_EDGE,
        ),
        (
            "patient/*.r",
            P,
            op("$validate", on_instance("Questionnaire", "a")),
            PATIENT,
        ),
        (
            "patient/*.cruds",
            P,
            op("$reindex", OperationTarget::System),
            NOT_AT_EDGE,
        ),
        // Granular scopes never grant operations.
        (
            "user/Observation.s?category=laboratory",
            None,
            op("$lastn", on_type("Observation")),
            INSUFFICIENT,
        ),
    ];
    for (scopes, patient, interaction, want) in rows {
        let label = format!("[{scopes}] {interaction:?}");
        let got = decide_with(scopes, patient, &request(interaction, ""), false, &cfg);
        check(&label, &got, want);
    }
    // With no configuration at all only the built-in remains.
    check(
        "unconfigured",
        &decide("user/*.cruds", None, op("$validate", on_type("Observation")), ""),
        OP_NOT_ALLOWED,
    );
}

#[test]
fn a_configured_everything_rule_takes_precedence_over_the_built_in() {
    let cfg = config(
        UnconstrainedSearch::Constrain,
        vec![rule(
            "$everything",
            &[OperationLevel::Instance],
            &["Patient"],
            "rs",
        )],
    );
    let req = request(op("$everything", on_instance("Patient", "123")), "");
    check(
        "rs on Patient suffices once configured",
        &decide_with("patient/Patient.rs", P, &req, false, &cfg),
        PATIENT,
    );
    check(
        "built-in needs the wildcard",
        &decide_with("patient/Patient.rs", P, &req, false, &default_config()),
        INSUFFICIENT,
    );
}

// ---- denials -----------------------------------------------------------------------------------

#[test]
fn denials_suggest_a_scope_in_the_context_the_token_uses() {
    let cases: Vec<(&str, Option<&str>, Interaction, &str)> = vec![
        (
            "patient/Condition.rs",
            P,
            read("Patient", "123"),
            "patient/Patient.r",
        ),
        (
            "user/Condition.rs",
            None,
            search("Observation"),
            "user/Observation.s",
        ),
        (
            "system/Condition.rs",
            None,
            delete("Observation", "a"),
            "system/Observation.d",
        ),
        ("openid", P, read("Patient", "123"), "patient/Patient.r"),
        ("openid", None, create("Observation"), "user/Observation.c"),
    ];
    for (scopes, patient, interaction, expected) in cases {
        let f = decide(scopes, patient, interaction, "").unwrap_err();
        assert_eq!(f.kind, ForbiddenKind::InsufficientScope);
        assert_eq!(f.required_scope.as_deref(), Some(expected), "{scopes}");
        assert!(f.diagnostics().contains(expected), "{}", f.diagnostics());
    }
}

#[test]
fn diagnostics_never_contain_claim_values() {
    let secret = "pat-7f3a9e";
    let other = "pat-0b1c2d";
    let cfg = default_config();
    let cases: Vec<(&str, Option<&str>, Interaction, String)> = vec![
        (
            "patient/Patient.r",
            Some(secret),
            read("Patient", other),
            String::new(),
        ),
        ("patient/*.rs", None, read("Patient", secret), String::new()),
        (
            "patient/Observation.rs",
            Some(secret),
            search("Observation"),
            format!("subject={secret},{other}"),
        ),
        (
            "patient/Observation.rs",
            Some(secret),
            search("Observation"),
            "subject:missing=true".into(),
        ),
        (
            "patient/*.cruds",
            Some(secret),
            update("Observation", secret),
            String::new(),
        ),
        (
            "patient/*.rs",
            Some(secret),
            search("Observation"),
            format!("subject={secret}&_filter={secret}"),
        ),
        (
            "patient/Condition.rs",
            Some(secret),
            read("Patient", secret),
            String::new(),
        ),
        (
            "user/*.cruds",
            Some(secret),
            op("$purge", on_instance("Patient", secret)),
            String::new(),
        ),
        (
            "user/Observation.s?category=x",
            Some(secret),
            search("Observation"),
            format!("patient={secret}"),
        ),
    ];
    for (scopes, patient, interaction, q) in cases {
        let f = decide_with(scopes, patient, &request(interaction, &q), false, &cfg).unwrap_err();
        let d = f.diagnostics();
        assert!(!d.is_empty());
        assert!(
            !d.contains(secret) && !d.contains(other),
            "leaks a claim value: {d}"
        );
        assert!(!format!("{:?}", f.required_scope).contains(secret));
        assert!(d.contains(f.interaction), "names the interaction: {d}");
    }
}

#[test]
fn suggested_scopes_only_echo_r4_type_names() {
    // The classifier refuses unknown types; should one slip through, nothing of it reaches a header.
    let f = decide("user/Observation.rs", None, read("Obs\"ervation", "a"), "").unwrap_err();
    assert_eq!(f.kind, ForbiddenKind::InsufficientScope);
    assert_eq!(f.required_scope, None);
    assert!(!f.diagnostics().contains('"'), "{}", f.diagnostics());
    let denial = f.to_denial();
    let reply = denial.reply("ehr");
    assert_eq!(reply.status, 403);
    assert!(!reply.www_authenticate.unwrap_or_default().contains("scope="));
}

#[test]
fn denials_map_onto_the_forbidden_reply() {
    let f = decide("patient/Condition.rs", P, read("Patient", "123"), "").unwrap_err();
    let reply = f.to_denial().reply("ehr");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.reason_code, "insufficient_scope");
    let www = reply.www_authenticate.unwrap();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    assert!(www.contains("scope=\"patient/Patient.r\""), "{www}");
    assert_eq!(reply.diagnostics, f.diagnostics());
    assert!(
        reply.diagnostics.contains("missing read permission"),
        "{}",
        reply.diagnostics
    );

    let granular = decide(
        "user/Observation.rs?category=laboratory",
        None,
        search("Observation"),
        "",
    )
    .unwrap_err();
    assert_eq!(
        granular.kind.reason(),
        crate::denial::ForbiddenReason::InsufficientScope
    );
    let edge = decide("patient/*.rs", P, read("Observation", "a"), "_filter=x").unwrap_err();
    assert_eq!(
        edge.kind.reason(),
        crate::denial::ForbiddenReason::NotEnforceableAtEdge
    );
    assert_eq!(edge.to_denial().reply("ehr").reason_code, "not_enforceable");
}
