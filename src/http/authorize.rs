//! Authorization at the HTTP edge (SMART on FHIR). Every request but the public ones
//! (`/metadata`, the SMART configuration) needs a valid bearer token (401 otherwise) when
//! authorization is configured, and the token's scopes must allow the interaction its route
//! names (403 otherwise). What depends on the data — the patient compartment of `patient/`
//! scopes — is applied where data is read or written, from the request's [`Caller`] and the
//! helpers here.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::disclose;
use crate::auth::{Access, Confinement, Perm, Principal};
use crate::error::AppError;
use crate::fhir::search::index::{IndexEntry, IndexValue};
use crate::fhir::search::query::Filter;
use crate::serve::Peer;
use crate::state::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        // Set by `authenticate` on every route it guards; absent means unguarded, so refuse.
        parts.extensions.get::<Principal>().cloned().map(Caller).ok_or(AppError::Unauthorized(None))
    }
}

const PUBLIC_ROUTES: &[&str] = &["/fhir/metadata", "/fhir/.well-known/smart-configuration"];

/// Middleware: authenticates the request and checks the scopes its route needs.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    if PUBLIC_ROUTES.contains(&route.as_str()) {
        return next.run(req).await;
    }
    let mut principal = match principal(&state, req.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Some(peer) = req.extensions().get::<Peer>() {
        principal.address = Some(peer.addr.ip().to_string());
        principal.certificate.clone_from(&peer.client_subject);
    }
    let glass = req.headers().get(disclose::BREAK_GLASS_HEADER);
    principal.break_glass = match disclose::break_glass(&principal, glass) {
        Ok(reason) => reason,
        Err(e) => {
            // The attempt is audited, with the reason given, as a refused break-the-glass.
            let given = glass.and_then(|v| v.to_str().ok()).map(str::trim).filter(|r| !r.is_empty());
            principal.break_glass = Some(given.unwrap_or("(no reason given)").chars().take(500).collect());
            let mut response = e.into_response();
            response.extensions_mut().insert(principal);
            return response;
        }
    };
    // The audit layer outside this one learns who called from the response.
    let mut response = match check_route(&state, &principal, req.method(), &route, req.uri().path()) {
        Err(e) => e.into_response(),
        Ok(()) => {
            req.extensions_mut().insert(principal.clone());
            next.run(req).await
        }
    };
    // An answer given by breaking the glass says so; a refusal was not given by it.
    if principal.break_glass.is_some() && !response.status().is_client_error() {
        response.headers_mut().insert(disclose::BREAK_GLASS_MARK, axum::http::HeaderValue::from_static("granted"));
    }
    response.extensions_mut().insert(principal);
    response
}

/// The principal of a request's bearer token; unrestricted when authorization is off.
async fn principal(state: &AppState, headers: &HeaderMap) -> Result<Principal, AppError> {
    let Some(auth) = &state.auth else { return Ok(Principal::unrestricted()) };
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or(AppError::Unauthorized(None))?;
    auth.authenticate(token).await.map_err(|e| AppError::Unauthorized(Some(e)))
}

/// The scope check of the interaction a route names. Bundles are checked entry by entry.
fn check_route(
    state: &AppState,
    principal: &Principal,
    method: &Method,
    route: &str,
    path: &str,
) -> Result<(), AppError> {
    if route == "/fhir/_history" {
        // System history spans every type, unconfined.
        // (The audit trail has no history, so it is not part of it.)
        for ty in state.registry.types().filter(|t| !state.registry.server_written(t.as_str())) {
            if require(principal, ty.as_str(), Perm::Read)? != Access::Full {
                return Err(AppError::Forbidden("system history needs unconfined read access to every type".into()));
            }
        }
        return Ok(());
    }
    // Inside the nested router the path has lost its `/fhir` prefix; outside it has it.
    let ty = path.strip_prefix("/fhir").unwrap_or(path).trim_start_matches('/').split('/').next().unwrap_or("");
    if state.registry.resource_type(ty).is_none() {
        // Unknown types answer 404 from their handler; the Bundle endpoint checks per entry.
        return Ok(());
    }
    if state.registry.server_written(ty)
        && !matches!(
            (method.as_str(), route),
            ("GET", "/fhir/{type}" | "/fhir/{type}/{id}") | ("POST", "/fhir/{type}/_search")
        )
    {
        // The audit trail is written by the server alone, and has no history.
        return Err(AppError::MethodNotAllowed);
    }
    let perm = match (method.as_str(), route) {
        ("GET", "/fhir/{type}") | ("POST", "/fhir/{type}/_search") => Perm::Search,
        ("POST", "/fhir/{type}") => Perm::Create,
        ("PUT" | "PATCH", _) => Perm::Update,
        ("DELETE", _) => Perm::Delete,
        ("GET", "/fhir/{type}/_history") => {
            return match require(principal, ty, Perm::Read)? {
                Access::Full => Ok(()),
                _ => {
                    Err(AppError::Forbidden(format!("the history of all {ty} resources needs unconfined read access")))
                }
            };
        }
        _ => Perm::Read,
    };
    require(principal, ty, perm).map(|_| ())
}

/// What the principal may do with `perm` on `ty`; 403 when nothing.
pub fn require(principal: &Principal, ty: &str, perm: Perm) -> Result<Access, AppError> {
    match principal.access(ty, perm) {
        Access::Denied => Err(AppError::Forbidden(format!("the token's scopes do not allow {} on {ty}", perm.name()))),
        access => Ok(access),
    }
}

/// Checks that the caller may read `ty/id`: for a confined caller, that it is in their
/// compartment (403 otherwise).
pub async fn check_readable(state: &AppState, principal: &Principal, ty: &str, id: &str) -> Result<(), AppError> {
    match require(principal, ty, Perm::Read)? {
        Access::Compartment(c) => {
            let members = state.store.compartment_members(ty, &[id.to_owned()], &c.patient, c.params).await?;
            if members.contains(id) {
                Ok(())
            } else {
                Err(outside(ty, id))
            }
        }
        _ => Ok(()),
    }
}

/// The filter that confines a search to the caller's compartment, if any.
pub fn compartment_filter(access: &Access) -> Option<Filter> {
    match access {
        Access::Compartment(c) => Some(Filter::Compartment { patient: c.patient.clone(), params: c.params.to_vec() }),
        _ => None,
    }
}

/// Requires search access to every type a chain or `_has` looks into, and confines what they
/// match as the search itself is confined: otherwise a patient-scoped caller could learn about
/// other patients' records (`Practitioner?_has:CarePlan:performer:patient=other`).
pub fn confine_traversed(caller: &Principal, filter: &mut Filter) -> Result<(), AppError> {
    let (types, inner): (&[String], &mut Vec<Filter>) = match filter {
        Filter::Chain { target_types, inner, .. } => (target_types, inner),
        Filter::Has { source_type, inner, .. } => (std::slice::from_ref(source_type), inner),
        _ => return Ok(()),
    };
    // A chain may reach several types; their compartment parameters are pooled (each still
    // has to point at the caller's patient).
    let mut confinement: Option<(String, Vec<String>)> = None;
    for t in types {
        if let Access::Compartment(c) = require(caller, t, Perm::Search)? {
            let (_, params) = confinement.get_or_insert_with(|| (c.patient.clone(), Vec::new()));
            params.extend(c.params.iter().cloned());
        }
    }
    for f in inner.iter_mut() {
        confine_traversed(caller, f)?;
    }
    if let Some((patient, mut params)) = confinement {
        params.sort();
        params.dedup();
        inner.push(Filter::Compartment { patient, params });
    }
    Ok(())
}

/// Whether content with these index entries (of resource `ty/id`) is in the compartment.
pub fn content_in_compartment(c: &Confinement, ty: &str, id: &str, index: &[IndexEntry]) -> bool {
    (ty == "Patient" && id == c.patient)
        || index.iter().any(|e| {
            c.params.contains(&e.param)
                && matches!(&e.value, IndexValue::Reference { target_type: Some(t), target_id: Some(i), .. }
                    if t == "Patient" && *i == c.patient)
        })
}

/// The refusal for a resource outside the caller's compartment.
pub fn outside(ty: &str, id: &str) -> AppError {
    AppError::Forbidden(format!("{ty}/{id} is outside the patient compartment the token allows"))
}

/// `GET /fhir/.well-known/smart-configuration` (SMART App Launch 2.0).
pub async fn smart_configuration(State(state): State<AppState>) -> Response {
    let Some(auth) = &state.auth else {
        return AppError::NotFound("a SMART configuration (authorization is not configured)".into()).into_response();
    };
    let settings = auth.settings();
    let mut doc = json!({
        "issuer": settings.issuer,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "scopes_supported": ["openid", "fhirUser", "launch/patient", "offline_access",
            "patient/*.cruds", "user/*.cruds", "system/*.cruds", "patient/*.read", "user/*.read", "system/*.read",
            "system/AuditEvent.rs"],
        "response_types_supported": ["code"],
        "capabilities": ["permission-v1", "permission-v2", "permission-patient", "permission-user",
            "client-confidential-asymmetric", "launch-standalone", "context-standalone-patient"],
        "code_challenge_methods_supported": ["S256"],
    });
    if let crate::auth::jwt::JwksSource::Url(url) = &settings.jwks {
        doc["jwks_uri"] = json!(url);
    }
    if let Some(url) = &state.smart.authorization {
        doc["authorization_endpoint"] = json!(url);
    }
    if let Some(url) = &state.smart.token {
        doc["token_endpoint"] = json!(url);
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], doc.to_string()).into_response()
}
