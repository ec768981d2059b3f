//! Patient privacy Consents (R4 consent.html) as the rules the store evaluates on every access.
//!
//! An active Consent with scope `patient-privacy` for a Patient of this server becomes rules
//! (written with the Consent, in its transaction, so that a change applies at once on every
//! replica): its root provision (rule 0) and each nested provision (an exception to the root).
//! A provision applies to an access when every criterion it has matches:
//! - `period` covers now;
//! - `actor.reference` is the caller (its `fhirUser`), a PractitionerRole or Organization it acts
//!   for, or a CareTeam it is a member of;
//! - `purpose` is the caller's purpose of use (its token's `purpose_of_use`, `TREAT` by default);
//! - `class` is the resource's type; `securityLabel` is one of its labels;
//! - `data` is the resource (meaning `instance`), a resource it refers to (`related`), or a
//!   resource that refers to it (`dependents`).
//!
//! A resource of the patient is withheld when a root `deny` applies and no nested `permit` does,
//! or a root `permit` applies and a nested `deny` does; across Consents, deny overrides permit.
//! A root provision without `type` denies (R4 leaves it open; the safe reading); a nested one
//! without `type` is the opposite of its root. Provisions whose `action` lists none of
//! `access`, `use` or `disclose` do not govern reads and are left out. What this server cannot
//! enforce (`code`, `dataPeriod`, `authoredby`, nesting deeper than one level) is refused with
//! 422 rather than silently ignored. Consents do not restrict the patient's own access.

use serde_json::{Map, Value};

use crate::fhir::{self, Millis};

/// Who is asking, for evaluating Consents: the caller's actors (`Type/id`: its user, the
/// roles, organizations and care teams it acts for), purposes of use (`system|code`), and the
/// patient it is (whose own Consents do not restrict it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asking {
    pub actors: Vec<String>,
    pub purposes: Vec<String>,
    pub now: Millis,
    pub own_patient: Option<String>,
    /// The asker is unknown (a notification's receiver): every Consent of a patient withholds
    /// that patient's data, whatever its provisions.
    pub anyone: bool,
}

/// One provision as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsentRule {
    /// 0 for the root provision, 1… for nested ones.
    pub rule: i64,
    pub deny: bool,
    pub patient: String,
    pub start: Option<Millis>,
    pub end: Option<Millis>,
    pub criteria: Vec<Criterion>,
}

/// One criterion of a provision: `kind` is `actor`, `purpose`, `class`, `label`, `data`,
/// `data-related` or `data-dependents`.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    pub kind: &'static str,
    pub system: Option<String>,
    pub value: String,
}

impl ConsentRule {
    /// Whether the provision has criteria of `kind` (data kinds count together).
    pub fn has(&self, kind: &str) -> bool {
        self.criteria.iter().any(|c| c.kind == kind || (kind == "data" && c.kind.starts_with("data")))
    }
}

const SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const ACTIONS: &[&str] = &["access", "use", "disclose"];

/// The rules of a Consent; none when it is not an active patient-privacy consent of a local
/// Patient. `Err` names what this server cannot enforce.
pub fn rules_of(consent: &Map<String, Value>, base_url: &str) -> Result<Vec<ConsentRule>, String> {
    let active = consent.get("status").and_then(Value::as_str) == Some("active");
    let privacy =
        codings(consent.get("scope")).any(|(s, c)| c == "patient-privacy" && s.is_none_or(|s| s == SCOPE_SYSTEM));
    let patient = consent.get("patient").and_then(|p| local_reference(p, base_url));
    let root = consent.get("provision").and_then(Value::as_object);
    // Checked whatever the status, so that activating a Consent later cannot fail.
    if let Some(root) = root {
        check(root, true, base_url)?;
    }
    if !(active && privacy) {
        return Ok(Vec::new());
    }
    let Some(("Patient", patient)) = patient.as_ref().map(|(t, i)| (t.as_str(), i.clone())) else {
        return Err("an active patient-privacy Consent must name a Patient of this server".into());
    };
    let Some(root) = root else {
        return Err("an active patient-privacy Consent needs a provision: this server enforces provisions, not \
                    policy rules alone"
            .into());
    };
    if !governs_reads(root) {
        return Ok(Vec::new());
    }
    let root_deny = root.get("type").and_then(Value::as_str).is_none_or(|t| t == "deny");
    let mut out = vec![rule(root, 0, root_deny, &patient, base_url)];
    let nested = root.get("provision").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_object);
    for (i, provision) in nested.enumerate() {
        if !governs_reads(provision) {
            continue;
        }
        let deny = match provision.get("type").and_then(Value::as_str) {
            Some(t) => t == "deny",
            None => !root_deny,
        };
        out.push(rule(provision, i as i64 + 1, deny, &patient, base_url));
    }
    Ok(out)
}

/// Refuses what the rules could not express: a criterion left out would widen a permit or
/// narrow a deny.
fn check(provision: &Map<String, Value>, root: bool, base_url: &str) -> Result<(), String> {
    for unsupported in ["code", "dataPeriod"] {
        if provision.contains_key(unsupported) {
            return Err(format!("Consent.provision.{unsupported} is not enforced by this server"));
        }
    }
    let list = |key: &str| provision.get(key).and_then(Value::as_array).into_iter().flatten();
    for data in list("data") {
        if data.get("meaning").and_then(Value::as_str) == Some("authoredby") {
            return Err("Consent.provision.data with meaning 'authoredby' is not enforced by this server".into());
        }
        if data.get("reference").and_then(|r| local_reference(r, base_url)).is_none() {
            return Err("Consent.provision.data.reference must reference a resource of this server".into());
        }
    }
    for actor in list("actor") {
        if actor.get("reference").and_then(|r| local_reference(r, base_url)).is_none() {
            return Err("Consent.provision.actor.reference must reference a resource of this server (actors by \
                        role alone are not enforced)"
                .into());
        }
    }
    for (key, what) in [("purpose", "purpose"), ("securityLabel", "securityLabel"), ("class", "class")] {
        for coding in list(key) {
            let has = |k: &str| coding.get(k).and_then(Value::as_str).is_some_and(|v| !v.is_empty());
            if !has("code") || (key != "class" && !has("system")) {
                return Err(format!("Consent.provision.{what} needs a system and a code"));
            }
        }
    }
    for nested in provision.get("provision").and_then(Value::as_array).into_iter().flatten() {
        if !root {
            return Err("Consent provisions nested more than one level deep are not enforced by this server".into());
        }
        if let Some(nested) = nested.as_object() {
            check(nested, false, base_url)?;
        }
    }
    Ok(())
}

fn governs_reads(provision: &Map<String, Value>) -> bool {
    match provision.get("action").and_then(Value::as_array) {
        None => true,
        Some(actions) => actions.iter().any(|a| codings(Some(a)).any(|(_, c)| ACTIONS.contains(&c))),
    }
}

fn rule(provision: &Map<String, Value>, index: i64, deny: bool, patient: &str, base_url: &str) -> ConsentRule {
    let period = provision.get("period");
    let at = |key: &str| period.and_then(|p| p.get(key)).and_then(Value::as_str).and_then(fhir::date_range);
    let mut criteria = Vec::new();
    let mut push = |kind: &'static str, system: Option<&str>, value: &str| {
        criteria.push(Criterion { kind, system: system.map(str::to_owned), value: value.to_owned() });
    };
    for actor in provision.get("actor").and_then(Value::as_array).into_iter().flatten() {
        match actor.get("reference").and_then(|r| local_reference(r, base_url)) {
            Some((t, id)) => push("actor", None, &format!("{t}/{id}")),
            // An actor that is no resource of this server matches no caller; keep the
            // provision from applying to everyone.
            None => push("actor", None, ""),
        }
    }
    for purpose in provision.get("purpose").and_then(Value::as_array).into_iter().flatten() {
        if let Some(code) = purpose.get("code").and_then(Value::as_str) {
            push("purpose", None, &format!("{}|{code}", purpose.get("system").and_then(Value::as_str).unwrap_or("")));
        }
    }
    for class in provision.get("class").and_then(Value::as_array).into_iter().flatten() {
        if let Some(code) = class.get("code").and_then(Value::as_str) {
            push("class", None, code);
        }
    }
    for label in provision.get("securityLabel").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(system), Some(code)) =
            (label.get("system").and_then(Value::as_str), label.get("code").and_then(Value::as_str))
        {
            push("label", Some(system), code);
        }
    }
    for data in provision.get("data").and_then(Value::as_array).into_iter().flatten() {
        let kind = match data.get("meaning").and_then(Value::as_str) {
            Some("related") => "data-related",
            Some("dependents") => "data-dependents",
            _ => "data",
        };
        match data.get("reference").and_then(|r| local_reference(r, base_url)) {
            Some((t, id)) => push(kind, Some(&t), &id),
            None => push(kind, Some(""), ""),
        }
    }
    ConsentRule {
        rule: index,
        deny,
        patient: patient.to_owned(),
        start: at("start").map(|(low, _)| low),
        end: at("end").map(|(_, high)| high),
        criteria,
    }
}

/// `(system, code)` of the codings of a CodeableConcept (or of a Coding).
fn codings(concept: Option<&Value>) -> impl Iterator<Item = (Option<&str>, &str)> {
    let list: Vec<&Value> = match concept {
        Some(c) if c.get("coding").is_some() => c["coding"].as_array().into_iter().flatten().collect(),
        Some(c) => vec![c],
        None => Vec::new(),
    };
    list.into_iter()
        .filter_map(|c| Some((c.get("system").and_then(Value::as_str), c.get("code").and_then(Value::as_str)?)))
}

/// `(type, id)` of a Reference to a resource of this server (relative, or absolute under
/// `base_url`).
fn local_reference(reference: &Value, base_url: &str) -> Option<(String, String)> {
    let text = reference.get("reference")?.as_str()?;
    let local = match text.strip_prefix(base_url) {
        Some(rest) => rest.strip_prefix('/')?,
        None if text.contains("://") => return None,
        None => text,
    };
    // `Type/id`, or a version of it (`Type/id/_history/v`).
    let mut parts = local.split('/');
    let (ty, id) = (parts.next()?, parts.next()?);
    let well_formed = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => true,
        (Some("_history"), Some(v), None) => !v.is_empty(),
        _ => false,
    };
    (well_formed && !ty.is_empty() && !id.is_empty()).then(|| (ty.to_owned(), id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consent(provision: Value) -> Map<String, Value> {
        let v = json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "patient-privacy"}]},
            "patient": {"reference": "Patient/p1"}, "provision": provision});
        v.as_object().unwrap().clone()
    }

    #[test]
    fn root_and_nested_provisions_become_rules() {
        let c = consent(json!({"type": "deny", "actor": [{"reference": {"reference": "Practitioner/sw"}}],
            "provision": [{"type": "permit", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "CarePlan"}]}]}));
        let rules = rules_of(&c, "https://x/fhir").unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules[0].deny && !rules[1].deny);
        assert_eq!(rules[0].criteria[0].value, "Practitioner/sw");
        assert!(rules[1].has("class") && !rules[1].has("actor"));
    }

    #[test]
    fn untyped_provisions_and_inactive_consents() {
        let untyped = consent(json!({"data": [{"meaning": "related", "reference": {"reference": "Task/t1"}}]}));
        let rules = rules_of(&untyped, "https://x/fhir").unwrap();
        assert!(rules[0].deny, "a root provision without type denies");
        assert_eq!(rules[0].criteria[0].kind, "data-related");
        let mut draft = untyped.clone();
        draft.insert("status".into(), json!("draft"));
        assert!(rules_of(&draft, "https://x/fhir").unwrap().is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_enforce() {
        let deep = consent(json!({"type": "deny", "provision": [{"type": "permit", "provision": [{"type": "deny"}]}]}));
        assert!(rules_of(&deep, "https://x/fhir").is_err());
        let coded = consent(json!({"type": "deny", "code": [{"text": "x"}]}));
        assert!(rules_of(&coded, "https://x/fhir").is_err());
    }
}
