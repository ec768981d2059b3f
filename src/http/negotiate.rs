//! The HTTP edge of FHIR's conventions: content negotiation (`_format`, `Accept`, `_pretty`),
//! request bodies (`Content-Type`, size, JSON), `Prefer`, `If-Match`, and the headers and body
//! of a resource response (http.html#general).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::error::{AppError, FHIR_JSON};
use crate::fhir::outcome::{operation_outcome, Issue, IssueType};
use crate::fhir::patch::{Patch, PatchError};
use crate::fhir::{format_http_date, registry::ResourceType};
use crate::store::Version;

const JSON: &str = "application/json; charset=utf-8";

/// Decodes `application/x-www-form-urlencoded` parameters (a query string or a form body).
/// Control characters are refused: no FHIR value holds them, and databases reject some.
pub fn query_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, AppError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes)
        .map_err(|_| AppError::invalid(IssueType::Invalid, "the parameters could not be read"))?;
    if pairs.iter().any(|(k, v)| k.chars().chain(v.chars()).any(char::is_control)) {
        return Err(AppError::invalid(IssueType::Invalid, "parameters must not contain control characters"));
    }
    Ok(pairs)
}

/// The representation the client asked for: always JSON, as `application/fhir+json` or plain
/// `application/json`, optionally pretty-printed.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    content_type: &'static str,
    pretty: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Format {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let query = parts.uri.query().unwrap_or("");
        let params: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let pretty = param("_pretty") == Some("true");
        let content_type = match param("_format") {
            Some(f) => json_flavour(f).ok_or_else(|| not_acceptable(f))?,
            None => accept(&parts.headers)?,
        };
        Ok(Self { content_type, pretty })
    }
}

fn not_acceptable(what: &str) -> AppError {
    let what = if what.len() > 80 { "the requested format" } else { what };
    AppError::NotAcceptable(format!("{what} is not supported: Liaison speaks FHIR JSON only (application/fhir+json)"))
}

/// The response type for a `_format` value or one media range of `Accept`.
fn json_flavour(media: &str) -> Option<&'static str> {
    if !fhir_version_ok(media) {
        return None;
    }
    let essence = media.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "json" | "application/fhir+json" | "application/json+fhir" | "*/*" | "application/*" => Some(FHIR_JSON),
        "application/json" | "text/json" => Some(JSON),
        _ => None,
    }
}

/// A `fhirVersion` media-type parameter, when present, must name R4 (versioning.html#mt-version).
fn fhir_version_ok(media: &str) -> bool {
    media
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().strip_prefix("fhirVersion="))
        .all(|v| v.trim_matches('"').starts_with("4.0"))
}

fn accept(headers: &HeaderMap) -> Result<&'static str, AppError> {
    let Some(value) = headers.get(header::ACCEPT) else {
        return Ok(FHIR_JSON);
    };
    let value = value.to_str().unwrap_or("");
    if value.trim().is_empty() {
        return Ok(FHIR_JSON);
    }
    value.split(',').find_map(json_flavour).ok_or_else(|| not_acceptable(value))
}

impl Format {
    /// A response with `body` (JSON text) in the negotiated representation.
    pub fn respond(&self, status: StatusCode, body: String) -> Response {
        let body = if self.pretty {
            serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(body)
        } else {
            body
        };
        let mut response = (status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        response
    }
}

/// A request body that is a JSON object, sent as FHIR JSON and within the size limit.
pub struct FhirJson(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for FhirJson {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        if !is_fhir_json(req.headers()) {
            return Err(AppError::UnsupportedMediaType(
                "the request body must be FHIR JSON (Content-Type: application/fhir+json)".into(),
            ));
        }
        let bytes = body_bytes(req, state).await?;
        crate::fhir::json::parse_object(&bytes).map(Self).map_err(|why| AppError::invalid(IssueType::Structure, why))
    }
}

/// The parameters of `POST _search`: an `application/x-www-form-urlencoded` body (or none),
/// within the size limit and the body timeout like every other body.
pub struct FormBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for FormBody {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let form = content_type_essence(req.headers()) == "application/x-www-form-urlencoded";
        let bytes = body_bytes(req, state).await?;
        if !bytes.is_empty() && !form {
            return Err(AppError::UnsupportedMediaType(
                "POST _search takes application/x-www-form-urlencoded parameters".into(),
            ));
        }
        Ok(Self(bytes))
    }
}

/// The body of a PATCH: JSON Patch (`application/json-patch+json`) or FHIRPath Patch (a
/// Parameters resource as FHIR JSON).
pub struct PatchBody(pub Patch);

impl<S: Send + Sync> FromRequest<S> for PatchBody {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let json_patch = content_type_essence(req.headers()) == "application/json-patch+json";
        if !json_patch && !is_fhir_json(req.headers()) {
            return Err(AppError::UnsupportedMediaType(
                "a patch is JSON Patch (application/json-patch+json) or FHIRPath Patch (application/fhir+json)".into(),
            ));
        }
        let bytes = body_bytes(req, state).await?;
        let malformed = |why: String| AppError::invalid(IssueType::Structure, why);
        let patch = if json_patch {
            let doc: Value = serde_json::from_slice(&bytes).map_err(|_| malformed("the body is not JSON".into()))?;
            Patch::parse_json_patch(doc)
        } else {
            Patch::parse_fhirpath(&crate::fhir::json::parse_object(&bytes).map_err(malformed)?)
        };
        patch.map(Self).map_err(|e| match e {
            PatchError::Malformed(why) | PatchError::Failed(why) => AppError::invalid(IssueType::Invalid, why),
        })
    }
}

fn content_type_essence(headers: &HeaderMap) -> String {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn is_fhir_json(headers: &HeaderMap) -> bool {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    matches!(
        content_type_essence(headers).as_str(),
        "application/fhir+json" | "application/json" | "application/json+fhir"
    ) && fhir_version_ok(content_type)
}

/// The whole request body, within the configured size limit.
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, AppError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge
        } else if crate::serve::BodyTimedOut::caused(&rejection) {
            AppError::RequestTimeout
        } else {
            AppError::invalid(IssueType::Structure, "the request body could not be read")
        }
    })
}

/// `Prefer: return=…` (http.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

impl<S: Send + Sync> FromRequestParts<S> for Return {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let wanted = prefer_tokens(&parts.headers).find_map(|p| p.strip_prefix("return="));
        Ok(match wanted.map(|w| w.trim_matches('"')) {
            Some("minimal") => Self::Minimal,
            Some("OperationOutcome") => Self::OperationOutcome,
            _ => Self::Representation,
        })
    }
}

/// The preferences of all `Prefer` headers (RFC 7240), e.g. `return=minimal`, `handling=strict`.
pub fn prefer_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split([',', ';'])).map(str::trim)
}

/// The version named by `If-Match` (`W/"3"`), if the header is present.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, AppError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let inner = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    inner
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .map(Some)
        .ok_or_else(|| AppError::invalid(IssueType::Invalid, "If-Match must name a version, as in W/\"3\""))
}

/// The weak ETag of a version.
pub fn etag(version_id: i64) -> String {
    format!("W/\"{version_id}\"")
}

/// The response to a read, vread or write of one resource version: ETag, Last-Modified,
/// Location when `location` is set, and a body as `Prefer` asks.
pub fn resource_response(
    format: Format,
    status: StatusCode,
    version: &Version,
    ret: Return,
    location: Option<(&str, ResourceType)>,
) -> Response {
    let content = version.content.clone().unwrap_or_default();
    let mut response = match ret {
        Return::Representation => format.respond(status, content),
        Return::Minimal => status.into_response(),
        Return::OperationOutcome => {
            let issue = Issue::information(format!(
                "{}/{} version {} stored",
                version.resource_type, version.id, version.version_id
            ));
            format.respond(status, operation_outcome(&[issue]).to_string())
        }
    };
    let headers = response.headers_mut();
    let mut set = |name, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(header::ETAG, etag(version.version_id));
    set(header::LAST_MODIFIED, format_http_date(version.last_updated));
    if let Some((base, ty)) = location {
        set(header::LOCATION, format!("{base}/{ty}/{}/_history/{}", version.id, version.version_id));
    }
    response
}
