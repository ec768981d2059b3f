//! The HTTP API: routes under `/fhir`, health checks, and the layers every request passes
//! (request id, tracing, body limit). Handlers are generic over resource types; the registry
//! decides which types exist.

mod access_log;
mod audited;
mod authorize;
mod bundle;
mod capabilities;
pub(crate) mod disclose;
mod everything;
mod history;
mod interaction;
mod negotiate;
pub mod openapi;
mod resource;
mod search;
mod write;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use capabilities::capability_statement;

use crate::error::AppError;
use crate::fhir::registry::Registry;
use crate::state::AppState;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The complete router, ready to serve.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.limits.max_body_bytes;
    let fhir = Router::new()
        .route("/", post(bundle::process))
        .route("/metadata", get(capabilities::metadata))
        .route("/_history", get(history::system))
        .route(
            "/{type}",
            get(search::search_get)
                .post(write::create)
                .put(write::conditional_update)
                .patch(write::conditional_patch)
                .delete(write::conditional_delete),
        )
        .route("/{type}/_search", post(search::search_post))
        .route("/{type}/$validate", post(write::validate_type))
        .route("/{type}/_history", get(history::type_level))
        .route("/{type}/{id}", get(resource::read).put(write::update).patch(write::patch).delete(write::delete))
        .route("/{type}/{id}/$validate", post(write::validate_instance))
        .route("/Patient/{id}/$everything", get(everything::everything))
        .route("/Patient/{id}/$access-log", get(access_log::access_log))
        .route("/{type}/{id}/_history", get(history::instance))
        .route("/{type}/{id}/_history/{vid}", get(resource::vread))
        .route("/.well-known/smart-configuration", get(authorize::smart_configuration))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorize::authenticate))
        // Outside authentication, so that denials are audited too.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audited::audit))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::metrics::measure))
        .method_not_allowed_fallback(resource::method_not_allowed)
        .fallback(resource::not_found);

    Router::new()
        .nest("/fhir", fhir)
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(request_id_in_server_errors))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let route =
                req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            // The matched route, never the raw path: paths carry ids, query strings may carry
            // patient identifiers.
            let span = tracing::info_span!("request", method = %req.method(), route = %route, request_id = %request_id);
            // A caller's `traceparent` makes this request part of its trace.
            crate::telemetry::continue_trace(&span, req.headers());
            span
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unsafe_request_id))
        .with_state(state)
}

/// The `restful-interaction` code a route implies (a Bundle's is `batch` until it is read).
pub(crate) fn interaction_of(method: &axum::http::Method, route: &str) -> &'static str {
    audited::interaction(method, route).0
}

/// The supported resource type a request path addresses, if any.
pub(crate) fn resource_type_of(state: &AppState, path: &str) -> Option<String> {
    let first = path.strip_prefix("/fhir").unwrap_or(path).trim_start_matches('/').split('/').next()?;
    state.registry.resource_type(first).map(|t| t.as_str().to_owned())
}

/// The OpenAPI document at `/fhir/openapi.json` and its interactive page at `/fhir/docs/`
/// (Swagger UI, embedded in the binary: no CDN, works offline). Public, like `/metadata`.
pub fn docs(registry: &Registry) -> Router {
    let config = utoipa_swagger_ui::Config::from("/fhir/openapi.json").validator_url("none").display_operation_id(true);
    utoipa_swagger_ui::SwaggerUi::new("/fhir/docs")
        .url("/fhir/openapi.json", openapi::document(registry))
        .config(config)
        .into()
}

/// A client's `x-request-id` is kept only when it is short and plain (it goes into every log
/// line of the request); otherwise the server makes one.
async fn drop_unsafe_request_id<B>(mut req: Request<B>) -> Request<B> {
    let safe = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    });
    if !safe {
        req.headers_mut().remove(&REQUEST_ID);
    }
    req
}

/// A server error's OperationOutcome names the request id (and the trace id when traces are
/// exported), so that an operator can find its log lines and spans.
async fn request_id_in_server_errors(req: Request<axum::body::Body>, next: axum::middleware::Next) -> Response {
    let request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let response = next.run(req).await;
    if !response.status().is_server_error() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let mut outcome: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => return Response::from_parts(parts, axum::body::Body::from(bytes)),
    };
    let mut reference = request_id.map(|id| format!("request id {id}")).unwrap_or_default();
    if let Some(trace) = crate::telemetry::trace_id() {
        reference = format!("{reference}, trace id {trace}").trim_start_matches(", ").to_owned();
    }
    if let (false, Some(issues)) = (reference.is_empty(), outcome.get_mut("issue").and_then(|i| i.as_array_mut())) {
        for issue in issues {
            let text = issue.get("diagnostics").and_then(|d| d.as_str()).unwrap_or("").to_owned();
            issue["diagnostics"] = serde_json::Value::from(format!("{text} ({reference})").trim_start().to_owned());
        }
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(outcome.to_string()))
}

async fn not_found() -> AppError {
    AppError::NotFound("this URL".into())
}

/// Liveness: the process answers.
async fn live() -> Response {
    (StatusCode::OK, [("content-type", "application/json")], r#"{"status":"pass"}"#).into_response()
}

/// Readiness: the process is not shutting down and the database answers.
async fn ready(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        let body = r#"{"status":"fail","reason":"shutting down"}"#;
        return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/json")], body).into_response();
    }
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, [("content-type", "application/json")], r#"{"status":"pass"}"#).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/json")], r#"{"status":"fail"}"#)
                .into_response()
        }
    }
}
