//! History at system, type and instance level (http.html#history): Bundles of type `history`,
//! newest first, with `_count`, `_since` and `next` links that carry a keyset cursor, so paging
//! is stable under concurrent writes and needs no server-side state.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::value::RawValue;

use super::authorize::{check_readable, Caller};
use super::disclose::{self, disclosure, keep_disclosed};
use super::negotiate::{etag, Format};
use super::resource::{Target, TypePath};
use crate::audit::AuditDetail;
use crate::auth::Principal;
use crate::error::AppError;
use crate::fhir::bundle::{Bundle, Entry, EntryRequest, EntryResponse};
use crate::fhir::outcome::IssueType;
use crate::fhir::{format_instant, parse_date_time, Millis};
use crate::state::AppState;
use crate::store::{HistoryCursor, HistoryQuery, HistoryScope, Version};

const DEFAULT_COUNT: u32 = 50;
const MAX_COUNT: u32 = 1000;

/// The history parameters of a request.
struct Params {
    count: u32,
    since: Option<(String, Millis)>,
    cursor: Option<HistoryCursor>,
}

fn parse_params(query: Option<&str>) -> Result<Params, AppError> {
    let pairs = super::negotiate::query_pairs(query.unwrap_or("").as_bytes())?;
    let mut params = Params { count: DEFAULT_COUNT, since: None, cursor: None };
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => {
                let n: u32 = value
                    .parse()
                    .map_err(|_| AppError::invalid(IssueType::Invalid, "_count must be a non-negative integer"))?;
                params.count = n.min(MAX_COUNT);
            }
            "_since" => {
                let ms = parse_date_time(&value)
                    .ok_or_else(|| AppError::invalid(IssueType::Invalid, "_since must be a FHIR instant"))?;
                params.since = Some((value, ms));
            }
            "_cursor" => {
                params.cursor =
                    Some(parse_cursor(&value).ok_or_else(|| {
                        AppError::invalid(IssueType::Invalid, "_cursor is not one this server issued")
                    })?);
            }
            // Formatting parameters are handled by content negotiation.
            "_format" | "_pretty" => {}
            other => {
                return Err(AppError::invalid(
                    IssueType::NotSupported,
                    format!("history does not support the parameter '{other}' (supported: _count, _since)"),
                ))
            }
        }
    }
    Ok(params)
}

/// `last_updated:type:id:version` of the last entry of the previous page (ids never hold ':').
fn parse_cursor(text: &str) -> Option<HistoryCursor> {
    let mut parts = text.split(':');
    let cursor = HistoryCursor {
        last_updated: parts.next()?.parse().ok()?,
        resource_type: parts.next()?.to_owned(),
        id: parts.next()?.to_owned(),
        version_id: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(cursor)
}

/// How many rounds of reading a history page takes at most to fill itself past withheld entries.
const FILL_ROUNDS: usize = 8;

/// A cursor as `_cursor` carries it (read back by [`parse_cursor`]).
fn cursor_text(c: &HistoryCursor) -> String {
    format!("{}:{}:{}:{}", c.last_updated, c.resource_type, c.id, c.version_id)
}

/// The position after `v`.
fn cursor_of(v: &Version) -> HistoryCursor {
    HistoryCursor {
        last_updated: v.last_updated,
        resource_type: v.resource_type.clone(),
        id: v.id.clone(),
        version_id: v.version_id,
    }
}

/// `GET /_history`.
pub async fn system(
    State(state): State<AppState>,
    Caller(caller): Caller,
    format: Format,
    RawQuery(q): RawQuery,
) -> Result<Response, AppError> {
    history(&state, &caller, format, HistoryScope::System, "_history".into(), q.as_deref()).await
}

/// `GET /{type}/_history`.
pub async fn type_level(
    State(state): State<AppState>,
    TypePath(ty): TypePath,
    Caller(caller): Caller,
    format: Format,
    RawQuery(q): RawQuery,
) -> Result<Response, AppError> {
    history(&state, &caller, format, HistoryScope::Type(ty), format!("{ty}/_history"), q.as_deref()).await
}

/// `GET /{type}/{id}/_history`: 404 when the resource never existed.
pub async fn instance(
    State(state): State<AppState>,
    target: Target,
    Caller(caller): Caller,
    format: Format,
    RawQuery(q): RawQuery,
) -> Result<Response, AppError> {
    check_readable(&state, &caller, target.ty.as_str(), &target.id).await?;
    match state.store.read(target.ty, &target.id).await? {
        None => return Err(AppError::NotFound(format!("{}/{}", target.ty, target.id))),
        // Asked for by id, a withheld resource is refused rather than shown without versions.
        Some(current) => {
            if let Err(refused) = disclose::check_version(&state, &caller, &current).await {
                return Ok(refused);
            }
        }
    }
    let path = format!("{}/{}/_history", target.ty, target.id);
    let entity = format!("{}/{}", target.ty, target.id);
    let scope = HistoryScope::Instance(target.ty, target.id);
    let mut response = history(&state, &caller, format, scope, path, q.as_deref()).await?;
    if let Some(detail) = response.extensions_mut().get_mut::<AuditDetail>() {
        detail.entities = vec![entity];
    }
    Ok(response)
}

async fn history(
    state: &AppState,
    caller: &Principal,
    format: Format,
    scope: HistoryScope,
    path: String,
    query: Option<&str>,
) -> Result<Response, AppError> {
    let params = parse_params(query)?;
    let disclosed = disclosure(state, caller).await?;
    let count = params.count as usize;
    let (mut versions, mut withheld) = (Vec::new(), Vec::new());
    let mut cursor = params.cursor.clone();
    let mut has_next = false;
    // A page is filled with what the caller may see. Its `next` link continues after the last
    // entry shown, never after a withheld one (the cursor names its entry); withheld entries
    // are looked at again, and passed over again, by the next page.
    for _ in 0..FILL_ROUNDS {
        let remaining = count - versions.len();
        let q = HistoryQuery {
            scope: scope.clone(),
            since: params.since.as_ref().map(|s| s.1),
            cursor: cursor.clone(),
            count: remaining as u32 + 1,
        };
        let mut batch = state.store.history(&q).await?;
        let more = batch.len() > remaining;
        batch.truncate(remaining);
        cursor = batch.last().map(cursor_of).or(cursor);
        let (kept, hidden) = keep_disclosed(state, disclosed.as_ref(), batch).await?;
        versions.extend(kept);
        withheld.extend(hidden);
        // `_count=0` asks for no entries, and so for no further pages.
        has_next = more && count > 0;
        if !more || versions.len() == count {
            break;
        }
    }
    let last_seen = match &disclosed {
        None => cursor.as_ref().map(cursor_text),
        // Nothing shown after every round: the page ends without a way on rather than with
        // a cursor that would name a withheld entry.
        Some(_) => versions.last().map(|v| cursor_text(&cursor_of(v))),
    };

    let base = &state.base_url;
    let page_url = |cursor: Option<String>| {
        let mut pairs = vec![("_count", params.count.to_string())];
        if let Some((since, _)) = &params.since {
            pairs.push(("_since", since.clone()));
        }
        if let Some(c) = cursor {
            pairs.push(("_cursor", c));
        }
        format!("{base}/{path}?{}", serde_urlencoded::to_string(&pairs).unwrap_or_default())
    };
    let self_cursor = params.cursor.as_ref().map(cursor_text);
    let mut bundle = Bundle::new("history").link("self", page_url(self_cursor));
    if let (true, Some(next)) = (has_next, last_seen) {
        bundle = bundle.link("next", page_url(Some(next)));
    }
    let raw: Vec<Option<Box<RawValue>>> =
        versions.iter().map(|v| v.content.clone().and_then(|c| RawValue::from_string(c).ok())).collect();
    for (version, resource) in versions.iter().zip(&raw) {
        bundle.push(entry(base, version, resource.as_deref()));
    }
    let mut response = format.respond(StatusCode::OK, bundle.to_json());
    let disclosed = match caller.break_glass {
        Some(_) => versions.iter().map(|v| format!("{}/{}/_history/{}", v.resource_type, v.id, v.version_id)).collect(),
        None => Vec::new(),
    };
    response.extensions_mut().insert(AuditDetail { withheld, disclosed, ..AuditDetail::default() });
    Ok(response)
}

fn entry<'a>(base: &str, v: &Version, resource: Option<&'a RawValue>) -> Entry<'a> {
    let (method, url, status) = match v.method.as_str() {
        "POST" => ("POST", v.resource_type.clone(), "201 Created"),
        "DELETE" => ("DELETE", format!("{}/{}", v.resource_type, v.id), "204 No Content"),
        _ => ("PUT", format!("{}/{}", v.resource_type, v.id), if v.version_id == 1 { "201 Created" } else { "200 OK" }),
    };
    Entry {
        full_url: format!("{base}/{}/{}", v.resource_type, v.id),
        resource,
        search: None,
        request: Some(EntryRequest { method, url }),
        response: Some(EntryResponse {
            status: status.into(),
            etag: Some(etag(v.version_id)),
            last_modified: Some(format_instant(v.last_updated)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = parse_cursor("1700000000000:CarePlan:a-1.b:3").unwrap();
        assert_eq!(
            (c.last_updated, c.resource_type.as_str(), c.id.as_str(), c.version_id),
            (1_700_000_000_000, "CarePlan", "a-1.b", 3)
        );
        assert!(parse_cursor("1:CarePlan:x").is_none());
        assert!(parse_cursor("x:CarePlan:x:1").is_none());
    }
}
