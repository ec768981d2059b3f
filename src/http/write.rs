//! The write handlers (http.html): create, update, patch and delete, by id and by search
//! (conditional), and `$validate`. Each builds an [`interaction::Write`] and runs it in its own
//! transaction; a transaction Bundle runs the same writes.

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::authorize::Caller;
use super::interaction::{self, check_resource, parse_condition, Done, Target as WriteTarget, Write, WriteKind};
use super::negotiate::{etag, if_match, resource_response, FhirJson, Format, PatchBody, Return};
use super::resource::{Target, TypePath};
use crate::audit::{AuditRecord, Audited};
use crate::auth::Principal;
use crate::error::AppError;
use crate::fhir::outcome::{operation_outcome, Issue, IssueType};
use crate::fhir::registry::ResourceType;
use crate::in_transaction;
use crate::state::AppState;
use crate::store::{Expect, WriteTx};

/// Runs one write in its own transaction (again, when it loses to a concurrent writer).
async fn run(
    state: &AppState,
    caller: &Principal,
    write: Write,
    format: Format,
    ret: Return,
) -> Result<Response, AppError> {
    let done = in_transaction!(state.store, |tx| execute_audited(state, caller, &mut tx, &write))?;
    let mut response = respond(state, write.ty, done, format, ret);
    response.extensions_mut().insert(Audited);
    Ok(response)
}

/// Runs a write and records its AuditEvent in the same transaction.
pub async fn execute_audited(
    state: &AppState,
    caller: &Principal,
    tx: &mut WriteTx,
    write: &Write,
) -> Result<Done, AppError> {
    let done = interaction::execute(state, caller, tx, write).await?;
    let (interaction, action) = match &write.kind {
        WriteKind::Create { .. } => ("create", "C"),
        WriteKind::Update { .. } => ("update", "U"),
        WriteKind::Patch { .. } => ("patch", "U"),
        WriteKind::Delete { .. } => ("delete", "D"),
    };
    let record = AuditRecord {
        interaction,
        action,
        status: done.status.as_u16(),
        caller: Some(caller.clone()),
        resource_type: Some(write.ty.as_str().to_owned()),
        entities: done.entities.clone(),
        patients: done.patients.clone(),
        break_glass: caller.break_glass.clone(),
        ..AuditRecord::default()
    };
    state.audit.record_in(tx, &record);
    if record.break_glass.is_some() {
        // A write past labels and Consents is a security alert too.
        state.audit.record_in(tx, &AuditRecord { alert: true, ..record });
    }
    Ok(done)
}

/// The response to a write: the resource as `Prefer` asks, or for deletes 204 (200 with an
/// OperationOutcome when asked for one).
pub fn respond(state: &AppState, ty: ResourceType, done: Done, format: Format, ret: Return) -> Response {
    match &done.version {
        Some(v) if !v.is_deleted() => {
            let location = (done.status == StatusCode::CREATED).then_some((state.base_url.as_str(), ty));
            resource_response(format, done.status, v, ret, location)
        }
        deletion => {
            let mut response = if ret == Return::OperationOutcome {
                format
                    .respond(StatusCode::OK, operation_outcome(&[Issue::information(done.message.clone())]).to_string())
            } else {
                StatusCode::NO_CONTENT.into_response()
            };
            if let Some(v) = deletion.as_ref().and_then(|v| etag(v.version_id).parse().ok()) {
                response.headers_mut().insert(header::ETAG, v);
            }
            response
        }
    }
}

/// The version precondition of a write: `If-Match` (that version) or `If-None-Match: *` (the
/// resource must not exist).
fn expectation(headers: &HeaderMap) -> Result<Expect, AppError> {
    let none_match = headers.get(header::IF_NONE_MATCH).map(|v| v.to_str().unwrap_or("").trim() == "*");
    match (if_match(headers)?, none_match) {
        (Some(_), Some(_)) => {
            Err(AppError::invalid(IssueType::Invalid, "If-Match and If-None-Match exclude each other"))
        }
        (Some(v), None) => Ok(Expect::Version(v)),
        (None, Some(true)) => Ok(Expect::Absent),
        (None, Some(false)) => {
            Err(AppError::invalid(IssueType::NotSupported, "on a write, If-None-Match supports only '*'"))
        }
        (None, None) => Ok(Expect::Any),
    }
}

/// The type and search of a conditional interaction (`/{type}?search`).
pub struct Conditional {
    ty: ResourceType,
    target: WriteTarget,
}

impl FromRequestParts<AppState> for Conditional {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let TypePath(ty) = TypePath::from_request_parts(parts, state).await?;
        let query = parts.uri.query().unwrap_or("");
        Ok(Self { ty, target: WriteTarget::Search(parse_condition(state, ty, query, "the condition in the URL")?) })
    }
}

/// `POST /{type}`: create, or conditional create with `If-None-Exist`.
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TypePath(ty): TypePath,
    format: Format,
    ret: Return,
    headers: HeaderMap,
    FhirJson(mut resource): FhirJson,
) -> Result<Response, AppError> {
    let if_none_exist = match headers.get("if-none-exist") {
        Some(v) => Some(parse_condition(&state, ty, v.to_str().unwrap_or(""), "If-None-Exist")?),
        None => None,
    };
    // R4 http.html#create: the server assigns the id, whatever the body says.
    let id = crate::fhir::new_id();
    resource.insert("id".into(), Value::from(id.as_str()));
    let derived = check_resource(&state, ty, &resource, None)?;
    run(&state, &caller, Write { ty, kind: WriteKind::Create { id, resource, derived, if_none_exist } }, format, ret)
        .await
}

/// `PUT /{type}/{id}`: update, or create with the client's id.
pub async fn update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    target: Target,
    format: Format,
    ret: Return,
    headers: HeaderMap,
    FhirJson(resource): FhirJson,
) -> Result<Response, AppError> {
    let expect = expectation(&headers)?;
    let derived = check_resource(&state, target.ty, &resource, Some(&target.id))?;
    let kind = WriteKind::Update { target: WriteTarget::Id(target.id), resource, derived, expect };
    run(&state, &caller, Write { ty: target.ty, kind }, format, ret).await
}

/// `PUT /{type}?search`: conditional update (http.html#cond-update).
pub async fn conditional_update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Conditional { ty, target }: Conditional,
    format: Format,
    ret: Return,
    headers: HeaderMap,
    FhirJson(resource): FhirJson,
) -> Result<Response, AppError> {
    let expect = expectation(&headers)?;
    let derived = check_resource(&state, ty, &resource, None)?;
    run(&state, &caller, Write { ty, kind: WriteKind::Update { target, resource, derived, expect } }, format, ret).await
}

/// `PATCH /{type}/{id}`: JSON Patch or FHIRPath Patch.
pub async fn patch(
    State(state): State<AppState>,
    Caller(caller): Caller,
    target: Target,
    format: Format,
    ret: Return,
    headers: HeaderMap,
    PatchBody(patch): PatchBody,
) -> Result<Response, AppError> {
    let kind = WriteKind::Patch { target: WriteTarget::Id(target.id), patch, expect: expectation(&headers)? };
    run(&state, &caller, Write { ty: target.ty, kind }, format, ret).await
}

/// `PATCH /{type}?search`: conditional patch.
pub async fn conditional_patch(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Conditional { ty, target }: Conditional,
    format: Format,
    ret: Return,
    headers: HeaderMap,
    PatchBody(patch): PatchBody,
) -> Result<Response, AppError> {
    let kind = WriteKind::Patch { target, patch, expect: expectation(&headers)? };
    run(&state, &caller, Write { ty, kind }, format, ret).await
}

/// `DELETE /{type}/{id}`: stores a deletion; deleting what is absent or deleted changes nothing
/// and succeeds alike (http.html#delete).
pub async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    target: Target,
    format: Format,
    ret: Return,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let kind = WriteKind::Delete { target: WriteTarget::Id(target.id), expect: expectation(&headers)? };
    run(&state, &caller, Write { ty: target.ty, kind }, format, ret).await
}

/// `DELETE /{type}?search`: conditional delete (http.html#cdelete).
pub async fn conditional_delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Conditional { ty, target }: Conditional,
    format: Format,
    ret: Return,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let kind = WriteKind::Delete { target, expect: expectation(&headers)? };
    run(&state, &caller, Write { ty, kind }, format, ret).await
}

/// `mode` of `$validate` (resource-operation-validate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    General,
    Create,
    Update,
    Delete,
}

#[derive(Debug, serde::Deserialize)]
pub struct ValidateQuery {
    mode: Option<String>,
    profile: Option<String>,
}

/// `POST /{type}/$validate`.
pub async fn validate_type(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TypePath(ty): TypePath,
    Query(query): Query<ValidateQuery>,
    format: Format,
    FhirJson(body): FhirJson,
) -> Result<Response, AppError> {
    validate(&state, &caller, ty, None, query, format, body).await
}

/// `POST /{type}/{id}/$validate`.
pub async fn validate_instance(
    State(state): State<AppState>,
    Caller(caller): Caller,
    target: Target,
    Query(query): Query<ValidateQuery>,
    format: Format,
    FhirJson(body): FhirJson,
) -> Result<Response, AppError> {
    validate(&state, &caller, target.ty, Some(target.id), query, format, body).await
}

/// Validates exactly as the write would: the write runs in a transaction that is then rolled
/// back, so references, version preconditions and referential integrity are checked too. The
/// answer is an OperationOutcome with status 200 whether or not the content is valid; 4xx means
/// the validation itself could not run.
async fn validate(
    state: &AppState,
    caller: &Principal,
    ty: ResourceType,
    id: Option<String>,
    query: ValidateQuery,
    format: Format,
    body: Map<String, Value>,
) -> Result<Response, AppError> {
    let ValidateInput { resource, mode: mode_param, profile: profile_param } = validate_input(body);
    let mode = match query.mode.as_deref().or(mode_param.as_deref()) {
        None => Mode::General,
        Some("create") => Mode::Create,
        Some("update") => Mode::Update,
        Some("delete") => Mode::Delete,
        Some(other) => {
            return Err(AppError::invalid(
                IssueType::NotSupported,
                format!("$validate mode '{other}' is not supported (create, update, delete)"),
            ))
        }
    };
    if let Some(profile) = query.profile.or(profile_param) {
        if profile != format!("http://hl7.org/fhir/StructureDefinition/{ty}") {
            return Err(AppError::invalid(
                IssueType::NotSupported,
                "$validate checks the base R4 definition only; other profiles are not supported",
            ));
        }
    }
    let write = match (mode, id, resource) {
        (Mode::Update | Mode::Delete, None, _) => {
            return Err(AppError::invalid(IssueType::Invalid, "modes update and delete need an instance URL"))
        }
        (Mode::Delete, Some(id), _) => {
            Write { ty, kind: WriteKind::Delete { target: WriteTarget::Id(id), expect: Expect::Any } }
        }
        (_, _, None) => return Err(AppError::invalid(IssueType::Required, "$validate needs a resource")),
        (Mode::General, id, Some(resource)) => {
            let checked = check_resource(state, ty, &resource, id.as_deref()).map(|_| ());
            return Ok(validation_outcome(format, checked));
        }
        (Mode::Create, _, Some(mut resource)) => {
            let id = crate::fhir::new_id();
            resource.insert("id".into(), Value::from(id.as_str()));
            match check_resource(state, ty, &resource, None) {
                Ok(derived) => Write { ty, kind: WriteKind::Create { id, resource, derived, if_none_exist: None } },
                Err(e) => return Ok(validation_outcome(format, Err(e))),
            }
        }
        (Mode::Update, Some(id), Some(resource)) => match check_resource(state, ty, &resource, Some(&id)) {
            Ok(derived) => Write {
                ty,
                kind: WriteKind::Update { target: WriteTarget::Id(id), resource, derived, expect: Expect::Any },
            },
            Err(e) => return Ok(validation_outcome(format, Err(e))),
        },
    };
    let mut tx = state.store.begin().await?;
    let result = match interaction::execute(state, caller, &mut tx, &write).await {
        Ok(_) => tx.verify().await.map_err(AppError::from),
        Err(e) => Err(e),
    };
    // Dropping the transaction rolls the trial write back.
    drop(tx);
    Ok(validation_outcome(format, result))
}

/// The resource, mode and profile of a `$validate` body: the resource itself, or a Parameters
/// resource with `resource`, `mode` and `profile` parameters.
fn validate_input(body: Map<String, Value>) -> ValidateInput {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return ValidateInput { resource: Some(body), ..Default::default() };
    }
    let mut input = ValidateInput::default();
    let params = body.get("parameter").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for p in params {
        let text = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_owned);
        match p.get("name").and_then(Value::as_str) {
            Some("resource") => input.resource = p.get("resource").and_then(Value::as_object).cloned(),
            Some("mode") => input.mode = text("valueCode"),
            Some("profile") => input.profile = text("valueUri").or_else(|| text("valueCanonical")),
            _ => {}
        }
    }
    input
}

#[derive(Debug, Default)]
struct ValidateInput {
    resource: Option<Map<String, Value>>,
    mode: Option<String>,
    profile: Option<String>,
}

/// The OperationOutcome of `$validate`: the issues the write would have met, or one
/// information issue when there are none.
fn validation_outcome(format: Format, outcome: Result<(), AppError>) -> Response {
    let issues = match outcome {
        Ok(()) => vec![Issue::information("validation passed: the write would be accepted")],
        // The database failed: validation could not run.
        Err(e @ (AppError::Internal(_) | AppError::Unavailable(_))) => return e.into_response(),
        Err(e) => e.issues(),
    };
    format.respond(StatusCode::OK, operation_outcome(&issues).to_string())
}
