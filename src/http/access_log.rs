//! `GET /Patient/{id}/$access-log`: who accessed a patient's record, and when — the audit
//! trail's events that name the patient, newest first, each cut down to when, who, what kind
//! of access and how it ended. The patient may ask about themself (a token for that patient,
//! or whose user is that Patient); callers that may search the audit trail may ask about
//! anyone. Network addresses, queries and other patients' references are left out.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::authorize::Caller;
use super::everything::bad;
use super::negotiate::{query_pairs, Format};
use super::search::page_url;
use crate::audit::AuditDetail;
use crate::auth::{Access, Perm};
use crate::error::AppError;
use crate::fhir::bundle::{Bundle, Entry};
use crate::fhir::search::query;
use crate::state::AppState;
use crate::store::{Counting, SearchError, StoreError};

/// Entries per page unless `_count` says otherwise.
const DEFAULT_COUNT: u32 = 50;

pub async fn access_log(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    format: Format,
    RawQuery(raw): RawQuery,
) -> Result<Response, AppError> {
    let audit_type = state.registry.resource_type("AuditEvent").ok_or(AppError::MethodNotAllowed)?;
    let own = caller.patient.as_deref() == Some(id.as_str())
        || caller.user(&state.base_url).is_some_and(|(t, i)| t == "Patient" && i == id);
    let auditor = matches!(caller.access("AuditEvent", Perm::Search), Access::Full);
    if !(own || auditor) {
        return Err(AppError::Forbidden(format!(
            "the access log of Patient/{id} is for that patient, or for callers that may search the audit trail"
        )));
    }
    let pairs = query_pairs(raw.as_deref().unwrap_or("").as_bytes())?;
    let mut search: Vec<(String, String)> =
        vec![("patient".into(), format!("Patient/{id}")), ("_sort".into(), "-date".into())];
    let count = match pairs.iter().find(|(k, _)| k == "_count") {
        Some((_, n)) => n.parse::<u32>().map_err(|_| bad("_count", "must be a non-negative integer"))?,
        None => DEFAULT_COUNT,
    };
    search.push(("_count".into(), count.min(state.limits.max_page_size).to_string()));
    let options = state.parse_options(true, state.limits.max_page_size);
    let q =
        query::parse(&state.registry.search, "AuditEvent", &search, options).map_err(|e| bad(&e.param, &e.reason))?;
    let cursor = pairs.iter().find(|(k, _)| k == "_cursor").map(|(_, v)| v.as_str());
    let page = state.store.search(audit_type, &q, cursor, Counting::None).await.map_err(|e| match e {
        SearchError::BadCursor => bad("_cursor", "is not one this server issued"),
        SearchError::Store(e) => AppError::from(e),
    })?;

    let base = &state.base_url;
    let path = format!("Patient/{id}/$access-log");
    let mut bundle = Bundle::new("searchset").link("self", page_url(base, &path, &pairs, None));
    if let Some(next) = &page.next {
        bundle = bundle.link("next", page_url(base, &path, &pairs, Some(next)));
    }
    let shown: Vec<Box<RawValue>> = page
        .matches
        .iter()
        .map(|v| {
            let event: Map<String, Value> = v
                .content
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok())
                .ok_or(AppError::Internal(StoreError::Corrupt))?;
            RawValue::from_string(project(&event, &id).to_string()).map_err(|_| AppError::Internal(StoreError::Corrupt))
        })
        .collect::<Result<_, _>>()?;
    for (v, raw) in page.matches.iter().zip(&shown) {
        bundle.push(Entry::search(format!("{base}/AuditEvent/{}", v.id), raw, "match"));
    }
    let mut response = format.respond(StatusCode::OK, bundle.to_json());
    let detail = AuditDetail { interaction: Some("operation"), patients: vec![id], ..AuditDetail::default() };
    response.extensions_mut().insert(detail);
    Ok(response)
}

/// The event as the patient sees it: when, what kind, the outcome, who (without network
/// details), why, and the patient.
fn project(event: &Map<String, Value>, patient: &str) -> Value {
    let mut out = Map::new();
    for key in ["resourceType", "id", "meta", "type", "subtype", "action", "recorded", "outcome", "purposeOfEvent"] {
        if let Some(v) = event.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    let agents: Vec<Value> = event
        .get("agent")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| {
            let mut kept = Map::new();
            for key in ["type", "who", "name", "requestor"] {
                if let Some(v) = a.get(key) {
                    kept.insert(key.into(), v.clone());
                }
            }
            Value::Object(kept)
        })
        .collect();
    out.insert("agent".into(), Value::Array(agents));
    if let Some(source) = event.get("source") {
        out.insert("source".into(), source.clone());
    }
    out.insert(
        "entity".into(),
        json!([{
            "what": {"reference": format!("Patient/{patient}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
        }]),
    );
    Value::Object(out)
}
