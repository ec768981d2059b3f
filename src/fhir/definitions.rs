//! The FHIR R4 structure definitions Liaison validates against, loaded from the compact extract
//! `definitions/r4.json` (made by `tools/extract_definitions.py` from HL7's official package).
//!
//! This module owns the lookup "which elements may appear under this path, with which types,
//! cardinality and required binding"; the walk over a resource lives in `validate`.

use std::collections::HashMap;

use serde::Deserialize;

/// The compact extract, embedded so that the binary needs no files at run time.
const R4_DEFINITIONS: &str = include_str!("definitions/r4.json");

/// Whether a type is a primitive, a complex data type or a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TypeKind {
    PrimitiveType,
    ComplexType,
    Resource,
}

/// Upper bound of an element's cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Max {
    One,
    Many,
    /// `max = 0`: the element is prohibited.
    Zero,
}

/// One allowed type of an element, with the resource types a Reference or canonical may target.
#[derive(Debug, Clone)]
pub struct TypeRef {
    pub code: String,
    /// Empty means any target.
    pub targets: Vec<String>,
}

/// One element of a structure definition, as a child of its parent path.
#[derive(Debug, Clone)]
pub struct ElementDef {
    /// The full path, e.g. `CarePlan.activity.detail.status` or `Observation.value[x]`.
    pub path: String,
    /// The JSON name, without `[x]` for choice elements.
    pub name: String,
    pub choice: bool,
    pub min: u32,
    pub max: Max,
    pub types: Vec<TypeRef>,
    /// The value set of a required binding whose codes are enumerated in the extract.
    pub required_binding: Option<String>,
    /// `contentReference` target path (without `#`), e.g. `QuestionnaireResponse.item`.
    pub content_reference: Option<String>,
}

impl ElementDef {
    /// Whether the element's value holds its own children (a backbone element or a
    /// contentReference), rather than the children of a named data type.
    pub fn children_path(&self) -> Option<&str> {
        if let Some(target) = &self.content_reference {
            return Some(target);
        }
        match self.types.first().map(|t| t.code.as_str()) {
            Some("BackboneElement") | Some("Element") if self.types.len() == 1 => Some(&self.path),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct TypeDef {
    kind: TypeKind,
    is_abstract: bool,
    /// Top-level elements marked isSummary (for `_summary=true`).
    summary: Vec<String>,
}

/// A required value set as `(system, codes)` pairs.
pub type ValueSetCodes = Vec<(String, Vec<String>)>;

/// All R4 types, elements and required value sets.
#[derive(Debug)]
pub struct Definitions {
    types: HashMap<String, TypeDef>,
    /// Children by parent path, in definition order.
    children: HashMap<String, Vec<ElementDef>>,
    value_sets: HashMap<String, ValueSetCodes>,
}

#[derive(Deserialize)]
struct RawFile {
    types: HashMap<String, RawType>,
    #[serde(rename = "valueSets")]
    value_sets: HashMap<String, ValueSetCodes>,
}

#[derive(Deserialize)]
struct RawType {
    kind: TypeKind,
    #[serde(rename = "abstract")]
    is_abstract: bool,
    #[serde(default)]
    summary: Vec<String>,
    elements: Vec<serde_json::Value>,
}

impl Definitions {
    /// Parses the embedded R4 extract.
    pub fn r4() -> Self {
        Self::parse(R4_DEFINITIONS).expect("embedded R4 definitions are well formed")
    }

    fn parse(text: &str) -> Result<Self, String> {
        let raw: RawFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut children: HashMap<String, Vec<ElementDef>> = HashMap::new();
        let mut types = HashMap::new();
        for (name, ty) in raw.types {
            for row in &ty.elements {
                let el = parse_element(row).ok_or_else(|| format!("bad element row {row}"))?;
                let parent = el.path.rsplit_once('.').map(|(p, _)| p.to_owned()).unwrap_or_default();
                children.entry(parent).or_default().push(el);
            }
            types.insert(name, TypeDef { kind: ty.kind, is_abstract: ty.is_abstract, summary: ty.summary });
        }
        Ok(Self { types, children, value_sets: raw.value_sets })
    }

    /// The kind of a type, or `None` for a name R4 does not define.
    pub fn kind(&self, type_name: &str) -> Option<TypeKind> {
        self.types.get(type_name).map(|t| t.kind)
    }

    /// Whether `name` is a concrete (instantiable) R4 resource type.
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.types.get(name).is_some_and(|t| t.kind == TypeKind::Resource && !t.is_abstract)
    }

    /// The top-level elements of a resource type that `_summary=true` keeps.
    pub fn summary_elements(&self, type_name: &str) -> &[String] {
        self.types.get(type_name).map(|t| t.summary.as_slice()).unwrap_or(&[])
    }

    /// The elements that may appear directly under `path` (a type name or element path).
    pub fn children(&self, path: &str) -> &[ElementDef] {
        self.children.get(path).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The codes of a required value set.
    pub fn value_set(&self, url: &str) -> Option<&ValueSetCodes> {
        self.value_sets.get(url)
    }
}

fn parse_element(row: &serde_json::Value) -> Option<ElementDef> {
    let cols = row.as_array()?;
    let path = cols.first()?.as_str()?.to_owned();
    let min = u32::try_from(cols.get(1)?.as_u64()?).ok()?;
    let max = match cols.get(2)?.as_str()? {
        "0" => Max::Zero,
        "1" => Max::One,
        _ => Max::Many,
    };
    let types = cols.get(3)?.as_array()?.iter().map(|t| t.as_str().map(parse_type_ref)).collect::<Option<Vec<_>>>()?;
    let required_binding = cols.get(4).and_then(|v| v.as_str()).map(str::to_owned);
    let content_reference = cols.get(5).and_then(|v| v.as_str()).map(|r| r.trim_start_matches('#').to_owned());
    // An element defined by contentReference has the structure of its target: a backbone.
    let types = if types.is_empty() && content_reference.is_some() {
        vec![TypeRef { code: "BackboneElement".into(), targets: Vec::new() }]
    } else {
        types
    };
    let last = path.rsplit('.').next()?;
    let (name, choice) = match last.strip_suffix("[x]") {
        Some(stem) => (stem.to_owned(), true),
        None => (last.to_owned(), false),
    };
    Some(ElementDef { path, name, choice, min, max, types, required_binding, content_reference })
}

fn parse_type_ref(text: &str) -> TypeRef {
    match text.split_once('(') {
        Some((code, rest)) => TypeRef {
            code: code.to_owned(),
            targets: rest.trim_end_matches(')').split('|').map(str::to_owned).collect(),
        },
        None => TypeRef { code: text.to_owned(), targets: Vec::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_type_is_defined() {
        let defs = Definitions::r4();
        for els in defs.children.values() {
            for el in els {
                for t in &el.types {
                    assert!(defs.kind(&t.code).is_some(), "{} has unknown type {}", el.path, t.code);
                }
                if let Some(target) = &el.content_reference {
                    assert!(!defs.children(target).is_empty(), "{} -> {target}", el.path);
                }
            }
        }
    }

    #[test]
    fn content_references_are_backbones_of_their_target() {
        let defs = Definitions::r4();
        let item = defs.children("QuestionnaireResponse.item").iter().find(|e| e.name == "item").unwrap();
        assert_eq!(item.children_path(), Some("QuestionnaireResponse.item"));
    }

    #[test]
    fn care_plan_status_is_a_required_binding() {
        let defs = Definitions::r4();
        let status = defs.children("CarePlan").iter().find(|e| e.name == "status").unwrap();
        assert_eq!(status.min, 1);
        let vs = defs.value_set(status.required_binding.as_deref().unwrap()).unwrap();
        assert!(vs[0].1.iter().any(|c| c == "active"));
    }
}
