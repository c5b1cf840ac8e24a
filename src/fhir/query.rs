//! The query string read as FHIR search reads it.
//!
//! Repeated parameters are kept apart (they AND), comma lists are split (they OR, `\,` is a
//! literal comma), modifiers (`:exact`, `:missing`, `:Patient`) and chains (`subject:Patient.name`)
//! are separated from the name, and every part is percent-decoded exactly once.

use super::request::ClassifyError;

/// One `name[:modifier][.chain]=v1,v2` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParam {
    /// The parameter name without modifier or chain: `subject`, `_include`, `_has`.
    pub name: String,
    /// The modifier after `:` without the colon: `exact`, `missing`, `Patient`, `iterate`.
    /// For `_has:Observation:patient:code` it is `Observation:patient:code`.
    pub modifier: Option<String>,
    /// What follows the first `.` of the name part: for `subject:Patient.name` it is `name`.
    pub chain: Option<String>,
    /// The comma-separated values (OR), each decoded.
    pub values: Vec<String>,
}

/// A parsed query string, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub params: Vec<SearchParam>,
}
