//! FHIR search (search.html): the R4 SearchParameters of the served types, index extraction
//! driven by their expressions, and the parsing of search requests into a typed query.
//!
//! The SQL for a query is the store's business (`store::search_sql`).

pub mod index;
pub mod path;
pub mod query;

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::definitions::Definitions;
use index::IndexEntry;
use path::Expr;

const R4_SEARCH_PARAMETERS: &str = include_str!("../definitions/search-parameters.json");

/// Bumped whenever extraction changes, so that stored indexes are rebuilt at start-up.
pub const INDEX_VERSION: i64 = 4;

/// A search parameter's type (SearchParameter.type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Date => "date",
            Self::String => "string",
            Self::Token => "token",
            Self::Reference => "reference",
            Self::Composite => "composite",
            Self::Quantity => "quantity",
            Self::Uri => "uri",
            Self::Special => "special",
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    pub kind: ParamKind,
    pub expression: Expr,
    /// Resource types a reference parameter may point at.
    pub targets: Vec<String>,
    pub description: String,
    /// The parts of a composite parameter, evaluated on each node its expression reaches.
    pub components: Vec<Component>,
    /// A resource has at most one index row for it (a date parameter reaching one
    /// `Period`, `dateTime`, `date` or `instant`), so repetitions may test that one row.
    pub single_row: bool,
}

/// A part of a composite parameter: the type of the parameter it stands for, and its
/// expression relative to the composite's node.
#[derive(Debug, Clone)]
pub struct Component {
    pub kind: ParamKind,
    pub expression: Expr,
}

#[derive(Deserialize)]
struct RawComponent {
    #[serde(rename = "type")]
    kind: ParamKind,
    expression: String,
}

#[derive(Deserialize)]
struct RawParam {
    code: String,
    #[serde(rename = "type")]
    kind: ParamKind,
    expression: String,
    #[serde(default)]
    target: Vec<String>,
    description: String,
    #[serde(default)]
    component: Vec<RawComponent>,
}

/// A parameter R4 defines that Liaison does not offer, with the reason.
#[derive(Debug, Clone)]
pub struct Unsupported {
    pub resource_type: String,
    pub code: String,
    pub reason: String,
}

/// The search parameters of every served type.
#[derive(Debug)]
pub struct SearchParams {
    by_type: HashMap<String, Vec<SearchParam>>,
    unsupported: Vec<Unsupported>,
}

impl SearchParams {
    /// The parameters of the embedded R4 extract, for `types`.
    pub fn r4(defs: &Definitions, types: &[&str]) -> Self {
        let raw: HashMap<String, Vec<RawParam>> =
            serde_json::from_str(R4_SEARCH_PARAMETERS).expect("embedded search parameters are well formed");
        let mut by_type = HashMap::new();
        let mut unsupported = Vec::new();
        for ty in types {
            let mut params = Vec::new();
            for p in raw.get(*ty).into_iter().flatten() {
                let refuse =
                    |reason: String| Unsupported { resource_type: (*ty).to_owned(), code: p.code.clone(), reason };
                if p.kind == ParamKind::Special {
                    unsupported.push(refuse("special parameters are not supported".into()));
                    continue;
                }
                let components: Result<Vec<Component>, String> = p
                    .component
                    .iter()
                    .map(|c| Ok(Component { kind: c.kind, expression: path::parse(&c.expression)? }))
                    .collect();
                let supported_composite = p.component.len() == 2
                    && p.component[0].kind == ParamKind::Token
                    && matches!(
                        p.component[1].kind,
                        ParamKind::Token
                            | ParamKind::Quantity
                            | ParamKind::Number
                            | ParamKind::Date
                            | ParamKind::String
                    );
                if p.kind == ParamKind::Composite && !supported_composite {
                    unsupported.push(refuse("only composites of a code and a value are supported".into()));
                    continue;
                }
                let components = match components {
                    Ok(c) => c,
                    Err(why) => {
                        unsupported.push(refuse(format!("component expression not supported: {why}")));
                        continue;
                    }
                };
                match path::parse(&p.expression) {
                    Ok(expression) => params.push(SearchParam {
                        code: p.code.clone(),
                        kind: p.kind,
                        single_row: p.kind == ParamKind::Date
                            && path::single_element_types(defs, &expression, ty).is_some_and(|types| {
                                types.iter().all(|t| matches!(*t, "Period" | "dateTime" | "date" | "instant"))
                            }),
                        expression,
                        targets: p.target.clone(),
                        description: p.description.clone(),
                        components,
                    }),
                    Err(why) => unsupported.push(refuse(format!("expression not supported: {why}"))),
                }
            }
            by_type.insert((*ty).to_owned(), params);
        }
        Self { by_type, unsupported }
    }

    /// The parameters of a type, in code order.
    pub fn for_type(&self, ty: &str) -> &[SearchParam] {
        self.by_type.get(ty).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn get(&self, ty: &str, code: &str) -> Option<&SearchParam> {
        self.for_type(ty).iter().find(|p| p.code == code)
    }

    /// Parameters R4 defines for the served types that are not offered.
    pub fn unsupported(&self) -> &[Unsupported] {
        &self.unsupported
    }

    /// The index entries of a resource. `_id` and `_lastUpdated` are not indexed: they are
    /// columns of the resource row.
    pub fn extract(&self, defs: &Definitions, ty: &str, resource: &Value, base_url: &str) -> Vec<IndexEntry> {
        self.extract_where(defs, ty, resource, base_url, |_| true)
    }

    /// The index entries of a resource for the parameters in `only`, as [`Self::extract`]
    /// gives them.
    pub fn extract_only(
        &self,
        defs: &Definitions,
        ty: &str,
        resource: &Value,
        base_url: &str,
        only: &[String],
    ) -> Vec<IndexEntry> {
        self.extract_where(defs, ty, resource, base_url, |code| only.iter().any(|o| o == code))
    }

    fn extract_where(
        &self,
        defs: &Definitions,
        ty: &str,
        resource: &Value,
        base_url: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        for p in self.for_type(ty) {
            if p.code == "_id" || p.code == "_lastUpdated" || !keep(&p.code) {
                continue;
            }
            for node in path::evaluate(defs, &p.expression, resource, ty) {
                let values = if p.kind == ParamKind::Composite {
                    composite_values(defs, p, node, base_url)
                } else {
                    node_values(defs, p.kind, node, base_url)
                };
                for value in values {
                    let entry = IndexEntry { param: p.code.clone(), value };
                    if !out.contains(&entry) {
                        out.push(entry);
                    }
                }
            }
        }
        out
    }
}

/// The index values of one node (an extension stands for its value).
fn node_values(defs: &Definitions, kind: ParamKind, node: path::Node, base_url: &str) -> Vec<index::IndexValue> {
    let nodes = if node.ty == "Extension" { path::children(defs, node, "value") } else { vec![node] };
    nodes.into_iter().flat_map(|n| index::values(kind, n, base_url)).collect()
}

/// Composite rows of one node: each code of the first component with each value of the second,
/// both taken from this node, so that they belong together.
fn composite_values(defs: &Definitions, p: &SearchParam, node: path::Node, base_url: &str) -> Vec<index::IndexValue> {
    let [first, second] = p.components.as_slice() else { return Vec::new() };
    let codes: Vec<index::IndexValue> = path::evaluate_relative(defs, &first.expression, node)
        .into_iter()
        .flat_map(|n| node_values(defs, first.kind, n, base_url))
        .collect();
    let values: Vec<index::IndexValue> = path::evaluate_relative(defs, &second.expression, node)
        .into_iter()
        .flat_map(|n| node_values(defs, second.kind, n, base_url))
        .collect();
    let mut out = Vec::new();
    for code in &codes {
        if let index::IndexValue::Token { system, code: Some(code), .. } = code {
            for value in &values {
                out.push(index::IndexValue::Composite {
                    system: system.clone(),
                    code: code.clone(),
                    second: Box::new(value.clone()),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::registry::SUPPORTED_TYPES;

    #[test]
    fn nearly_every_r4_parameter_of_the_served_types_is_offered() {
        let params = SearchParams::r4(&Definitions::r4(), SUPPORTED_TYPES);
        let offered: usize = SUPPORTED_TYPES.iter().map(|t| params.for_type(t).len()).sum();
        let not: Vec<String> =
            params.unsupported().iter().map(|u| format!("{}.{}: {}", u.resource_type, u.code, u.reason)).collect();
        assert!(offered >= 280, "{offered} offered");
        assert!(not.is_empty(), "{not:#?}");
        assert_eq!(offered, 361, "307 of the clinical types, 20 of Consent, 11 of Subscription and 23 of AuditEvent");
        for ty in SUPPORTED_TYPES {
            let mut codes: Vec<&str> = params.for_type(ty).iter().map(|p| p.code.as_str()).collect();
            let all = codes.len();
            codes.dedup();
            assert_eq!(codes.len(), all, "{ty} has each code once");
        }
        for code in [
            "patient",
            "subject",
            "status",
            "intent",
            "category",
            "date",
            "care-team",
            "goal",
            "activity-code",
            "performer",
        ] {
            assert!(params.get("CarePlan", code).is_some(), "CarePlan.{code}");
        }
        for code in ["owner", "requester", "focus", "business-status", "period", "_tag", "_profile", "_security"] {
            assert!(params.get("Task", code).is_some(), "Task.{code}");
        }
    }

    #[test]
    fn extraction_follows_the_definitions() {
        let defs = Definitions::r4();
        let params = SearchParams::r4(&defs, SUPPORTED_TYPES);
        assert!(params.get("Encounter", "date").unwrap().single_row);
        assert!(!params.get("CarePlan", "activity-date").unwrap().single_row, "a Timing's events are rows each");
        assert!(!params.get("Goal", "target-date").unwrap().single_row, "Goal.target repeats");
        let plan = serde_json::json!({
            "resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p1"},
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "736353004", "display": "Psychiatry care plan"}]}],
            "period": {"start": "2024-01-10"},
            "meta": {"tag": [{"system": "urn:t", "code": "x"}]}
        });
        let entries = params.extract(&defs, "CarePlan", &plan, "http://base/fhir");
        let codes: Vec<&str> = entries.iter().map(|e| e.param.as_str()).collect();
        for code in ["status", "intent", "subject", "patient", "category", "date", "_tag"] {
            assert!(codes.contains(&code), "{code} in {codes:?}");
        }
    }
}
