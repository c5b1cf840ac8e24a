//! Turns the FHIR R4 spec data under `data/` into sorted Rust tables in `OUT_DIR`, so that
//! nothing is parsed at run time. Refuses data that is not what the tables promise.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::PathBuf;

const RESOURCE_TYPES: &str = "data/r4_resource_types.json";
const PATIENT_COMPARTMENT: &str = "data/patient_compartment_r4.json";
const COMPARTMENT_PATHS: &str = "data/patient_compartment_paths_r4.json";
const TOKEN_PARAMS: &str = "data/token_params_r4.json";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={RESOURCE_TYPES}");
    println!("cargo:rerun-if-changed={PATIENT_COMPARTMENT}");
    println!("cargo:rerun-if-changed={COMPARTMENT_PATHS}");
    println!("cargo:rerun-if-changed={TOKEN_PARAMS}");
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

    let paths = compartment_paths(&compartment)?;
    let mut rs = String::from(
        "/// Element paths of each Patient compartment parameter, sorted by resource type (generated \
         from `data/patient_compartment_paths_r4.json`, checked against the compartment table).\n",
    );
    writeln!(rs, "const COMPARTMENT_PATHS: &[(&str, ParamPaths)] = &[")?;
    for (resource_type, params) in &paths {
        write!(rs, "    ({resource_type:?}, &[")?;
        for (param, list) in params {
            write!(rs, "({param:?}, &{list:?}), ")?;
        }
        writeln!(rs, "]),")?;
    }
    writeln!(rs, "];")?;
    std::fs::write(out_dir.join("r4_compartment_paths.rs"), rs)?;

    let tokens = token_params(&types)?;
    let mut rs = String::from(
        "/// Token search parameters with plain element paths, sorted by base then name (generated \
         from `data/token_params_r4.json`).\n",
    );
    writeln!(rs, "const TOKEN_PARAMS: &[(&str, TokenParams)] = &[")?;
    for (base, params) in &tokens {
        write!(rs, "    ({base:?}, &[")?;
        for (param, list) in params {
            write!(rs, "({param:?}, &[")?;
            for (path, kind) in list {
                write!(rs, "({path:?}, TokenKind::{kind}), ")?;
            }
            write!(rs, "]), ")?;
        }
        writeln!(rs, "]),")?;
    }
    writeln!(rs, "];")?;
    std::fs::write(out_dir.join("r4_token_params.rs"), rs)?;
    Ok(())
}

/// A dotted FHIR element path: `subject`, `participant.actor`.
fn is_element_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('.').all(|step| {
            let mut chars = step.chars();
            chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_alphanumeric())
        })
}

type ParamPaths = BTreeMap<String, Vec<(String, Vec<String>)>>;

/// Type -> (param, paths) in the compartment table's parameter order; the types and parameters
/// must be exactly those of the compartment table.
fn compartment_paths(compartment: &BTreeMap<String, Vec<String>>) -> Result<ParamPaths, Box<dyn Error>> {
    let doc = read_json(COMPARTMENT_PATHS)?;
    let map = doc
        .as_object()
        .ok_or_else(|| format!("{COMPARTMENT_PATHS}: not an object"))?;
    let mut out = BTreeMap::new();
    for (resource_type, params) in compartment {
        let entry = map
            .get(resource_type)
            .and_then(|v| v.as_object())
            .ok_or_else(|| format!("{COMPARTMENT_PATHS}: no paths for {resource_type}"))?;
        if entry.len() != params.len() {
            return Err(format!(
                "{COMPARTMENT_PATHS}: {resource_type}: parameters differ from the compartment"
            )
            .into());
        }
        let mut list = Vec::new();
        for param in params {
            let paths = strings(
                entry
                    .get(param)
                    .ok_or_else(|| format!("{COMPARTMENT_PATHS}: {resource_type}.{param} missing"))?,
                param,
            )?;
            if paths.is_empty() || !paths.iter().all(|p| is_element_path(p)) {
                return Err(format!("{COMPARTMENT_PATHS}: bad paths for {resource_type}.{param}").into());
            }
            list.push((param.clone(), paths));
        }
        out.insert(resource_type.clone(), list);
    }
    if map.len() != out.len() {
        return Err(format!("{COMPARTMENT_PATHS}: types outside the Patient compartment").into());
    }
    Ok(out)
}

type TokenTable = BTreeMap<String, BTreeMap<String, Vec<(String, String)>>>;

/// Base (an R4 type or `Resource`) -> token param -> (path, kind).
fn token_params(types: &[String]) -> Result<TokenTable, Box<dyn Error>> {
    const KINDS: &[&str] = &["code", "Coding", "CodeableConcept", "Identifier", "boolean", "id"];
    let doc = read_json(TOKEN_PARAMS)?;
    let map = doc
        .as_object()
        .ok_or_else(|| format!("{TOKEN_PARAMS}: not an object"))?;
    let mut out = BTreeMap::new();
    for (base, params) in map {
        if base != "Resource" && types.binary_search(base).is_err() {
            return Err(format!("{TOKEN_PARAMS}: not an R4 resource type: {base:?}").into());
        }
        let params = params
            .as_object()
            .ok_or_else(|| format!("{TOKEN_PARAMS}: {base}: not an object"))?;
        let mut by_name = BTreeMap::new();
        for (name, list) in params {
            let list = list
                .as_array()
                .ok_or_else(|| format!("{TOKEN_PARAMS}: {base}.{name}: not an array"))?;
            let mut paths = Vec::new();
            for pair in list {
                let pair = strings(pair, name)?;
                let [path, kind] = pair.as_slice() else {
                    return Err(format!("{TOKEN_PARAMS}: {base}.{name}: not a [path, kind] pair").into());
                };
                if !is_element_path(path) || !KINDS.contains(&kind.as_str()) {
                    return Err(format!("{TOKEN_PARAMS}: {base}.{name}: bad path or kind").into());
                }
                let kind = if kind == "code" || kind == "id" || kind == "boolean" {
                    let mut k = kind.clone();
                    if let Some(first) = k.get_mut(..1) {
                        first.make_ascii_uppercase();
                    }
                    k
                } else {
                    kind.clone()
                };
                paths.push((path.clone(), kind));
            }
            if paths.is_empty() {
                return Err(format!("{TOKEN_PARAMS}: {base}.{name}: no paths").into());
            }
            by_name.insert(name.clone(), paths);
        }
        out.insert(base.clone(), by_name);
    }
    Ok(out)
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
