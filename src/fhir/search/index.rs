//! Index values of a resource: what each search parameter's expression reaches, turned into the
//! rows of the index table of the parameter's type (search.html#ptypes).

use serde_json::Value;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use super::path::Node;
use super::ParamKind;
use crate::fhir::{date_range, Millis};

/// One index row's value.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    Token {
        system: Option<String>,
        code: Option<String>,
        /// Display or text, normalised, for `:text`.
        display: Option<String>,
        /// Identifier.type's coding, for `:of-type`.
        type_system: Option<String>,
        type_code: Option<String>,
    },
    String {
        normalized: String,
        exact: String,
    },
    Date {
        low: Millis,
        high: Millis,
    },
    Number {
        value: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: Option<String>,
    },
    Uri(String),
    /// A composite row: the first component's code with one value of the second.
    Composite {
        system: Option<String>,
        code: String,
        second: Box<IndexValue>,
    },
}

/// An index row: a parameter code and a value.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub param: String,
    pub value: IndexValue,
}

/// Lower case with accents removed: how string parameters compare (search.html#string).
pub fn normalize(text: &str) -> String {
    text.nfd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect()
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn owned(value: &Value, key: &str) -> Option<String> {
    str_at(value, key).map(str::to_owned)
}

/// The index values of one node for a parameter of `kind`; `base_url` turns absolute references
/// to this server into local ones. Extensions are resolved to their values by the caller.
pub fn values(kind: ParamKind, node: Node, base_url: &str) -> Vec<IndexValue> {
    let v = node.value;
    match kind {
        ParamKind::Token => token(node),
        ParamKind::String => string(node),
        ParamKind::Date => date(node),
        ParamKind::Number | ParamKind::Quantity => number(node),
        ParamKind::Reference => reference(node, base_url),
        ParamKind::Uri => v.as_str().map(|s| vec![IndexValue::Uri(s.to_owned())]).unwrap_or_default(),
        ParamKind::Composite | ParamKind::Special => Vec::new(),
    }
}

fn token_value(system: Option<String>, code: Option<String>, display: Option<&str>) -> IndexValue {
    IndexValue::Token { system, code, display: display.map(normalize), type_system: None, type_code: None }
}

fn token(node: Node) -> Vec<IndexValue> {
    let v = node.value;
    match node.ty {
        "Coding" => vec![token_value(owned(v, "system"), owned(v, "code"), str_at(v, "display"))],
        "CodeableConcept" => {
            let mut out: Vec<IndexValue> = v
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| token_value(owned(c, "system"), owned(c, "code"), str_at(c, "display")))
                .collect();
            if let Some(text) = str_at(v, "text") {
                out.push(token_value(None, None, Some(text)));
            }
            out
        }
        "Identifier" => {
            let ty = v.get("type");
            let type_coding = ty.and_then(|t| t.get("coding")).and_then(|c| c.get(0));
            vec![IndexValue::Token {
                system: owned(v, "system"),
                code: owned(v, "value"),
                display: ty.and_then(|t| str_at(t, "text")).map(normalize),
                type_system: type_coding.and_then(|c| owned(c, "system")),
                type_code: type_coding.and_then(|c| owned(c, "code")),
            }]
        }
        "ContactPoint" => vec![token_value(None, owned(v, "value"), None)],
        "Reference" => owned(v, "reference").map(|r| vec![token_value(None, Some(r), None)]).unwrap_or_default(),
        _ => match v {
            Value::String(s) => vec![token_value(None, Some(s.clone()), None)],
            Value::Bool(b) => vec![token_value(None, Some(b.to_string()), None)],
            _ => Vec::new(),
        },
    }
}

fn string(node: Node) -> Vec<IndexValue> {
    let v = node.value;
    let texts: Vec<&str> = match node.ty {
        "HumanName" => {
            ["text", "family", "given", "prefix", "suffix"].iter().flat_map(|k| strings(v.get(*k))).collect()
        }
        "Address" => ["text", "line", "city", "district", "state", "postalCode", "country"]
            .iter()
            .flat_map(|k| strings(v.get(*k)))
            .collect(),
        "CodeableConcept" => strings(v.get("text")),
        _ => strings(Some(v)),
    };
    texts.into_iter().map(|t| IndexValue::String { normalized: normalize(t), exact: t.to_owned() }).collect()
}

fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn date(node: Node) -> Vec<IndexValue> {
    let v = node.value;
    let range = |low: Option<&str>, high: Option<&str>| {
        let low = low.and_then(date_range).map_or(Millis::MIN, |r| r.0);
        let high = high.and_then(date_range).map_or(Millis::MAX, |r| r.1);
        IndexValue::Date { low, high }
    };
    match node.ty {
        "Period" => vec![range(str_at(v, "start"), str_at(v, "end"))],
        "Timing" => {
            let mut out: Vec<IndexValue> = strings(v.get("event"))
                .into_iter()
                .filter_map(date_range)
                .map(|(low, high)| IndexValue::Date { low, high })
                .collect();
            if let Some(bounds) = v.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                out.push(range(str_at(bounds, "start"), str_at(bounds, "end")));
            }
            out
        }
        _ => {
            v.as_str().and_then(date_range).map(|(low, high)| vec![IndexValue::Date { low, high }]).unwrap_or_default()
        }
    }
}

fn number(node: Node) -> Vec<IndexValue> {
    let v = node.value;
    match v {
        Value::Number(n) => {
            n.as_f64().map(|value| vec![IndexValue::Number { value, system: None, code: None }]).unwrap_or_default()
        }
        Value::Object(_) => match v.get("value").and_then(Value::as_f64) {
            Some(value) => vec![IndexValue::Number {
                value,
                system: owned(v, "system"),
                code: owned(v, "code").or_else(|| owned(v, "unit")),
            }],
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn reference(node: Node, base_url: &str) -> Vec<IndexValue> {
    let v = node.value;
    // Reference.identifier goes to the token table under the same parameter, for `:identifier`.
    let mut out: Vec<IndexValue> =
        v.get("identifier").map(|i| token(Node { value: i, ty: "Identifier" })).unwrap_or_default();
    out.extend(reference_target(v, base_url));
    out
}

fn reference_target(v: &Value, base_url: &str) -> Vec<IndexValue> {
    let text = match v {
        Value::String(s) => Some(s.as_str()), // canonical or uri
        _ => str_at(v, "reference"),
    };
    let Some(text) = text else { return Vec::new() };
    if text.starts_with('#') {
        return Vec::new();
    }
    let local = text.strip_prefix(base_url).map(|rest| rest.trim_start_matches('/')).unwrap_or(text);
    let path = local.split("/_history/").next().unwrap_or(local);
    match path.split('/').collect::<Vec<_>>().as_slice() {
        [ty, id] if !local.contains(':') => vec![IndexValue::Reference {
            target_type: Some((*ty).to_owned()),
            target_id: Some((*id).to_owned()),
            url: None,
        }],
        _ => vec![IndexValue::Reference { target_type: None, target_id: None, url: Some(text.to_owned()) }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_fold_case_and_accents() {
        assert_eq!(normalize("Émile Zoë"), "emile zoe");
    }

    #[test]
    fn names_index_every_part() {
        let name = json!({"family": "Müller", "given": ["Anna", "Lena"]});
        let found = values(ParamKind::String, Node { value: &name, ty: "HumanName" }, "http://x/fhir");
        assert_eq!(found.len(), 3);
        assert!(found.contains(&IndexValue::String { normalized: "muller".into(), exact: "Müller".into() }));
    }

    #[test]
    fn references_to_this_server_become_local() {
        let r = json!({"reference": "http://x/fhir/Patient/1/_history/2"});
        let found = values(ParamKind::Reference, Node { value: &r, ty: "Reference" }, "http://x/fhir");
        assert_eq!(
            found,
            [IndexValue::Reference { target_type: Some("Patient".into()), target_id: Some("1".into()), url: None }]
        );
        let r = json!({"reference": "http://elsewhere/fhir/Patient/1"});
        let found = values(ParamKind::Reference, Node { value: &r, ty: "Reference" }, "http://x/fhir");
        assert!(matches!(&found[0], IndexValue::Reference { url: Some(_), .. }));
    }

    #[test]
    fn periods_are_ranges_open_at_a_missing_end() {
        let p = json!({"start": "2024-05"});
        let found = values(ParamKind::Date, Node { value: &p, ty: "Period" }, "");
        let IndexValue::Date { low, high } = found[0] else { panic!() };
        assert_eq!(low, crate::fhir::parse_date_time("2024-05-01T00:00:00Z").unwrap());
        assert_eq!(high, Millis::MAX);
    }
}
