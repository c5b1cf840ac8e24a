//! Strict JSON for JOSE: one object, no duplicate member names at any depth.
//!
//! `serde_json` silently keeps the last of duplicate members; RFC 7515 §5.2 and RFC 7519 §4 require
//! a JWS header and JWT claims with duplicates to be rejected (two parsers could otherwise read
//! different values from the same token). [`parse_object`] deserializes through a visitor that
//! refuses a member name already seen in the same object, then hands back a plain
//! `serde_json::Map`. `serde_json`'s recursion limit (128) still applies.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Why a JSON text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON, or not UTF-8, or trailing data.
    Syntax,
    /// Valid JSON, but not an object at the top level.
    NotAnObject,
    /// An object (at any depth) names the same member twice.
    DuplicateMember,
}

/// Parses `bytes` as one JSON object whose objects never repeat a member name.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize(&mut de).map_err(classify)?;
    de.end().map_err(|_| JsonError::Syntax)?;
    match value.0 {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::NotAnObject),
    }
}

/// Parses `bytes` as one JSON value (of any kind) whose objects never repeat a member name.
pub fn parse_value(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize(&mut de).map_err(classify)?;
    de.end().map_err(|_| JsonError::Syntax)?;
    Ok(value.0)
}

const DUPLICATE: &str = "duplicate member name";

fn classify(e: serde_json::Error) -> JsonError {
    if e.is_data() && e.to_string().starts_with(DUPLICATE) {
        JsonError::DuplicateMember
    } else {
        JsonError::Syntax
    }
}

/// A `serde_json::Value` whose deserialization refuses duplicate member names.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrictValue, E> {
        Number::from_f64(v)
            .map(|n| StrictValue(Value::Number(n)))
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(StrictValue(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictValue, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                // The member name stays out of the message: it could be attacker-chosen text.
                return Err(de::Error::custom(DUPLICATE));
            }
            let StrictValue(v) = access.next_value()?;
            map.insert(key, v);
        }
        Ok(StrictValue(Value::Object(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_objects_with_distinct_members_at_every_depth() {
        let cases: &[&str] = &[
            r#"{}"#,
            r#"{"a":1,"b":[1,2,{"a":1}],"c":{"a":{"b":null}},"d":-1.5,"e":true,"f":"x"}"#,
            r#" {"a":"\u0041"} "#,
        ];
        for text in cases {
            let parsed = parse_object(text.as_bytes()).unwrap();
            let reference: Value = serde_json::from_str(text).unwrap();
            assert_eq!(Value::Object(parsed), reference, "{text}");
        }
    }

    #[test]
    fn refuses_duplicate_members_at_any_depth() {
        for text in [
            r#"{"alg":"RS256","alg":"none"}"#,
            r#"{"a":{"b":1,"b":2}}"#,
            r#"{"a":[{"b":1,"b":1}]}"#,
            r#"{"a":1,"\u0061":2}"#, // the same name, spelled with an escape
        ] {
            assert_eq!(
                parse_object(text.as_bytes()),
                Err(JsonError::DuplicateMember),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_non_objects_and_broken_json() {
        let cases: &[(&[u8], JsonError)] = &[
            (b"[1]", JsonError::NotAnObject),
            (b"\"x\"", JsonError::NotAnObject),
            (b"null", JsonError::NotAnObject),
            (b"{", JsonError::Syntax),
            (b"{} {}", JsonError::Syntax),
            (b"{\"a\":1,}", JsonError::Syntax),
            (b"{\"a\":\xff}", JsonError::Syntax),
            (b"", JsonError::Syntax),
        ];
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        for (text, want) in cases {
            assert_eq!(
                parse_object(text),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        // Deep nesting hits serde_json's recursion limit instead of the stack.
        assert_eq!(parse_object(deep.as_bytes()), Err(JsonError::Syntax));
    }
}
