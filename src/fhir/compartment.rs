//! The FHIR R4 compartments: which compartment types exist, and the Patient compartment.
//!
//! The Patient compartment table (resource type -> the search parameters that link a resource of
//! that type to a Patient) is generated at build time from `data/patient_compartment_r4.json`
//! (CompartmentDefinition `patient`, R4 4.0.1). `Patient` itself maps to `["link"]`; a Patient
//! is in its own compartment by its `_id`, which callers handle themselves.

include!(concat!(env!("OUT_DIR"), "/r4_patient_compartment.rs"));

/// The compartment types R4 defines (`[base]/[compartment]/[id]/[type]`), sorted.
pub const COMPARTMENT_TYPES: &[&str] = &["Device", "Encounter", "Patient", "Practitioner", "RelatedPerson"];

/// Whether `name` is a compartment type R4 defines (case-sensitive).
pub fn is_compartment_type(name: &str) -> bool {
    COMPARTMENT_TYPES.binary_search(&name).is_ok()
}

/// The search parameters that link `resource_type` to a Patient; `None` when the type is not in
/// the Patient compartment.
pub fn patient_compartment_params(resource_type: &str) -> Option<&'static [&'static str]> {
    PATIENT_COMPARTMENT
        .binary_search_by(|(name, _)| (*name).cmp(resource_type))
        .ok()
        .and_then(|i| PATIENT_COMPARTMENT.get(i))
        .map(|(_, params)| *params)
}

/// The resource types in the Patient compartment, sorted.
pub fn patient_compartment_types() -> impl Iterator<Item = &'static str> {
    PATIENT_COMPARTMENT.iter().map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::resource_types::is_resource_type;
    use std::collections::BTreeMap;

    fn data() -> BTreeMap<String, Vec<String>> {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/patient_compartment_r4.json"
        ));
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn answers_the_linking_parameters_of_the_data() {
        let data = data();
        assert_eq!(patient_compartment_types().count(), data.len());
        for (resource_type, params) in &data {
            let got = patient_compartment_params(resource_type).unwrap();
            assert_eq!(
                got,
                params.iter().map(String::as_str).collect::<Vec<_>>().as_slice()
            );
        }
        assert!(patient_compartment_types()
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0] < w[1]));
    }

    #[test]
    fn names_known_members_and_refuses_non_members() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("Patient", Some(&["link"])),
            ("Observation", Some(&["subject", "performer"])),
            ("Encounter", Some(&["patient"])),
            ("AllergyIntolerance", Some(&["patient", "recorder", "asserter"])),
            (
                "Coverage",
                Some(&["policy-holder", "subscriber", "beneficiary", "payor"]),
            ),
            ("Organization", None),
            ("Practitioner", None),
            ("Medication", None),
            ("Location", None),
            ("observation", None),
            ("", None),
        ];
        for (resource_type, expected) in cases {
            assert_eq!(
                patient_compartment_params(resource_type),
                *expected,
                "{resource_type}"
            );
        }
    }

    #[test]
    fn every_member_is_an_r4_resource_type() {
        for name in patient_compartment_types() {
            assert!(is_resource_type(name), "{name}");
        }
    }

    #[test]
    fn knows_the_five_r4_compartment_types_only() {
        let cases = [
            ("Patient", true),
            ("Encounter", true),
            ("RelatedPerson", true),
            ("Practitioner", true),
            ("Device", true),
            ("Observation", false),
            ("Group", false),
            ("patient", false),
            ("", false),
        ];
        for (name, known) in cases {
            assert_eq!(is_compartment_type(name), known, "{name}");
        }
        for name in COMPARTMENT_TYPES {
            assert!(is_resource_type(name));
        }
    }
}
