//! `GET /Patient/{id}/$everything` (patient-operation-everything.html): the patient and every
//! resource in their compartment — care plans, goals, encounters, assessments, referrals,
//! tasks, care teams — as one searchset Bundle, paged, within what the caller may search.
//!
//! The compartment is searched type by type with the same compartment filter authorization
//! uses; a page's `next` link carries the type it stopped in and that type's keyset cursor, so
//! pages neither repeat nor skip a resource while others write.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::value::RawValue;

use super::authorize::{check_readable, Caller};
use super::disclose::disclosure;
use super::negotiate::{query_pairs, Format};
use super::search::page_url;
use crate::audit::AuditDetail;
use crate::auth::{compartment_params, Access, Perm};
use crate::error::AppError;
use crate::fhir::bundle::{Bundle, Entry};
use crate::fhir::outcome::{Issue, IssueType};
use crate::fhir::registry::ResourceType;
use crate::fhir::search::query::{self, Filter};
use crate::state::AppState;
use crate::store::{Counting, SearchError};

/// Entries per page unless `_count` says otherwise.
const DEFAULT_COUNT: u32 = 50;

/// `GET /Patient/{id}/$everything` with `_count`, `_since` and `_type`.
pub async fn everything(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    format: Format,
    RawQuery(raw): RawQuery,
) -> Result<Response, AppError> {
    let patient_type = state.registry.resource_type("Patient").ok_or(AppError::MethodNotAllowed)?;
    check_readable(&state, &caller, "Patient", &id).await?;
    // A confined caller's own record only: a Patient linked to theirs is in their compartment
    // (Patient.link), but that patient's record is not.
    if let Access::Compartment(c) = caller.access("Patient", Perm::Read) {
        if c.patient != id {
            return Err(AppError::Forbidden(format!("Patient/{id} is not the patient the token is for")));
        }
    }
    match state.store.read(patient_type, &id).await? {
        None => return Err(AppError::NotFound(format!("Patient/{id}"))),
        Some(v) if v.is_deleted() => return Err(AppError::Gone(format!("Patient/{id}"))),
        Some(_) => {}
    }
    let pairs = query_pairs(raw.as_deref().unwrap_or("").as_bytes())?;
    let param = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let count = match param("_count") {
        Some(n) => n
            .parse::<u32>()
            .map_err(|_| bad("_count", "must be a non-negative integer"))?
            .min(state.limits.max_page_size),
        None => DEFAULT_COUNT.min(state.limits.max_page_size),
    };
    let wanted: Option<Vec<&str>> = param("_type").map(|t| t.split(',').map(str::trim).collect());
    if let Some(unknown) = wanted.iter().flatten().find(|t| state.registry.resource_type(t).is_none()) {
        return Err(bad("_type", &format!("{unknown} is not a type this server holds")));
    }
    // The compartment's types the caller may search: the Patient first, then registry order.
    let mut types: Vec<ResourceType> = state
        .registry
        .types()
        .filter(|t| !state.registry.server_written(t.as_str()) && compartment_params(t.as_str()).is_some())
        .filter(|t| wanted.as_ref().is_none_or(|w| w.contains(&t.as_str())))
        .filter(|t| !matches!(caller.access(t.as_str(), Perm::Search), Access::Denied))
        .collect();
    types.sort_by_key(|t| t.as_str() != "Patient");
    let (mut index, mut cursor) = match param("_cursor") {
        Some(c) => {
            let (i, inner) = c.split_once('~').ok_or_else(|| bad("_cursor", "is not one this server issued"))?;
            let i: usize = i.parse().map_err(|_| bad("_cursor", "is not one this server issued"))?;
            (i, Some(inner.to_owned()))
        }
        None => (0, None),
    };

    let disclosed = disclosure(&state, &caller).await?;
    let mut matches = Vec::new();
    let mut next = None;
    // `_count=0` asks for no entries (and so no further pages).
    while let Some(ty) = types.get(index).copied().filter(|_| count > 0) {
        let remaining = count.saturating_sub(matches.len() as u32);
        if remaining == 0 {
            next = Some(format!("{index}~"));
            break;
        }
        let mut since = Vec::new();
        if let Some(s) = param("_since") {
            since.push(("_lastUpdated".to_owned(), format!("ge{s}")));
        }
        let options = state.parse_options(true, remaining);
        let mut q =
            query::parse(&state.registry.search, ty.as_str(), &since, options).map_err(|e| bad("_since", &e.reason))?;
        q.count = remaining;
        q.filters.push(Filter::Compartment {
            patient: id.clone(),
            params: compartment_params(ty.as_str()).unwrap_or_default().to_vec(),
        });
        q.filters.extend(disclosed.clone());
        let after = cursor.take().filter(|c| !c.is_empty());
        let page = state.store.search(ty, &q, after.as_deref(), Counting::None).await.map_err(|e| match e {
            SearchError::BadCursor => bad("_cursor", "is not one this server issued"),
            SearchError::Store(e) => AppError::from(e),
        })?;
        matches.extend(page.matches);
        if let Some(n) = page.next {
            next = Some(format!("{index}~{n}"));
            break;
        }
        index += 1;
    }

    let base = &state.base_url;
    let path = format!("Patient/{id}/$everything");
    let link = |cursor: Option<&str>| page_url(base, &path, &pairs, cursor);
    let mut bundle = Bundle::new("searchset").link("self", link(None));
    if let Some(n) = &next {
        bundle = bundle.link("next", link(Some(n)));
    }
    let raws: Vec<Box<RawValue>> = matches
        .iter()
        .map(|v| RawValue::from_string(v.content.clone().unwrap_or_default()))
        .collect::<Result<_, _>>()
        .map_err(|_| AppError::Internal(crate::store::StoreError::Corrupt))?;
    for (v, raw) in matches.iter().zip(&raws) {
        bundle.push(Entry::search(format!("{base}/{}/{}", v.resource_type, v.id), raw, "match"));
    }
    let mut response = format.respond(StatusCode::OK, bundle.to_json());
    let entities: Vec<String> =
        matches.iter().map(|v| format!("{}/{}/_history/{}", v.resource_type, v.id, v.version_id)).collect();
    let detail = AuditDetail {
        interaction: Some("operation"),
        disclosed: if caller.break_glass.is_some() { entities.clone() } else { Vec::new() },
        entities,
        patients: vec![id],
        ..AuditDetail::default()
    };
    response.extensions_mut().insert(detail);
    Ok(response)
}

/// 400 for a parameter of an operation: `reason` completes "`param` …".
pub(super) fn bad(param: &str, reason: &str) -> AppError {
    AppError::BadRequest(vec![Issue::at(IssueType::Invalid, param.to_owned(), format!("{param} {reason}"))])
}
