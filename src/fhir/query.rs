//! The query string read as FHIR search reads it.
//!
//! Repeated parameters are kept apart (they AND), comma lists are split (they OR, `\,` is a
//! literal comma), modifiers (`:exact`, `:missing`, `:Patient`) and chains (`subject:Patient.name`)
//! are separated from the name, and every part is percent-decoded exactly once.
//!
//! Also: [`parse_reference`] for reference search values, [`is_fhir_id`], and
//! [`Query::to_query_string`] which re-encodes a query so that it reads back the same.

use super::request::{ClassifyError, Limits};
use super::resource_types::is_resource_type;

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

impl SearchParam {
    /// A plain `name=v1,v2` parameter (no modifier, no chain).
    pub fn new(name: &str, values: &[&str]) -> SearchParam {
        SearchParam {
            name: name.to_string(),
            modifier: None,
            chain: None,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }
}

/// A parsed query string, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub params: Vec<SearchParam>,
}

impl Query {
    /// Parses a raw query string (without `?`) or an `application/x-www-form-urlencoded` body,
    /// within the default [`Limits`].
    pub fn parse(raw_query: &str) -> Result<Query, ClassifyError> {
        Query::parse_with_limits(raw_query, &Limits::default())
    }

    /// Parses a raw query string within `limits` (query bytes, parameters, values).
    ///
    /// Refuses (`Malformed`) raw bytes outside visible ASCII, `#`, malformed `%` sequences,
    /// decoded control characters or invalid UTF-8, names outside `[A-Za-z0-9_.:-]`, empty names,
    /// modifiers or chains, and a dangling `\` at the end of a value.
    pub fn parse_with_limits(raw_query: &str, limits: &Limits) -> Result<Query, ClassifyError> {
        if raw_query.len() > limits.max_query_bytes {
            return Err(ClassifyError::TooLong);
        }
        if let Some(b) = raw_query
            .bytes()
            .find(|b| !(0x21..=0x7e).contains(b) || *b == b'#')
        {
            return Err(ClassifyError::Malformed(if b == b'#' {
                "fragment (#) in query"
            } else if b.is_ascii_control() {
                "control character in query"
            } else {
                "raw space or non-ASCII byte in query"
            }));
        }
        let mut params = Vec::new();
        let mut value_count = 0usize;
        for piece in raw_query.split('&').filter(|p| !p.is_empty()) {
            if params.len() >= limits.max_params {
                return Err(ClassifyError::TooLong);
            }
            let (raw_name, raw_value) = match piece.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (piece, None),
            };
            let name_part = percent_decode(raw_name, true)?;
            let (name, modifier, chain) = split_name(&name_part)?;
            let values = match raw_value {
                Some(raw_value) => split_values(&percent_decode(raw_value, true)?)?,
                None => Vec::new(),
            };
            value_count = value_count.saturating_add(values.len());
            if value_count > limits.max_values {
                return Err(ClassifyError::TooLong);
            }
            params.push(SearchParam {
                name,
                modifier,
                chain,
                values,
            });
        }
        Ok(Query { params })
    }

    /// The parameters named `name` (exact), in order; modifiers and chains are not part of the name.
    pub fn params_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SearchParam> + 'a {
        self.params.iter().filter(move |p| p.name == name)
    }

    /// Whether any parameter is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.params.iter().any(|p| p.name == name)
    }

    /// Whether the query has no parameters.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Appends a parameter (for example the compartment parameter the filter enforces).
    pub fn push(&mut self, param: SearchParam) {
        self.params.push(param);
    }

    /// Re-encodes the query (without `?`): every part percent-encoded except unreserved
    /// characters (and `:` in names), literal commas in values escaped as `\,`. Parsing the
    /// result gives back an equal [`Query`].
    pub fn to_query_string(&self) -> String {
        let mut out = String::new();
        for (i, param) in self.params.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            encode_into(&mut out, &param.name, NAME_SAFE);
            if let Some(modifier) = &param.modifier {
                out.push(':');
                encode_into(&mut out, modifier, NAME_SAFE);
            }
            if let Some(chain) = &param.chain {
                out.push('.');
                encode_into(&mut out, chain, NAME_SAFE);
            }
            if param.values.is_empty() {
                continue;
            }
            out.push('=');
            for (j, value) in param.values.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                encode_into(&mut out, &escape_value(value), b"");
            }
        }
        out
    }
}

/// Whether `s` has FHIR `id` syntax: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A reference search value: `[id]`, `[type]/[id]`, `[type]/[id]/_history/[vid]`, or an absolute
/// `http(s)://[base]/[type]/[id]` form. A version, when given, is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The resource type when the value names one (`Patient/123`); `None` for a bare id.
    pub resource_type: Option<String>,
    /// The logical id (FHIR id syntax, never `.` or `..`).
    pub id: String,
    /// The service base of an absolute reference (`https://host/fhir`), without trailing `/`.
    pub base: Option<String>,
}

/// Reads a (decoded) reference search value; `None` when it is not a plausible reference
/// (unknown resource type, id not FHIR id syntax, extra segments, `urn:`, `#contained`, ...).
pub fn parse_reference(value: &str) -> Option<Reference> {
    let (base, relative) = match value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
    {
        Some(after_scheme) => {
            let scheme_len = value.len() - after_scheme.len();
            let (base, relative) = split_absolute(after_scheme)?;
            // `base` is a prefix of `after_scheme`, so this is `scheme://` + base.
            (Some(value.get(..scheme_len + base.len())?.to_string()), relative)
        }
        None => (None, value),
    };
    let segments: Vec<&str> = relative.split('/').collect();
    let (resource_type, id, version) = match segments.as_slice() {
        [id] if base.is_none() => (None, *id, None),
        [resource_type, id] => (Some(*resource_type), *id, None),
        [resource_type, id, "_history", version] => (Some(*resource_type), *id, Some(*version)),
        _ => return None,
    };
    let id_ok = |s: &str| is_fhir_id(s) && s != "." && s != "..";
    if !id_ok(id) || !version.map_or(true, id_ok) || !resource_type.map_or(true, is_resource_type) {
        return None;
    }
    Some(Reference {
        resource_type: resource_type.map(str::to_string),
        id: id.to_string(),
        base,
    })
}

/// Splits `host[/path]/[type]/[id][/_history/[vid]]` (after `scheme://`) into the base part
/// (`host[/path]`) and the relative reference. Every segment must be non-empty and no `?`, `#`,
/// `\`, whitespace or `..` segment may appear.
fn split_absolute(after_scheme: &str) -> Option<(&str, &str)> {
    if after_scheme.contains(|c: char| c == '?' || c == '#' || c == '\\' || c.is_whitespace()) {
        return None;
    }
    let segments: Vec<&str> = after_scheme.split('/').collect();
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return None;
    }
    let relative_len = match segments.as_slice() {
        [_host, .., _, _, "_history", _] => 4,
        [_host, .., _, _] => 2,
        _ => return None,
    };
    let base_len = segments.len().checked_sub(relative_len)?;
    let base = segments.get(..base_len)?.join("/");
    let relative_start = base.len() + 1;
    Some((
        after_scheme.get(..base.len())?,
        after_scheme.get(relative_start..)?,
    ))
}

/// Characters kept raw in names besides unreserved ones.
const NAME_SAFE: &[u8] = b":";

/// Percent-encodes `s` into `out`, keeping RFC 3986 unreserved characters and `extra_safe`.
fn encode_into(out: &mut String, s: &str, extra_safe: &[u8]) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || extra_safe.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            for nibble in [b >> 4, b & 0x0f] {
                if let Some(digit) = char::from_digit(u32::from(nibble), 16) {
                    out.push(digit.to_ascii_uppercase());
                }
            }
        }
    }
}

/// Escapes a stored value for a comma list: literal `,` becomes `\,`, escape pairs (`\|`, `\$`,
/// `\\`) stay as they are, and a lone trailing `\` becomes `\\` so it cannot swallow a separator.
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            ',' => out.push_str("\\,"),
            '\\' => match chars.next() {
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push_str("\\\\"),
            },
            _ => out.push(c),
        }
    }
    out
}

/// Splits a decoded name part into (name, modifier, chain).
fn split_name(name_part: &str) -> Result<(String, Option<String>, Option<String>), ClassifyError> {
    if !name_part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(ClassifyError::Malformed(
            "search parameter name has a character FHIR names do not",
        ));
    }
    // `_has:Type:param:...` keeps everything after the first `:` as its modifier.
    if let Some(rest) = name_part.strip_prefix("_has") {
        if rest.is_empty() || rest.starts_with(['.', ':']) {
            let target = rest
                .strip_prefix(':')
                .filter(|t| !t.is_empty() && !t.starts_with(':'));
            return match target {
                Some(target) => Ok(("_has".to_string(), Some(target.to_string()), None)),
                None => Err(ClassifyError::Malformed("_has without a target")),
            };
        }
    }
    let (head, chain) = match name_part.split_once('.') {
        Some((head, chain)) => (head, Some(chain)),
        None => (name_part, None),
    };
    let (name, modifier) = match head.split_once(':') {
        Some((name, modifier)) => (name, Some(modifier)),
        None => (head, None),
    };
    if name.is_empty() {
        return Err(ClassifyError::Malformed("empty search parameter name"));
    }
    if modifier.is_some_and(str::is_empty) || chain.is_some_and(str::is_empty) {
        return Err(ClassifyError::Malformed("empty modifier or chain"));
    }
    Ok((
        name.to_string(),
        modifier.map(str::to_string),
        chain.map(str::to_string),
    ))
}

/// Splits a decoded value on unescaped `,`. `\,` becomes a literal comma; other escape pairs
/// (`\\`, `\|`, `\$`) are kept as they are for the search type to read.
fn split_values(decoded: &str) -> Result<Vec<String>, ClassifyError> {
    let mut values = Vec::new();
    let mut current = String::new();
    let mut chars = decoded.chars();
    while let Some(c) = chars.next() {
        match c {
            ',' => values.push(std::mem::take(&mut current)),
            '\\' => match chars.next() {
                Some(',') => current.push(','),
                Some(next) => {
                    current.push('\\');
                    current.push(next);
                }
                None => {
                    return Err(ClassifyError::Malformed(
                        "dangling \\ at the end of a search value",
                    ))
                }
            },
            _ => current.push(c),
        }
    }
    values.push(current);
    Ok(values)
}

/// Percent-decodes `raw` exactly once (`+` is a space when `plus_is_space`). Refuses malformed
/// `%` sequences, invalid UTF-8 and control characters (NUL included) in the result.
pub(crate) fn percent_decode(raw: &str, plus_is_space: bool) -> Result<String, ClassifyError> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(hex);
                let lo = bytes.next().and_then(hex);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(ClassifyError::Malformed("malformed percent-encoding")),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            _ => out.push(b),
        }
    }
    let decoded =
        String::from_utf8(out).map_err(|_| ClassifyError::Malformed("percent-encoding is not UTF-8"))?;
    if decoded.chars().any(char::is_control) {
        return Err(ClassifyError::Malformed("control character"));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, modifier: Option<&str>, chain: Option<&str>, values: &[&str]) -> SearchParam {
        SearchParam {
            name: name.to_string(),
            modifier: modifier.map(str::to_string),
            chain: chain.map(str::to_string),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn parses_queries_as_fhir_does() {
        let cases: Vec<(&str, Vec<SearchParam>)> = vec![
            ("", vec![]),
            ("&&&", vec![]),
            ("_id=123", vec![p("_id", None, None, &["123"])]),
            // Repeated parameters stay apart (AND), comma lists split (OR).
            (
                "patient=1&patient=2",
                vec![p("patient", None, None, &["1"]), p("patient", None, None, &["2"])],
            ),
            ("patient=1,2,3", vec![p("patient", None, None, &["1", "2", "3"])]),
            ("code=a,,b", vec![p("code", None, None, &["a", "", "b"])]),
            // Empty pieces are ignored; no `=` means no values, `=` alone one empty value.
            (
                "&a=1&&b&c=",
                vec![
                    p("a", None, None, &["1"]),
                    p("b", None, None, &[]),
                    p("c", None, None, &[""]),
                ],
            ),
            // Name and value split at the first `=` only.
            ("a=b=c", vec![p("a", None, None, &["b=c"])]),
            // `\,` is a literal comma; other escapes stay for the search type.
            ("name=a\\,b,c", vec![p("name", None, None, &["a,b", "c"])]),
            ("name=a%5C%2Cb", vec![p("name", None, None, &["a,b"])]),
            (
                "code=a\\|b,c\\$d",
                vec![p("code", None, None, &["a\\|b", "c\\$d"])],
            ),
            ("name=a\\\\,b", vec![p("name", None, None, &["a\\\\", "b"])]),
            ("name=a\\\\\\,b", vec![p("name", None, None, &["a\\\\,b"])]),
            // An encoded comma is a comma after the one decoding, as servers read it.
            ("patient=1%2C2", vec![p("patient", None, None, &["1", "2"])]),
            // `+` is a space; `%2B` is a plus.
            (
                "name=van+der+Berg",
                vec![p("name", None, None, &["van der Berg"])],
            ),
            ("value=1%2B1", vec![p("value", None, None, &["1+1"])]),
            ("family=M%C3%BCller", vec![p("family", None, None, &["Müller"])]),
            // Decoded once: `%2525` is the three characters `%25`.
            ("x=%2525", vec![p("x", None, None, &["%25"])]),
            // Encoded separators inside a part are data.
            ("x=a%26b%3Dc", vec![p("x", None, None, &["a&b=c"])]),
            // Modifiers.
            ("name:exact=Eve", vec![p("name", Some("exact"), None, &["Eve"])]),
            (
                "gender:missing=true",
                vec![p("gender", Some("missing"), None, &["true"])],
            ),
            (
                "subject:Patient=123",
                vec![p("subject", Some("Patient"), None, &["123"])],
            ),
            (
                "_include:iterate=Observation:subject",
                vec![p("_include", Some("iterate"), None, &["Observation:subject"])],
            ),
            ("name%3Aexact=Eve", vec![p("name", Some("exact"), None, &["Eve"])]),
            // Chains split at the first `.`; the modifier before it is kept.
            (
                "subject.name=peter",
                vec![p("subject", None, Some("name"), &["peter"])],
            ),
            (
                "subject:Patient.name=peter",
                vec![p("subject", Some("Patient"), Some("name"), &["peter"])],
            ),
            (
                "subject:Patient.organization.name=x",
                vec![p("subject", Some("Patient"), Some("organization.name"), &["x"])],
            ),
            (
                "subject.name:exact=x",
                vec![p("subject", None, Some("name:exact"), &["x"])],
            ),
            // `_has` keeps everything after its first `:` as the modifier.
            (
                "_has:Observation:patient:code=1234-5",
                vec![p("_has", Some("Observation:patient:code"), None, &["1234-5"])],
            ),
            (
                "_has:Observation:patient:_has:AuditEvent:entity:agent=MyUserId",
                vec![p(
                    "_has",
                    Some("Observation:patient:_has:AuditEvent:entity:agent"),
                    None,
                    &["MyUserId"],
                )],
            ),
            (
                "_has:Observation:subject:code.x=1",
                vec![p("_has", Some("Observation:subject:code.x"), None, &["1"])],
            ),
            ("_hashed=1", vec![p("_hashed", None, None, &["1"])]),
            // Token values with a raw `|`, references with `/` and `:`.
            (
                "code=http://loinc.org|1234-5",
                vec![p("code", None, None, &["http://loinc.org|1234-5"])],
            ),
            (
                "subject=https://h/fhir/Patient/1",
                vec![p("subject", None, None, &["https://h/fhir/Patient/1"])],
            ),
            // Raw `;` is data, not a separator.
            ("a=1;b=2", vec![p("a", None, None, &["1;b=2"])]),
        ];
        for (raw, expected) in cases {
            let got = Query::parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert_eq!(got.params, expected, "{raw:?}");
        }
    }

    #[test]
    fn refuses_queries_that_cannot_be_read_unambiguously() {
        let cases = [
            "a=%ZZ",
            "a=%2",
            "a=%",
            "%zz=1",
            "a=%00",
            "a=x%0Ay",
            "a=%7F",
            "a=%C2%85",
            "a=%FF",
            "a=%C3",
            "a=%C0%AF",
            "a=x y",
            "a=\u{e9}",
            "a=1\t",
            "a=1#frag",
            "=1",
            ":exact=1",
            ".name=1",
            "name:=1",
            "subject.=1",
            "subject:Patient.=1",
            "_has=1",
            "_has:=1",
            "_has.x=1",
            "na%20me=1",
            "name%00=1",
            "name[]=1",
            "na+me=1",
            "name=a\\",
            "name=a,b\\",
        ];
        for raw in cases {
            assert!(
                matches!(Query::parse(raw), Err(ClassifyError::Malformed(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn bounds_parameters_values_and_length() {
        let limits = Limits::default();
        let at = |n: usize| (0..n).map(|i| format!("p{i}=1")).collect::<Vec<_>>().join("&");
        assert_eq!(
            Query::parse(&at(limits.max_params)).unwrap().params.len(),
            limits.max_params
        );
        assert_eq!(
            Query::parse(&at(limits.max_params + 1)),
            Err(ClassifyError::TooLong)
        );

        let values = |n: usize| format!("a={}", vec!["1"; n].join(","));
        assert_eq!(
            Query::parse(&values(limits.max_values)).unwrap().params[0]
                .values
                .len(),
            limits.max_values
        );
        assert_eq!(
            Query::parse(&values(limits.max_values + 1)),
            Err(ClassifyError::TooLong)
        );
        let spread = format!("a={}&b={}", vec!["1"; 600].join(","), vec!["1"; 401].join(","));
        assert_eq!(Query::parse(&spread), Err(ClassifyError::TooLong));

        let long = format!("a={}", "x".repeat(limits.max_query_bytes - 2));
        assert!(Query::parse(&long).is_ok());
        assert_eq!(Query::parse(&format!("{long}x")), Err(ClassifyError::TooLong));

        let tight = Limits {
            max_params: 2,
            ..Limits::default()
        };
        assert_eq!(
            Query::parse_with_limits("a=1&b=2&c=3", &tight),
            Err(ClassifyError::TooLong)
        );
    }

    #[test]
    fn re_encodes_queries_that_read_back_the_same() {
        let cases = [
            "_id=123",
            "patient=1,2&patient=3",
            "name=a\\,b,c",
            "code=a\\|b,c\\$d",
            "name=a\\\\,b",
            "name=a\\\\\\,b",
            "name=van+der+Berg&family=M%C3%BCller",
            "x=%2525&y=a%26b%3Dc",
            "subject:Patient.organization.name=x",
            "_has:Observation:patient:code=http://loinc.org|1234-5",
            "b&c=",
            "code=a,,b",
            "x=%3C%3E%22%27%60%7B%7D",
        ];
        for raw in cases {
            let query = Query::parse(raw).unwrap();
            let encoded = query.to_query_string();
            assert_eq!(Query::parse(&encoded).unwrap(), query, "{raw:?} -> {encoded:?}");
        }
        let query = Query::parse("name=van+der+Berg,a\\,b&subject:Patient=1").unwrap();
        assert_eq!(
            query.to_query_string(),
            "name=van%20der%20Berg,a%5C%2Cb&subject:Patient=1"
        );
    }

    #[test]
    fn re_encodes_appended_parameters_safely() {
        let mut query = Query::parse("code=1").unwrap();
        query.push(SearchParam::new("patient", &["123"]));
        assert_eq!(query.to_query_string(), "code=1&patient=123");
        // A hostile value cannot add a parameter or a list entry.
        let mut query = Query::default();
        query.push(SearchParam::new("patient", &["1&patient=2,3", "4\\"]));
        let back = Query::parse(&query.to_query_string()).unwrap();
        assert_eq!(back.params.len(), 1);
        assert_eq!(back.params[0].values, ["1&patient=2,3", "4\\\\"]);
    }

    #[test]
    fn finds_parameters_by_name() {
        let query = Query::parse("patient=1&subject:Patient=2&patient:missing=false&code=x").unwrap();
        let patients: Vec<_> = query
            .params_named("patient")
            .map(|p| p.modifier.clone())
            .collect();
        assert_eq!(patients, [None, Some("missing".to_string())]);
        assert_eq!(query.params_named("subject").count(), 1);
        assert_eq!(query.params_named("Patient").count(), 0);
        assert!(query.has("code"));
        assert!(!query.has("_id"));
        assert!(!query.is_empty());
        assert!(Query::parse("&").unwrap().is_empty());
    }

    #[test]
    fn parses_reference_forms() {
        let r = |t: Option<&str>, id: &str, base: Option<&str>| {
            Some(Reference {
                resource_type: t.map(str::to_string),
                id: id.to_string(),
                base: base.map(str::to_string),
            })
        };
        let cases = [
            ("123", r(None, "123", None)),
            ("a-b.c", r(None, "a-b.c", None)),
            ("Patient/123", r(Some("Patient"), "123", None)),
            ("Patient/123/_history/4", r(Some("Patient"), "123", None)),
            (
                "https://host/fhir/Patient/123",
                r(Some("Patient"), "123", Some("https://host/fhir")),
            ),
            (
                "http://host/Patient/123",
                r(Some("Patient"), "123", Some("http://host")),
            ),
            (
                "https://host:8443/a/b/Patient/123/_history/2",
                r(Some("Patient"), "123", Some("https://host:8443/a/b")),
            ),
            (
                "https://host/Observation/x",
                r(Some("Observation"), "x", Some("https://host")),
            ),
            (&"1".repeat(64), r(None, &"1".repeat(64), None)),
            // Not plausible references.
            ("", None),
            (&"1".repeat(65), None),
            ("patient/123", None),
            ("Patients/123", None),
            ("Resource/123", None),
            ("Patient/", None),
            ("/Patient/123", None),
            ("Patient//123", None),
            ("Patient/123/", None),
            ("Patient/123/extra", None),
            ("Patient/123/_history", None),
            ("Patient/123/_history/", None),
            ("Patient/123/_history/4/x", None),
            ("Patient/1_2", None),
            ("Patient/..", None),
            ("Patient/.", None),
            ("..", None),
            ("Patient/12 3", None),
            ("Patient/1\\,2", None),
            ("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", None),
            ("#contained", None),
            ("https://host/fhir/Patient", None),
            ("https://Patient/123", None),
            ("https:///Patient/123", None),
            ("https://host//Patient/123", None),
            ("https://host/../Patient/123", None),
            ("https://host/fhir/Patient/123?x=1", None),
            ("https://host/fhir/Patient/123#x", None),
            ("https://host/fhir/patient/123", None),
            ("ftp://host/fhir/Patient/123", None),
            ("https://host/Patient/_history/4", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_reference(value), expected, "{value:?}");
        }
    }

    #[test]
    fn knows_fhir_id_syntax() {
        let cases = [
            ("123", true),
            ("a-B.9", true),
            (&"x".repeat(64)[..], true),
            (&"x".repeat(65)[..], false),
            ("", false),
            ("a_b", false),
            ("a b", false),
            ("a/b", false),
            ("é", false),
            ("a%20", false),
        ];
        for (id, ok) in cases {
            assert_eq!(is_fhir_id(id), ok, "{id:?}");
        }
    }
}
