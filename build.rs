//! Turns the FHIR R4 spec data under `data/` into sorted Rust tables in `OUT_DIR`, so that
//! nothing is parsed at run time. Refuses data that is not what the tables promise.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::PathBuf;

const RESOURCE_TYPES: &str = "data/r4_resource_types.json";
const PATIENT_COMPARTMENT: &str = "data/patient_compartment_r4.json";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={RESOURCE_TYPES}");
    println!("cargo:rerun-if-changed={PATIENT_COMPARTMENT}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let types = resource_types()?;
    let mut rs = String::from(
        "/// The R4 resource type names, sorted (generated from `data/r4_resource_types.json`).\n",
    );
    writeln!(rs, "pub const R4_RESOURCE_TYPES: &[&str] = &[")?;
    for name in &types {
        writeln!(rs, "    {name:?},")?;
    }
    writeln!(rs, "];")?;
    std::fs::write(out_dir.join("r4_resource_types.rs"), rs)?;

    let compartment = patient_compartment(&types)?;
    let mut rs = String::from(
        "/// The R4 Patient compartment, sorted by resource type (generated from \
         `data/patient_compartment_r4.json`).\n",
    );
    writeln!(rs, "const PATIENT_COMPARTMENT: &[(&str, &[&str])] = &[")?;
    for (resource_type, params) in &compartment {
        writeln!(rs, "    ({resource_type:?}, &{params:?}),")?;
    }
    writeln!(rs, "];")?;
    std::fs::write(out_dir.join("r4_patient_compartment.rs"), rs)?;
    Ok(())
}

fn read_json(path: &str) -> Result<serde_json::Value, Box<dyn Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?)
}

fn strings(value: &serde_json::Value, what: &str) -> Result<Vec<String>, Box<dyn Error>> {
    let list = value.as_array().ok_or_else(|| format!("{what}: not an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        out.push(
            item.as_str()
                .ok_or_else(|| format!("{what}: not a string: {item}"))?
                .to_string(),
        );
    }
    Ok(out)
}

/// Sorted, unique, `[A-Z][A-Za-z]*`, without the abstract types.
fn resource_types() -> Result<Vec<String>, Box<dyn Error>> {
    let doc = read_json(RESOURCE_TYPES)?;
    let names = strings(
        doc.get("resource_types").unwrap_or(&serde_json::Value::Null),
        "resource_types",
    )?;
    let abstract_types = strings(
        doc.get("abstract_excluded").unwrap_or(&serde_json::Value::Null),
        "abstract_excluded",
    )?;
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != names.len() {
        return Err(format!("{RESOURCE_TYPES}: duplicate resource type names").into());
    }
    for name in &sorted {
        let mut chars = name.chars();
        let well_formed =
            chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphabetic());
        if !well_formed {
            return Err(format!("{RESOURCE_TYPES}: not a resource type name: {name:?}").into());
        }
        if abstract_types.contains(name) {
            return Err(format!("{RESOURCE_TYPES}: abstract type listed: {name}").into());
        }
    }
    Ok(sorted)
}

/// Resource type -> linking parameters; every key an R4 type, every parameter `[a-z0-9-]+`.
fn patient_compartment(types: &[String]) -> Result<BTreeMap<String, Vec<String>>, Box<dyn Error>> {
    let doc = read_json(PATIENT_COMPARTMENT)?;
    let map = doc
        .as_object()
        .ok_or_else(|| format!("{PATIENT_COMPARTMENT}: not an object"))?;
    let mut out = BTreeMap::new();
    for (resource_type, params) in map {
        if types.binary_search(resource_type).is_err() {
            return Err(format!("{PATIENT_COMPARTMENT}: not an R4 resource type: {resource_type:?}").into());
        }
        let params = strings(params, resource_type)?;
        let well_formed = |p: &String| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if params.is_empty() || !params.iter().all(well_formed) {
            return Err(format!("{PATIENT_COMPARTMENT}: bad parameters for {resource_type}").into());
        }
        out.insert(resource_type.clone(), params);
    }
    Ok(out)
}
