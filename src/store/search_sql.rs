//! Turns a [`SearchQuery`] into SQL over the index tables. Values are always bound (`$n`);
//! table and column names come from the code, never from the request. Both engines run the
//! same text; the one difference (building a JSON array) comes from the [`Dialect`].
//!
//! Every filter becomes `alias.id [NOT] IN (uncorrelated subquery)`, which both engines plan
//! as an index lookup driven by the most selective filter.

use std::fmt::Write;

use super::sql::Dialect;
use crate::auth::consent::{Asking, ConsentRule};
use crate::fhir::search::index::{normalize, IndexEntry, IndexValue};
use crate::fhir::search::query::{Filter, Modifier, Prefix, SearchValue, SortKey, SystemMatch};
use crate::fhir::search::ParamKind;
use crate::fhir::validate::LocalReference;
use crate::fhir::Millis;

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Float(f64),
    OptInt(Option<i64>),
    OptFloat(Option<f64>),
    Bool(bool),
}

/// SQL text with its binds.
#[derive(Debug, Clone)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
    /// `$1, $2, …` placeholders (PostgreSQL) rather than `?` (SQLite, whose lookup of
    /// numbered parameters by name takes time quadratic in their number).
    numbered: bool,
}

impl Sql {
    /// An empty statement with the placeholders of `dialect`.
    pub fn new(dialect: &Dialect) -> Self {
        Self { text: String::new(), binds: Vec::new(), numbered: dialect.numbered_params }
    }

    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    fn bind(&mut self, b: Bind) -> &mut Self {
        self.binds.push(b);
        if self.numbered {
            let _ = write!(self.text, "${}", self.binds.len());
        } else {
            self.text.push('?');
        }
        self
    }

    fn text(&mut self, s: impl Into<String>) -> &mut Self {
        self.bind(Bind::Text(s.into()))
    }

    fn list(&mut self, items: &[String]) -> &mut Self {
        self.push("(");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.text(item.clone());
        }
        self.push(")")
    }
}

/// The index table of a parameter type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Token,
    String,
    Date,
    Number,
    Reference,
    Uri,
    Composite,
}

impl Table {
    pub const ALL: [Table; 7] =
        [Table::Token, Table::String, Table::Date, Table::Number, Table::Reference, Table::Uri, Table::Composite];

    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "search_token",
            Self::String => "search_string",
            Self::Date => "search_date",
            Self::Number => "search_number",
            Self::Reference => "search_reference",
            Self::Uri => "search_uri",
            Self::Composite => "search_composite",
        }
    }

    fn of(kind: ParamKind, modifier: &Modifier) -> Table {
        match (kind, modifier) {
            (ParamKind::Reference, Modifier::Identifier) => Self::Token,
            (ParamKind::Token, _) => Self::Token,
            (ParamKind::String, _) => Self::String,
            (ParamKind::Date, _) => Self::Date,
            (ParamKind::Number | ParamKind::Quantity, _) => Self::Number,
            (ParamKind::Reference, _) => Self::Reference,
            (ParamKind::Composite, _) => Self::Composite,
            (ParamKind::Uri | ParamKind::Special, _) => Self::Uri,
        }
    }

    fn columns(self) -> &'static str {
        match self {
            Self::Token => "system, code, display, type_system, type_code",
            Self::String => "normalized, exact",
            Self::Date => "low, high",
            Self::Number => "value, system, code",
            Self::Reference => "target_type, target_id, url",
            Self::Uri => "value",
            Self::Composite => "c1_system, c1_code, system, code, display, value, low, high, normalized, exact",
        }
    }

    fn of_value(value: &IndexValue) -> Table {
        match value {
            IndexValue::Token { .. } => Self::Token,
            IndexValue::String { .. } => Self::String,
            IndexValue::Date { .. } => Self::Date,
            IndexValue::Number { .. } => Self::Number,
            IndexValue::Reference { .. } => Self::Reference,
            IndexValue::Uri(_) => Self::Uri,
            IndexValue::Composite { .. } => Self::Composite,
        }
    }
}

/// Rows per multi-row INSERT: well inside both engines' limits on bound parameters.
const INSERT_BATCH: usize = 200;

/// Bound parameters PostgreSQL takes in one statement (the protocol counts them in 16 bits).
const MAX_BINDS: usize = u16::MAX as usize;

/// Joins consecutive INSERTs into one statement where the engine can
/// ([`Dialect::combine_inserts`]): `WITH w0 AS (INSERT …), w1 AS (INSERT …) INSERT …`.
/// PostgreSQL runs every data-modifying `WITH` query once, to completion, whether or not the
/// rest reads it, and a write's rows go to several tables (its history, each index table, its
/// links, its AuditEvent's), so this saves a round trip and a statement's overhead per table.
/// Other statements (the deletes of replaced rows) stay apart and in their place, so that
/// their order against the inserts holds.
pub fn combine_inserts(dialect: &Dialect, statements: Vec<Sql>) -> Vec<Sql> {
    if !dialect.combine_inserts {
        return statements;
    }
    let mut out: Vec<Sql> = Vec::with_capacity(statements.len());
    let mut group: Vec<Sql> = Vec::new();
    for statement in statements {
        let binds = group.iter().map(|s| s.binds.len()).sum::<usize>() + statement.binds.len();
        if !group.is_empty() && (!statement.text.starts_with("INSERT ") || binds > MAX_BINDS) {
            out.push(joined(std::mem::take(&mut group)));
        }
        if statement.text.starts_with("INSERT ") {
            group.push(statement);
        } else {
            out.push(statement);
        }
    }
    if !group.is_empty() {
        out.push(joined(group));
    }
    out
}

/// `WITH w0 AS (first), w1 AS (second) third`, with the placeholders numbered through.
fn joined(mut group: Vec<Sql>) -> Sql {
    if group.len() == 1 {
        return group.remove(0);
    }
    let last = group.len() - 1;
    let mut sql = Sql { text: "WITH ".to_owned(), binds: Vec::new(), numbered: true };
    for (i, statement) in group.into_iter().enumerate() {
        let text = renumbered(&statement.text, sql.binds.len());
        sql.binds.extend(statement.binds);
        let _ = match i {
            0 => write!(sql.text, "w0 AS ({text})"),
            _ if i < last => write!(sql.text, ", w{i} AS ({text})"),
            _ => write!(sql.text, " {text}"),
        };
    }
    sql
}

/// `text` with its numbered placeholders (`$1`, `$2`, …) moved up by `offset`. The statements
/// built here hold no literals, so every `$` starts a placeholder.
fn renumbered(text: &str, offset: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: usize = rest[..digits].parse().expect("a numbered placeholder");
        let _ = write!(out, "{}", n + offset);
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// The index and link rows that a batch of writes derives from the resources' content,
/// written together: each table's rows of the `replaced` resources go first, then the new rows
/// go in, one multi-row statement per table however many resources the batch holds.
#[derive(Debug, Default)]
pub struct DerivedRows {
    /// Resources whose existing rows are replaced.
    pub replaced: Vec<Key>,
    /// Index entries, per resource.
    pub index: Vec<(Key, Vec<IndexEntry>)>,
    /// Local reference targets, each once, per resource.
    pub links: Vec<(Key, Vec<Key>)>,
}

/// A resource: its type and id.
pub type Key = (String, String);

impl DerivedRows {
    pub fn is_empty(&self) -> bool {
        self.replaced.is_empty() && self.index.is_empty() && self.links.is_empty()
    }

    /// Adds the rows of resource `ty/id`: its earlier rows go when `replace`, and `content`
    /// (its index entries and local references) gives the new ones, none for a deletion.
    pub fn add(&mut self, ty: &str, id: &str, replace: bool, content: Option<(Vec<IndexEntry>, &[LocalReference])>) {
        let key = (ty.to_owned(), id.to_owned());
        if replace {
            self.replaced.push(key.clone());
        }
        if let Some((index, references)) = content {
            let mut targets: Vec<Key> = references.iter().map(|r| (r.resource_type.clone(), r.id.clone())).collect();
            targets.sort_unstable();
            targets.dedup();
            self.index.push((key.clone(), index));
            self.links.push((key, targets));
        }
    }

    /// Whether the batch holds rows (or a replacement) of a resource that `owns` picks.
    pub fn holds(&self, owns: impl Fn(&Key) -> bool) -> bool {
        self.replaced.iter().any(&owns)
            || self.index.iter().any(|(key, _)| owns(key))
            || self.links.iter().any(|(key, _)| owns(key))
    }

    /// The statements, deletes before inserts.
    pub fn statements(&self, dialect: &Dialect) -> Vec<Sql> {
        let mut out = Vec::new();
        if !self.replaced.is_empty() {
            for table in Table::ALL {
                out.extend(delete_owned(dialect, table.name(), ("resource_type", "resource_id"), &self.replaced));
            }
            out.extend(delete_owned(dialect, "resource_links", ("source_type", "source_id"), &self.replaced));
        }
        let index: Vec<(&str, &str, &[IndexEntry])> =
            self.index.iter().map(|((ty, id), entries)| (ty.as_str(), id.as_str(), entries.as_slice())).collect();
        out.extend(index_inserts(dialect, &index));
        let links = self
            .links
            .iter()
            .flat_map(|((ty, id), targets)| {
                targets.iter().map(move |(target_type, target_id)| {
                    [ty, id, target_type, target_id].map(|s| Bind::Text(s.clone())).to_vec()
                })
            })
            .collect();
        let columns = ["source_type", "source_id", "target_type", "target_id"];
        out.extend(insert_rows(dialect, "resource_links", &columns, links));
        out
    }
}

/// Queries for which of `targets` (type, id) are live resources: one per [`INSERT_BATCH`]
/// targets, each locking what it finds ([`Dialect::lock_shared`]) in one order, so that
/// concurrent transactions take those locks in the same order.
pub fn live_among(dialect: &Dialect, targets: &[(&str, &str)]) -> Vec<Sql> {
    let mut out = Vec::new();
    for chunk in targets.chunks(INSERT_BATCH) {
        let mut sql = Sql::new(dialect);
        sql.push("SELECT resource_type, id FROM resources WHERE NOT deleted AND (resource_type, id) IN (VALUES ");
        for (i, (ty, id)) in chunk.iter().enumerate() {
            sql.push(if i > 0 { ", (" } else { "(" }).text(*ty).push(", ").text(*id).push(")");
        }
        sql.push(&format!(") ORDER BY resource_type, id{}", dialect.lock_shared));
        out.push(sql);
    }
    out
}

/// `DELETE` statements removing the rows of `table` owned by `owners` (type, id): one per
/// [`INSERT_BATCH`] owners, each `(type = … AND id IN (…)) OR …` grouped by type.
fn delete_owned(dialect: &Dialect, table: &str, (type_column, id_column): (&str, &str), owners: &[Key]) -> Vec<Sql> {
    let mut out = Vec::new();
    for chunk in owners.chunks(INSERT_BATCH) {
        let mut types: Vec<&str> = chunk.iter().map(|(ty, _)| ty.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        let mut sql = Sql::new(dialect);
        sql.push(&format!("DELETE FROM {table} WHERE "));
        for (i, ty) in types.into_iter().enumerate() {
            let ids: Vec<String> = chunk.iter().filter(|(t, _)| t == ty).map(|(_, id)| id.clone()).collect();
            sql.push(if i > 0 { " OR (" } else { "(" });
            sql.push(&format!("{type_column} = ")).text(ty).push(&format!(" AND {id_column} IN "));
            sql.list(&ids).push(")");
        }
        out.push(sql);
    }
    out
}

/// Statements replacing the rules of Consent `id` with `rules`.
pub fn consent_statements(dialect: &Dialect, id: &str, rules: &[ConsentRule], replace: bool) -> Vec<Sql> {
    let mut out = Vec::new();
    if replace {
        for table in ["consent_rule", "consent_criterion"] {
            let mut delete = Sql::new(dialect);
            delete.push(&format!("DELETE FROM {table} WHERE consent_id = ")).text(id);
            out.push(delete);
        }
    }
    let text = |s: &str| Bind::Text(s.to_owned());
    let rule_rows = rules
        .iter()
        .map(|r| {
            let mut row = vec![text(id), Bind::Int(r.rule), Bind::Bool(r.deny), text(&r.patient)];
            row.extend([Bind::OptInt(r.start), Bind::OptInt(r.end)]);
            row.extend(["actor", "purpose", "class", "label", "data"].map(|k| Bind::Bool(r.has(k))));
            row
        })
        .collect();
    let columns = [
        "consent_id",
        "rule",
        "deny",
        "patient_id",
        "period_start",
        "period_end",
        "has_actor",
        "has_purpose",
        "has_class",
        "has_label",
        "has_data",
    ];
    out.extend(insert_rows(dialect, "consent_rule", &columns, rule_rows));
    let criteria = rules
        .iter()
        .flat_map(|r| {
            r.criteria.iter().map(move |c| {
                vec![text(id), Bind::Int(r.rule), text(c.kind), Bind::OptText(c.system.clone()), text(&c.value)]
            })
        })
        .collect();
    out.extend(insert_rows(dialect, "consent_criterion", &["consent_id", "rule", "kind", "system", "value"], criteria));
    out
}

/// INSERT statements writing the index rows of several resources at once (`(type, id,
/// entries)` each): one multi-row statement per table, in chunks.
fn index_inserts(dialect: &Dialect, resources: &[(&str, &str, &[IndexEntry])]) -> Vec<Sql> {
    let mut out = Vec::new();
    for table in Table::ALL {
        let rows: Vec<(&str, &str, &IndexEntry)> = resources
            .iter()
            .flat_map(|(ty, id, entries)| entries.iter().map(move |e| (*ty, *id, e)))
            .filter(|(_, _, e)| Table::of_value(&e.value) == table)
            .collect();
        for chunk in rows.chunks(INSERT_BATCH) {
            let mut sql = Sql::new(dialect);
            sql.push(&format!(
                "INSERT INTO {} (resource_type, resource_id, param, {}) VALUES ",
                table.name(),
                table.columns()
            ));
            for (i, (ty, id, e)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(").text(*ty).push(", ").text(*id).push(", ").text(e.param.clone());
                for b in value_binds(&e.value) {
                    sql.push(", ").bind(b);
                }
                sql.push(")");
            }
            out.push(sql);
        }
    }
    out
}

fn value_binds(value: &IndexValue) -> Vec<Bind> {
    let t = |s: &Option<String>| Bind::OptText(s.clone());
    match value {
        IndexValue::Token { system, code, display, type_system, type_code } => {
            vec![t(system), t(code), t(display), t(type_system), t(type_code)]
        }
        IndexValue::String { normalized, exact } => vec![Bind::Text(normalized.clone()), Bind::Text(exact.clone())],
        IndexValue::Date { low, high } => vec![Bind::Int(*low), Bind::Int(*high)],
        IndexValue::Number { value, system, code } => vec![Bind::Float(*value), t(system), t(code)],
        IndexValue::Reference { target_type, target_id, url } => vec![t(target_type), t(target_id), t(url)],
        IndexValue::Uri(v) => vec![Bind::Text(v.clone())],
        IndexValue::Composite { system, code, second } => {
            // system, code, display, value, low, high, normalized, exact: those of the second
            // component's type are filled.
            let none = || Bind::OptText(None);
            let (mut sys, mut cod, mut display, mut value) = (none(), none(), none(), Bind::OptFloat(None));
            let (mut low, mut high, mut normalized, mut exact) =
                (Bind::OptInt(None), Bind::OptInt(None), none(), none());
            match second.as_ref() {
                IndexValue::Token { system, code, display: d, .. } => (sys, cod, display) = (t(system), t(code), t(d)),
                IndexValue::Number { value: v, system, code } => {
                    (value, sys, cod) = (Bind::OptFloat(Some(*v)), t(system), t(code))
                }
                IndexValue::Date { low: l, high: h } => (low, high) = (Bind::OptInt(Some(*l)), Bind::OptInt(Some(*h))),
                IndexValue::String { normalized: n, exact: e } => {
                    (normalized, exact) = (Bind::Text(n.clone()), Bind::Text(e.clone()))
                }
                _ => {}
            }
            vec![t(system), Bind::Text(code.clone()), sys, cod, display, value, low, high, normalized, exact]
        }
    }
}

/// A multi-row INSERT of `rows` (each `columns.len()` values) into `table`, in chunks.
pub fn insert_rows(dialect: &Dialect, table: &str, columns: &[&str], rows: Vec<Vec<Bind>>) -> Vec<Sql> {
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut sql = Sql::new(dialect);
        sql.push(&format!("INSERT INTO {table} ({}) VALUES ", columns.join(", ")));
        for (i, row) in rows.by_ref().take(INSERT_BATCH).enumerate() {
            sql.push(if i > 0 { ", (" } else { "(" });
            for (j, value) in row.into_iter().enumerate() {
                if j > 0 {
                    sql.push(", ");
                }
                sql.bind(value);
            }
            sql.push(")");
        }
        out.push(sql);
    }
    out
}

/// Compiles filters and sorting for one resource type.
pub struct Compiler<'a> {
    dialect: &'a Dialect,
    now: Millis,
    sql: Sql,
    depth: usize,
    /// The next driving subquery is written bare, as `(SELECT <ids> …)`, for a join
    /// ([`Dialect::join_driver`]), instead of as `alias.id IN (SELECT …)`.
    bare_driver: bool,
}

/// The column list of [`super::Version`] for alias `r0`.
const VERSION_COLUMNS: &str = "r0.resource_type, r0.id, r0.version_id, r0.last_updated, \
     CASE WHEN r0.version_id = 1 THEN 'POST' ELSE 'PUT' END AS method, r0.content";

impl<'a> Compiler<'a> {
    pub fn new(dialect: &'a Dialect, now: Millis) -> Self {
        Self { dialect, now, sql: Sql::new(dialect), depth: 0, bare_driver: false }
    }

    /// `SELECT <version columns>, <sort key> … LIMIT limit`, after the position `after` (the sort
    /// key values of the last row of the previous page).
    ///
    /// With `backward`, the page is the one *before* the position, in reverse order (the caller
    /// turns it around), for `previous` links.
    pub fn page(
        mut self,
        ty: &str,
        filters: &[Filter],
        sort: &[SortKey],
        after: Option<&[serde_json::Value]>,
        backward: bool,
        limit: i64,
    ) -> Result<Sql, String> {
        let keys: Vec<(String, bool, ParamKind)> =
            sort.iter().map(|k| (k.param.clone(), k.descending, k.kind)).collect();
        self.sql.push("SELECT ").push(VERSION_COLUMNS).push(", ");
        self.sql.push(self.dialect.json_array_open);
        for (param, desc, kind) in &keys {
            self.sort_expr("r0", param, *desc, *kind);
            self.sql.push(", ");
        }
        self.sql.push("r0.id").push(self.dialect.json_array_close).push(" AS sort_key FROM ");
        let types = [ty.to_owned()];
        // In id order, the page can stop early if the driving filter's rows come in id order.
        let joined = if self.dialect.join_driver && keys.is_empty() {
            driver(filters).filter(|&i| rows_in_id_order(&filters[i]))
        } else {
            None
        };
        match joined {
            Some(i) => {
                self.sql.push("(SELECT DISTINCT s.id FROM ");
                self.bare_driver = true;
                self.condition("r0", &types, &filters[i], true);
                self.sql.push(" AS s(id)) d JOIN resources r0 ON r0.resource_type = ").text(ty);
                self.sql.push(" AND r0.id = d.id WHERE NOT r0.deleted");
                for f in filters.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, f)| f) {
                    self.sql.push(" AND ");
                    self.condition("r0", &types, f, false);
                }
            }
            None => {
                self.sql.push("resources r0 WHERE ");
                self.where_clause("r0", &types, filters);
            }
        }
        if let Some(after) = after {
            if after.len() != keys.len() + 1 {
                return Err("the cursor does not fit this search".into());
            }
            self.sql.push(" AND ");
            self.after(&keys, after, 0, backward)?;
        }
        self.sql.push(" ORDER BY ");
        for (param, desc, kind) in &keys {
            self.sort_expr("r0", param, *desc, *kind);
            self.sql.push(if *desc != backward { " DESC, " } else { " ASC, " });
        }
        self.sql.push(if backward { "r0.id DESC LIMIT " } else { "r0.id ASC LIMIT " }).bind(Bind::Int(limit));
        Ok(self.sql)
    }

    /// `SELECT COUNT(*)` of the matches.
    /// `SELECT COUNT(*)` of the matches, or of at most `cap` of them.
    pub fn count(mut self, ty: &str, filters: &[Filter], cap: Option<i64>) -> Sql {
        self.sql.push("SELECT COUNT(*) FROM (SELECT 1 FROM resources r0 WHERE ");
        self.where_clause("r0", &[ty.to_owned()], filters);
        if let Some(cap) = cap {
            self.sql.push(" LIMIT ").bind(Bind::Int(cap));
        }
        self.sql.push(") matches");
        self.sql
    }

    /// The ids of at most `limit` matches (conditional interactions).
    pub fn ids(mut self, ty: &str, filters: &[Filter], limit: i64) -> Sql {
        self.sql.push("SELECT r0.id FROM resources r0 WHERE ");
        self.where_clause("r0", &[ty.to_owned()], filters);
        self.sql.push(" ORDER BY r0.id LIMIT ").bind(Bind::Int(limit));
        self.sql
    }

    /// Resources that the `sources` (of `source_type`) reference through `param`.
    pub fn include(
        mut self,
        source_type: &str,
        param: &str,
        target_type: Option<&str>,
        sources: &[String],
        limit: i64,
    ) -> Sql {
        self.sql.push("SELECT ").push(VERSION_COLUMNS).push(" FROM resources r0 WHERE NOT r0.deleted AND (r0.resource_type, r0.id) IN (SELECT x.target_type, x.target_id FROM search_reference x WHERE x.resource_type = ");
        self.sql.text(source_type).push(" AND x.param = ").text(param).push(" AND x.resource_id IN ").list(sources);
        if let Some(t) = target_type {
            self.sql.push(" AND x.target_type = ").text(t);
        }
        self.sql.push(") ORDER BY r0.resource_type, r0.id LIMIT ").bind(Bind::Int(limit));
        self.sql
    }

    /// Resources of `source_type` that reference one of `targets` (of `target_type`) through `param`.
    pub fn revinclude(
        mut self,
        source_type: &str,
        param: &str,
        target_type: &str,
        targets: &[String],
        limit: i64,
    ) -> Sql {
        self.sql
            .push("SELECT ")
            .push(VERSION_COLUMNS)
            .push(" FROM resources r0 WHERE r0.resource_type = ")
            .text(source_type);
        self.sql.push(" AND NOT r0.deleted AND r0.id IN (SELECT x.resource_id FROM search_reference x WHERE x.resource_type = ").text(source_type);
        self.sql.push(" AND x.param = ").text(param).push(" AND x.target_type = ").text(target_type);
        self.sql.push(" AND x.target_id IN ").list(targets).push(") ORDER BY r0.id LIMIT ").bind(Bind::Int(limit));
        self.sql
    }

    /// Which of `patients` have Consent rules.
    pub fn consent_patients(mut self, patients: &[String]) -> Sql {
        self.sql.push("SELECT DISTINCT patient_id FROM consent_rule WHERE patient_id IN ").list(patients);
        self.sql
    }

    /// Which of `ids` (of type `ty`) reference Patient `patient` through one of `params`.
    pub fn compartment_members(mut self, ty: &str, ids: &[String], patient: &str, params: &[String]) -> Sql {
        self.sql.push("SELECT DISTINCT x.resource_id FROM search_reference x WHERE x.resource_type = ").text(ty);
        self.sql.push(" AND x.resource_id IN ").list(ids).push(" AND x.param IN ").list(params);
        self.sql.push(" AND x.target_type = 'Patient' AND x.target_id = ").text(patient);
        self.sql
    }

    fn where_clause(&mut self, alias: &str, types: &[String], filters: &[Filter]) {
        let _ = write!(self.sql.text, "{alias}.resource_type IN ");
        self.sql.list(types);
        let _ = write!(self.sql.text, " AND NOT {alias}.deleted");
        // Where the dialect asks for it (SQLite), one selective filter drives the lookup
        // (`id IN (…)`, evaluated once) and the others probe each candidate (`EXISTS (…)` on the
        // owner index); otherwise every filter is a set and the planner combines them. An `_id`
        // filter drives by the primary key.
        let all_sets = !self.dialect.probe_filters;
        let driver = driver(filters);
        for (i, f) in filters.iter().enumerate() {
            self.sql.push(" AND ");
            let drive = all_sets || driver == Some(i);
            self.condition(alias, types, f, drive && !matches!(f, Filter::Missing { .. }));
        }
    }

    /// Opens a subquery over index table `table` (alias `v`) restricted to the rows of the
    /// resource at `alias`: `alias.id IN (SELECT v.resource_id … WHERE …` when it drives,
    /// `[NOT] EXISTS (SELECT 1 … WHERE <same resource> …` otherwise. The caller closes it.
    fn open_subquery(&mut self, alias: &str, types: &[String], table: &str, v: &str, drive: bool, negate: bool) {
        if drive && !negate {
            if !std::mem::take(&mut self.bare_driver) {
                let _ = write!(self.sql.text, "{alias}.id IN ");
            }
            let _ = write!(self.sql.text, "(SELECT {v}.resource_id FROM {table} {v} WHERE {v}.resource_type IN ");
            self.sql.list(types);
        } else {
            let _ = write!(
                self.sql.text,
                "{}EXISTS (SELECT 1 FROM {table} {v} WHERE {v}.resource_type = {alias}.resource_type AND {v}.resource_id = {alias}.id",
                if negate { "NOT " } else { "" }
            );
        }
    }

    fn condition(&mut self, alias: &str, types: &[String], filter: &Filter, drive: bool) {
        match filter {
            Filter::Id(ids) => {
                let _ = write!(self.sql.text, "{alias}.id IN ");
                self.sql.list(ids);
            }
            Filter::LastUpdated(value) => {
                let low = format!("{alias}.last_updated");
                let high = format!("({alias}.last_updated + 1)");
                self.sql.push("(");
                self.value_condition(ParamKind::Date, &Modifier::None, value, &low, &high);
                self.sql.push(")");
            }
            Filter::Missing { param, kind, missing } => {
                let table = Table::of(*kind, &Modifier::None);
                self.open_subquery(alias, types, table.name(), "v", false, *missing);
                self.sql.push(" AND v.param = ").text(param.clone()).push(")");
            }
            Filter::Test { param, kind, modifier, values } => {
                self.row_condition(alias, types, drive, param, *kind, modifier, values, " OR ");
            }
            Filter::AllOf { param, kind, values } => {
                self.row_condition(alias, types, drive, param, *kind, &Modifier::None, values, " AND ");
            }
            Filter::Chain { param, target_types, inner } => {
                self.depth += 1;
                let inner_alias = format!("r{}", self.depth);
                self.open_subquery(alias, types, "search_reference", "x", drive, false);
                self.sql.push(" AND x.param = ").text(param.clone()).push(" AND x.target_type IN ").list(target_types);
                let _ = write!(
                    self.sql.text,
                    " AND x.target_id IN (SELECT {inner_alias}.id FROM resources {inner_alias} WHERE "
                );
                self.where_clause(&inner_alias, target_types, inner);
                self.sql.push("))");
            }
            Filter::Compartment { patient, params } if types.len() == 1 && types[0] == "Patient" => {
                // The Patient itself and the Patients that link to it, as one set the primary
                // key looks up (an `OR` of both would scan every Patient on PostgreSQL).
                let _ = write!(self.sql.text, "{alias}.id IN (SELECT CAST(");
                self.sql.text(patient.clone()).push(" AS TEXT) UNION ALL SELECT x.resource_id FROM search_reference x");
                self.sql.push(" WHERE x.resource_type = 'Patient' AND x.param IN ").list(params);
                self.sql.push(" AND x.target_type = 'Patient' AND x.target_id = ").text(patient.clone()).push(")");
            }
            Filter::Compartment { patient, params } => {
                self.sql.push("(");
                if types.iter().any(|t| t == "Patient") {
                    let _ = write!(self.sql.text, "({alias}.resource_type = 'Patient' AND {alias}.id = ");
                    self.sql.text(patient.clone()).push(") OR ");
                }
                self.open_subquery(alias, types, "search_reference", "x", drive, false);
                self.sql.push(" AND x.param IN ").list(params);
                self.sql.push(" AND x.target_type = 'Patient' AND x.target_id = ").text(patient.clone()).push("))");
            }
            Filter::Disclosed { withheld, consent } => self.disclosed(alias, types, withheld, consent.as_ref()),
            Filter::IdRange { after, through } => {
                self.sql.push("(1 = 1");
                if let Some(after) = after {
                    let _ = write!(self.sql.text, " AND {alias}.id > ");
                    self.sql.text(after.clone());
                }
                if let Some(through) = through {
                    let _ = write!(self.sql.text, " AND {alias}.id <= ");
                    self.sql.text(through.clone());
                }
                self.sql.push(")");
            }
            Filter::Not(inner) => {
                self.sql.push("NOT (");
                self.condition(alias, types, inner, false);
                self.sql.push(")");
            }
            Filter::Has { source_type, param, inner } => {
                self.depth += 1;
                let inner_alias = format!("r{}", self.depth);
                if drive {
                    if !std::mem::take(&mut self.bare_driver) {
                        let _ = write!(self.sql.text, "{alias}.id IN ");
                    }
                    self.sql.push("(SELECT x.target_id FROM search_reference x WHERE x.target_type IN ");
                    self.sql.list(types);
                } else {
                    let _ = write!(
                        self.sql.text,
                        "EXISTS (SELECT 1 FROM search_reference x WHERE x.target_type = {alias}.resource_type AND x.target_id = {alias}.id"
                    );
                }
                self.sql
                    .push(" AND x.resource_type = ")
                    .text(source_type.clone())
                    .push(" AND x.param = ")
                    .text(param.clone());
                let _ = write!(
                    self.sql.text,
                    " AND x.resource_id IN (SELECT {inner_alias}.id FROM resources {inner_alias} WHERE "
                );
                self.where_clause(&inner_alias, std::slice::from_ref(source_type), inner);
                self.sql.push("))");
            }
        }
    }

    /// The resource at `alias` carries none of the `withheld` labels and no Consent of its
    /// patients withholds it from `asking` (see [`crate::auth::consent`] for the rules).
    fn disclosed(&mut self, alias: &str, types: &[String], withheld: &[(String, String)], asking: Option<&Asking>) {
        if !types.is_empty() && types.iter().all(|t| t == "AuditEvent") {
            // The audit trail is for those who audit access (its own scope grants it); it holds
            // references and codes, no clinical content, and Consents do not govern it.
            self.sql.push("1 = 1");
            return;
        }
        self.sql.push("(");
        if withheld.is_empty() {
            self.sql.push("1 = 1");
        } else {
            self.open_subquery(alias, types, "search_token", "v", false, true);
            self.sql.push(" AND v.param = '_security' AND (");
            for (i, (system, code)) in withheld.iter().enumerate() {
                self.sql.push(if i > 0 { " OR " } else { "" });
                self.sql.push("(v.system = ").text(system.clone()).push(" AND v.code = ").text(code.clone()).push(")");
            }
            self.sql.push("))");
        }
        let Some(asking) = asking else {
            self.sql.push(")");
            return;
        };
        // The patients whose compartment the resource is in.
        let mut params: Vec<String> =
            types.iter().flat_map(|t| crate::auth::compartment_params(t).unwrap_or_default()).cloned().collect();
        params.sort();
        params.dedup();
        let _ = write!(self.sql.text, " AND NOT EXISTS (SELECT 1 FROM consent_rule c WHERE c.rule = 0 AND (({alias}.resource_type = 'Patient' AND c.patient_id = {alias}.id)");
        if !params.is_empty() {
            let _ = write!(self.sql.text, " OR c.patient_id IN (SELECT p.target_id FROM search_reference p WHERE p.resource_type = {alias}.resource_type AND p.resource_id = {alias}.id AND p.target_type = 'Patient' AND p.param IN ");
            self.sql.list(&params).push(")");
        }
        self.sql.push(")");
        if let Some(own) = &asking.own_patient {
            self.sql.push(" AND c.patient_id <> ").text(own.clone());
        }
        if asking.anyone {
            // Whoever may be asking: any Consent of the patient withholds.
            self.sql.push("))");
            return;
        }
        self.sql.push(" AND ");
        self.provision_applies("c", alias, asking);
        self.sql.push(" AND ((c.deny AND NOT EXISTS (SELECT 1 FROM consent_rule n WHERE n.consent_id = c.consent_id AND n.rule > 0 AND NOT n.deny AND ");
        self.provision_applies("n", alias, asking);
        self.sql.push(")) OR (NOT c.deny AND EXISTS (SELECT 1 FROM consent_rule n WHERE n.consent_id = c.consent_id AND n.rule > 0 AND n.deny AND ");
        self.provision_applies("n", alias, asking);
        self.sql.push(")))))");
    }

    /// Every criterion the provision at `c` has matches `asking` and the resource at `alias`.
    fn provision_applies(&mut self, c: &str, alias: &str, asking: &Asking) {
        let now = asking.now;
        let _ = write!(self.sql.text, "({c}.period_start IS NULL OR {c}.period_start <= ");
        self.sql.bind(Bind::Int(now));
        let _ = write!(self.sql.text, ") AND ({c}.period_end IS NULL OR {c}.period_end > ");
        self.sql.bind(Bind::Int(now)).push(")");
        let criterion = |sql: &mut Sql, flag: &str, kind: &str| {
            let _ = write!(
                sql.text,
                " AND (NOT {c}.has_{flag} OR EXISTS (SELECT 1 FROM consent_criterion k WHERE k.consent_id = {c}.consent_id AND k.rule = {c}.rule AND k.kind"
            );
            let _ = write!(sql.text, "{kind} AND ");
        };
        for (flag, values) in [("actor", &asking.actors), ("purpose", &asking.purposes)] {
            criterion(&mut self.sql, flag, &format!(" = '{flag}'"));
            match (flag, values.is_empty()) {
                (_, false) => {
                    self.sql.push("k.value IN ").list(values);
                }
                // A caller that declares no purpose of use may have any: denials for a purpose
                // apply to it, permissions for one do not.
                ("purpose", true) => {
                    let _ = write!(self.sql.text, "{c}.deny");
                }
                _ => {
                    self.sql.push("1 = 0");
                }
            }
            self.sql.push("))");
        }
        criterion(&mut self.sql, "class", " = 'class'");
        let _ = write!(self.sql.text, "k.value = {alias}.resource_type))");
        criterion(&mut self.sql, "label", " = 'label'");
        let _ = write!(self.sql.text, "EXISTS (SELECT 1 FROM search_token s WHERE s.resource_type = {alias}.resource_type AND s.resource_id = {alias}.id AND s.param = '_security' AND s.system = k.system AND s.code = k.value)))");
        criterion(&mut self.sql, "data", " LIKE 'data%'");
        let _ = write!(
            self.sql.text,
            "((k.kind = 'data' OR k.kind = 'data-related' OR k.kind = 'data-dependents') AND k.system = {alias}.resource_type AND k.value = {alias}.id \
             OR k.kind = 'data-related' AND EXISTS (SELECT 1 FROM resource_links l WHERE l.source_type = k.system AND l.source_id = k.value AND l.target_type = {alias}.resource_type AND l.target_id = {alias}.id) \
             OR k.kind = 'data-dependents' AND EXISTS (SELECT 1 FROM resource_links l WHERE l.source_type = {alias}.resource_type AND l.source_id = {alias}.id AND l.target_type = k.system AND l.target_id = k.value))))"
        );
    }

    /// An index row of `param` whose values meet the tests of `values`, joined by `join` (OR
    /// for a comma list, AND for [`Filter::AllOf`]).
    #[allow(clippy::too_many_arguments)]
    fn row_condition(
        &mut self,
        alias: &str,
        types: &[String],
        drive: bool,
        param: &str,
        kind: ParamKind,
        modifier: &Modifier,
        values: &[SearchValue],
        join: &str,
    ) {
        let table = Table::of(kind, modifier);
        self.open_subquery(alias, types, table.name(), "v", drive, *modifier == Modifier::Not);
        self.sql.push(" AND v.param = ").text(param.to_owned()).push(" AND (");
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.sql.push(join);
            }
            self.sql.push("(");
            let kind = if table == Table::Token { ParamKind::Token } else { kind };
            self.value_condition(kind, modifier, value, "v.low", "v.high");
            self.sql.push(")");
        }
        self.sql.push("))");
    }

    /// The test of one value against index row `v` (dates use the `low`/`high` expressions).
    fn value_condition(&mut self, kind: ParamKind, modifier: &Modifier, value: &SearchValue, low: &str, high: &str) {
        match value {
            SearchValue::Token { system, code } => {
                let mut first = true;
                if let Some(code) = code {
                    self.sql.push("v.code = ").text(code.clone());
                    first = false;
                }
                match system {
                    SystemMatch::Any => {}
                    SystemMatch::Absent => {
                        self.sql.push(if first { "v.system IS NULL" } else { " AND v.system IS NULL" });
                    }
                    SystemMatch::Is(s) => {
                        self.sql.push(if first { "v.system = " } else { " AND v.system = " }).text(s.clone());
                    }
                }
            }
            SearchValue::OfType { system, code, value } => {
                self.sql.push("v.type_system = ").text(system.clone()).push(" AND v.type_code = ").text(code.clone());
                self.sql.push(" AND v.code = ").text(value.clone());
            }
            SearchValue::Text(text) if kind == ParamKind::Token => {
                self.sql.push("v.display LIKE ").text(like_pattern(&normalize(text), false)).push(" ESCAPE '\\'");
            }
            SearchValue::Text(text) => match modifier {
                Modifier::Exact => {
                    self.sql.push("v.exact = ").text(text.clone());
                }
                Modifier::Contains => {
                    self.sql.push("v.normalized LIKE ").text(like_pattern(&normalize(text), true)).push(" ESCAPE '\\'");
                }
                _ => {
                    // Starts-with as a range, so that the index serves it on both engines.
                    let n = normalize(text);
                    self.sql
                        .push("v.normalized >= ")
                        .text(n.clone())
                        .push(" AND v.normalized < ")
                        .text(format!("{n}\u{10FFFF}"));
                }
            },
            SearchValue::Date { prefix, low: sl, high: sh } => self.range_condition(*prefix, *sl, *sh, low, high),
            SearchValue::Number { prefix, value, low: lo, high: hi, system, code } => {
                self.number_condition(*prefix, *value, *lo, *hi);
                if let Some(s) = system {
                    self.sql.push(" AND v.system = ").text(s.clone());
                }
                if let Some(c) = code {
                    self.sql.push(" AND v.code = ").text(c.clone());
                }
            }
            SearchValue::Reference { target_type, id, url } => {
                let mut first = true;
                let mut and = |sql: &mut Sql, s: &str| {
                    if !first {
                        sql.push(" AND ");
                    }
                    first = false;
                    sql.push(s);
                };
                if let Some(id) = id {
                    and(&mut self.sql, "v.target_id = ");
                    self.sql.text(id.clone());
                }
                if let Some(t) = target_type {
                    and(&mut self.sql, "v.target_type = ");
                    self.sql.text(t.clone());
                }
                if let Some(u) = url {
                    and(&mut self.sql, "v.url = ");
                    self.sql.text(u.clone());
                }
            }
            SearchValue::Composite { system, code, second_kind, second } => {
                self.sql.push("v.c1_code = ").text(code.clone());
                match system {
                    SystemMatch::Any => {}
                    SystemMatch::Absent => {
                        self.sql.push(" AND v.c1_system IS NULL");
                    }
                    SystemMatch::Is(s) => {
                        self.sql.push(" AND v.c1_system = ").text(s.clone());
                    }
                }
                self.sql.push(" AND (");
                self.value_condition(*second_kind, &Modifier::None, second, "v.low", "v.high");
                self.sql.push(")");
            }
            SearchValue::Uri(u) => match modifier {
                Modifier::Below => {
                    self.sql.push("v.value LIKE ").text(like_pattern(u, false)).push(" ESCAPE '\\'");
                }
                Modifier::Above => {
                    self.sql.push("v.value = substr(").text(u.clone()).push(", 1, length(v.value))");
                }
                _ => {
                    self.sql.push("v.value = ").text(u.clone());
                }
            },
        }
    }

    /// R4 search.html#prefix for ranges: target `[low, high)` against search `[sl, sh)`.
    fn range_condition(&mut self, prefix: Prefix, sl: Millis, sh: Millis, low: &str, high: &str) {
        let int = Bind::Int;
        let s = &mut self.sql;
        match prefix {
            Prefix::Eq => {
                s.push(low).push(" >= ").bind(int(sl)).push(" AND ").push(high).push(" <= ").bind(int(sh));
            }
            Prefix::Ne => {
                s.push("NOT (")
                    .push(low)
                    .push(" >= ")
                    .bind(int(sl))
                    .push(" AND ")
                    .push(high)
                    .push(" <= ")
                    .bind(int(sh))
                    .push(")");
            }
            Prefix::Gt => {
                s.push(high).push(" > ").bind(int(sh));
            }
            Prefix::Lt => {
                s.push(low).push(" < ").bind(int(sl));
            }
            Prefix::Ge => {
                s.push(high).push(" > ").bind(int(sh)).push(" OR (").push(low).push(" >= ").bind(int(sl));
                s.push(" AND ").push(high).push(" <= ").bind(int(sh)).push(")");
            }
            Prefix::Le => {
                s.push(low).push(" < ").bind(int(sl)).push(" OR (").push(low).push(" >= ").bind(int(sl));
                s.push(" AND ").push(high).push(" <= ").bind(int(sh)).push(")");
            }
            Prefix::Sa => {
                s.push(low).push(" >= ").bind(int(sh));
            }
            Prefix::Eb => {
                s.push(high).push(" <= ").bind(int(sl));
            }
            Prefix::Ap => {
                // Approximately: overlapping the value widened by 10% of its distance from now.
                let margin = (self.now.saturating_sub(sl)).abs() / 10;
                s.push(low)
                    .push(" < ")
                    .bind(int(sh.saturating_add(margin)))
                    .push(" AND ")
                    .push(high)
                    .push(" > ")
                    .bind(int(sl.saturating_sub(margin)));
            }
        }
    }

    fn number_condition(&mut self, prefix: Prefix, value: f64, lo: f64, hi: f64) {
        let f = Bind::Float;
        let s = &mut self.sql;
        match prefix {
            Prefix::Eq => s.push("v.value >= ").bind(f(lo)).push(" AND v.value < ").bind(f(hi)),
            Prefix::Ne => s.push("NOT (v.value >= ").bind(f(lo)).push(" AND v.value < ").bind(f(hi)).push(")"),
            Prefix::Gt | Prefix::Sa => s.push("v.value > ").bind(f(value)),
            Prefix::Lt | Prefix::Eb => s.push("v.value < ").bind(f(value)),
            Prefix::Ge => s.push("v.value >= ").bind(f(value)),
            Prefix::Le => s.push("v.value <= ").bind(f(value)),
            Prefix::Ap => {
                let margin = value.abs() / 10.0;
                s.push("v.value >= ").bind(f(value - margin)).push(" AND v.value <= ").bind(f(value + margin))
            }
        };
    }

    /// The sort value of `param` for the resource at `alias`; never NULL, so that keyset
    /// comparisons work (missing values sort last in either direction).
    fn sort_expr(&mut self, alias: &str, param: &str, desc: bool, kind: ParamKind) {
        let agg = if desc { "MAX" } else { "MIN" };
        match param {
            "_id" => {
                let _ = write!(self.sql.text, "{alias}.id");
                return;
            }
            "_lastUpdated" => {
                let _ = write!(self.sql.text, "{alias}.last_updated");
                return;
            }
            _ => {}
        }
        let (table, column, missing) = match kind {
            ParamKind::String => {
                (Table::String, "normalized", Bind::Text(if desc { String::new() } else { "\u{10FFFF}".into() }))
            }
            // By the start of the range in both directions: open-ended periods would all tie on
            // their end.
            ParamKind::Date => (Table::Date, "low", Bind::Int(if desc { Millis::MIN } else { Millis::MAX })),
            ParamKind::Number | ParamKind::Quantity => {
                (Table::Number, "value", Bind::Float(if desc { -1e308 } else { 1e308 }))
            }
            ParamKind::Reference => {
                (Table::Reference, "target_id", Bind::Text(if desc { String::new() } else { "\u{10FFFF}".into() }))
            }
            ParamKind::Uri => (Table::Uri, "value", Bind::Text(if desc { String::new() } else { "\u{10FFFF}".into() })),
            _ => (Table::Token, "code", Bind::Text(if desc { String::new() } else { "\u{10FFFF}".into() })),
        };
        let _ = write!(
            self.sql.text,
            "COALESCE((SELECT {agg}(s.{column}) FROM {} s WHERE s.resource_type = {alias}.resource_type AND s.resource_id = {alias}.id AND s.param = ",
            table.name()
        );
        self.sql.text(param).push("), ").bind(missing).push(")");
    }

    /// Keyset condition: rows after the position `after` in the sort order.
    fn after(
        &mut self,
        keys: &[(String, bool, ParamKind)],
        after: &[serde_json::Value],
        i: usize,
        backward: bool,
    ) -> Result<(), String> {
        if i == keys.len() {
            let id = after[i].as_str().ok_or("bad cursor")?;
            self.sql.push(if backward { "r0.id < " } else { "r0.id > " }).text(id);
            return Ok(());
        }
        let (param, desc, kind) = &keys[i];
        let bind = match (param.as_str(), kind) {
            ("_lastUpdated", _) | (_, ParamKind::Date) => Bind::Int(after[i].as_i64().ok_or("bad cursor")?),
            ("_id", _) => Bind::Text(after[i].as_str().ok_or("bad cursor")?.to_owned()),
            (_, ParamKind::Number | ParamKind::Quantity) => Bind::Float(after[i].as_f64().ok_or("bad cursor")?),
            _ => Bind::Text(after[i].as_str().ok_or("bad cursor")?.to_owned()),
        };
        self.sql.push("(");
        self.sort_expr("r0", param, *desc, *kind);
        self.sql.push(if *desc != backward { " < " } else { " > " }).bind(bind.clone()).push(" OR (");
        self.sort_expr("r0", param, *desc, *kind);
        self.sql.push(" = ").bind(bind).push(" AND ");
        self.after(keys, after, i + 1, backward)?;
        self.sql.push("))");
        Ok(())
    }
}

/// The filter that drives the lookup (see [`drive_rank`]): none when `_id` does (by the
/// primary key).
fn driver(filters: &[Filter]) -> Option<usize> {
    if filters.iter().any(|f| matches!(f, Filter::Id(_))) {
        return None;
    }
    filters.iter().enumerate().filter_map(|(i, f)| drive_rank(f).map(|r| (r, i))).min().map(|(_, i)| i)
}

/// Whether the index rows that `filter` selects come in resource id order: one reference or
/// one identifier, an equality on every index column before the resource id. (A date window or
/// a list of values would have to be sorted in full first, which the join does not pay for.)
fn rows_in_id_order(filter: &Filter) -> bool {
    match filter {
        Filter::Test { kind: ParamKind::Reference, modifier, values, .. } => {
            values.len() == 1
                && matches!(values[0], SearchValue::Reference { id: Some(_), .. })
                && !matches!(modifier, Modifier::Identifier | Modifier::Not)
        }
        Filter::Test { param, modifier: Modifier::None, values, .. } if param == "identifier" => {
            matches!(values.as_slice(), [SearchValue::Token { system: SystemMatch::Is(_), code: Some(_) }])
        }
        _ => false,
    }
}

/// How well a filter narrows the candidates when it drives the lookup (lower is better), or
/// `None` when it should not drive (negations and `:missing` match by absence; see below for
/// ranges and codes).
fn drive_rank(filter: &Filter) -> Option<u8> {
    match filter {
        Filter::Test { modifier: Modifier::Not, .. } | Filter::Missing { .. } => None,
        Filter::Id(_) | Filter::LastUpdated(_) | Filter::Disclosed { .. } | Filter::Not(_) | Filter::IdRange { .. } => {
            None
        }
        Filter::Test { kind: ParamKind::Reference, .. } => Some(1),
        Filter::Test { param, .. } if param == "identifier" => Some(1),
        Filter::Chain { .. } => Some(2),
        Filter::Compartment { .. } => Some(1),
        Filter::Test { kind: ParamKind::String | ParamKind::Composite, .. } | Filter::Has { .. } => Some(3),
        // A window closed on both sides (`date=ge…&date=lt…` on one row) is bounded.
        Filter::AllOf { values, .. } if bounds_both_sides(values) => Some(3),
        Filter::AllOf { .. } => None,
        // Ranges and plain codes often match a large share of a type: scanning the type in id
        // order and probing each candidate stops after one page, where building their set
        // would not.
        Filter::Test { .. } => None,
    }
}

/// Whether date values bound a range from below and from above.
fn bounds_both_sides(values: &[SearchValue]) -> bool {
    let prefixes: Vec<Prefix> = values
        .iter()
        .filter_map(|v| if let SearchValue::Date { prefix, .. } = v { Some(*prefix) } else { None })
        .collect();
    let lower = prefixes.iter().any(|p| matches!(p, Prefix::Gt | Prefix::Ge | Prefix::Sa | Prefix::Eq | Prefix::Ap));
    let upper = prefixes.iter().any(|p| matches!(p, Prefix::Lt | Prefix::Le | Prefix::Eb | Prefix::Eq | Prefix::Ap));
    lower && upper
}

/// A LIKE pattern matching `text` as a prefix (or anywhere), with LIKE's wildcards escaped.
fn like_pattern(text: &str, anywhere: bool) -> String {
    let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    if anywhere {
        format!("%{escaped}%")
    } else {
        format!("{escaped}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::SQLITE;

    #[test]
    fn values_are_bound_never_interpolated() {
        let filter = Filter::Test {
            param: "name".into(),
            kind: ParamKind::String,
            modifier: Modifier::Contains,
            values: vec![SearchValue::Text("o'brien%".into())],
        };
        let sql = Compiler::new(&SQLITE, 0).page("Patient", &[filter], &[], None, false, 10).unwrap();
        assert!(!sql.text.contains("brien"), "{}", sql.text);
        assert!(sql.binds.contains(&Bind::Text("%o'brien\\%%".into())));
    }

    #[test]
    fn index_rows_are_batched_per_table() {
        let entries: Vec<IndexEntry> =
            (0..450).map(|i| IndexEntry { param: "code".into(), value: IndexValue::Uri(format!("u{i}")) }).collect();
        let inserts = index_inserts(&crate::store::sql::POSTGRES, &[("Patient", "p1", &entries)]);
        assert_eq!(inserts.len(), 3);
        assert_eq!(inserts[0].binds.len(), 200 * 4);
    }

    #[test]
    fn postgres_inserts_go_as_one_statement_with_placeholders_numbered_through() {
        use crate::store::sql::POSTGRES;
        let row = |a: &str, b: &str| vec![Bind::Text(a.into()), Bind::Text(b.into())];
        let mut statements = delete_owned(
            &POSTGRES,
            "search_token",
            ("resource_type", "resource_id"),
            &[("Goal".to_owned(), "g1".to_owned())],
        );
        statements.extend(insert_rows(&POSTGRES, "t1", &["a", "b"], vec![row("1", "2"), row("3", "4")]));
        statements.extend(insert_rows(&POSTGRES, "t2", &["a", "b"], vec![row("5", "6")]));
        statements.extend(insert_rows(&POSTGRES, "t3", &["a", "b"], vec![row("7", "8")]));
        let combined = combine_inserts(&POSTGRES, statements.clone());
        assert_eq!(combined.len(), 2, "the delete, then one statement for the inserts");
        assert_eq!(combined[0].text, statements[0].text);
        assert_eq!(
            combined[1].text,
            "WITH w0 AS (INSERT INTO t1 (a, b) VALUES ($1, $2), ($3, $4)), \
             w1 AS (INSERT INTO t2 (a, b) VALUES ($5, $6)) INSERT INTO t3 (a, b) VALUES ($7, $8)"
        );
        assert_eq!(combined[1].binds, (1..=8).map(|n| Bind::Text(n.to_string())).collect::<Vec<_>>());
        assert_eq!(combine_inserts(&SQLITE, statements.clone()).len(), statements.len(), "SQLite: as they were");
    }
}
