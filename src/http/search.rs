//! Search (search.html): `GET /{type}?…` and `POST /{type}/_search` with a form body, answered
//! with a `searchset` Bundle — matches, `_include`/`_revinclude` entries, an OperationOutcome
//! entry for ignored parameters, `total`, and `self`/`next` links whose cursor keeps paging
//! stable while others write.

use std::collections::HashSet;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::audited::patients_searched;
use super::authorize::{compartment_filter, confine_traversed, require, Caller};
use super::disclose::{disclose_traversed, disclosure, keep_disclosed};
use super::negotiate::{prefer_tokens, query_pairs, FormBody, Format};
use super::resource::TypePath;
use crate::audit::AuditDetail;
use crate::auth::{Access, Perm, Principal};
use crate::error::AppError;
use crate::fhir::bundle::{Bundle, Entry};
use crate::fhir::outcome::{operation_outcome, Issue, IssueType, Severity};
use crate::fhir::registry::ResourceType;
use crate::fhir::search::query::{self, Filter, Include, SearchQuery, Summary, Total, MAX_DEPTH};
use crate::state::AppState;
use crate::store::{Counting, SearchError, Version};

/// At most this many resources are added by `_include` and `_revinclude` to one page.
const MAX_INCLUDED: i64 = 1000;
/// At most this many of the matches a search withheld are named in its AuditEvent.
const WITHHELD_AUDITED: i64 = 100;

/// `GET /{type}?…`
pub async fn search_get(
    State(state): State<AppState>,
    TypePath(ty): TypePath,
    Caller(caller): Caller,
    format: Format,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, AppError> {
    let pairs = query_pairs(q.as_deref().unwrap_or("").as_bytes())?;
    search(&state, &caller, ty, format, &headers, pairs).await
}

/// `POST /{type}/_search` with `application/x-www-form-urlencoded` parameters (and any in the
/// URL).
pub async fn search_post(
    State(state): State<AppState>,
    TypePath(ty): TypePath,
    Caller(caller): Caller,
    format: Format,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    FormBody(body): FormBody,
) -> Result<Response, AppError> {
    let mut pairs = query_pairs(q.as_deref().unwrap_or("").as_bytes())?;
    pairs.extend(query_pairs(&body)?);
    search(&state, &caller, ty, format, &headers, pairs).await
}

/// `Prefer: handling=strict` makes unknown parameters errors (search.html#errors).
fn strict_handling(headers: &HeaderMap) -> bool {
    prefer_tokens(headers).any(|p| p == "handling=strict")
}

async fn search(
    state: &AppState,
    caller: &Principal,
    ty: ResourceType,
    format: Format,
    headers: &HeaderMap,
    pairs: Vec<(String, String)>,
) -> Result<Response, AppError> {
    let options = state.parse_options(strict_handling(headers), state.limits.max_page_size);
    let mut q = query::parse(&state.registry.search, ty.as_str(), &pairs, options)
        .map_err(|e| AppError::BadRequest(vec![Issue::at(IssueType::Invalid, e.param.clone(), e.reason.clone())]))?;
    if q.summary == Summary::Count {
        q.count = 0;
    }
    // Authorization: chains and `_has` may only look into types the caller may search, and a
    // confined caller sees its compartment only, at every level.
    for filter in &mut q.filters {
        confine_traversed(caller, filter)?;
    }
    if let Some(confine) = compartment_filter(&require(caller, ty.as_str(), Perm::Search)?) {
        q.filters.push(confine);
    }
    // Disclosure: what the caller may not see is not found, counted or followed, at any level.
    let disclosed = disclosure(state, caller).await?;
    if let Some(d) = &disclosed {
        for filter in &mut q.filters {
            disclose_traversed(filter, d);
        }
        q.filters.push(d.clone());
    }
    // The total is counted for the first page; later pages come from a `next` link, whose first
    // page carried it (search.html#total: the server may leave it out).
    // search.html#total lets a server leave `total` out. Without `_total`, it is given when it
    // costs nothing (every match fits on the first page); `estimate` counts up to the configured
    // cap, `accurate` counts all. Later pages, reached through `next`, are not counted again.
    let counting = match (q.total, q.summary) {
        (_, Summary::Count) | (Total::Accurate, _) => Counting::All,
        _ if q.cursor.is_some() => Counting::None,
        (Total::None, _) => Counting::None,
        (Total::Unspecified, _) => Counting::IfComplete,
        (Total::Estimate, _) => Counting::UpTo(state.limits.total_count_cap),
    };
    let page = state.store.search(ty, &q, q.cursor.as_deref(), counting).await.map_err(|e| match e {
        SearchError::BadCursor => {
            AppError::invalid(IssueType::Invalid, "_cursor is not one this server issued for this search")
        }
        SearchError::Store(e) => AppError::from(e),
    })?;

    let (included, mut withheld) = includes(state, caller, disclosed.as_ref(), ty, &q, &page.matches).await?;
    if let (Some(d), Some(range)) = (&disclosed, page_range(&q, &page)) {
        // For the audit trail: what the stretch of the id order this page covered withheld
        // (searches in another order name none: finding them would mean scanning them all).
        let mut filters: Vec<Filter> = q.filters.iter().filter(|f| *f != d).cloned().collect();
        filters.extend([range, Filter::Not(Box::new(d.clone()))]);
        let hidden = state.store.ids(ty.as_str(), &filters, WITHHELD_AUDITED).await?;
        withheld.splice(0..0, hidden.into_iter().map(|id| format!("{ty}/{id}")));
    }

    let base = &state.base_url;
    let self_url = page_url(base, ty.as_str(), &pairs, None);
    let mut bundle = Bundle::new("searchset").link("self", self_url);
    if let Some(total) = page.total {
        bundle = bundle.total(u64::try_from(total).unwrap_or_default());
    }
    if let Some(next) = &page.next {
        bundle = bundle.link("next", page_url(base, ty.as_str(), &pairs, Some(next)));
    }
    if let Some(previous) = &page.previous {
        bundle = bundle.link("previous", page_url(base, ty.as_str(), &pairs, Some(previous)));
    }
    let shaped: Vec<Box<RawValue>> = page.matches.iter().chain(&included).map(|v| shape(state, v, &q)).collect();
    let outcome = (!q.ignored.is_empty()).then(|| {
        let issue = Issue {
            severity: Severity::Warning,
            code: IssueType::NotSupported,
            diagnostics: format!("these parameters were not understood and were ignored: {}", q.ignored.join(", ")),
            expression: Vec::new(),
        };
        RawValue::from_string(operation_outcome(&[issue]).to_string()).expect("an OperationOutcome is JSON")
    });
    for (i, (v, raw)) in page.matches.iter().chain(&included).zip(&shaped).enumerate() {
        let mode = if i < page.matches.len() { "match" } else { "include" };
        bundle.push(Entry::search(format!("{base}/{}/{}", v.resource_type, v.id), raw, mode));
    }
    if let Some(outcome) = &outcome {
        bundle.push(Entry::search(format!("urn:uuid:{}", uuid::Uuid::new_v4()), outcome, "outcome"));
    }
    let mut response = format.respond(StatusCode::OK, bundle.to_json());
    let patients = patients_searched(ty.as_str(), &q.filters);
    let disclosed = match caller.break_glass {
        Some(_) => page.matches.iter().chain(&included).map(|v| format!("{}/{}", v.resource_type, v.id)).collect(),
        None => Vec::new(),
    };
    response.extensions_mut().insert(AuditDetail { patients, withheld, disclosed, ..AuditDetail::default() });
    Ok(response)
}

/// The included resources the caller may read: types it may not read are left out, a confined
/// caller gets those in its compartment only, and what disclosure withholds is left out (and
/// returned second, for the audit trail).
async fn readable(
    state: &AppState,
    caller: &Principal,
    disclosed: Option<&Filter>,
    versions: Vec<Version>,
) -> Result<(Vec<Version>, Vec<String>), AppError> {
    if caller.unrestricted || versions.is_empty() {
        return Ok((versions, Vec::new()));
    }
    let mut types: Vec<String> = versions.iter().map(|v| v.resource_type.clone()).collect();
    types.sort();
    types.dedup();
    let mut allowed: HashSet<(String, String)> = HashSet::new();
    for ty in types {
        let ids: Vec<String> = versions.iter().filter(|v| v.resource_type == ty).map(|v| v.id.clone()).collect();
        let members = match caller.access(&ty, Perm::Read) {
            Access::Denied => continue,
            Access::Full => ids.into_iter().collect(),
            Access::Compartment(c) => state.store.compartment_members(&ty, &ids, &c.patient, c.params).await?,
        };
        allowed.extend(members.into_iter().map(|id| (ty.clone(), id)));
    }
    let permitted =
        versions.into_iter().filter(|v| allowed.contains(&(v.resource_type.clone(), v.id.clone()))).collect();
    Ok(keep_disclosed(state, disclosed, permitted).await?)
}

/// The stretch of ids a forward page of a search in id order covered: after the cursor's id,
/// through its last match (to the end on the last page); `None` for other orders.
fn page_range(q: &SearchQuery, page: &crate::store::SearchPage) -> Option<Filter> {
    if !q.sort.is_empty() || q.count == 0 {
        return None;
    }
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let key: Vec<Value> = serde_json::from_str(c.strip_prefix('n')?).ok()?;
            Some(key.last()?.as_str()?.to_owned())
        }
    };
    let through = match &page.next {
        Some(_) => Some(page.matches.last()?.id.clone()),
        None => None,
    };
    Some(Filter::IdRange { after, through })
}

/// The URL `{base}/{path}` with this request's parameters, `_cursor` set to `cursor` (for
/// `next` and `previous`) or left out.
pub(super) fn page_url(base: &str, path: &str, pairs: &[(String, String)], cursor: Option<&str>) -> String {
    let mut kept: Vec<(&str, &str)> =
        pairs.iter().filter(|(k, _)| k != "_cursor").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Some(c) = cursor {
        kept.push(("_cursor", c));
    }
    let query = serde_urlencoded::to_string(&kept).unwrap_or_default();
    if query.is_empty() {
        format!("{base}/{path}")
    } else {
        format!("{base}/{path}?{query}")
    }
}

/// Resources added by `_include` and `_revinclude` (with `:iterate`, repeated on what they add),
/// without repeating a match or each other, and only those the caller may read.
async fn includes(
    state: &AppState,
    caller: &Principal,
    disclosed: Option<&Filter>,
    ty: ResourceType,
    q: &SearchQuery,
    matches: &[Version],
) -> Result<(Vec<Version>, Vec<String>), AppError> {
    if q.include.is_empty() && q.revinclude.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut withheld = Vec::new();
    let mut seen: HashSet<(String, String)> = matches.iter().map(|v| (v.resource_type.clone(), v.id.clone())).collect();
    let mut added: Vec<Version> = Vec::new();
    let mut frontier: Vec<Version> = matches.to_vec();
    for round in 0..=MAX_DEPTH {
        let mut found = Vec::new();
        let applies = |inc: &&Include| round == 0 || inc.iterate;
        for inc in q.include.iter().filter(applies) {
            let sources: Vec<String> =
                frontier.iter().filter(|v| v.resource_type == inc.source_type).map(|v| v.id.clone()).collect();
            found.extend(
                state
                    .store
                    .include(&inc.source_type, &inc.param, inc.target_type.as_deref(), &sources, MAX_INCLUDED)
                    .await?,
            );
        }
        for inc in q.revinclude.iter().filter(applies) {
            let targets: Vec<&Version> =
                frontier.iter().filter(|v| round > 0 || v.resource_type == ty.as_str()).collect();
            let mut types: Vec<&str> = targets.iter().map(|v| v.resource_type.as_str()).collect();
            types.dedup();
            for target_type in types {
                let ids: Vec<String> =
                    targets.iter().filter(|v| v.resource_type == target_type).map(|v| v.id.clone()).collect();
                found.extend(
                    state.store.revinclude(&inc.source_type, &inc.param, target_type, &ids, MAX_INCLUDED).await?,
                );
            }
        }
        // What the caller may not read is neither shown nor followed further.
        let (found, hidden) = readable(state, caller, disclosed, found).await?;
        withheld.extend(hidden);
        frontier = found.into_iter().filter(|v| seen.insert((v.resource_type.clone(), v.id.clone()))).collect();
        if frontier.is_empty() || added.len() as i64 >= MAX_INCLUDED {
            break;
        }
        added.extend(frontier.iter().cloned());
    }
    added.truncate(MAX_INCLUDED as usize);
    withheld.sort();
    withheld.dedup();
    Ok((added, withheld))
}

/// The resource as `_summary` and `_elements` ask (search.html#summary, #elements); marked
/// SUBSETTED when elements were left out.
fn shape(state: &AppState, v: &Version, q: &SearchQuery) -> Box<RawValue> {
    let content = v.content.clone().unwrap_or_default();
    if q.summary == Summary::False && q.elements.is_empty() {
        return RawValue::from_string(content).unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("JSON"));
    }
    let Ok(Value::Object(resource)) = serde_json::from_str::<Value>(&content) else {
        return RawValue::from_string(content).unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("JSON"));
    };
    let defs = &state.registry.definitions;
    let mandatory: Vec<String> =
        defs.children(&v.resource_type).iter().filter(|e| e.min > 0).map(|e| e.name.clone()).collect();
    let keep = |key: &str| -> bool {
        let name = key.trim_start_matches('_');
        let element =
            defs.children(&v.resource_type).iter().find(|e| name.starts_with(e.name.as_str())).map(|e| e.name.as_str());
        let is = |list: &[String]| element.is_some_and(|e| list.iter().any(|x| x == e));
        matches!(key, "resourceType" | "id" | "meta")
            || match q.summary {
                Summary::True => is(defs.summary_elements(&v.resource_type)),
                Summary::Text => key == "text" || is(&mandatory),
                Summary::Data => key != "text",
                Summary::False | Summary::Count => q.elements.iter().any(|e| e == name) || is(&mandatory),
            }
    };
    let mut out: Map<String, Value> = resource.into_iter().filter(|(k, _)| keep(k)).collect();
    let subsetted = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
    if let Some(Value::Object(meta)) = out.get_mut("meta") {
        match meta.get_mut("tag") {
            Some(Value::Array(tags)) => tags.push(subsetted),
            _ => {
                meta.insert("tag".into(), json!([subsetted]));
            }
        }
    }
    RawValue::from_string(Value::Object(out).to_string()).expect("a resource is JSON")
}
