//! `AppError`: every failure a request can meet, answered as an OperationOutcome with the HTTP
//! status R4 prescribes (http.html). The only error type that becomes a response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::fhir::outcome::{operation_outcome, Issue, IssueType};
use crate::store::StoreError;

/// FHIR's JSON media type, used for every response body Liaison writes.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request or resource could not be parsed or breaks basic FHIR rules.
    #[error("bad request")]
    BadRequest(Vec<Issue>),
    /// 422: the resource is well formed but breaks a rule of this server (e.g. a reference to a
    /// resource that does not exist).
    #[error("unprocessable resource")]
    Unprocessable(Vec<Issue>),
    #[error("resource type not supported")]
    UnknownResourceType(String),
    #[error("not found")]
    NotFound(String),
    #[error("gone")]
    Gone(String),
    #[error("precondition failed")]
    PreconditionFailed(String),
    #[error("conflict")]
    Conflict(String),
    /// 401: no valid bearer token; the reason, when a token was sent.
    #[error("unauthorized")]
    Unauthorized(Option<crate::auth::jwt::TokenError>),
    /// 403: the token's scopes do not allow this.
    #[error("forbidden")]
    Forbidden(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not acceptable")]
    NotAcceptable(String),
    #[error("unsupported media type")]
    UnsupportedMediaType(String),
    #[error("payload too large")]
    PayloadTooLarge,
    /// 408: the client did not send its request body in time.
    #[error("request timeout")]
    RequestTimeout,
    /// A Bundle with more entries than the configured maximum.
    #[error("too many bundle entries")]
    TooManyEntries(usize),
    #[error("service unavailable")]
    Unavailable(#[source] StoreError),
    #[error("internal error")]
    Internal(#[source] StoreError),
    /// The error of entry `.0` of a Bundle: its status, with issues that name the entry.
    #[error("bundle entry {0} failed")]
    InEntry(usize, Box<AppError>),
}

impl AppError {
    /// A 400 with one issue.
    pub fn invalid(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self::BadRequest(vec![Issue::error(code, diagnostics)])
    }

    /// This error, located at entry `index` of a Bundle.
    pub fn in_entry(self, index: usize) -> Self {
        match self {
            Self::InEntry(..) => self,
            other => Self::InEntry(index, Box::new(other)),
        }
    }

    /// The error itself, without the Bundle entry it happened in.
    fn innermost(&self) -> &Self {
        match self {
            Self::InEntry(_, inner) => inner.innermost(),
            other => other,
        }
    }

    /// The issues this error answers with.
    pub fn issues(&self) -> Vec<Issue> {
        self.status_and_issues().1
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status_and_issues().0
    }

    fn status_and_issues(&self) -> (StatusCode, Vec<Issue>) {
        use IssueType as T;
        let one = |status, code, text: &str| (status, vec![Issue::error(code, text)]);
        match self {
            Self::BadRequest(issues) => (StatusCode::BAD_REQUEST, issues.clone()),
            Self::Unprocessable(issues) => (StatusCode::UNPROCESSABLE_ENTITY, issues.clone()),
            Self::UnknownResourceType(t) => one(
                StatusCode::NOT_FOUND,
                T::NotSupported,
                &format!("resource type '{t}' is not supported by this server"),
            ),
            Self::NotFound(what) => one(StatusCode::NOT_FOUND, T::NotFound, &format!("{what} is not known")),
            Self::Gone(what) => one(StatusCode::GONE, T::Deleted, &format!("{what} has been deleted")),
            Self::PreconditionFailed(why) => one(StatusCode::PRECONDITION_FAILED, T::Conflict, why),
            Self::Conflict(why) => one(StatusCode::CONFLICT, T::Conflict, why),
            Self::Unauthorized(None) => {
                one(StatusCode::UNAUTHORIZED, T::Login, "this server needs a bearer token (Authorization: Bearer …)")
            }
            Self::Unauthorized(Some(why)) => one(StatusCode::UNAUTHORIZED, T::Login, &format!("{why}")),
            Self::Forbidden(why) => one(StatusCode::FORBIDDEN, T::Forbidden, why),
            Self::MethodNotAllowed => {
                one(StatusCode::METHOD_NOT_ALLOWED, T::NotSupported, "this method is not allowed on this URL")
            }
            Self::NotAcceptable(why) => one(StatusCode::NOT_ACCEPTABLE, T::NotSupported, why),
            Self::UnsupportedMediaType(why) => one(StatusCode::UNSUPPORTED_MEDIA_TYPE, T::NotSupported, why),
            Self::PayloadTooLarge => one(StatusCode::PAYLOAD_TOO_LARGE, T::TooLong, "the request body is too large"),
            Self::RequestTimeout => {
                one(StatusCode::REQUEST_TIMEOUT, T::Timeout, "the request body did not arrive in time")
            }
            Self::TooManyEntries(max) => one(
                StatusCode::PAYLOAD_TOO_LARGE,
                T::TooLong,
                &format!("the Bundle has more than {max} entries, the most this server takes in one request"),
            ),
            Self::Unavailable(_) => {
                one(StatusCode::SERVICE_UNAVAILABLE, T::Transient, "the database is unavailable; retry later")
            }
            Self::Internal(_) => one(StatusCode::INTERNAL_SERVER_ERROR, T::Exception, "internal server error"),
            Self::InEntry(index, inner) => {
                let (status, issues) = inner.status_and_issues();
                let entry = format!("Bundle.entry[{index}]");
                let located = issues
                    .into_iter()
                    .map(|mut issue| {
                        issue.diagnostics = format!("{entry}: {}", issue.diagnostics);
                        // `CarePlan.status` in the entry's resource is `Bundle.entry[i].resource.status`.
                        issue.expression = match issue.expression.is_empty() {
                            true => vec![entry.clone()],
                            false => issue
                                .expression
                                .iter()
                                .map(|e| match e.split_once('.') {
                                    Some((_, rest)) => format!("{entry}.resource.{rest}"),
                                    None => format!("{entry}.resource"),
                                })
                                .collect(),
                        };
                        issue
                    })
                    .collect();
                (status, located)
            }
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_)
            | StoreError::Contention
            | StoreError::AuditUnavailable
            | StoreError::GroupFailed => Self::Unavailable(e),
            StoreError::VersionConflict => {
                Self::PreconditionFailed("the resource has changed: its version is not the one in If-Match".into())
            }
            StoreError::Duplicate => Self::Conflict("a resource with this id already exists".into()),
            // R4 http.html#delete: a server may refuse a delete that breaks referential integrity.
            StoreError::Referenced { holder, .. } => {
                Self::Conflict(format!("the resource is still referenced by {holder}; delete or change that first"))
            }
            StoreError::MultipleMatches(n) => {
                Self::PreconditionFailed(format!("the condition matched {n} resources; it must match at most one"))
            }
            StoreError::MissingReferences { missing, .. } => Self::Unprocessable(
                missing
                    .into_iter()
                    .map(|r| {
                        Issue::at(
                            IssueType::NotFound,
                            r.expression,
                            format!("the referenced resource {}/{} does not exist", r.resource_type, r.id),
                        )
                    })
                    .collect(),
            ),
            other => Self::Internal(other),
        }
    }
}

impl crate::store::Contended for AppError {
    fn is_contention(&self) -> bool {
        matches!(self.innermost(), Self::Unavailable(StoreError::Contention))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, issues) = self.status_and_issues();
        match self.innermost() {
            Self::Internal(source) | Self::Unavailable(source) => {
                // The log gets the error kind and the database's code, never its message (a
                // PostgreSQL DETAIL can quote row contents); the client gets the generic text.
                tracing::error!(error = %source, db.code = source.code(), status = status.as_u16(), "request failed");
            }
            _ => tracing::debug!(status = status.as_u16(), issues = issues.len(), "request rejected"),
        }
        let mut response = (status, operation_outcome(&issues).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if let Self::Unauthorized(why) = self.innermost() {
            // RFC 6750 §3: the challenge, with the error when a token was refused.
            let challenge = match why {
                None => r#"Bearer realm="liaison""#.to_owned(),
                Some(e) => format!(r#"Bearer realm="liaison", error="invalid_token", error_description="{e}""#),
            };
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // RFC 9110 §15.5.9: the connection is closed; the rest of the body is not awaited.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
