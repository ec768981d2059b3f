//! Structural validation of a resource against the R4 definitions: known elements only, JSON
//! shapes (array or single), primitive formats, cardinality, required code bindings and
//! well-formed references. It also collects the local references a write must resolve.
//!
//! Not covered here: FHIRPath invariants (`constraint` entries) and terminology beyond the value
//! sets the extract could enumerate. Existence of referenced resources is checked by the caller
//! against the store, because it needs the database.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::definitions::{Definitions, ElementDef, Max, TypeKind, TypeRef};
use super::outcome::{Issue, IssueType};
use super::primitives;

/// At most this many issues are reported for one resource; the rest would only add noise.
const MAX_ISSUES: usize = 100;

/// A relative reference (`Type/id`) found in a resource, to be resolved on this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReference {
    pub resource_type: String,
    pub id: String,
    /// FHIRPath of the `reference` element, e.g. `CarePlan.subject.reference`.
    pub expression: String,
}

/// The outcome of validating one resource.
#[derive(Debug, Default)]
pub struct Report {
    pub issues: Vec<Issue>,
    pub references: Vec<LocalReference>,
}

/// Validates `resource`, whose `resourceType` the caller has checked to be a resource type.
pub fn validate(defs: &Definitions, resource: &Map<String, Value>) -> Report {
    let type_name = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let mut walk = Walk { defs, report: Report::default(), contained_ids: HashSet::new() };
    walk.resource(resource, type_name, type_name, true);
    walk.report
}

struct Walk<'a> {
    defs: &'a Definitions,
    report: Report,
    /// Ids of the contained resources of the resource being validated, for `#id` references.
    contained_ids: HashSet<String>,
}

impl Walk<'_> {
    fn issue(&mut self, code: IssueType, expression: &str, diagnostics: impl Into<String>) {
        if self.report.issues.len() < MAX_ISSUES {
            self.report.issues.push(Issue::at(code, expression, diagnostics));
        }
    }

    fn resource(&mut self, obj: &Map<String, Value>, type_name: &str, expr: &str, top_level: bool) {
        // `#id` references resolve among the container's contained resources, from the
        // container and from its contained resources alike (references.html#contained).
        if let Some(contained) = obj.get("contained").and_then(Value::as_array) {
            self.contained_ids =
                contained.iter().filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_owned)).collect();
        }
        if !top_level && obj.contains_key("contained") {
            // dom-2: a contained resource SHALL NOT contain additional contained resources.
            self.issue(
                IssueType::Invariant,
                &format!("{expr}.contained"),
                "contained resources cannot contain resources",
            );
        }
        if let Some(id) = obj.get("id") {
            if let Err(why) = primitives::check("id", id) {
                self.issue(IssueType::Value, &format!("{expr}.id"), why);
            }
        }
        self.object(obj, type_name, expr, true);
    }

    fn object(&mut self, obj: &Map<String, Value>, path: &str, expr: &str, resource_root: bool) {
        // ele-1 applies to elements; a resource with nothing but its type is valid.
        if obj.is_empty() {
            self.issue(IssueType::Structure, expr, "an element must have a value or children");
        }
        let defs = self.defs;
        let children = defs.children(path);
        let mut choices_seen: Vec<&str> = Vec::new();
        for (key, value) in obj {
            if resource_root && (key == "resourceType" || key == "id") {
                continue;
            }
            let child_expr = format!("{expr}.{key}");
            let (name, extension_side) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let Some((el, ty)) = find_element(children, name) else {
                self.issue(IssueType::Structure, &child_expr, "unknown element");
                continue;
            };
            if el.max == Max::Zero {
                self.issue(IssueType::Structure, &child_expr, "element is prohibited here");
                continue;
            }
            if el.choice && !extension_side {
                if choices_seen.contains(&el.name.as_str()) {
                    self.issue(IssueType::Structure, &child_expr, format!("only one {}[x] value is allowed", el.name));
                }
                choices_seen.push(&el.name);
            }
            if extension_side {
                self.primitive_extension(el, ty, value, obj.get(name), &child_expr);
            } else {
                self.element(el, ty, value, &child_expr, key, obj.get(&format!("_{key}")));
            }
        }
        for el in children.iter().filter(|el| el.min > 0) {
            let found = count_present(obj, el);
            if found < el.min as usize {
                self.issue(
                    IssueType::Required,
                    &format!("{expr}.{}", el.name),
                    format!("minimum required = {}, but only found {found}", el.min),
                );
            }
        }
    }

    /// The `_name` side of a primitive (json.html#primitive): an Element (id, extension) for a
    /// single value; for a repeating one, an array as long as the value array, with `null`
    /// where a position has no extension, and never `null` on both sides.
    fn primitive_extension(
        &mut self,
        el: &ElementDef,
        ty: &TypeRef,
        value: &Value,
        values: Option<&Value>,
        expr: &str,
    ) {
        if self.defs.kind(&ty.code) != Some(TypeKind::PrimitiveType) || ty.code == "xhtml" {
            self.issue(
                IssueType::Structure,
                expr,
                "only primitive elements other than xhtml have a '_' extension side",
            );
            return;
        }
        match (value, el.max) {
            (Value::Array(items), Max::Many) => {
                if items.is_empty() {
                    self.issue(IssueType::Structure, expr, "arrays must not be empty");
                }
                let values = values.and_then(Value::as_array);
                if values.is_some_and(|v| v.len() != items.len()) {
                    self.issue(IssueType::Structure, expr, "must be as long as the array of values it extends");
                }
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Null if values.and_then(|v| v.get(i)).is_none_or(Value::is_null) => self.issue(
                            IssueType::Structure,
                            &format!("{expr}[{i}]"),
                            "a position needs a value or an extension",
                        ),
                        Value::Null => {}
                        Value::Object(obj) => self.object(obj, "Element", &format!("{expr}[{i}]"), false),
                        _ => self.issue(IssueType::Structure, &format!("{expr}[{i}]"), "must be a JSON object or null"),
                    }
                }
            }
            (Value::Object(obj), Max::One) => self.object(obj, "Element", expr, false),
            (_, Max::Many) => self.issue(IssueType::Structure, expr, "must be an array, like the values it extends"),
            _ => self.issue(IssueType::Structure, expr, "must be a JSON object"),
        }
    }

    fn element(
        &mut self,
        el: &ElementDef,
        ty: &TypeRef,
        value: &Value,
        expr: &str,
        key: &str,
        extensions: Option<&Value>,
    ) {
        let primitive = self.defs.kind(&ty.code) == Some(TypeKind::PrimitiveType);
        match value {
            Value::Array(items) => {
                if el.max != Max::Many {
                    self.issue(IssueType::Structure, expr, "must be a single value, not an array");
                    return;
                }
                if items.is_empty() {
                    self.issue(IssueType::Structure, expr, "arrays must not be empty");
                }
                for (i, item) in items.iter().enumerate() {
                    let item_expr = format!("{expr}[{i}]");
                    // A null keeps a primitive array aligned with its `_name` extensions, and is
                    // allowed only where that side has one.
                    if item.is_null() && primitive {
                        if extensions.and_then(|e| e.get(i)).is_none_or(Value::is_null) {
                            self.issue(
                                IssueType::Structure,
                                &item_expr,
                                "null is allowed only where '_' carries an extension",
                            );
                        }
                        continue;
                    }
                    self.value(el, ty, item, &item_expr);
                }
            }
            _ if el.max == Max::Many => {
                self.issue(IssueType::Structure, expr, format!("'{key}' must be an array"));
            }
            _ => self.value(el, ty, value, expr),
        }
    }

    fn value(&mut self, el: &ElementDef, ty: &TypeRef, value: &Value, expr: &str) {
        let defs = self.defs;
        match defs.kind(&ty.code) {
            Some(TypeKind::PrimitiveType) => {
                if let Err(why) = primitives::check(&ty.code, value) {
                    self.issue(IssueType::Value, expr, why);
                } else if let (Some(vs), Some(code)) = (&el.required_binding, value.as_str()) {
                    if !defs
                        .value_set(vs)
                        .is_some_and(|sets| sets.iter().any(|(_, codes)| codes.iter().any(|c| c == code)))
                    {
                        self.issue(
                            IssueType::CodeInvalid,
                            expr,
                            format!("code '{code}' is not in the required value set {vs}"),
                        );
                    }
                }
            }
            Some(TypeKind::Resource) => match value.as_object() {
                Some(obj) => self.inline_resource(obj, expr),
                None => self.issue(IssueType::Structure, expr, "must be a resource (a JSON object)"),
            },
            Some(TypeKind::ComplexType) => {
                let Some(obj) = value.as_object() else {
                    self.issue(IssueType::Structure, expr, format!("must be a JSON object ({})", ty.code));
                    return;
                };
                let path = el.children_path().unwrap_or(&ty.code);
                self.object(obj, path, expr, false);
                match ty.code.as_str() {
                    "Reference" => self.reference(obj, &ty.targets, expr),
                    "Coding" | "CodeableConcept" => {
                        if let Some(vs) = &el.required_binding {
                            self.coded(obj, &ty.code, vs, expr);
                        }
                    }
                    _ => {}
                }
            }
            None => self.issue(IssueType::Structure, expr, format!("type {} is not defined", ty.code)),
        }
    }

    /// A resource inside a resource (`contained`, `Bundle.entry.resource`, …).
    fn inline_resource(&mut self, obj: &Map<String, Value>, expr: &str) {
        match obj.get("resourceType").and_then(Value::as_str) {
            Some(t) if self.defs.is_resource_type(t) => {
                let saved = self.contained_ids.clone();
                self.resource(obj, t, expr, false);
                self.contained_ids = saved;
            }
            Some(_) => self.issue(IssueType::Value, &format!("{expr}.resourceType"), "not an R4 resource type"),
            None => self.issue(IssueType::Required, &format!("{expr}.resourceType"), "a resource needs a resourceType"),
        }
    }

    /// Reference.reference must be a contained `#id`, a relative `Type/id[/_history/vid]` of an
    /// allowed target type, or an absolute URL / URN (references.html#literal).
    fn reference(&mut self, obj: &Map<String, Value>, targets: &[String], expr: &str) {
        let Some(reference) = obj.get("reference").and_then(Value::as_str) else {
            return;
        };
        let ref_expr = format!("{expr}.reference");
        if let Some(local) = reference.strip_prefix('#') {
            if !local.is_empty() && !self.contained_ids.contains(local) {
                self.issue(IssueType::Invalid, &ref_expr, format!("no contained resource with id '{local}'"));
            }
            return;
        }
        if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") || reference.contains("://") {
            return;
        }
        let parts: Vec<&str> = reference.split('/').collect();
        let well_formed = match parts.as_slice() {
            [t, id] | [t, id, "_history", _] => {
                self.defs.is_resource_type(t) && primitives::check("id", &Value::from(*id)).is_ok()
            }
            _ => false,
        };
        if !well_formed {
            self.issue(
                IssueType::Invalid,
                &ref_expr,
                "a reference must be '#id', 'Type/id', 'Type/id/_history/vid' or an absolute URL",
            );
            return;
        }
        let (target_type, id) = (parts[0], parts[1]);
        let allowed = targets.is_empty() || targets.iter().any(|t| t == target_type || t == "Resource");
        if !allowed {
            self.issue(
                IssueType::Invalid,
                &ref_expr,
                format!("a reference to {target_type} is not allowed here (allowed: {})", targets.join(", ")),
            );
            return;
        }
        if let Some(declared) = obj.get("type").and_then(Value::as_str) {
            if declared != target_type {
                self.issue(
                    IssueType::Invalid,
                    &format!("{expr}.type"),
                    format!("type '{declared}' does not match the reference"),
                );
            }
        }
        self.report.references.push(LocalReference {
            resource_type: target_type.to_owned(),
            id: id.to_owned(),
            expression: ref_expr,
        });
    }

    /// A required binding on Coding / CodeableConcept: codings from the value set's systems must
    /// use its codes, and at least one coding must come from it.
    fn coded(&mut self, obj: &Map<String, Value>, type_code: &str, vs_url: &str, expr: &str) {
        let Some(sets) = self.defs.value_set(vs_url) else {
            return;
        };
        let codings: Vec<(String, &Map<String, Value>)> = if type_code == "Coding" {
            vec![(expr.to_owned(), obj)]
        } else {
            obj.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, c)| Some((format!("{expr}.coding[{i}]"), c.as_object()?)))
                .collect()
        };
        let mut from_value_set = false;
        for (coding_expr, coding) in codings {
            let system = coding.get("system").and_then(Value::as_str);
            let Some((_, codes)) = sets.iter().find(|(s, _)| Some(s.as_str()) == system) else {
                continue;
            };
            from_value_set = true;
            if let Some(code) = coding.get("code").and_then(Value::as_str) {
                if !codes.iter().any(|c| c == code) {
                    self.issue(
                        IssueType::CodeInvalid,
                        &format!("{coding_expr}.code"),
                        format!("code '{code}' is not in the required value set {vs_url}"),
                    );
                }
            }
        }
        if !from_value_set {
            self.issue(
                IssueType::CodeInvalid,
                expr,
                format!("a coding from the required value set {vs_url} is needed"),
            );
        }
    }
}

/// The child definition a JSON key names, with the type it selects for choice elements
/// (`valueQuantity` selects `Quantity` of `value[x]`).
fn find_element<'d>(children: &'d [ElementDef], name: &str) -> Option<(&'d ElementDef, &'d TypeRef)> {
    children.iter().find_map(|el| {
        if !el.choice {
            return (el.name == name).then(|| el.types.first().map(|t| (el, t)))?;
        }
        let suffix = name.strip_prefix(el.name.as_str())?;
        el.types.iter().find(|t| capitalised_eq(&t.code, suffix)).map(|t| (el, t))
    })
}

fn capitalised_eq(type_code: &str, suffix: &str) -> bool {
    let mut code = type_code.chars();
    let mut suf = suffix.chars();
    match (code.next(), suf.next()) {
        (Some(a), Some(b)) => a.to_ascii_uppercase() == b && code.as_str() == suf.as_str(),
        _ => false,
    }
}

/// How many values of `el` an object holds (a primitive counts when either side is present).
fn count_present(obj: &Map<String, Value>, el: &ElementDef) -> usize {
    let count = |v: Option<&Value>| match v {
        Some(Value::Array(items)) => items.len(),
        Some(Value::Null) | None => 0,
        Some(_) => 1,
    };
    if el.choice {
        let names: std::collections::HashSet<&str> = obj
            .keys()
            .map(|k| k.trim_start_matches('_'))
            .filter(|k| {
                k.strip_prefix(el.name.as_str()).is_some_and(|s| el.types.iter().any(|t| capitalised_eq(&t.code, s)))
            })
            .collect();
        return names.len();
    }
    count(obj.get(&el.name)).max(count(obj.get(&format!("_{}", el.name))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(resource: Value) -> Vec<(String, IssueType)> {
        let defs = Definitions::r4();
        validate(&defs, resource.as_object().unwrap())
            .issues
            .into_iter()
            .map(|i| (i.expression.join(","), i.code))
            .collect()
    }

    #[test]
    fn a_minimal_care_plan_is_valid() {
        let plan = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p1"}});
        assert_eq!(issues(plan), vec![]);
    }

    #[test]
    fn each_problem_is_located() {
        let plan = json!({"resourceType": "CarePlan", "status": "actve", "intent": "plan",
            "colour": "blue", "activity": [{"detail": {"status": "bogus"}}]});
        let found = issues(plan);
        assert!(found.contains(&("CarePlan.status".into(), IssueType::CodeInvalid)));
        assert!(found.contains(&("CarePlan.colour".into(), IssueType::Structure)));
        assert!(found.contains(&("CarePlan.subject".into(), IssueType::Required)));
        assert!(found.contains(&("CarePlan.activity[0].detail.status".into(), IssueType::CodeInvalid)));
    }

    #[test]
    fn choice_types_and_primitive_extensions_are_understood() {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 1.5}, "_status": {"extension": [{"url": "http://e", "valueBoolean": true}]}});
        assert_eq!(issues(obs), vec![]);
        let bad = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 1}, "valueString": "a", "valueFoo": 1});
        let found = issues(bad);
        assert!(found.contains(&("Observation.valueString".into(), IssueType::Structure)));
        assert!(found.contains(&("Observation.valueFoo".into(), IssueType::Structure)));
    }

    #[test]
    fn references_must_be_well_formed_and_allowed() {
        let goal = json!({"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": "sleep"}, "subject": {"reference": "Encounter/e1"}});
        assert_eq!(issues(goal), vec![("Goal.subject.reference".into(), IssueType::Invalid)]);
        let goal = json!({"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": "sleep"}, "subject": {"reference": "Patient/a b"}});
        assert_eq!(issues(goal), vec![("Goal.subject.reference".into(), IssueType::Invalid)]);
    }

    #[test]
    fn primitive_arrays_pair_with_their_extensions() {
        let ext = json!({"extension": [{"url": "http://e", "valueString": "x"}]});
        let ok = json!({"resourceType": "Patient", "name": [{"given": ["A", null], "_given": [null, ext]}]});
        assert_eq!(issues(ok), vec![]);
        let null_alone = json!({"resourceType": "Patient", "name": [{"given": [null]}]});
        assert_eq!(issues(null_alone), vec![("Patient.name[0].given[0]".into(), IssueType::Structure)]);
        let short = json!({"resourceType": "Patient", "name": [{"given": ["A", "B"], "_given": [ext]}]});
        assert_eq!(issues(short), vec![("Patient.name[0]._given".into(), IssueType::Structure)]);
        let both_null = json!({"resourceType": "Patient", "name": [{"given": ["A", null], "_given": [ext, null]}]});
        assert_eq!(issues(both_null).len(), 2);
        let single_as_array = json!({"resourceType": "Patient", "gender": "other", "_gender": [ext]});
        assert_eq!(issues(single_as_array), vec![("Patient._gender".into(), IssueType::Structure)]);
        assert_eq!(issues(json!({"resourceType": "Patient"})), vec![], "a bare resource is valid");
    }

    #[test]
    fn array_shapes_are_enforced() {
        let p = json!({"resourceType": "Patient", "name": {"family": "X"}, "active": [true], "identifier": []});
        let found = issues(p);
        assert!(found.contains(&("Patient.name".into(), IssueType::Structure)));
        assert!(found.contains(&("Patient.active".into(), IssueType::Structure)));
        assert!(found.contains(&("Patient.identifier".into(), IssueType::Structure)));
    }
}
