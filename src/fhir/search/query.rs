//! Parsing a search request (search.html) into a typed [`SearchQuery`]: filters with their
//! modifiers, prefixes and OR-ed values, chains and `_has`, and the result parameters.

use super::{ParamKind, SearchParams};
use crate::fhir::{date_range, Millis};

/// How many resources a page holds unless `_count` says otherwise.
pub const DEFAULT_COUNT: u32 = 20;
/// How deep chains and `_has` may nest, and how many `_include:iterate` rounds run.
pub const MAX_DEPTH: usize = 4;
/// The most parameters one search may have, and the most values (comma-separated) in all of
/// them, unless configured otherwise: each becomes a condition of one SQL statement, which both
/// engines bound.
pub const MAX_PARAMS: usize = 100;
pub const MAX_VALUES: usize = 200;

/// How large a search may be: [`MAX_PARAMS`] and [`MAX_VALUES`] by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub params: usize,
    pub values: usize,
}

impl Default for Terms {
    fn default() -> Self {
        Self { params: MAX_PARAMS, values: MAX_VALUES }
    }
}

/// A comparison prefix of number, date and quantity values (search.html#prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// The system part of a token value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMatch {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    Absent,
    /// `system|code` or `system|`.
    Is(String),
}

/// One value of a search parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    /// `code` is `None` for `system|` (any code of the system).
    Token {
        system: SystemMatch,
        code: Option<String>,
    },
    /// `:of-type`: identifier type coding and value.
    OfType {
        system: String,
        code: String,
        value: String,
    },
    /// `:text` on a token, and string values: normalised for comparison.
    Text(String),
    /// A range `[low, high)` with a prefix.
    Date {
        prefix: Prefix,
        low: Millis,
        high: Millis,
    },
    /// A number or quantity value with its implicit precision range.
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Reference {
        target_type: Option<String>,
        id: Option<String>,
        url: Option<String>,
    },
    Uri(String),
    /// `code$value` of a composite: a token, and a value of the second component's type.
    Composite {
        system: SystemMatch,
        code: String,
        second_kind: ParamKind,
        second: Box<SearchValue>,
    },
}

/// A modifier (search.html#modifiers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    None,
    Not,
    Text,
    OfType,
    Exact,
    Contains,
    Identifier,
    Below,
    Above,
    /// A resource type on a reference parameter: `subject:Patient=…`.
    Type(String),
}

/// A condition a resource must meet.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Matches when any value matches (values are OR-ed); `:not` inverts the whole test.
    Test {
        param: String,
        kind: ParamKind,
        modifier: Modifier,
        values: Vec<SearchValue>,
    },
    /// Repetitions of a parameter with at most one index row per resource (AND by repetition):
    /// that row must meet every value, so that `date=ge…&date=lt…` is one window on one row,
    /// which bounds the lookup where two open-ended conditions would not.
    AllOf {
        param: String,
        kind: ParamKind,
        values: Vec<SearchValue>,
    },
    /// `_id`: one of these ids.
    Id(Vec<String>),
    /// `_lastUpdated`, one value (AND by repetition).
    LastUpdated(SearchValue),
    Missing {
        param: String,
        kind: ParamKind,
        missing: bool,
    },
    /// `param[:Type].rest=…`: a reference to a resource of one of `target_types` meeting every
    /// filter of `inner` (the chained one, and authorization's confinement).
    Chain {
        param: String,
        target_types: Vec<String>,
        inner: Vec<Filter>,
    },
    /// `_has:Type:param:rest=…`: some `source_type` resource refers to this one by `param` and
    /// meets every filter of `inner`.
    Has {
        source_type: String,
        param: String,
        inner: Vec<Filter>,
    },
    /// In `patient`'s compartment: the Patient itself, or a resource that references it through
    /// one of `params` (never parsed from a request; authorization adds it).
    Compartment {
        patient: String,
        params: Vec<String>,
    },
    /// What the caller may see (never parsed; the disclosure policy adds it): no label of
    /// `withheld`, and, when `consent` is given, no patient's Consent withholding it from them.
    Disclosed {
        withheld: Vec<(String, String)>,
        consent: Option<crate::auth::consent::Asking>,
    },
    /// The filter does not hold.
    Not(Box<Filter>),
    /// Ids after `after` and up to `through` (never parsed; the part of the id order one page
    /// of a search covered).
    IdRange {
        after: Option<String>,
        through: Option<String>,
    },
}

/// A sort key.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub param: String,
    pub kind: ParamKind,
    pub descending: bool,
}

/// `_include` / `_revinclude`: `source:param[:target]`, optionally `:iterate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source_type: String,
    pub param: String,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Total {
    /// No `_total`: counted when cheap (see the search handler).
    #[default]
    Unspecified,
    None,
    Estimate,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Summary {
    #[default]
    False,
    True,
    Count,
    Data,
    Text,
}

/// A parsed search.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub filters: Vec<Filter>,
    pub count: u32,
    pub sort: Vec<SortKey>,
    pub total: Total,
    pub summary: Summary,
    pub elements: Vec<String>,
    pub include: Vec<Include>,
    pub revinclude: Vec<Include>,
    /// Opaque position after which this page starts (from a `next` link).
    pub cursor: Option<String>,
    /// Parameters that were not understood and were ignored (lenient handling).
    pub ignored: Vec<String>,
}

/// Why a request could not be parsed: the parameter and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub param: String,
    pub reason: String,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "search parameter '{}': {}", self.param, self.reason)
    }
}

fn err(param: &str, reason: impl Into<String>) -> QueryError {
    let shown: String = param.chars().take(80).collect();
    QueryError { param: shown, reason: reason.into() }
}

/// How a search request is read.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions<'a> {
    /// This server's base URL: absolute references to it are local.
    pub base_url: &'a str,
    /// Unknown parameters are errors instead of being ignored and listed in `ignored`.
    pub strict: bool,
    /// The largest page size; a larger `_count` is reduced to it.
    pub max_count: u32,
    /// The most parameters and values; more is an error.
    pub terms: Terms,
}

/// Parses the `(name, value)` pairs of a search on `ty`.
pub fn parse(
    params: &SearchParams,
    ty: &str,
    pairs: &[(String, String)],
    options: ParseOptions,
) -> Result<SearchQuery, QueryError> {
    let ParseOptions { base_url, strict, max_count, terms } = options;
    if pairs.len() > terms.params {
        return Err(err("", format!("a search takes at most {} parameters, not {}", terms.params, pairs.len())));
    }
    let values: usize = pairs.iter().map(|(_, v)| 1 + v.matches(',').count()).sum();
    if values > terms.values {
        return Err(err("", format!("a search takes at most {} values in all, not {values}", terms.values)));
    }
    let mut q = SearchQuery { count: DEFAULT_COUNT.min(max_count), ..SearchQuery::default() };
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => {
                let n: u32 = value.parse().map_err(|_| err(name, "must be a non-negative integer"))?;
                q.count = n.min(max_count);
            }
            "_sort" => q.sort = parse_sort(params, ty, value)?,
            "_total" => {
                q.total = match value.as_str() {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => return Err(err(name, "must be none, estimate or accurate")),
                }
            }
            "_summary" => {
                q.summary = match value.as_str() {
                    "true" => Summary::True,
                    "false" => Summary::False,
                    "count" => Summary::Count,
                    "data" => Summary::Data,
                    "text" => Summary::Text,
                    _ => return Err(err(name, "must be true, false, count, data or text")),
                }
            }
            "_elements" => {
                q.elements = value.split(',').map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect()
            }
            "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
                let include = parse_include(params, name, value, name.ends_with(":iterate"))?;
                if name.starts_with("_include") {
                    q.include.push(include);
                } else {
                    q.revinclude.push(include);
                }
            }
            "_cursor" => q.cursor = Some(value.clone()),
            "_format" | "_pretty" => {}
            _ => match parse_filter(params, ty, name, value, base_url, 0) {
                Ok(filter) => q.filters.push(filter),
                Err(e) if e.reason == UNKNOWN && !strict => q.ignored.push(e.param),
                Err(e) => return Err(e),
            },
        }
    }
    q.filters = merge_single_row(params, ty, std::mem::take(&mut q.filters));
    Ok(q)
}

/// Joins the single-valued repetitions of each single-row parameter into one [`Filter::AllOf`].
/// With at most one row per resource, "some row meets A and some row meets B" is "the row
/// meets A and B", so the meaning is R4's (search.html#combining).
fn merge_single_row(params: &SearchParams, ty: &str, filters: Vec<Filter>) -> Vec<Filter> {
    let mut out: Vec<Filter> = Vec::with_capacity(filters.len());
    for filter in filters {
        let Filter::Test { param, kind, modifier: Modifier::None, values } = &filter else {
            out.push(filter);
            continue;
        };
        if values.len() != 1 || !params.get(ty, param).is_some_and(|p| p.single_row) {
            out.push(filter);
            continue;
        }
        let earlier = out.iter_mut().find_map(|f| match f {
            Filter::AllOf { param: p, values, .. } if p == param => Some(values),
            _ => None,
        });
        match earlier {
            Some(all) => all.extend(values.iter().cloned()),
            None => out.push(Filter::AllOf { param: param.clone(), kind: *kind, values: values.clone() }),
        }
    }
    // A lone value stays a plain test.
    out.into_iter()
        .map(|f| match f {
            Filter::AllOf { param, kind, values } if values.len() == 1 => {
                Filter::Test { param, kind, modifier: Modifier::None, values }
            }
            f => f,
        })
        .collect()
}

const UNKNOWN: &str = "is not a search parameter of this resource type";

fn parse_filter(
    params: &SearchParams,
    ty: &str,
    name: &str,
    value: &str,
    base_url: &str,
    depth: usize,
) -> Result<Filter, QueryError> {
    if depth > MAX_DEPTH {
        return Err(err(name, format!("chains and _has may nest at most {MAX_DEPTH} deep")));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source_type), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err(name, "_has takes the form _has:Type:reference-parameter:parameter"));
        };
        let p = params
            .get(source_type, param)
            .ok_or_else(|| err(name, format!("{source_type} has no parameter {param}")))?;
        if p.kind != ParamKind::Reference {
            return Err(err(name, format!("{param} is not a reference parameter")));
        }
        let inner = parse_filter(params, source_type, inner, value, base_url, depth + 1)?;
        return Ok(Filter::Has { source_type: source_type.to_owned(), param: param.to_owned(), inner: vec![inner] });
    }
    // `param[:modifier][.chained]`
    let (head, chained) = match name.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (name, None),
    };
    let (code, modifier) = match head.split_once(':') {
        Some((code, m)) => (code, Some(m)),
        None => (head, None),
    };
    if (code == "_id" || code == "_lastUpdated") && chained.is_some() {
        return Err(err(name, "cannot be chained"));
    }
    let p = params.get(ty, code).ok_or_else(|| err(name, UNKNOWN))?;

    if let Some(rest) = chained {
        if p.kind != ParamKind::Reference {
            return Err(err(name, "only reference parameters can be chained"));
        }
        let target_types: Vec<String> = match modifier {
            Some(t) => {
                if !p.targets.iter().any(|x| x == t) {
                    return Err(err(name, format!("{t} is not a target of {code}")));
                }
                vec![t.to_owned()]
            }
            None => p.targets.iter().filter(|t| !params.for_type(t).is_empty()).cloned().collect(),
        };
        let mut inners = Vec::new();
        for t in &target_types {
            match parse_filter(params, t, rest, value, base_url, depth + 1) {
                Ok(f) => inners.push((t.clone(), f)),
                Err(e) if e.reason == UNKNOWN => {}
                Err(e) => return Err(e),
            }
        }
        // One chain per target type that knows the chained parameter, OR-ed by the store.
        return match inners.len() {
            0 => Err(err(name, format!("no target of {code} has a parameter {rest}"))),
            _ => {
                let types: Vec<String> = inners.iter().map(|(t, _)| t.clone()).collect();
                let inner = inners.into_iter().next().map(|(_, f)| f).expect("one chain");
                Ok(Filter::Chain { param: code.to_owned(), target_types: types, inner: vec![inner] })
            }
        };
    }

    let modifier = parse_modifier(p.kind, &p.targets, modifier, name)?;
    if modifier == Modifier::None && value.is_empty() {
        return Err(err(name, "needs a value"));
    }
    if let Some(m) = name.strip_prefix(code).and_then(|m| m.strip_prefix(":missing")) {
        debug_assert!(m.is_empty());
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(err(name, ":missing takes true or false")),
        };
        return Ok(Filter::Missing { param: code.to_owned(), kind: p.kind, missing });
    }
    let raw_values = split_values(value);
    if code == "_id" {
        return Ok(Filter::Id(raw_values));
    }
    let mut values = Vec::with_capacity(raw_values.len());
    for v in &raw_values {
        let value = match p.kind {
            ParamKind::Composite => parse_composite(&p.components, v, base_url),
            kind => parse_value(kind, &modifier, v, base_url),
        };
        values.push(value.map_err(|reason| err(name, reason))?);
    }
    if code == "_lastUpdated" {
        if values.len() != 1 {
            return Err(err(name, "takes one value; repeat the parameter to combine"));
        }
        return Ok(Filter::LastUpdated(values.remove(0)));
    }
    Ok(Filter::Test { param: code.to_owned(), kind: p.kind, modifier, values })
}

fn parse_modifier(
    kind: ParamKind,
    targets: &[String],
    modifier: Option<&str>,
    name: &str,
) -> Result<Modifier, QueryError> {
    let Some(m) = modifier else { return Ok(Modifier::None) };
    let parsed = match (kind, m) {
        (_, "missing") => Modifier::None,
        (ParamKind::Token, "not") => Modifier::Not,
        (ParamKind::Token, "text") => Modifier::Text,
        (ParamKind::Token, "of-type") => Modifier::OfType,
        (ParamKind::String, "exact") => Modifier::Exact,
        (ParamKind::String, "contains") => Modifier::Contains,
        (ParamKind::Reference, "identifier") => Modifier::Identifier,
        (ParamKind::Uri, "below") => Modifier::Below,
        (ParamKind::Uri, "above") => Modifier::Above,
        (ParamKind::Reference, t) if targets.iter().any(|x| x == t) => Modifier::Type(t.to_owned()),
        _ => return Err(err(name, format!("the modifier :{m} is not supported on a {} parameter", kind.as_str()))),
    };
    Ok(parsed)
}

/// Values separated by unescaped commas (`\,` is a literal comma).
fn split_values(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (',' | '|' | '$' | '\\')) => out.last_mut().expect("non-empty").push(next),
                Some(other) => {
                    let last = out.last_mut().expect("non-empty");
                    last.push('\\');
                    last.push(other);
                }
                None => out.last_mut().expect("non-empty").push('\\'),
            },
            ',' => out.push(String::new()),
            c => out.last_mut().expect("non-empty").push(c),
        }
    }
    out
}

fn split_prefix(value: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        if let Some(rest) = value.strip_prefix(text) {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

/// A decimal with its implicit range: `100` is [99.5, 100.5), `1.50` is [1.495, 1.505).
fn parse_number(text: &str) -> Option<(f64, f64, f64)> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) {
        return None;
    }
    let value: f64 = text.parse().ok().filter(|v: &f64| v.is_finite())?;
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32);
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Some((value, value - half, value + half))
}

/// `system|code$value` (search.html#composite): the code, and the value in the syntax of the
/// second component's type.
fn parse_composite(components: &[super::Component], v: &str, base_url: &str) -> Result<SearchValue, String> {
    let [_, second] = components else { return Err("this composite is not supported".into()) };
    let (code, value) = v.split_once('$').ok_or("a composite value is code$value")?;
    let SearchValue::Token { system, code: Some(code) } =
        parse_value(ParamKind::Token, &Modifier::None, code, base_url)?
    else {
        return Err("the first part of a composite value needs a code".into());
    };
    let second_value = parse_value(second.kind, &Modifier::None, value, base_url)?;
    Ok(SearchValue::Composite { system, code, second_kind: second.kind, second: Box::new(second_value) })
}

fn parse_value(kind: ParamKind, modifier: &Modifier, v: &str, base_url: &str) -> Result<SearchValue, String> {
    match (kind, modifier) {
        (ParamKind::Token, Modifier::Text) | (ParamKind::String, _) => Ok(SearchValue::Text(v.to_owned())),
        (ParamKind::Token, Modifier::OfType) => {
            let mut parts = v.splitn(3, '|');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(s), Some(c), Some(val)) if !s.is_empty() && !c.is_empty() && !val.is_empty() => {
                    Ok(SearchValue::OfType { system: s.into(), code: c.into(), value: val.into() })
                }
                _ => Err(":of-type takes system|code|value".into()),
            }
        }
        (ParamKind::Token, _) | (ParamKind::Reference, Modifier::Identifier) => Ok(match v.split_once('|') {
            None => SearchValue::Token { system: SystemMatch::Any, code: Some(v.to_owned()) },
            Some(("", code)) => SearchValue::Token { system: SystemMatch::Absent, code: Some(code.to_owned()) },
            Some((system, "")) => SearchValue::Token { system: SystemMatch::Is(system.to_owned()), code: None },
            Some((system, code)) => {
                SearchValue::Token { system: SystemMatch::Is(system.to_owned()), code: Some(code.to_owned()) }
            }
        }),
        (ParamKind::Date, _) => {
            let (prefix, rest) = split_prefix(v);
            let (low, high) =
                date_range(rest).ok_or_else(|| format!("'{}' is not a FHIR date, dateTime or instant", shown(rest)))?;
            Ok(SearchValue::Date { prefix, low, high })
        }
        (ParamKind::Number, _) => {
            let (prefix, rest) = split_prefix(v);
            let (value, low, high) = parse_number(rest).ok_or_else(|| format!("'{}' is not a number", shown(rest)))?;
            Ok(SearchValue::Number { prefix, value, low, high, system: None, code: None })
        }
        (ParamKind::Quantity, _) => {
            let (prefix, rest) = split_prefix(v);
            let mut parts = rest.splitn(3, '|');
            let number = parts.next().unwrap_or("");
            let (value, low, high) =
                parse_number(number).ok_or_else(|| format!("'{}' is not a number", shown(number)))?;
            let system = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
            let code = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
            Ok(SearchValue::Number { prefix, value, low, high, system, code })
        }
        (ParamKind::Reference, m) => {
            let local = v.strip_prefix(base_url).map(|r| r.trim_start_matches('/')).unwrap_or(v);
            let forced = match m {
                Modifier::Type(t) => Some(t.clone()),
                _ => None,
            };
            if local.contains("://") || local.starts_with("urn:") {
                return Ok(SearchValue::Reference { target_type: None, id: None, url: Some(v.to_owned()) });
            }
            let path = local.split("/_history/").next().unwrap_or(local);
            match path.split_once('/') {
                Some((t, id)) if !id.contains('/') => {
                    if forced.as_ref().is_some_and(|f| f != t) {
                        return Err(format!("'{}' is not a {}", shown(v), forced.unwrap_or_default()));
                    }
                    Ok(SearchValue::Reference { target_type: Some(t.to_owned()), id: Some(id.to_owned()), url: None })
                }
                None => Ok(SearchValue::Reference { target_type: forced, id: Some(path.to_owned()), url: None }),
                Some(_) => Err(format!("'{}' is not a reference", shown(v))),
            }
        }
        (ParamKind::Uri, _) => Ok(SearchValue::Uri(v.to_owned())),
        (ParamKind::Composite | ParamKind::Special, _) => Err("this parameter type is not supported".into()),
    }
}

/// A value as it may appear in an error message: short, for the client that sent it.
fn shown(v: &str) -> String {
    v.chars().take(40).collect()
}

fn parse_sort(params: &SearchParams, ty: &str, value: &str) -> Result<Vec<SortKey>, QueryError> {
    value
        .split(',')
        .map(|key| {
            let (code, descending) = match key.strip_prefix('-') {
                Some(code) => (code, true),
                None => (key, false),
            };
            let p = params.get(ty, code).ok_or_else(|| err("_sort", format!("{code} {UNKNOWN}")))?;
            if !matches!(
                p.kind,
                ParamKind::String
                    | ParamKind::Date
                    | ParamKind::Token
                    | ParamKind::Number
                    | ParamKind::Quantity
                    | ParamKind::Uri
                    | ParamKind::Reference
            ) {
                return Err(err("_sort", format!("cannot sort by {code}")));
            }
            Ok(SortKey { param: code.to_owned(), kind: p.kind, descending })
        })
        .collect()
}

fn parse_include(params: &SearchParams, name: &str, value: &str, iterate: bool) -> Result<Include, QueryError> {
    let mut parts = value.split(':');
    let (Some(source_type), Some(param)) = (parts.next(), parts.next()) else {
        return Err(err(name, "takes Type:parameter[:TargetType]"));
    };
    let target_type = parts.next().map(str::to_owned);
    let p =
        params.get(source_type, param).ok_or_else(|| err(name, format!("{source_type} has no parameter {param}")))?;
    if p.kind != ParamKind::Reference {
        return Err(err(name, format!("{param} is not a reference parameter")));
    }
    if let Some(t) = &target_type {
        if !p.targets.contains(t) {
            return Err(err(name, format!("{t} is not a target of {param}")));
        }
    }
    Ok(Include { source_type: source_type.to_owned(), param: param.to_owned(), target_type, iterate })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::registry::SUPPORTED_TYPES;

    fn q(ty: &str, pairs: &[(&str, &str)]) -> Result<SearchQuery, QueryError> {
        let params = SearchParams::r4(&crate::fhir::definitions::Definitions::r4(), SUPPORTED_TYPES);
        let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
        parse(
            &params,
            ty,
            &pairs,
            ParseOptions { base_url: "http://base/fhir", strict: false, max_count: 1000, terms: Terms::default() },
        )
    }

    #[test]
    fn tokens_dates_and_modifiers() {
        let query =
            q("CarePlan", &[("status", "active,on-hold"), ("date", "ge2024-01"), ("category:text", "psych")]).unwrap();
        assert_eq!(query.filters.len(), 3);
        let Filter::Test { values, .. } = &query.filters[0] else { panic!() };
        assert_eq!(values.len(), 2);
        let Filter::Test { values, .. } = &query.filters[1] else { panic!() };
        assert!(matches!(values[0], SearchValue::Date { prefix: Prefix::Ge, .. }));
        assert!(q("CarePlan", &[("date", "gt2024-13")]).is_err());
        assert!(q("CarePlan", &[("status:exact", "x")]).is_err());
    }

    #[test]
    fn repetitions_of_a_single_row_date_make_one_window() {
        let query =
            q("Encounter", &[("date", "ge2024-03-01"), ("status", "finished"), ("date", "lt2024-03-08")]).unwrap();
        assert_eq!(query.filters.len(), 2);
        let Filter::AllOf { param, values, .. } = &query.filters[0] else { panic!("{:?}", query.filters) };
        assert_eq!((param.as_str(), values.len()), ("date", 2));
        // Several rows per resource (Goal.target repeats): the conditions stay independent.
        let query = q("Goal", &[("target-date", "ge2024-03-01"), ("target-date", "lt2024-03-08")]).unwrap();
        assert!(query.filters.iter().all(|f| matches!(f, Filter::Test { .. })), "{:?}", query.filters);
        // A comma list or a modifier is not merged.
        let query = q("Encounter", &[("date", "ge2024-03-01,lt2023-01-01"), ("date", "lt2024-03-08")]).unwrap();
        assert_eq!(query.filters.len(), 2);
    }

    #[test]
    fn numbers_carry_their_implicit_precision() {
        assert_eq!(parse_number("100"), Some((100.0, 99.5, 100.5)));
        let (_, low, high) = parse_number("1.50").unwrap();
        assert!((low - 1.495).abs() < 1e-9 && (high - 1.505).abs() < 1e-9);
        assert!(parse_number("1e").is_none() && parse_number("abc").is_none());
    }

    #[test]
    fn chains_and_has_nest() {
        let query = q("CarePlan", &[("subject:Patient.name", "peter")]).unwrap();
        assert!(matches!(&query.filters[0], Filter::Chain { target_types, .. } if target_types == &["Patient"]));
        let query = q("Patient", &[("_has:CarePlan:subject:status", "active")]).unwrap();
        assert!(matches!(&query.filters[0], Filter::Has { source_type, .. } if source_type == "CarePlan"));
        assert!(q("CarePlan", &[("status.name", "x")]).is_err());
    }

    #[test]
    fn unknown_parameters_are_ignored_unless_strict() {
        let query = q("CarePlan", &[("colour", "blue")]).unwrap();
        assert_eq!(query.ignored, ["colour"]);
        let params = SearchParams::r4(&crate::fhir::definitions::Definitions::r4(), SUPPORTED_TYPES);
        let options = ParseOptions { base_url: "", strict: true, max_count: 1000, terms: Terms::default() };
        let strict = parse(&params, "CarePlan", &[("colour".into(), "blue".into())], options);
        assert!(strict.is_err());
    }

    #[test]
    fn escaped_commas_stay_in_the_value() {
        assert_eq!(split_values(r"a\,b,c"), ["a,b", "c"]);
    }
}
