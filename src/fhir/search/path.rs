//! The FHIRPath subset that R4 SearchParameter expressions of the served types use, parsed once
//! and evaluated over a resource's JSON with the element types taken from the structure
//! definitions (so `Observation.value as Quantity` finds `valueQuantity`).
//!
//! Supported: paths, `|` unions, parentheses, `as T` / `.as(T)` / `.ofType(T)`,
//! `.where(resolve() is T)`, `.where(field = 'literal')`, `.where(hasExtension('url'))`,
//! `.extension('url')`, and for FHIRPath Patch the indexer `[n]`, `first()` and `last()`.
//! Anything else is refused at parse time, and a search parameter is then not offered (see
//! `SearchParams::unsupported`).
//!
//! Evaluation yields nodes ([`Node`]), or for patching nodes with their place in the JSON
//! ([`Located`]); both go through the same steps.

use serde_json::Value;

use crate::fhir::definitions::{Definitions, TypeKind};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Union(Vec<Expr>),
    /// A root type name followed by steps.
    Path {
        root: String,
        steps: Vec<Step>,
    },
    /// A parenthesised expression followed by more steps.
    Sub {
        inner: Box<Expr>,
        steps: Vec<Step>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Child(String),
    OfType(String),
    WhereResolveIs(String),
    WhereEquals(String, String),
    WhereHasExtension(String),
    Extension(String),
    /// `[n]`: the n-th item of the collection (from 0).
    Index(usize),
    First,
    Last,
}

/// A node reached by evaluation: a JSON value with its FHIR type (a type name, or the path of a
/// backbone element such as `CarePlan.activity.detail`).
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub ty: &'a str,
}

// ---- parsing ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Dot,
    Open,
    Close,
    Pipe,
    Eq,
    LBracket,
    RBracket,
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                chars.next();
            }
            '.' => {
                chars.next();
                out.push(Tok::Dot);
            }
            '(' => {
                chars.next();
                out.push(Tok::Open);
            }
            ')' => {
                chars.next();
                out.push(Tok::Close);
            }
            '|' => {
                chars.next();
                out.push(Tok::Pipe);
            }
            '=' => {
                chars.next();
                out.push(Tok::Eq);
            }
            '[' => {
                chars.next();
                out.push(Tok::LBracket);
            }
            ']' => {
                chars.next();
                out.push(Tok::RBracket);
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => s.push(ch),
                        None => return Err("unterminated string".into()),
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut s = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_alphanumeric() || ch == '_' {
                        s.push(ch);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Ident(s));
            }
            other => return Err(format!("unsupported character '{other}'")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, tok: Tok) -> Result<(), String> {
        match self.next() {
            Some(t) if t == tok => Ok(()),
            other => Err(format!("expected {tok:?}, found {other:?}")),
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Ident(s)) => Ok(s),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            other => Err(format!("expected a string, found {other:?}")),
        }
    }

    fn union(&mut self) -> Result<Expr, String> {
        let mut terms = vec![self.term()?];
        while self.peek() == Some(&Tok::Pipe) {
            self.next();
            terms.push(self.term()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Expr::Union(terms) })
    }

    /// A primary with its steps, and an optional trailing `as T`.
    fn term(&mut self) -> Result<Expr, String> {
        let mut expr = match self.next() {
            Some(Tok::Open) => {
                let inner = self.union()?;
                self.expect(Tok::Close)?;
                Expr::Sub { inner: Box::new(inner), steps: Vec::new() }
            }
            Some(Tok::Ident(root)) => Expr::Path { root, steps: Vec::new() },
            other => return Err(format!("unexpected {other:?}")),
        };
        let steps = match &mut expr {
            Expr::Path { steps, .. } | Expr::Sub { steps, .. } => steps,
            Expr::Union(_) => unreachable!("terms are paths or parenthesised"),
        };
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.next();
                    steps.push(self.step()?);
                }
                Some(Tok::Ident(kw)) if kw == "as" => {
                    self.next();
                    steps.push(Step::OfType(self.ident()?));
                }
                Some(Tok::LBracket) => {
                    self.next();
                    let index = self.ident()?.parse().map_err(|_| "an indexer takes a number".to_owned())?;
                    self.expect(Tok::RBracket)?;
                    steps.push(Step::Index(index));
                }
                _ => break,
            }
        }
        Ok(expr)
    }

    fn step(&mut self) -> Result<Step, String> {
        let name = self.ident()?;
        if self.peek() != Some(&Tok::Open) {
            return Ok(Step::Child(name));
        }
        self.next();
        let step = match name.as_str() {
            "as" | "ofType" => Step::OfType(self.ident()?),
            "extension" => Step::Extension(self.string()?),
            "where" => self.predicate()?,
            "first" => Step::First,
            "last" => Step::Last,
            other => return Err(format!("function {other}() is not supported")),
        };
        self.expect(Tok::Close)?;
        Ok(step)
    }

    fn predicate(&mut self) -> Result<Step, String> {
        let name = self.ident()?;
        match name.as_str() {
            "resolve" => {
                self.expect(Tok::Open)?;
                self.expect(Tok::Close)?;
                match self.ident()?.as_str() {
                    "is" => Ok(Step::WhereResolveIs(self.ident()?)),
                    other => Err(format!("resolve() {other} is not supported")),
                }
            }
            "hasExtension" => {
                self.expect(Tok::Open)?;
                let url = self.string()?;
                self.expect(Tok::Close)?;
                Ok(Step::WhereHasExtension(url))
            }
            field => {
                self.expect(Tok::Eq)?;
                Ok(Step::WhereEquals(field.to_owned(), self.string()?))
            }
        }
    }
}

/// Parses a SearchParameter expression of the supported subset.
pub fn parse(text: &str) -> Result<Expr, String> {
    let mut p = Parser { toks: tokenize(text)?, pos: 0 };
    let expr = p.union()?;
    match p.peek() {
        None => Ok(expr),
        Some(t) => Err(format!("unexpected {t:?}")),
    }
}

// ---- evaluation ------------------------------------------------------------------------------

/// What evaluation steps through: a node, possibly with where it is.
pub trait Item<'a>: Sized {
    fn node(&self) -> Node<'a>;
    /// The values of element `name` under this item, flattened.
    fn children(&self, defs: &'a Definitions, name: &str) -> Vec<Self>;
}

impl<'a> Item<'a> for Node<'a> {
    fn node(&self) -> Node<'a> {
        *self
    }

    fn children(&self, defs: &'a Definitions, name: &str) -> Vec<Self> {
        children(defs, *self, name)
    }
}

/// One step into a JSON document: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A node with its place in the resource, from the root.
#[derive(Debug, Clone)]
pub struct Located<'a> {
    pub node: Node<'a>,
    pub path: Vec<Seg>,
}

impl<'a> Item<'a> for Located<'a> {
    fn node(&self) -> Node<'a> {
        self.node
    }

    fn children(&self, defs: &'a Definitions, name: &str) -> Vec<Self> {
        let mut out = Vec::new();
        for_each_child(defs, self.node, name, |key, index, node| {
            let mut path = self.path.clone();
            path.push(Seg::Key(key.to_owned()));
            path.extend(index.map(Seg::Index));
            out.push(Located { node, path });
        });
        out
    }
}

/// Evaluates `expr` on `resource` (of type `resource_type`).
pub fn evaluate<'a>(defs: &'a Definitions, expr: &Expr, resource: &'a Value, resource_type: &'a str) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    eval_into(defs, expr, Node { value: resource, ty: resource_type }, &mut out);
    out
}

/// Evaluates `expr` on `resource` and tells where each result is.
pub fn locate<'a>(defs: &'a Definitions, expr: &Expr, resource: &'a Value, resource_type: &'a str) -> Vec<Located<'a>> {
    let mut out = Vec::new();
    let root = Located { node: Node { value: resource, ty: resource_type }, path: Vec::new() };
    eval_into(defs, expr, root, &mut out);
    out
}

/// Evaluates a component expression (`code`, `value.as(Quantity)`) relative to `node`: a
/// leading name is a child of the node, not a type.
pub fn evaluate_relative<'a>(defs: &'a Definitions, expr: &Expr, node: Node<'a>) -> Vec<Node<'a>> {
    match expr {
        Expr::Union(terms) => terms.iter().flat_map(|t| evaluate_relative(defs, t, node)).collect(),
        Expr::Path { root, steps } => {
            let mut all = vec![Step::Child(root.clone())];
            all.extend(steps.iter().cloned());
            apply_steps(defs, vec![node], &all)
        }
        Expr::Sub { inner, steps } => apply_steps(defs, evaluate_relative(defs, inner, node), steps),
    }
}

fn eval_into<'a, T: Item<'a> + Clone>(defs: &'a Definitions, expr: &Expr, root: T, out: &mut Vec<T>) {
    match expr {
        Expr::Union(terms) => terms.iter().for_each(|t| eval_into(defs, t, root.clone(), out)),
        Expr::Path { root: name, steps } => {
            if name == root.node().ty {
                out.extend(apply_steps(defs, vec![root], steps));
            }
        }
        Expr::Sub { inner, steps } => {
            let mut items = Vec::new();
            eval_into(defs, inner, root, &mut items);
            out.extend(apply_steps(defs, items, steps));
        }
    }
}

fn apply_steps<'a, T: Item<'a>>(defs: &'a Definitions, mut items: Vec<T>, steps: &[Step]) -> Vec<T> {
    for step in steps {
        let keep = |item: &T| {
            let n = item.node();
            match step {
                // Case-insensitive: R4's own composites write `value.as(DateTime)`.
                Step::OfType(ty) => n.ty.eq_ignore_ascii_case(ty),
                Step::WhereResolveIs(ty) => reference_type(n.value) == Some(ty.as_str()),
                Step::WhereEquals(field, literal) => {
                    n.value.get(field).and_then(Value::as_str) == Some(literal.as_str())
                }
                Step::WhereHasExtension(url) => has_extension(n.value, url),
                Step::Extension(url) => n.value.get("url").and_then(Value::as_str) == Some(url.as_str()),
                Step::Child(_) | Step::Index(_) | Step::First | Step::Last => true,
            }
        };
        items = match step {
            Step::Child(name) => items.iter().flat_map(|i| i.children(defs, name)).collect(),
            Step::Extension(_) => items.iter().flat_map(|i| i.children(defs, "extension")).filter(keep).collect(),
            Step::Index(n) => items.into_iter().nth(*n).into_iter().collect(),
            Step::First => items.into_iter().next().into_iter().collect(),
            Step::Last => items.into_iter().last().into_iter().collect(),
            _ => items.into_iter().filter(keep).collect(),
        };
    }
    items
}

/// The values of element `name` under `node`, flattened, each with its type (for an Extension
/// node, `children(defs, node, "value")` gives its typed value).
pub fn children<'a>(defs: &'a Definitions, node: Node<'a>, name: &str) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    for_each_child(defs, node, name, |_, _, n| out.push(n));
    out
}

/// Calls `f` with the JSON key, the array index (for repeating elements) and the node of each
/// value of element `name` under `node`.
fn for_each_child<'a>(
    defs: &'a Definitions,
    node: Node<'a>,
    name: &str,
    mut f: impl FnMut(&str, Option<usize>, Node<'a>),
) {
    let Some(obj) = node.value.as_object() else { return };
    let Some(el) = defs.children(node.ty).iter().find(|e| e.name == name) else { return };
    let mut visit = |key: &str, value: &'a Value, ty: &'a str| match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_null())
            .for_each(|(i, value)| f(key, Some(i), Node { value, ty })),
        Value::Null => {}
        value => f(key, None, Node { value, ty }),
    };
    if el.choice {
        for t in &el.types {
            let key = choice_key(name, &t.code);
            if let Some(v) = obj.get(&key) {
                visit(&key, v, &t.code);
            }
        }
    } else if let Some(v) = obj.get(name) {
        let ty = match el.children_path() {
            Some(path) => path,
            None => el.types.first().map(|t| t.code.as_str()).unwrap_or(""),
        };
        visit(name, v, ty);
    }
}

/// The JSON key of choice element `name` with type `code`: `value` and `Quantity` give
/// `valueQuantity`.
pub fn choice_key(name: &str, code: &str) -> String {
    let mut key = String::with_capacity(name.len() + code.len());
    key.push_str(name);
    let mut chars = code.chars();
    if let Some(first) = chars.next() {
        key.push(first.to_ascii_uppercase());
        key.push_str(chars.as_str());
    }
    key
}

/// The resource type a Reference points at, from `reference` or `type`.
pub fn reference_type(reference: &Value) -> Option<&str> {
    if let Some(r) = reference.get("reference").and_then(Value::as_str) {
        let path = r.split("/_history/").next().unwrap_or(r);
        let mut segments = path.rsplit('/');
        let _id = segments.next()?;
        return segments.next();
    }
    reference.get("type").and_then(Value::as_str)
}

fn has_extension(value: &Value, url: &str) -> bool {
    value
        .get("extension")
        .and_then(Value::as_array)
        .is_some_and(|exts| exts.iter().any(|e| e.get("url").and_then(Value::as_str) == Some(url)))
}

/// Whether a node holds a primitive value.
pub fn is_primitive(defs: &Definitions, node: &Node) -> bool {
    defs.kind(node.ty) == Some(TypeKind::PrimitiveType)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_shapes_r4_uses() {
        for text in [
            "CarePlan.subject.where(resolve() is Patient)",
            "(Observation.value as CodeableConcept) | (Observation.component.value as CodeableConcept)",
            "Condition.onset.as(Age) | Condition.onset.as(Range)",
            "Patient.telecom.where(system='email')",
            "(Observation.value as CodeableConcept).text",
            "QuestionnaireResponse.item.where(hasExtension('http://x')).answer.value.ofType(Reference)",
            "Patient.extension('http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName')",
        ] {
            parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        assert!(parse("Patient.deceased.exists() and Patient.deceased != false").is_err());
    }

    #[test]
    fn evaluates_choices_backbones_and_filters() {
        let defs = Definitions::r4();
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/1"},
            "valueCodeableConcept": {"text": "high"},
            "component": [{"code": {"text": "a"}, "valueQuantity": {"value": 1}}]});
        let expr = parse("(Observation.value as CodeableConcept).text").unwrap();
        let found = evaluate(&defs, &expr, &obs, "Observation");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].value, "high");
        let expr = parse("(Observation.component.value as Quantity)").unwrap();
        assert_eq!(evaluate(&defs, &expr, &obs, "Observation")[0].ty, "Quantity");
        let expr = parse("Observation.subject.where(resolve() is Patient)").unwrap();
        assert_eq!(evaluate(&defs, &expr, &obs, "Observation").len(), 1);
        let expr = parse("Observation.subject.where(resolve() is Group)").unwrap();
        assert!(evaluate(&defs, &expr, &obs, "Observation").is_empty());

        let plan = json!({"resourceType": "CarePlan", "activity": [{"detail": {"code": {"text": "walk"}}}]});
        let expr = parse("CarePlan.activity.detail.code").unwrap();
        let found = evaluate(&defs, &expr, &plan, "CarePlan");
        assert_eq!((found.len(), found[0].ty), (1, "CodeableConcept"));
    }
}
