//! `POST /fhir` with a Bundle of type `transaction` or `batch` (http.html#transaction).
//!
//! A transaction's writes run in one database transaction, in the order R4 prescribes (DELETE,
//! POST, PUT and PATCH), after the identities of all entries are settled: new ids for creates,
//! matches for conditional entries and conditional references, and every reference to an
//! entry's `fullUrl` rewritten to the id it got. Any failure fails the whole Bundle with the
//! status of the failing entry and an OperationOutcome that names it. Its GET entries are
//! answered after the commit, so that they see its writes.
//!
//! A batch's entries are independent: each is dispatched through the router as if it were its
//! own request, and answers with its own status.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Router;
use base64::Engine;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use super::authorize::Caller;
use super::interaction::{check_resource, confined_condition, parse_condition, Done, Target, Write, WriteKind};
use super::negotiate::{etag, FhirJson, Format, Return};
use super::write::execute_audited;
use crate::audit::AuditDetail;
use crate::auth::{Perm, Principal};
use crate::error::AppError;
use crate::fhir::outcome::{operation_outcome, Issue, IssueType};
use crate::fhir::patch::{Patch, PatchError};
use crate::fhir::registry::ResourceType;
use crate::fhir::{self, primitives};
use crate::serve::Peer;
use crate::state::AppState;
use crate::store::{Contended, Expect, StoreError, WriteTx, WRITE_ATTEMPTS};

/// One entry of the request Bundle, checked for shape.
#[derive(Debug)]
struct Entry {
    index: usize,
    full_url: Option<String>,
    method: Verb,
    /// `entry.request.url`, relative to the base.
    url: String,
    resource: Option<Map<String, Value>>,
    if_match: Option<String>,
    if_none_match: Option<String>,
    if_none_exist: Option<String>,
    if_modified_since: Option<String>,
}

/// `entry.request.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Verb {
    fn as_method(self) -> Method {
        match self {
            Self::Get => Method::GET,
            Self::Head => Method::HEAD,
            Self::Post => Method::POST,
            Self::Put => Method::PUT,
            Self::Patch => Method::PATCH,
            Self::Delete => Method::DELETE,
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_method().as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transaction,
    Batch,
}

/// What the entries of a Bundle inherit from the request that carried it.
struct Outer {
    headers: HeaderMap,
    /// The connection, so that entries dispatched through the router are audited with it.
    peer: Option<Peer>,
}

/// `POST /fhir`.
pub async fn process(
    State(state): State<AppState>,
    Caller(caller): Caller,
    format: Format,
    ret: Return,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    FhirJson(bundle): FhirJson,
) -> Response {
    let outer = Outer { headers, peer: peer.map(|Extension(p)| p) };
    let kind = match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => Kind::Transaction,
        _ => Kind::Batch,
    };
    let mut response = match run(&state, &caller, format, ret, &outer, bundle).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    let interaction = if kind == Kind::Transaction { "transaction" } else { "batch" };
    response.extensions_mut().insert(AuditDetail { interaction: Some(interaction), ..AuditDetail::default() });
    response
}

async fn run(
    state: &AppState,
    caller: &Principal,
    format: Format,
    ret: Return,
    outer: &Outer,
    bundle: Map<String, Value>,
) -> Result<Response, AppError> {
    let (kind, entries) = read_bundle(state, bundle)?;
    let response_entries = match kind {
        Kind::Transaction => transaction(state, caller, &entries, ret, outer).await?,
        Kind::Batch => {
            let router = super::router(state.clone());
            let mut out = Vec::with_capacity(entries.len());
            for entry in &entries {
                out.push(dispatch(&router, state, entry, outer).await);
            }
            out
        }
    };
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": if kind == Kind::Transaction { "transaction-response" } else { "batch-response" },
        "entry": response_entries,
    });
    Ok(format.respond(StatusCode::OK, bundle.to_string()))
}

fn invalid(why: impl Into<String>) -> AppError {
    AppError::invalid(IssueType::Invalid, why)
}

/// Checks the Bundle itself: its type, the size limit, each entry's request, and unique
/// `fullUrl`s.
fn read_bundle(state: &AppState, mut bundle: Map<String, Value>) -> Result<(Kind, Vec<Entry>), AppError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(invalid("POST to the base URL takes a Bundle of type transaction or batch"));
    }
    let kind = match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => Kind::Transaction,
        Some("batch") => Kind::Batch,
        Some(other) => {
            return Err(invalid(format!("Bundle type '{other}' cannot be processed here; use transaction or batch")))
        }
        None => return Err(AppError::invalid(IssueType::Required, "the Bundle has no type")),
    };
    let raw = match bundle.remove("entry") {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("Bundle.entry must be an array")),
    };
    if raw.len() > state.limits.max_bundle_entries {
        return Err(AppError::TooManyEntries(state.limits.max_bundle_entries));
    }
    let mut entries = Vec::with_capacity(raw.len());
    let mut full_urls: HashMap<String, usize> = HashMap::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let entry = read_entry(state, index, raw).map_err(|e| e.in_entry(index))?;
        if let Some(url) = &entry.full_url {
            if let Some(first) = full_urls.insert(url.clone(), index) {
                return Err(invalid(format!("fullUrl is also the fullUrl of Bundle.entry[{first}]")).in_entry(index));
            }
        }
        entries.push(entry);
    }
    Ok((kind, entries))
}

fn read_entry(state: &AppState, index: usize, raw: Value) -> Result<Entry, AppError> {
    let Value::Object(mut raw) = raw else { return Err(invalid("an entry must be an object")) };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let request = raw.get("request").and_then(Value::as_object).ok_or_else(|| {
        AppError::invalid(IssueType::Required, "every entry of a transaction or batch needs a request")
    })?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some("GET") => Verb::Get,
        Some("HEAD") => Verb::Head,
        Some("POST") => Verb::Post,
        Some("PUT") => Verb::Put,
        Some("PATCH") => Verb::Patch,
        Some("DELETE") => Verb::Delete,
        _ => return Err(invalid("request.method must be GET, HEAD, POST, PUT, PATCH or DELETE")),
    };
    let url =
        text(request.get("url")).ok_or_else(|| AppError::invalid(IssueType::Required, "request.url is missing"))?;
    // An absolute URL on this server is taken as relative to the base.
    let url = url.strip_prefix(&state.base_url).unwrap_or(&url).trim_start_matches('/').to_owned();
    if url.is_empty() || url.starts_with('?') || url.chars().any(char::is_control) {
        return Err(invalid("request.url must name a resource type, resource or search on this server"));
    }
    let entry = Entry {
        index,
        full_url: text(raw.get("fullUrl")),
        if_match: text(request.get("ifMatch")),
        if_none_match: text(request.get("ifNoneMatch")),
        if_none_exist: text(request.get("ifNoneExist")),
        if_modified_since: text(request.get("ifModifiedSince")),
        resource: match raw.remove("resource") {
            Some(Value::Object(r)) => Some(r),
            Some(_) => return Err(invalid("entry.resource must be a resource")),
            None => None,
        },
        method,
        url,
    };
    if matches!(entry.method, Verb::Post | Verb::Put | Verb::Patch) && entry.resource.is_none() {
        return Err(AppError::invalid(IssueType::Required, format!("a {} entry needs a resource", entry.method)));
    }
    Ok(entry)
}

/// The path of an entry's URL split into segments, and its query.
fn split_url(url: &str) -> (Vec<&str>, Option<&str>) {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    (path.split('/').filter(|s| !s.is_empty()).collect(), query)
}

/// The entry's resource type, which this server must serve.
fn entry_type(state: &AppState, segment: &str) -> Result<ResourceType, AppError> {
    state.registry.resource_type(segment).ok_or_else(|| AppError::UnknownResourceType(segment.to_owned()))
}

/// What a transaction entry writes, before its identity is settled.
struct Planned<'e> {
    entry: &'e Entry,
    ty: ResourceType,
    target: Target,
    /// The content to write (with references rewritten), for POST and PUT.
    resource: Option<Map<String, Value>>,
    /// For POST: the id a create would get; for conditional entries, the match.
    id: Option<String>,
}

/// A transaction: settles identities, rewrites references, writes everything in one database
/// transaction (again, from the start, when it loses to a concurrent writer), then answers
/// its GET entries.
async fn transaction(
    state: &AppState,
    caller: &Principal,
    entries: &[Entry],
    ret: Return,
    outer: &Outer,
) -> Result<Vec<Value>, AppError> {
    let mut attempt = 1;
    let done = loop {
        let mut tx = state.store.begin().await?;
        let result = match write_all(state, caller, &mut tx, entries).await {
            Ok((done, order)) => tx.commit().await.map(|()| done).map_err(|e| commit_error(e, &order)),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.is_contention() && attempt < WRITE_ATTEMPTS => attempt += 1,
            other => break other?,
        }
    };
    let mut done: HashMap<usize, (ResourceType, Done)> = done.into_iter().collect();
    let router =
        entries.iter().any(|e| e.method == Verb::Get || e.method == Verb::Head).then(|| super::router(state.clone()));
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match (done.remove(&entry.index), &router) {
            (Some((ty, d)), _) => out.push(write_response(state, ty, d, ret)),
            (None, Some(router)) => out.push(dispatch(router, state, entry, outer).await),
            (None, None) => unreachable!("every entry is a write or a read"),
        }
    }
    Ok(out)
}

/// The integrity errors of commit name the change that failed; the Bundle names the entry.
fn commit_error(e: StoreError, order: &[usize]) -> AppError {
    let change = match &e {
        StoreError::MissingReferences { change, .. } | StoreError::Referenced { change, .. } => Some(*change),
        _ => None,
    };
    let error = AppError::from(e);
    match change.and_then(|c| order.get(c)) {
        Some(&index) => error.in_entry(index),
        None => error,
    }
}

/// All writes of a transaction inside `tx`. Returns what each did, by entry index, and the
/// entry index of each change in the order the store saw them.
async fn write_all(
    state: &AppState,
    caller: &Principal,
    tx: &mut WriteTx,
    entries: &[Entry],
) -> Result<(Vec<(usize, (ResourceType, Done))>, Vec<usize>), AppError> {
    // 1. Identities: what each write entry addresses, and what each fullUrl becomes.
    let mut planned = Vec::new();
    let mut identities: HashMap<String, String> = HashMap::new();
    let mut seen: HashMap<(ResourceType, String), usize> = HashMap::new();
    for entry in entries.iter().filter(|e| e.method != Verb::Get && e.method != Verb::Head) {
        let plan = plan(state, caller, tx, entry).await.map_err(|e| e.in_entry(entry.index))?;
        let mut ids: Vec<String> = plan.id.iter().cloned().collect();
        if let (Verb::Delete, Target::Search(filters)) = (&entry.method, &plan.target) {
            let filters = confined_condition(state, caller, plan.ty, Perm::Delete, filters)
                .await
                .map_err(|e| e.in_entry(entry.index))?;
            ids = tx.find(plan.ty, &filters, state.limits.max_conditional_deletes as i64 + 1).await?;
        }
        for id in &ids {
            if let Some(first) = seen.insert((plan.ty, id.clone()), entry.index) {
                return Err(invalid(format!(
                    "{}/{id} is also the resource of Bundle.entry[{first}]; a transaction may touch a resource once",
                    plan.ty
                ))
                .in_entry(entry.index));
            }
        }
        if let (Some(full_url), Some(id)) = (&entry.full_url, &plan.id) {
            identities.insert(full_url.clone(), format!("{}/{id}", plan.ty));
        }
        planned.push(plan);
    }
    tx.lock_resources(seen.keys().map(|(ty, id)| (*ty, id.as_str()))).await?;
    // 2. References: to fullUrls of this Bundle, and conditional references, rewritten.
    let mut conditional: HashMap<String, String> = HashMap::new();
    for plan in &mut planned {
        if let Some(resource) = plan.resource.as_mut() {
            rewrite(state, caller, tx, resource, &identities, &mut conditional)
                .await
                .map_err(|e| e.in_entry(plan.entry.index))?;
        }
    }
    // 3. The writes, validated, in R4's order: DELETE, POST, then PUT and PATCH.
    let rank = |m: &Verb| match *m {
        Verb::Delete => 0,
        Verb::Post => 1,
        _ => 2,
    };
    planned.sort_by_key(|p| (rank(&p.entry.method), p.entry.index));
    let mut done = Vec::with_capacity(planned.len());
    let mut order = Vec::with_capacity(planned.len());
    for plan in planned {
        let index = plan.entry.index;
        let ty = plan.ty;
        let write = into_write(state, plan).map_err(|e| e.in_entry(index))?;
        let changes_before = tx.changes();
        let result = execute_audited(state, caller, tx, &write).await.map_err(|e| e.in_entry(index))?;
        order.extend(std::iter::repeat_n(index, tx.changes() - changes_before));
        done.push((index, (ty, result)));
    }
    Ok((done, order))
}

/// Settles what a write entry addresses. Conditional entries are matched here, inside the
/// transaction; the write matches them again under the same locks.
async fn plan<'e>(
    state: &AppState,
    caller: &Principal,
    tx: &mut WriteTx,
    entry: &'e Entry,
) -> Result<Planned<'e>, AppError> {
    let (segments, query) = split_url(&entry.url);
    let ty = entry_type(state, segments.first().copied().unwrap_or_default())?;
    let mut resource = entry.resource.clone();
    let perm = match entry.method {
        Verb::Post => Perm::Create,
        Verb::Delete => Perm::Delete,
        _ => Perm::Update,
    };
    let condition = |q: &str| {
        let parsed = parse_condition(state, ty, q, "the condition in request.url");
        async move { confined_condition(state, caller, ty, perm, &parsed?).await }
    };
    let (target, id) = match (&entry.method, segments.as_slice(), query) {
        (Verb::Post, [_], None) => {
            let id = match &entry.if_none_exist {
                Some(q) => {
                    let filters = parse_condition(state, ty, q, "ifNoneExist")?;
                    find_one(tx, ty, &confined_condition(state, caller, ty, perm, &filters).await?).await?
                }
                None => None,
            };
            let id = id.unwrap_or_else(crate::fhir::new_id);
            (Target::Id(id.clone()), Some(id))
        }
        (Verb::Put | Verb::Patch | Verb::Delete, [_, id], None) => {
            if primitives::check("id", &Value::from(*id)).is_err() {
                return Err(invalid("the id in request.url is not a valid FHIR id"));
            }
            (Target::Id((*id).to_owned()), Some((*id).to_owned()))
        }
        (Verb::Put, [_], Some(q)) => {
            let filters = condition(q).await?;
            let body_id = resource.as_ref().and_then(|r| r.get("id")).and_then(Value::as_str).map(str::to_owned);
            let id = match find_one(tx, ty, &filters).await? {
                Some(found) => found,
                None => body_id.unwrap_or_else(crate::fhir::new_id),
            };
            // The id a create would get, so that references to this entry can name it.
            if let Some(r) = resource.as_mut() {
                r.entry("id").or_insert_with(|| Value::from(id.as_str()));
            }
            (Target::Search(filters), Some(id))
        }
        (Verb::Patch, [_], Some(q)) => {
            let filters = condition(q).await?;
            let id = find_one(tx, ty, &filters)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("a {ty} matching the condition")))?;
            (Target::Search(filters), Some(id))
        }
        (Verb::Delete, [_], Some(q)) => (Target::Search(condition(q).await?), None),
        _ => {
            return Err(invalid(format!(
                "{} {} is not an interaction a transaction can hold",
                entry.method,
                if segments.len() > 3 { "this URL" } else { &entry.url }
            )))
        }
    };
    Ok(Planned { entry, ty, target, resource, id })
}

async fn find_one(
    tx: &mut WriteTx,
    ty: ResourceType,
    filters: &[crate::fhir::search::query::Filter],
) -> Result<Option<String>, AppError> {
    let mut ids = tx.find(ty, filters, 2).await?;
    if ids.len() > 1 {
        return Err(AppError::PreconditionFailed(format!(
            "the condition matched several {ty} resources; it must match at most one"
        )));
    }
    Ok(ids.pop())
}

/// Rewrites every `reference` in `value` that names a fullUrl of the Bundle or is a
/// conditional reference (`Patient?identifier=…`, which must match exactly one resource).
async fn rewrite(
    state: &AppState,
    caller: &Principal,
    tx: &mut WriteTx,
    value: &mut Map<String, Value>,
    identities: &HashMap<String, String>,
    conditional: &mut HashMap<String, String>,
) -> Result<(), AppError> {
    // Collect first (the JSON walk is synchronous), resolve, then replace.
    let mut found = Vec::new();
    collect_references(value, &mut found);
    let mut replacements: HashMap<String, String> = HashMap::new();
    for reference in found {
        if replacements.contains_key(&reference) {
            continue;
        }
        if let Some(target) = identities.get(&reference) {
            replacements.insert(reference, target.clone());
        } else if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
            return Err(invalid(format!("the reference {reference} names no fullUrl of this Bundle")));
        } else if let Some((ty, query)) = reference.split_once('?') {
            if let Some(target) = conditional.get(&reference) {
                replacements.insert(reference, target.clone());
                continue;
            }
            let ty = entry_type(state, ty)?;
            let filters = parse_condition(state, ty, query, "a conditional reference")?;
            let filters = confined_condition(state, caller, ty, Perm::Search, &filters).await?;
            let mut ids = tx.find(ty, &filters, 2).await?;
            if ids.len() != 1 {
                return Err(AppError::PreconditionFailed(format!(
                    "the conditional reference {ty}?… matched {} resources; it must match exactly one",
                    ids.len()
                )));
            }
            let target = format!("{ty}/{}", ids.remove(0));
            conditional.insert(reference.clone(), target.clone());
            replacements.insert(reference, target);
        }
    }
    if !replacements.is_empty() {
        replace_references(value, &replacements);
    }
    Ok(())
}

fn collect_references(value: &Map<String, Value>, out: &mut Vec<String>) {
    for (key, v) in value {
        match v {
            Value::String(s) if key == "reference" => out.push(s.clone()),
            Value::Object(o) => collect_references(o, out),
            Value::Array(items) => {
                items.iter().filter_map(Value::as_object).for_each(|o| collect_references(o, out));
            }
            _ => {}
        }
    }
}

fn replace_references(value: &mut Map<String, Value>, replacements: &HashMap<String, String>) {
    for (key, v) in value.iter_mut() {
        match v {
            Value::String(s) if key == "reference" => {
                if let Some(new) = replacements.get(s.as_str()) {
                    *s = new.clone();
                }
            }
            Value::Object(o) => replace_references(o, replacements),
            Value::Array(items) => {
                items.iter_mut().filter_map(Value::as_object_mut).for_each(|o| replace_references(o, replacements));
            }
            _ => {}
        }
    }
}

/// The write of a planned entry, its resource validated as the REST handlers validate it.
fn into_write(state: &AppState, plan: Planned<'_>) -> Result<Write, AppError> {
    let Planned { entry, ty, target, resource, id } = plan;
    let expect = expectation(entry)?;
    let kind = match (&entry.method, resource) {
        (Verb::Post, Some(mut resource)) => {
            let id = id.unwrap_or_default();
            resource.insert("id".into(), Value::from(id.as_str()));
            let derived = check_resource(state, ty, &resource, None)?;
            let if_none_exist = match &entry.if_none_exist {
                Some(q) => Some(parse_condition(state, ty, q, "ifNoneExist")?),
                None => None,
            };
            WriteKind::Create { id, resource, derived, if_none_exist }
        }
        (Verb::Put, Some(resource)) => {
            let url_id = match &target {
                Target::Id(id) => Some(id.as_str()),
                Target::Search(_) => None,
            };
            let derived = check_resource(state, ty, &resource, url_id)?;
            WriteKind::Update { target, resource, derived, expect }
        }
        (Verb::Patch, Some(resource)) => WriteKind::Patch { target, patch: entry_patch(&resource)?, expect },
        (Verb::Delete, _) => WriteKind::Delete { target, expect },
        _ => return Err(invalid("this entry cannot be written")),
    };
    Ok(Write { ty, kind })
}

/// The patch of a PATCH entry: a Parameters resource (FHIRPath Patch) or a Binary holding a
/// JSON Patch document.
fn entry_patch(resource: &Map<String, Value>) -> Result<Patch, AppError> {
    let malformed = |e: PatchError| match e {
        PatchError::Malformed(why) | PatchError::Failed(why) => invalid(why),
    };
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("Binary")
            if resource.get("contentType").and_then(Value::as_str) == Some("application/json-patch+json") =>
        {
            let data = resource.get("data").and_then(Value::as_str).unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| invalid("Binary.data is not base64"))?;
            let doc: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("Binary.data is not JSON"))?;
            Patch::parse_json_patch(doc).map_err(malformed)
        }
        _ => Patch::parse_fhirpath(resource).map_err(malformed),
    }
}

/// `ifMatch` and `ifNoneMatch` of a write entry.
fn expectation(entry: &Entry) -> Result<Expect, AppError> {
    let version = |text: &str| {
        let inner = text.trim().strip_prefix("W/").unwrap_or(text.trim()).trim_matches('"');
        inner
            .parse::<i64>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| invalid("ifMatch must name a version, as in W/\"3\""))
    };
    match (&entry.if_match, &entry.if_none_match) {
        (Some(_), Some(_)) => Err(invalid("ifMatch and ifNoneMatch exclude each other")),
        (Some(m), None) => Ok(Expect::Version(version(m)?)),
        (None, Some(n)) if n.trim() == "*" => Ok(Expect::Absent),
        (None, Some(_)) => Err(invalid("on a write, ifNoneMatch supports only '*'")),
        (None, None) => Ok(Expect::Any),
    }
}

/// `entry.response` (and the resource, as `Prefer` asks) of a write.
fn write_response(state: &AppState, ty: ResourceType, done: Done, ret: Return) -> Value {
    let mut response = Map::new();
    response.insert("status".into(), Value::from(status_line(done.status)));
    let mut entry = Map::new();
    if let Some(v) = &done.version {
        if done.status == StatusCode::CREATED {
            response.insert("location".into(), Value::from(format!("{ty}/{}/_history/{}", v.id, v.version_id)));
        }
        response.insert("etag".into(), Value::from(etag(v.version_id)));
        response.insert("lastModified".into(), Value::from(fhir::format_instant(v.last_updated)));
        if v.content.is_some() {
            entry.insert("fullUrl".into(), Value::from(format!("{}/{ty}/{}", state.base_url, v.id)));
        }
        match (ret, &v.content) {
            (Return::Representation, Some(content)) => {
                if let Ok(resource) = serde_json::from_str::<Value>(content) {
                    entry.insert("resource".into(), resource);
                }
            }
            (Return::OperationOutcome, _) => {
                response.insert("outcome".into(), operation_outcome(&[Issue::information(done.message)]));
            }
            _ => {}
        }
    }
    entry.insert("response".into(), Value::Object(response));
    Value::Object(entry)
}

fn status_line(status: StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
}

/// Runs one entry through the router as its own request and turns the answer into a
/// response entry: the status, `Location`, `ETag` and `Last-Modified` headers, and the body as
/// the resource (or, for an OperationOutcome of a failure, the outcome).
async fn dispatch(router: &Router, state: &AppState, entry: &Entry, outer: &Outer) -> Value {
    let mut request = Request::builder()
        .method(entry.method.as_method())
        .uri(format!("/fhir/{}", entry.url.replace(' ', "%20")))
        .header(header::ACCEPT, "application/fhir+json");
    // The entry runs as the Bundle's caller, with the Bundle's preferences.
    let break_glass = header::HeaderName::from_static(super::disclose::BREAK_GLASS_HEADER);
    for name in [header::AUTHORIZATION, header::HeaderName::from_static("prefer"), break_glass] {
        if let Some(v) = outer.headers.get(&name) {
            request = request.header(name, v);
        }
    }
    for (name, value) in [
        ("if-match", &entry.if_match),
        ("if-none-match", &entry.if_none_match),
        ("if-none-exist", &entry.if_none_exist),
        ("if-modified-since", &entry.if_modified_since),
    ] {
        if let Some(v) = value {
            request = request.header(name, v.as_str());
        }
    }
    let body = match &entry.resource {
        Some(resource) => {
            let json_patch =
                entry.method == Verb::Patch && resource.get("resourceType").and_then(Value::as_str) == Some("Binary");
            match json_patch {
                true => match entry_patch(resource) {
                    Ok(Patch::Json(p)) => {
                        request = request.header(header::CONTENT_TYPE, "application/json-patch+json");
                        Body::from(serde_json::to_string(&p).unwrap_or_default())
                    }
                    _ => return error_entry(invalid("Binary is not a JSON Patch document")),
                },
                false => {
                    request = request.header(header::CONTENT_TYPE, "application/fhir+json");
                    Body::from(Value::Object(resource.clone()).to_string())
                }
            }
        }
        None => Body::empty(),
    };
    if let Some(peer) = &outer.peer {
        request = request.extension(peer.clone());
    }
    let Ok(request) = request.body(body) else {
        return error_entry(invalid("request.url or a request header is not valid"));
    };
    let response = match router.clone().oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status();
    let (location, etag_value) = {
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        (header(header::LOCATION), header(header::ETAG))
    };
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let mut out = Map::new();
    let mut resp = Map::new();
    resp.insert("status".into(), Value::from(status_line(status)));
    if let Some(l) = location {
        let relative = l.strip_prefix(&state.base_url).unwrap_or(&l).trim_start_matches('/').to_owned();
        resp.insert("location".into(), Value::from(relative));
    }
    if let Some(e) = etag_value {
        resp.insert("etag".into(), Value::from(e));
    }
    if let Some(body) = body {
        if let Some(updated) = body.pointer("/meta/lastUpdated").cloned() {
            resp.insert("lastModified".into(), updated);
        }
        let is_outcome = body.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome");
        if is_outcome && !status.is_success() {
            resp.insert("outcome".into(), body);
        } else {
            out.insert("resource".into(), body);
        }
    }
    out.insert("response".into(), Value::Object(resp));
    Value::Object(out)
}

/// A response entry for an entry that could not even be dispatched.
fn error_entry(error: AppError) -> Value {
    json!({
        "response": {
            "status": status_line(error.status()),
            "outcome": operation_outcome(&error.issues()),
        }
    })
}
