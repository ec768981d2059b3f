//! The instance and type interactions on `/{type}` and `/{type}/{id}`: create, read, vread,
//! update and delete (http.html). One handler per interaction serves every supported type.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::negotiate::{etag, if_match, resource_response, FhirJson, Format, Return};
use crate::error::AppError;
use crate::fhir::outcome::{operation_outcome, Issue, IssueType};
use crate::fhir::registry::ResourceType;
use crate::fhir::search::query::{self, Filter};
use crate::fhir::{primitives, validate};
use crate::state::AppState;
use crate::store::{Derived, Version, Written};

/// The resource addressed by the URL: a supported type, and an id and version where the route
/// has them.
pub struct Target {
    pub ty: ResourceType,
    pub id: String,
    pub version_id: Option<i64>,
}

/// The `{type}` segment, checked against the registry.
pub struct TypePath(pub ResourceType);

async fn path_params(parts: &mut Parts, state: &AppState) -> Result<HashMap<String, String>, AppError> {
    let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map_err(|_| AppError::invalid(IssueType::Invalid, "the URL path could not be read"))?;
    Ok(params)
}

fn supported_type(state: &AppState, params: &HashMap<String, String>) -> Result<ResourceType, AppError> {
    let name = params.get("type").map(String::as_str).unwrap_or_default();
    state.registry.resource_type(name).ok_or_else(|| {
        let shown = if state.registry.definitions.is_resource_type(name) { name } else { "(unknown)" };
        AppError::UnknownResourceType(shown.to_owned())
    })
}

impl FromRequestParts<AppState> for TypePath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let params = path_params(parts, state).await?;
        Ok(Self(supported_type(state, &params)?))
    }
}

impl FromRequestParts<AppState> for Target {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let params = path_params(parts, state).await?;
        let ty = supported_type(state, &params)?;
        let id = params.get("id").cloned().unwrap_or_default();
        if primitives::check("id", &Value::from(id.as_str())).is_err() {
            return Err(AppError::invalid(IssueType::Invalid, "the id in the URL is not a valid FHIR id"));
        }
        let version_id = match params.get("vid") {
            Some(v) => Some(v.parse::<i64>().map_err(|_| AppError::NotFound(format!("{ty}/{id} version {v}")))?),
            None => None,
        };
        Ok(Self { ty, id, version_id })
    }
}

/// Checks a resource a client wants to write: its type matches the URL, its id matches on
/// update, and it is valid against the R4 definitions. Returns what its write stores besides
/// the content.
pub fn check_resource(
    state: &AppState,
    ty: ResourceType,
    resource: &Map<String, Value>,
    url_id: Option<&str>,
) -> Result<Derived, AppError> {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == ty.as_str() => {}
        Some(_) => {
            return Err(AppError::invalid(
                IssueType::Invalid,
                format!("resourceType does not match the URL: this endpoint takes {ty}"),
            ))
        }
        None => return Err(AppError::invalid(IssueType::Required, "the resource has no resourceType")),
    }
    if let Some(url_id) = url_id {
        // R4 http.html#update: the body must carry the id of the URL.
        match resource.get("id").and_then(Value::as_str) {
            Some(id) if id == url_id => {}
            Some(_) => {
                return Err(AppError::invalid(IssueType::Invalid, "the resource id does not match the id in the URL"))
            }
            None => return Err(AppError::invalid(IssueType::Required, "an update must carry the resource id")),
        }
    }
    let report = validate::validate(&state.registry.definitions, resource);
    if !report.issues.is_empty() {
        return Err(AppError::BadRequest(report.issues));
    }
    // The stored resource carries the URL's id, which `_id` and references to it rely on.
    let value = Value::Object(resource.clone());
    Ok(state.registry.derive(ty.as_str(), &value, report.references, &state.base_url))
}

/// Parses `If-None-Exist`, a search query such as `identifier=http://sys|123`, with the same
/// parser as search. Unknown parameters are errors here: ignoring one would widen the condition.
fn parse_condition(state: &AppState, ty: ResourceType, headers: &HeaderMap) -> Result<Option<Vec<Filter>>, AppError> {
    let Some(value) = headers.get("if-none-exist") else { return Ok(None) };
    let text = value.to_str().unwrap_or("");
    let text = text.split_once('?').map_or(text, |(_, q)| q);
    let pairs = super::negotiate::query_pairs(text.as_bytes())?;
    let options = query::ParseOptions { base_url: &state.base_url, strict: true, max_count: 2 };
    let parsed = query::parse(&state.registry.search, ty.as_str(), &pairs, options)
        .map_err(|e| AppError::invalid(IssueType::Invalid, format!("If-None-Exist: {e}")))?;
    if parsed.filters.is_empty() {
        return Err(AppError::invalid(IssueType::Invalid, "If-None-Exist must name at least one search parameter"));
    }
    Ok(Some(parsed.filters))
}

/// `POST /{type}`: create, or conditional create with `If-None-Exist`.
pub async fn create(
    State(state): State<AppState>,
    TypePath(ty): TypePath,
    format: Format,
    ret: Return,
    headers: HeaderMap,
    FhirJson(resource): FhirJson,
) -> Result<Response, AppError> {
    let condition = parse_condition(&state, ty, &headers)?;
    let id = uuid::Uuid::new_v4().to_string();
    let mut with_id = resource.clone();
    with_id.insert("id".into(), Value::from(id.as_str()));
    let checked = check_resource(&state, ty, &with_id, None)?;
    let location = Some((state.base_url.as_str(), ty));
    match state.store.create(ty, &id, resource, condition.as_deref(), (&checked).into()).await? {
        Written::Stored { version, .. } => Ok(resource_response(format, StatusCode::CREATED, &version, ret, location)),
        // R4 http.html#ccreate: one match, the request is ignored and the match returned.
        Written::Matched(version) => Ok(resource_response(format, StatusCode::OK, &version, ret, location)),
        Written::Unchanged => unreachable!("create always stores or matches"),
    }
}

/// `GET /{type}/{id}`: read, with `If-None-Match` answered by 304.
pub async fn read(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let version = current(&state, &target).await?;
    let tag = etag(version.version_id);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        // RFC 9110 §13.1.2: If-None-Match uses the weak comparison.
        .is_some_and(|v| v.split(',').any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == &tag[2..]))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    Ok(resource_response(format, StatusCode::OK, &version, Return::Representation, None))
}

/// The current, not deleted version of the target.
async fn current(state: &AppState, target: &Target) -> Result<Version, AppError> {
    let described = || format!("{}/{}", target.ty, target.id);
    match state.store.read(target.ty, &target.id).await? {
        None => Err(AppError::NotFound(described())),
        Some(v) if v.is_deleted() => Err(AppError::Gone(described())),
        Some(v) => Ok(v),
    }
}

/// `GET /{type}/{id}/_history/{vid}`: vread.
pub async fn vread(State(state): State<AppState>, target: Target, format: Format) -> Result<Response, AppError> {
    let vid = target.version_id.unwrap_or_default();
    let described = || format!("{}/{} version {vid}", target.ty, target.id);
    match state.store.vread(target.ty, &target.id, vid).await? {
        None => Err(AppError::NotFound(described())),
        Some(v) if v.is_deleted() => Err(AppError::Gone(described())),
        Some(v) => Ok(resource_response(format, StatusCode::OK, &v, Return::Representation, None)),
    }
}

/// `PUT /{type}/{id}`: update, or create with the client's id; `If-Match` guards the version.
pub async fn update(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    ret: Return,
    headers: HeaderMap,
    FhirJson(resource): FhirJson,
) -> Result<Response, AppError> {
    let expected = if_match(&headers)?;
    let checked = check_resource(&state, target.ty, &resource, Some(&target.id))?;
    match state.store.update(target.ty, &target.id, resource, expected, (&checked).into()).await? {
        Written::Stored { version, created: true } => Ok(resource_response(
            format,
            StatusCode::CREATED,
            &version,
            ret,
            Some((state.base_url.as_str(), target.ty)),
        )),
        Written::Stored { version, created: false } => {
            Ok(resource_response(format, StatusCode::OK, &version, ret, None))
        }
        Written::Matched(_) | Written::Unchanged => unreachable!("update always stores"),
    }
}

/// `DELETE /{type}/{id}`: stores a deletion; deleting what is absent or deleted changes nothing
/// and succeeds alike (R4 http.html#delete).
pub async fn delete(
    State(state): State<AppState>,
    target: Target,
    format: Format,
    ret: Return,
) -> Result<Response, AppError> {
    let written = state.store.delete(target.ty, &target.id).await?;
    let (text, version) = match &written {
        Written::Stored { version, .. } => (format!("{}/{} deleted", target.ty, target.id), Some(version.version_id)),
        _ => (format!("{}/{} does not exist or is already deleted; nothing to do", target.ty, target.id), None),
    };
    let mut response = if ret == Return::OperationOutcome {
        let issue = Issue::information(text);
        format.respond(StatusCode::OK, operation_outcome(&[issue]).to_string())
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    if let Some(v) = version.and_then(|v| etag(v).parse().ok()) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

/// A method the route does not offer: 404 when the URL names a type this server does not hold
/// (so that unknown types always answer 404), 405 otherwise.
pub async fn method_not_allowed(State(state): State<AppState>, mut parts: Parts) -> AppError {
    match path_params(&mut parts, &state).await {
        Ok(params) if params.contains_key("type") => match supported_type(&state, &params) {
            Ok(_) => AppError::MethodNotAllowed,
            Err(unknown) => unknown,
        },
        _ => AppError::MethodNotAllowed,
    }
}
