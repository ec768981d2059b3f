//! OperationOutcome issues (operationoutcome.html): the one way Liaison reports problems.

use serde::Serialize;
use serde_json::{json, Value};

/// `OperationOutcome.issue.severity` (required binding issue-severity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// `OperationOutcome.issue.code` (required binding issue-type); the subset Liaison reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    CodeInvalid,
    NotSupported,
    NotFound,
    Deleted,
    Duplicate,
    Conflict,
    Processing,
    TooLong,
    Timeout,
    Transient,
    Exception,
    Informational,
    Login,
    Forbidden,
}

/// One issue, with the FHIRPath location of the offending element where there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueType,
    pub diagnostics: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

impl Issue {
    /// An error issue without a location.
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self { severity: Severity::Error, code, diagnostics: diagnostics.into(), expression: Vec::new() }
    }

    /// An informational issue (`Prefer: return=OperationOutcome`).
    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self {
            severity: Severity::Information,
            code: IssueType::Informational,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    /// An error issue located at `expression`.
    pub fn at(code: IssueType, expression: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        let expression = expression.into();
        Self {
            severity: Severity::Error,
            code,
            diagnostics: format!("{expression}: {}", diagnostics.into()),
            expression: vec![expression],
        }
    }
}

/// An OperationOutcome resource holding `issues`.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}
