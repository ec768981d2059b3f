//! The FHIRPath subset that R4 SearchParameter expressions of the served types use, parsed once
//! and evaluated over a resource's JSON with the element types taken from the structure
//! definitions (so `Observation.value as Quantity` finds `valueQuantity`).
//!
//! Supported: paths, `|` unions, parentheses, `as T` / `.as(T)` / `.ofType(T)`,
//! `.where(resolve() is T)`, `.where(field = 'literal')`, `.where(hasExtension('url'))`,
//! `.extension('url')`, the boolean tests `.exists()`, `!= literal` and `and` (Patient.deceased),
//! and for FHIRPath Patch the indexer `[n]`, `first()` and `last()`.
//! Anything else is refused at parse time, and a search parameter is then not offered (see
//! `SearchParams::unsupported`).
//!
//! Evaluation yields nodes ([`Node`]), or for patching nodes with their place in the JSON
//! ([`Located`]); both go through the same steps.

use serde_json::Value;

use crate::fhir::definitions::{Definitions, Max, TypeKind};

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
    /// `a and b and …`, with FHIRPath's three-valued logic: false when an operand is false,
    /// true when all are true, empty otherwise.
    And(Vec<Expr>),
    /// `x != literal`: empty when `x` is, else whether `x` differs from the literal (values of
    /// another type always do, so a `deceasedDateTime` is `!= false`).
    NotEquals(Box<Expr>, Value),
}

impl Expr {
    /// Whether the expression yields a boolean test rather than elements of the resource.
    pub fn is_test(&self) -> bool {
        match self {
            Self::And(_) | Self::NotEquals(..) => true,
            Self::Path { steps, .. } | Self::Sub { steps, .. } => steps.last() == Some(&Step::Exists),
            Self::Union(_) => false,
        }
    }
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
    /// `exists()`: whether the collection has any item, as one boolean.
    Exists,
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
    NotEq,
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
            '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err("unsupported operator '!'".into());
                }
                out.push(Tok::NotEq);
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

    /// `comparison ('and' comparison)*`.
    fn conjunction(&mut self) -> Result<Expr, String> {
        let mut operands = vec![self.comparison()?];
        while matches!(self.peek(), Some(Tok::Ident(kw)) if kw == "and") {
            self.next();
            operands.push(self.comparison()?);
        }
        Ok(if operands.len() == 1 { operands.remove(0) } else { Expr::And(operands) })
    }

    /// `union ('!=' literal)?`, where a literal is `true`, `false` or a string.
    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.union()?;
        if self.peek() != Some(&Tok::NotEq) {
            return Ok(left);
        }
        self.next();
        let literal = match self.next() {
            Some(Tok::Ident(b)) if b == "true" || b == "false" => Value::Bool(b == "true"),
            Some(Tok::Str(s)) => Value::String(s),
            other => return Err(format!("expected a literal, found {other:?}")),
        };
        Ok(Expr::NotEquals(Box::new(left), literal))
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
                let inner = self.conjunction()?;
                self.expect(Tok::Close)?;
                Expr::Sub { inner: Box::new(inner), steps: Vec::new() }
            }
            Some(Tok::Ident(root)) => Expr::Path { root, steps: Vec::new() },
            other => return Err(format!("unexpected {other:?}")),
        };
        let steps = match &mut expr {
            Expr::Path { steps, .. } | Expr::Sub { steps, .. } => steps,
            _ => unreachable!("terms are paths or parenthesised"),
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
            "exists" => Step::Exists,
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
    let expr = p.conjunction()?;
    match p.peek() {
        None => Ok(expr),
        Some(t) => Err(format!("unexpected {t:?}")),
    }
}

/// Parses an expression that must name elements (a FHIRPath Patch path), not test them.
pub fn parse_path(text: &str) -> Result<Expr, String> {
    let expr = parse(text)?;
    if expr.is_test() {
        return Err("a boolean test names no element".into());
    }
    Ok(expr)
}

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

fn boolean<'a>(b: bool) -> Node<'a> {
    Node { value: if b { &TRUE } else { &FALSE }, ty: "boolean" }
}

/// The truth of a boolean test's result: `None` for empty (unknown).
fn truth<'a, T: Item<'a>>(items: &[T]) -> Option<bool> {
    match items {
        [one] => one.node().value.as_bool(),
        _ => None,
    }
}

// ---- evaluation ------------------------------------------------------------------------------

/// What evaluation steps through: a node, possibly with where it is.
pub trait Item<'a>: Sized {
    fn node(&self) -> Node<'a>;
    /// An item computed by the expression (a boolean) rather than found in the resource.
    fn computed(node: Node<'a>) -> Self;
    /// The values of element `name` under this item, flattened.
    fn children(&self, defs: &'a Definitions, name: &str) -> Vec<Self>;
}

impl<'a> Item<'a> for Node<'a> {
    fn node(&self) -> Node<'a> {
        *self
    }

    fn computed(node: Node<'a>) -> Self {
        node
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

    fn computed(node: Node<'a>) -> Self {
        Located { node, path: Vec::new() }
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
        Expr::And(_) | Expr::NotEquals(..) => {
            let mut out = Vec::new();
            eval_into(defs, expr, node, &mut out);
            out
        }
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
        Expr::And(operands) => {
            let truths: Vec<Option<bool>> = operands
                .iter()
                .map(|operand| {
                    let mut items: Vec<T> = Vec::new();
                    eval_into(defs, operand, root.clone(), &mut items);
                    truth(&items)
                })
                .collect();
            let result = if truths.contains(&Some(false)) {
                Some(false)
            } else {
                truths.iter().all(|t| *t == Some(true)).then_some(true)
            };
            out.extend(result.map(|b| T::computed(boolean(b))));
        }
        Expr::NotEquals(left, literal) => {
            let mut items: Vec<T> = Vec::new();
            eval_into(defs, left, root, &mut items);
            if !items.is_empty() {
                let equal = matches!(items.as_slice(), [one] if one.node().value == literal);
                out.push(T::computed(boolean(!equal)));
            }
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
                Step::Child(_) | Step::Index(_) | Step::First | Step::Last | Step::Exists => true,
            }
        };
        items = match step {
            Step::Child(name) => items.iter().flat_map(|i| i.children(defs, name)).collect(),
            Step::Extension(_) => items.iter().flat_map(|i| i.children(defs, "extension")).filter(keep).collect(),
            Step::Index(n) => items.into_iter().nth(*n).into_iter().collect(),
            Step::First => items.into_iter().next().into_iter().collect(),
            Step::Last => items.into_iter().last().into_iter().collect(),
            Step::Exists => vec![T::computed(boolean(!items.is_empty()))],
            _ => items.into_iter().filter(keep).collect(),
        };
    }
    items
}

/// The types `expr` can reach on a resource of type `ty` when it reaches at most one element
/// (every step a single-valued child or a type filter, no union); `None` when it may reach more.
pub fn single_element_types<'a>(defs: &'a Definitions, expr: &Expr, ty: &'a str) -> Option<Vec<&'a str>> {
    let (root, steps) = match expr {
        Expr::Path { root, steps } => (root.as_str(), steps),
        Expr::Sub { inner, steps } if steps.is_empty() => return single_element_types(defs, inner, ty),
        _ => return None,
    };
    if root != ty {
        return None;
    }
    // The current element's possible types (or backbone path), from the resource down.
    let mut types: Vec<&'a str> = vec![ty];
    for step in steps {
        match step {
            Step::Child(name) => {
                let [parent] = types.as_slice() else { return None };
                let el = defs.children(parent).iter().find(|e| e.name == *name)?;
                if el.max != Max::One {
                    return None;
                }
                types = match el.children_path() {
                    Some(path) => vec![path],
                    None => el.types.iter().map(|t| t.code.as_str()).collect(),
                };
            }
            Step::OfType(t) => types.retain(|x| x.eq_ignore_ascii_case(t)),
            _ => return None,
        }
    }
    Some(types)
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
        assert!(parse("Patient.deceased.exists() and Patient.deceased != false").unwrap().is_test());
        assert!(parse_path("Patient.deceased.exists()").is_err());
        assert!(parse("Patient.deceased == false").is_err());
    }

    #[test]
    fn single_elements_are_told_from_repeating_ones() {
        let defs = Definitions::r4();
        let types =
            |text: &str, ty: &'static str| single_element_types(&defs, &parse(text).unwrap(), ty).map(|t| t.join(","));
        assert_eq!(types("Encounter.period", "Encounter").as_deref(), Some("Period"));
        assert_eq!(types("(Observation.value as Quantity)", "Observation").as_deref(), Some("Quantity"));
        assert_eq!(types("Goal.target.due", "Goal"), None, "Goal.target repeats");
        assert_eq!(types("CarePlan.period | CarePlan.created", "CarePlan"), None);
        assert_eq!(types("CarePlan.activity.detail.scheduled", "CarePlan"), None, "CarePlan.activity repeats");
    }

    #[test]
    fn boolean_tests_follow_fhirpath_logic() {
        let defs = Definitions::r4();
        let expr = parse("Patient.deceased.exists() and Patient.deceased != false").unwrap();
        for (patient, expected) in [
            (json!({"resourceType": "Patient"}), false),
            (json!({"resourceType": "Patient", "deceasedBoolean": false}), false),
            (json!({"resourceType": "Patient", "deceasedBoolean": true}), true),
            (json!({"resourceType": "Patient", "deceasedDateTime": "2024-02-01"}), true),
        ] {
            let found = evaluate(&defs, &expr, &patient, "Patient");
            assert_eq!(found.len(), 1, "{patient}");
            assert_eq!((found[0].value, found[0].ty), (&Value::Bool(expected), "boolean"), "{patient}");
        }
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
