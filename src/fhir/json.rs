//! Parsing of request bodies as FHIR JSON. `serde_json` keeps the last of two equal keys and
//! drops the other silently; FHIR JSON forbids duplicates (json.html), and storing something the
//! client did not mean is worse than refusing it, so bodies are checked for them.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as a JSON object with unique keys. The error names the position or the
/// duplicated key, never a value.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("the body must be a JSON object (a FHIR resource)".into());
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    UniqueKeys.deserialize(&mut de).map_err(|e| e.to_string())?;
    Ok(map)
}

/// Walks a JSON document and fails on the first object with a repeated key.
#[derive(Clone, Copy)]
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                let shown = if key.len() <= 64 { key.as_str() } else { "(long key)" };
                return Err(serde::de::Error::custom(format!("duplicate JSON key '{shown}'")));
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_object(br#"{"resourceType":"Patient","active":true}"#).is_ok());
        let err = parse_object(br#"{"a":{"b":1,"b":2}}"#).unwrap_err();
        assert!(err.contains("duplicate JSON key 'b'"), "{err}");
        assert!(parse_object(br#"{"a":[{"c":1},{"c":1,"c":3}]}"#).is_err());
        assert!(parse_object(br#"{"n":1.50,"m":[1e3, -0.0]}"#).is_ok());
    }

    #[test]
    fn non_objects_and_bad_json_are_refused() {
        assert!(parse_object(b"[]").is_err());
        assert!(parse_object(b"{").is_err());
    }
}
