//! The R4 resource type names.
//!
//! The table is generated at build time from `data/r4_resource_types.json` (the R4 4.0.1
//! `resource-types` CodeSystem). It holds the 146 concrete types; the abstract `Resource` and
//! `DomainResource` are left out because no REST path names them. Names are case-sensitive:
//! `patient` is not a resource type.

include!(concat!(env!("OUT_DIR"), "/r4_resource_types.rs"));

/// Whether `name` is an R4 resource type (exact, case-sensitive).
pub fn is_resource_type(name: &str) -> bool {
    R4_RESOURCE_TYPES.binary_search(&name).is_ok()
}

/// The R4 resource type names, sorted.
pub fn all() -> &'static [&'static str] {
    R4_RESOURCE_TYPES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> serde_json::Value {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/r4_resource_types.json"
        ));
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn holds_exactly_the_146_concrete_r4_types_of_the_data() {
        let data = data();
        let mut expected: Vec<&str> = data["resource_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        expected.sort();
        assert_eq!(all(), expected.as_slice());
        assert_eq!(all().len(), 146);
        assert!(
            all().windows(2).all(|w| w[0] < w[1]),
            "sorted and unique for binary search"
        );
    }

    #[test]
    fn knows_r4_names_and_refuses_others() {
        let cases = [
            ("Patient", true),
            ("Observation", true),
            ("Account", true),
            ("VisionPrescription", true),
            ("MedicinalProductUndesirableEffect", true),
            ("Media", true),
            ("RequestGroup", true),
            ("Resource", false),
            ("DomainResource", false),
            ("patient", false),
            ("PATIENT", false),
            ("Patient ", false),
            (" Patient", false),
            ("Patients", false),
            ("Patien", false),
            ("", false),
            ("metadata", false),
            ("_history", false),
            // R5-only names are not R4.
            ("DocumentReferenceX", false),
            ("Citation", false),
            ("SubscriptionTopic", false),
            ("NutritionProduct", false),
        ];
        for (name, known) in cases {
            assert_eq!(is_resource_type(name), known, "{name:?}");
        }
    }

    #[test]
    fn every_listed_name_is_found_and_abstract_ones_are_not() {
        for name in all() {
            assert!(is_resource_type(name), "{name}");
        }
        for name in data()["abstract_excluded"].as_array().unwrap() {
            assert!(!is_resource_type(name.as_str().unwrap()));
        }
    }
}
