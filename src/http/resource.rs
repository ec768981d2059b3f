//! The instance and type interactions on `/{type}` and `/{type}/{id}`: create, read, vread,
//! update and delete (http.html). One handler per interaction serves every supported type.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::audited::{self, read_detail};
use super::authorize::{check_readable, Caller};
use super::disclose;
use super::negotiate::{etag, resource_response, Format, Return};
use crate::error::AppError;
use crate::fhir::outcome::IssueType;
use crate::fhir::primitives;
use crate::fhir::registry::ResourceType;
use crate::state::AppState;
use crate::store::Version;

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

/// `GET /{type}/{id}`: read, with `If-None-Match` answered by 304.
pub async fn read(
    State(state): State<AppState>,
    target: Target,
    Caller(caller): Caller,
    format: Format,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    check_readable(&state, &caller, target.ty.as_str(), &target.id).await?;
    let version = current(&state, &target).await?;
    if let Err(refused) = disclose::check_version(&state, &caller, &version).await {
        return Ok(refused);
    }
    let tag = etag(version.version_id);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        // RFC 9110 §13.1.2: If-None-Match uses the weak comparison.
        .is_some_and(|v| v.split(',').any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == &tag[2..]))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    let mut response = resource_response(format, StatusCode::OK, &version, Return::Representation, None);
    let detail = read_detail(&state, target.ty.as_str(), &target.id, version.version_id, version.content.as_deref());
    response.extensions_mut().insert(detail);
    Ok(response)
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
pub async fn vread(
    State(state): State<AppState>,
    target: Target,
    Caller(caller): Caller,
    format: Format,
) -> Result<Response, AppError> {
    check_readable(&state, &caller, target.ty.as_str(), &target.id).await?;
    let vid = target.version_id.unwrap_or_default();
    let described = || format!("{}/{} version {vid}", target.ty, target.id);
    match state.store.vread(target.ty, &target.id, vid).await? {
        None => Err(AppError::NotFound(described())),
        Some(v) if v.is_deleted() => Err(AppError::Gone(described())),
        Some(v) => {
            if let Err(refused) = disclose::check_version(&state, &caller, &v).await {
                return Ok(refused);
            }
            let mut response = resource_response(format, StatusCode::OK, &v, Return::Representation, None);
            let detail = read_detail(&state, target.ty.as_str(), &target.id, v.version_id, v.content.as_deref());
            response.extensions_mut().insert(detail);
            Ok(response)
        }
    }
}

/// A method the route does not offer: 404 when the URL names a type this server does not hold
/// (so that unknown types always answer 404), 405 otherwise; audited.
pub async fn method_not_allowed(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let error = match path_params(&mut parts, &state).await {
        Ok(params) if params.contains_key("type") => match supported_type(&state, &params) {
            Ok(_) => AppError::MethodNotAllowed,
            Err(unknown) => unknown,
        },
        _ => AppError::MethodNotAllowed,
    };
    audited::unrouted(&state, Request::from_parts(parts, body), error).await
}

/// A URL under `/fhir` that no route takes: 404, audited.
pub async fn not_found(State(state): State<AppState>, req: Request) -> Response {
    audited::unrouted(&state, req, AppError::NotFound("this URL".into())).await
}
