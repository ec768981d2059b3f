//! The audit layer: the outermost layer of the FHIR routes, so that it sees every request —
//! denied, failed or answered — and records it ([`crate::audit`]). Successful writes are
//! recorded by their own transaction and marked [`Audited`]; this layer records everything
//! else, with what the handler reported ([`AuditDetail`]), and answers 503 when the record
//! cannot be stored (fail closed).

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::audit::{AuditDetail, AuditRecord, Audited};
use crate::auth::{compartment_params, Principal};
use crate::error::AppError;
use crate::fhir::search::index::{IndexEntry, IndexValue};
use crate::fhir::search::query::{Filter, SearchValue};
use crate::serve::Peer;
use crate::state::AppState;
use crate::store::StoreError;

/// Middleware: records every FHIR interaction in the audit trail.
pub async fn audit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let seen = Seen::of(&req);
    if seen.route == "/fhir/.well-known/smart-configuration" {
        return next.run(req).await;
    }
    let response = next.run(req).await;
    finish(&state, seen, response).await
}

/// Answers a FHIR request that no route takes (an unknown URL, or a method its URL does not
/// offer) with `error`, audited like every other interaction (with no caller: routing comes
/// before authentication).
pub async fn unrouted(state: &AppState, req: Request, error: AppError) -> Response {
    let seen = Seen::of(&req);
    drop(req);
    finish(state, seen, error.into_response()).await
}

/// What the record needs of the request, taken before the handler consumes it.
struct Seen {
    method: Method,
    /// The matched route, empty when none matched.
    route: String,
    path: String,
    query: Option<String>,
    peer: Option<Peer>,
}

impl Seen {
    fn of(req: &Request) -> Self {
        Self {
            method: req.method().clone(),
            route: req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default(),
            path: req.uri().path().to_owned(),
            query: req.uri().query().map(str::to_owned),
            peer: req.extensions().get::<Peer>().cloned(),
        }
    }
}

/// Records the interaction that `response` answers, unless its write transaction did, and
/// answers 503 instead when the record cannot be stored (fail closed).
async fn finish(state: &AppState, seen: Seen, mut response: Response) -> Response {
    if response.extensions().get::<Audited>().is_some() {
        return response;
    }
    let Seen { method, route, path, query, peer } = seen;
    let detail = response.extensions_mut().remove::<AuditDetail>().unwrap_or_default();
    let (interaction, action) = detail.interaction.map_or_else(|| interaction(&method, &route), |i| (i, "E"));
    let resource_type = super::resource_type_of(state, &path);
    let searched = matches!(interaction, "search-type" | "history-type" | "history-instance" | "history-system");
    let mut record = AuditRecord {
        interaction,
        action,
        status: response.status().as_u16(),
        caller: response.extensions().get::<Principal>().cloned(),
        address: peer.as_ref().map(|p| p.addr.ip().to_string()),
        certificate: peer.and_then(|p| p.client_subject),
        resource_type,
        entities: detail.entities,
        query: if searched { query } else { None },
        patients: detail.patients,
        withheld: detail.withheld,
        break_glass: None,
        alert: false,
    };
    record.break_glass = record.caller.as_ref().and_then(|c| c.break_glass.clone());
    // Breaking the glass is recorded twice: with the interaction, and as a security alert
    // listing everything disclosed.
    // Refused attempts raise the alert too (with the refusal as the outcome).
    let alert = record.break_glass.as_ref().map(|_| {
        let disclosed = if detail.disclosed.is_empty() { record.entities.clone() } else { detail.disclosed };
        AuditRecord { entities: disclosed, query: None, withheld: Vec::new(), alert: true, ..record.clone() }
    });
    if state.audit.record(record).await.is_err() {
        return AppError::Unavailable(StoreError::AuditUnavailable).into_response();
    }
    if let Some(alert) = alert {
        if state.audit.record(alert).await.is_err() {
            return AppError::Unavailable(StoreError::AuditUnavailable).into_response();
        }
    }
    response
}

/// The `restful-interaction` code and BALP action a route implies.
pub(super) fn interaction(method: &Method, route: &str) -> (&'static str, &'static str) {
    match (method.as_str(), route) {
        ("GET", "/fhir/metadata") => ("capabilities", "R"),
        ("GET", "/fhir/{type}") | ("POST", "/fhir/{type}/_search") => ("search-type", "E"),
        ("GET", "/fhir/{type}/{id}") => ("read", "R"),
        ("GET", "/fhir/{type}/{id}/_history/{vid}") => ("vread", "R"),
        ("GET", "/fhir/{type}/{id}/_history") => ("history-instance", "R"),
        ("GET", "/fhir/{type}/_history") => ("history-type", "R"),
        ("GET", "/fhir/_history") => ("history-system", "R"),
        ("POST", "/fhir/{type}") => ("create", "C"),
        ("PUT", _) => ("update", "U"),
        ("PATCH", _) => ("patch", "U"),
        ("DELETE", _) => ("delete", "D"),
        ("POST", "/fhir") | ("POST", "/fhir/") => ("batch", "E"),
        _ => ("operation", "E"),
    }
}

/// What a read tells the audit layer: the version read and its patients.
pub fn read_detail(state: &AppState, ty: &str, id: &str, version: i64, content: Option<&str>) -> AuditDetail {
    let patients = patients_of(state, ty, id, content);
    AuditDetail { entities: vec![format!("{ty}/{id}/_history/{version}")], patients, ..AuditDetail::default() }
}

/// The patients whose compartment a stored version's content (none when deleted) puts it in.
/// Only the compartment's parameters are extracted, not the whole index.
pub fn patients_of(state: &AppState, ty: &str, id: &str, content: Option<&str>) -> Vec<String> {
    let Some(content) = content else {
        return Vec::new();
    };
    let params = compartment_params(ty).unwrap_or_default();
    let index = match serde_json::from_str::<Value>(content) {
        Ok(resource) if !params.is_empty() => {
            let (search, defs) = (&state.registry.search, &state.registry.definitions);
            search.extract_only(defs, ty, &resource, &state.base_url, params)
        }
        _ => Vec::new(),
    };
    patients_in(ty, id, &index)
}

/// The patients whose compartment a resource with these index entries is in.
pub fn patients_in(ty: &str, id: &str, index: &[IndexEntry]) -> Vec<String> {
    let mut out = Vec::new();
    if ty == "Patient" {
        out.push(id.to_owned());
    }
    let params = compartment_params(ty).unwrap_or_default();
    for entry in index.iter().filter(|e| params.contains(&e.param)) {
        if let IndexValue::Reference { target_type: Some(t), target_id: Some(p), .. } = &entry.value {
            if t == "Patient" && !out.contains(p) {
                out.push(p.clone());
            }
        }
    }
    out
}

/// The patients a search names: in a compartment parameter, or as the compartment the caller
/// is confined to.
pub fn patients_searched(ty: &str, filters: &[Filter]) -> Vec<String> {
    let params = compartment_params(ty).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for filter in filters {
        match filter {
            Filter::Compartment { patient, .. } => out.push(patient.clone()),
            Filter::Test { param, values, .. } if params.contains(param) => {
                for v in values {
                    if let SearchValue::Reference { target_type, id: Some(id), .. } = v {
                        if target_type.as_deref().is_none_or(|t| t == "Patient") {
                            out.push(id.clone());
                        }
                    }
                }
            }
            Filter::Id(ids) if ty == "Patient" => out.extend(ids.iter().cloned()),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}
