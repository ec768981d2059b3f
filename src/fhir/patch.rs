//! The two patch formats of R4 (http.html#patch): JSON Patch (RFC 6902,
//! `application/json-patch+json`) and FHIRPath Patch (fhirpatch.html, a Parameters resource).
//!
//! A patch is parsed once ([`Patch::parse_json_patch`], [`Patch::parse_fhirpath`]) and applied
//! to a copy of the current content; the caller validates the result like any update. Paths are
//! evaluated with the same FHIRPath subset as search parameters, plus indexers.

use serde_json::{Map, Value};

use crate::fhir::definitions::{Definitions, Max};
use crate::fhir::search::path::{self, Expr, Seg, Step};

/// A parsed patch document.
#[derive(Debug, Clone)]
pub enum Patch {
    Json(json_patch::Patch),
    FhirPath(Vec<Operation>),
}

/// One FHIRPath Patch operation.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Adds `value` (of data type `ty`, when given as `value[x]`) as element `name` of the one
    /// element at `path`.
    Add { path: Expr, name: String, value: Value, ty: Option<String> },
    /// Inserts `value` at `index` of the list at `path`.
    Insert { path: Expr, index: usize, value: Value },
    /// Deletes the element at `path` (nothing when it does not exist).
    Delete { path: Expr },
    /// Replaces the one element at `path` with `value`.
    Replace { path: Expr, value: Value },
    /// Moves an item of the list at `path` from `source` to `destination`.
    Move { path: Expr, source: usize, destination: usize },
}

/// Why a patch document could not be read (400) or applied (422).
#[derive(Debug, PartialEq, Eq)]
pub enum PatchError {
    Malformed(String),
    Failed(String),
}

impl Patch {
    /// A JSON Patch document: a JSON array of operations.
    pub fn parse_json_patch(doc: Value) -> Result<Self, PatchError> {
        serde_json::from_value(doc)
            .map(Self::Json)
            .map_err(|e| PatchError::Malformed(format!("not a JSON Patch document: {e}")))
    }

    /// A FHIRPath Patch: a Parameters resource with one `operation` parameter per operation.
    pub fn parse_fhirpath(parameters: &Map<String, Value>) -> Result<Self, PatchError> {
        let malformed = |why: String| PatchError::Malformed(why);
        if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(malformed("a FHIRPath Patch is a Parameters resource".into()));
        }
        let params = parameters.get("parameter").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let mut ops = Vec::new();
        for (i, param) in params.iter().enumerate() {
            let at = format!("Parameters.parameter[{i}]");
            if param.get("name").and_then(Value::as_str) != Some("operation") {
                return Err(malformed(format!("{at}: every parameter of a FHIRPath Patch is named 'operation'")));
            }
            let parts = param.get("part").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let part = |name: &str| parts.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name));
            let text = |name: &str| -> Result<&str, PatchError> {
                part(name)
                    .and_then(|p| p.as_object())
                    .and_then(|p| p.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v))
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed(format!("{at}: the '{name}' part is missing")))
            };
            let number = |name: &str| -> Result<usize, PatchError> {
                part(name)
                    .and_then(|p| p.get("valueInteger"))
                    .and_then(Value::as_u64)
                    .map(|n| n as usize)
                    .ok_or_else(|| malformed(format!("{at}: the '{name}' part must be a non-negative valueInteger")))
            };
            let expr = || {
                path::parse_path(text("path")?).map_err(|e| malformed(format!("{at}: the path is not supported: {e}")))
            };
            let typed = || -> Result<(Value, Option<String>), PatchError> {
                part("value")
                    .and_then(part_value)
                    .ok_or_else(|| malformed(format!("{at}: the 'value' part is missing")))
            };
            let value = || typed().map(|(v, _)| v);
            let op = match text("type")? {
                "add" => {
                    let (value, ty) = typed()?;
                    Operation::Add { path: expr()?, name: text("name")?.to_owned(), value, ty }
                }
                "insert" => Operation::Insert { path: expr()?, index: number("index")?, value: value()? },
                "delete" => Operation::Delete { path: expr()? },
                "replace" => Operation::Replace { path: expr()?, value: value()? },
                "move" => {
                    Operation::Move { path: expr()?, source: number("source")?, destination: number("destination")? }
                }
                other => return Err(malformed(format!("{at}: unknown operation type '{other}'"))),
            };
            ops.push(op);
        }
        if ops.is_empty() {
            return Err(malformed("the patch has no operations".into()));
        }
        Ok(Self::FhirPath(ops))
    }

    /// Applies the patch to `resource` (of type `ty`) in place. On error `resource` may be
    /// partly changed; callers patch a copy.
    pub fn apply(&self, defs: &Definitions, ty: &str, resource: &mut Value) -> Result<(), PatchError> {
        match self {
            Self::Json(patch) => json_patch::patch(resource, patch).map_err(|e| PatchError::Failed(e.to_string())),
            Self::FhirPath(ops) => {
                for (i, op) in ops.iter().enumerate() {
                    apply_one(defs, ty, resource, op)
                        .map_err(|why| PatchError::Failed(format!("operation {i}: {why}")))?;
                }
                Ok(())
            }
        }
    }
}

/// The value of a `value` part with its data type: its `value[x]`, or an element built from its
/// own parts (for backbone elements, which have no data type).
fn part_value(part: &Value) -> Option<(Value, Option<String>)> {
    let obj = part.as_object()?;
    if let Some((k, v)) = obj.iter().find(|(k, _)| k.starts_with("value")) {
        return Some((v.clone(), Some(k["value".len()..].to_owned())));
    }
    let parts = obj.get("part")?.as_array()?;
    let mut out = Map::new();
    for p in parts {
        let name = p.get("name")?.as_str()?;
        let (v, _) = part_value(p)?;
        match out.get_mut(name) {
            Some(Value::Array(items)) => items.push(v),
            Some(existing) => *existing = Value::Array(vec![existing.take(), v]),
            None => {
                out.insert(name.to_owned(), v);
            }
        }
    }
    Some((Value::Object(out), None))
}

fn apply_one(defs: &Definitions, ty: &str, resource: &mut Value, op: &Operation) -> Result<(), String> {
    match op {
        Operation::Add { path, name, value, ty: value_ty } => {
            let (at, parent_ty) = one(defs, ty, resource, path)?;
            let el = defs
                .children(&parent_ty)
                .iter()
                .find(|e| e.name == *name)
                .ok_or_else(|| format!("'{name}' is not an element of {parent_ty}"))?;
            let key = match (el.choice, value_ty) {
                (true, Some(t)) => path::choice_key(name, t),
                (true, None) => return Err(format!("'{name}' is a choice element; add it by its full name")),
                (false, _) => name.clone(),
            };
            let many = el.max == Max::Many;
            let target =
                pointer_mut(resource, &at).and_then(Value::as_object_mut).ok_or("the path is not an element")?;
            match target.get_mut(&key) {
                Some(Value::Array(items)) if many => items.push(value.clone()),
                Some(_) => return Err(format!("'{key}' already has a value; use replace")),
                None if many => {
                    target.insert(key, Value::Array(vec![value.clone()]));
                }
                None => {
                    target.insert(key, value.clone());
                }
            }
        }
        Operation::Insert { path, index, value } => {
            let items = list(defs, ty, resource, path)?;
            if *index > items.len() {
                return Err(format!("index {index} is past the end of the list ({} items)", items.len()));
            }
            items.insert(*index, value.clone());
        }
        Operation::Delete { path } => {
            let found: Vec<Vec<Seg>> = path::locate(defs, path, resource, ty).into_iter().map(|l| l.path).collect();
            match found.as_slice() {
                [] => {}
                [at] => remove(resource, at),
                many => return Err(format!("the path matches {} elements; delete takes one", many.len())),
            }
        }
        Operation::Replace { path, value } => {
            let (at, _) = one(defs, ty, resource, path)?;
            let slot = pointer_mut(resource, &at).ok_or("the path is not an element")?;
            *slot = value.clone();
        }
        Operation::Move { path, source, destination } => {
            let items = list(defs, ty, resource, path)?;
            if *source >= items.len() || *destination >= items.len() {
                return Err(format!("source and destination must be within the list ({} items)", items.len()));
            }
            let item = items.remove(*source);
            items.insert(*destination, item);
        }
    }
    Ok(())
}

/// The place and type of the one element `path` selects.
fn one(defs: &Definitions, ty: &str, resource: &Value, path: &Expr) -> Result<(Vec<Seg>, String), String> {
    let mut found = path::locate(defs, path, resource, ty);
    match found.len() {
        1 => {
            let l = found.remove(0);
            Ok((l.path, l.node.ty.to_owned()))
        }
        0 => Err("the path matches no element".into()),
        n => Err(format!("the path matches {n} elements; this operation takes one")),
    }
}

/// The list a path such as `CarePlan.activity` names: the repeating element `activity` of the
/// one element its prefix selects; created empty when absent.
fn list<'r>(defs: &Definitions, ty: &str, resource: &'r mut Value, path: &Expr) -> Result<&'r mut Vec<Value>, String> {
    let Expr::Path { root, steps } = path else { return Err("the path must name a list".into()) };
    let Some((Step::Child(name), prefix)) = steps.split_last() else {
        return Err("the path must end with the name of a repeating element".into());
    };
    let parent = Expr::Path { root: root.clone(), steps: prefix.to_vec() };
    let (at, parent_ty) = one(defs, ty, resource, &parent)?;
    let el = defs.children(&parent_ty).iter().find(|e| e.name == *name);
    if el.is_none_or(|e| e.max != Max::Many || e.choice) {
        return Err(format!("'{name}' is not a repeating element of {parent_ty}"));
    }
    let target = pointer_mut(resource, &at).and_then(Value::as_object_mut).ok_or("the path is not an element")?;
    match target.entry(name.clone()).or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(items) => Ok(items),
        _ => Err(format!("'{name}' is not a list")),
    }
}

fn pointer_mut<'v>(value: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k),
        Seg::Index(i) => v.get_mut(*i),
    })
}

/// Removes the element at `path`, and the list or object left empty by it.
fn remove(resource: &mut Value, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else { return };
    let Some(container) = pointer_mut(resource, parent) else { return };
    match (container, last) {
        (Value::Array(items), Seg::Index(i)) if *i < items.len() => {
            items.remove(*i);
            if items.is_empty() {
                remove(resource, parent);
            }
        }
        (Value::Object(obj), Seg::Key(k)) => {
            obj.remove(k);
            if obj.is_empty() && !parent.is_empty() {
                remove(resource, parent);
            }
        }
        _ => {}
    }
}
