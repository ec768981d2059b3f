//! Security labels (R4 security-labels.html) and the clearance that lets a caller see them.
//!
//! Two kinds of label in `meta.security` control disclosure:
//! - **confidentiality** (`v3-Confidentiality`): `R` (restricted) needs clearance `R` or `V`,
//!   `V` (very restricted) needs `V`; `U`, `L`, `M` and `N` need nothing;
//! - **sensitivity** (`v3-ActCode`, the `_InformationSensitivityPolicy` codes such as `PSY`,
//!   `PSYTHPN`, `SUD`, `ETH`): each needs clearance naming that code.
//!
//! Other labels (handling caveats, integrity, provenance) are carried but do not restrict.
//! A caller's clearance comes from its token's `clearance` claim; `BTG` there permits
//! break-the-glass. Labels may also be derived on write by configurable [`LabelRules`].

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::fhir::search::index::{IndexEntry, IndexValue};
use crate::fhir::search::query::{self, Filter, Modifier, SearchValue, SystemMatch};
use crate::fhir::search::{ParamKind, SearchParams};

pub const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// The clearance code that permits break-the-glass (v3 ActReason `BTG`).
pub const BREAK_GLASS: &str = "BTG";

/// The sensitivity codes of v3 ActCode's `_InformationSensitivityPolicy` (R4), each withheld
/// from callers whose clearance does not name it.
pub const SENSITIVITIES: &[&str] = &[
    "ETH", "GDIS", "HIV", "MST", "SCA", "SDV", "SEX", "SPI", "BH", "COGN", "DVD", "EMOTDIS", "MH", "PSY", "PSYTHPN",
    "SUD", "ETHUD", "OPIOIDUD", "STD", "TBOO", "VIO", "SICKLE", "DEMO", "DOB", "GENDER", "LIVARG", "MARST", "RACE",
    "REL", "B", "EMPL", "LOCIS", "SSP", "ADOL", "CEL", "DIA", "DRGIS", "EMP", "PDS", "PHY", "PRS",
];

/// A security label: `(system, code)`.
pub type Label = (String, String);

/// What a caller is cleared to see, from its token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clearance {
    /// The codes of the `clearance` claim: `R`, `V`, sensitivity codes, `BTG`.
    pub codes: BTreeSet<String>,
}

impl Clearance {
    pub fn new<I: IntoIterator<Item = String>>(codes: I) -> Self {
        Self { codes: codes.into_iter().collect() }
    }

    /// Whether the caller may break the glass.
    pub fn break_glass(&self) -> bool {
        self.codes.contains(BREAK_GLASS)
    }

    /// The controlling labels this clearance does not cover: resources carrying any of them
    /// are withheld.
    pub fn withheld(&self) -> Vec<Label> {
        let has = |c: &str| self.codes.contains(c);
        let mut out = Vec::new();
        if !has("R") && !has("V") {
            out.push((CONFIDENTIALITY.to_owned(), "R".to_owned()));
        }
        if !has("V") {
            out.push((CONFIDENTIALITY.to_owned(), "V".to_owned()));
        }
        out.extend(SENSITIVITIES.iter().filter(|c| !has(c)).map(|c| (ACT_CODE.to_owned(), (*c).to_owned())));
        out
    }
}

/// The labels in a resource's `meta.security`.
pub fn labels_of(resource: &Map<String, Value>) -> Vec<Label> {
    let security = resource.get("meta").and_then(|m| m.get("security")).and_then(Value::as_array);
    security
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("system")?.as_str()?.to_owned(), c.get("code")?.as_str()?.to_owned())))
        .collect()
}

/// Whether content carries none of the `withheld` labels.
pub fn clears(content: &str, withheld: &[Label]) -> bool {
    if withheld.is_empty() {
        return true;
    }
    match serde_json::from_str::<Map<String, Value>>(content) {
        Ok(resource) => labels_of(&resource).iter().all(|l| !withheld.contains(l)),
        // Unreadable content is never disclosed on a guess.
        Err(_) => false,
    }
}

/// Adds `labels` to `meta.security` where they are not there yet.
pub fn add_labels(resource: &mut Map<String, Value>, labels: &[Label]) {
    if labels.is_empty() {
        return;
    }
    let meta = resource.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else { return };
    let security = meta.entry("security").or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(security) = security else { return };
    for (system, code) in labels {
        let present =
            security.iter().any(|c| c.get("system").and_then(Value::as_str) == Some(system) && c["code"] == **code);
        if !present {
            security.push(serde_json::json!({"system": system, "code": code}));
        }
    }
}

/// The `_security` index entries of labels added by rules.
pub fn label_entries(labels: &[Label]) -> impl Iterator<Item = IndexEntry> + '_ {
    labels.iter().map(|(system, code)| IndexEntry {
        param: "_security".into(),
        value: IndexValue::Token {
            system: Some(system.clone()),
            code: Some(code.clone()),
            display: None,
            type_system: None,
            type_code: None,
        },
    })
}

/// One rule of a label-rules file: resources of `resourceType` matching `criteria` (token
/// search parameters, AND-ed, values OR-ed, as in a search) get `labels`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleFile {
    resource_type: String,
    criteria: String,
    labels: Vec<LabelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelFile {
    system: String,
    code: String,
}

/// A token test of a rule: the parameter, and the `system|code` values one of which must match.
type TokenTest = (String, Vec<(SystemMatch, Option<String>)>);

#[derive(Debug, Clone)]
struct LabelRule {
    resource_type: String,
    tests: Vec<TokenTest>,
    labels: Vec<Label>,
}

/// Rules that derive security labels from content on every write, so that a psychotherapy
/// note is labelled even when the client did not label it.
#[derive(Debug, Clone, Default)]
pub struct LabelRules(Vec<LabelRule>);

impl LabelRules {
    /// Parses a rules file (a JSON array of `{resourceType, criteria, labels}`); criteria use
    /// token search parameters of the type only (`code=http://loinc.org|11488-4`).
    pub fn parse(text: &str, params: &SearchParams, base_url: &str) -> Result<Self, String> {
        let rules: Vec<RuleFile> = serde_json::from_str(text).map_err(|e| format!("label rules: {e}"))?;
        let mut out = Vec::new();
        for (i, rule) in rules.into_iter().enumerate() {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&rule.criteria)
                .map_err(|_| format!("label rule {i}: criteria is not a query string"))?;
            let options = query::ParseOptions { base_url, strict: true, max_count: 1, terms: query::Terms::default() };
            let parsed = query::parse(params, &rule.resource_type, &pairs, options)
                .map_err(|e| format!("label rule {i} ({}): {e}", rule.resource_type))?;
            if parsed.filters.is_empty() {
                return Err(format!("label rule {i}: criteria names no search parameter"));
            }
            let mut tests = Vec::new();
            for filter in parsed.filters {
                let Filter::Test { param, kind: ParamKind::Token, modifier: Modifier::None, values } = filter else {
                    return Err(format!("label rule {i}: criteria may use token parameters without modifiers only"));
                };
                let values = values
                    .into_iter()
                    .map(|v| match v {
                        SearchValue::Token { system, code } => Ok((system, code)),
                        _ => Err(format!("label rule {i}: {param} needs system|code values")),
                    })
                    .collect::<Result<_, _>>()?;
                tests.push((param, values));
            }
            if rule.labels.is_empty() {
                return Err(format!("label rule {i}: no labels"));
            }
            let labels = rule.labels.into_iter().map(|l| (l.system, l.code)).collect();
            out.push(LabelRule { resource_type: rule.resource_type, tests, labels });
        }
        Ok(Self(out))
    }

    /// The labels the rules give a resource of type `ty` with these index entries.
    pub fn labels_for(&self, ty: &str, index: &[IndexEntry]) -> Vec<Label> {
        let mut out: Vec<Label> = Vec::new();
        for rule in self.0.iter().filter(|r| r.resource_type == ty) {
            let matches = rule.tests.iter().all(|(param, values)| {
                index.iter().filter(|e| &e.param == param).any(|e| {
                    let IndexValue::Token { system: s, code: c, .. } = &e.value else { return false };
                    values.iter().any(|(system, code)| {
                        let system_ok = match system {
                            SystemMatch::Any => true,
                            SystemMatch::Absent => s.is_none(),
                            SystemMatch::Is(want) => s.as_deref() == Some(want.as_str()),
                        };
                        system_ok && code.as_ref().is_none_or(|want| c.as_deref() == Some(want.as_str()))
                    })
                })
            });
            if matches {
                for label in &rule.labels {
                    if !out.contains(label) {
                        out.push(label.clone());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearance_withholds_what_it_does_not_name() {
        let none = Clearance::default().withheld();
        assert!(none.contains(&(CONFIDENTIALITY.into(), "R".into())));
        assert!(none.contains(&(ACT_CODE.into(), "PSYTHPN".into())));
        let therapist = Clearance::new(["R".to_owned(), "PSY".to_owned(), "PSYTHPN".to_owned()]).withheld();
        assert!(!therapist.contains(&(CONFIDENTIALITY.into(), "R".into())));
        assert!(therapist.contains(&(CONFIDENTIALITY.into(), "V".into())));
        assert!(!therapist.contains(&(ACT_CODE.into(), "PSYTHPN".into())));
        assert!(therapist.contains(&(ACT_CODE.into(), "SUD".into())));
        let very = Clearance::new(["V".to_owned()]).withheld();
        assert!(!very.iter().any(|(s, _)| s == CONFIDENTIALITY), "V covers R");
    }

    #[test]
    fn labels_are_added_once() {
        let mut r: Map<String, Value> = serde_json::from_str(
            r#"{"resourceType":"Observation","meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"}]}}"#,
        )
        .unwrap();
        add_labels(&mut r, &[(ACT_CODE.into(), "PSY".into()), (CONFIDENTIALITY.into(), "R".into())]);
        assert_eq!(labels_of(&r).len(), 2);
        assert!(clears(&Value::Object(r.clone()).to_string(), &[(ACT_CODE.into(), "SUD".into())]));
        assert!(!clears(&Value::Object(r).to_string(), &[(CONFIDENTIALITY.into(), "R".into())]));
    }
}
