//! `GET /metadata`: the CapabilityStatement, generated from the registry so that it claims
//! exactly what the router serves (capabilitystatement.html).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::negotiate::Format;
use crate::state::AppState;

/// The CapabilityStatement of this server.
pub fn capability_statement(state: &AppState) -> Value {
    let resources: Vec<Value> = state
        .registry
        .types()
        .map(|ty| {
            let mut resource = json!({
                "type": ty.as_str(),
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{ty}"),
                "interaction": state.registry.interactions(ty.as_str()).iter().map(|code| json!({ "code": code })).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-match",
                "conditionalUpdate": true,
                "conditionalDelete": if state.limits.max_conditional_deletes > 1 { "multiple" } else { "single" },
                "referencePolicy": ["literal", "enforced", "local"],
                "searchParam": state.registry.search.for_type(ty.as_str()).iter().map(|p| json!({
                    "name": p.code,
                    "definition": format!("http://hl7.org/fhir/SearchParameter/{}-{}", ty, p.code),
                    "type": p.kind.as_str(),
                    "documentation": p.description,
                })).collect::<Vec<_>>(),
                "searchInclude": state.registry.search.for_type(ty.as_str()).iter()
                    .filter(|p| p.kind == crate::fhir::search::ParamKind::Reference)
                    .map(|p| format!("{ty}:{}", p.code)).collect::<Vec<_>>(),
                "searchRevInclude": state.registry.types()
                    .flat_map(|source| state.registry.search.for_type(source.as_str()).iter()
                        .filter(move |p| p.kind == crate::fhir::search::ParamKind::Reference && p.targets.iter().any(|t| t == ty.as_str()))
                        .map(move |p| format!("{source}:{}", p.code)))
                    .collect::<Vec<_>>(),
                "operation": [{
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                }],
            });
            if ty.as_str() == "Patient" {
                let operations = resource["operation"].as_array_mut().expect("an operation list");
                operations.push(json!({
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }));
                operations.push(json!({
                    "name": "access-log",
                    "definition": format!("{}/OperationDefinition/Patient-access-log", state.base_url),
                    "documentation": "Who accessed the patient's record, and when: the audit trail's events naming the patient, newest first, without network details.",
                }));
            }
            if state.registry.server_written(ty.as_str()) {
                // The audit trail: read and search only, one version each.
                for (key, value) in [
                    ("versioning", json!("no-version")),
                    ("readHistory", json!(false)),
                    ("updateCreate", json!(false)),
                    ("conditionalCreate", json!(false)),
                    ("conditionalUpdate", json!(false)),
                    ("conditionalDelete", json!("not-supported")),
                    ("conditionalRead", json!("not-supported")),
                ] {
                    resource[key] = value;
                }
                if let Some(map) = resource.as_object_mut() {
                    map.remove("operation");
                }
            }
            resource
        })
        .map(drop_empty_arrays)
        .collect();
    let mut rest = json!({
        "mode": "server",
        "resource": resources,
        "interaction": [{ "code": "transaction" }, { "code": "batch" }, { "code": "history-system" }],
    });
    if state.auth.is_some() {
        let mut uris = Vec::new();
        for (name, url) in [("authorize", &state.smart.authorization), ("token", &state.smart.token)] {
            if let Some(url) = url {
                uris.push(json!({"url": name, "valueUri": url}));
            }
        }
        let mut security = json!({
            "service": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
            }]}],
            "description": "OAuth2 bearer tokens (SMART on FHIR scopes, v1 and v2); see .well-known/smart-configuration",
        });
        if !uris.is_empty() {
            security["extension"] = json!([{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": uris,
            }]);
        }
        rest["security"] = security;
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": crate::fhir::format_instant(crate::fhir::now_millis()),
        "publisher": "Liaison",
        "kind": "instance",
        "software": { "name": "Liaison", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "Liaison FHIR R4 server for mental-health care coordination",
            "url": state.base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json", "application/json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [rest],
    })
}

/// FHIR JSON forbids empty arrays: leave such elements out.
fn drop_empty_arrays(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        map.retain(|_, v| !matches!(v, Value::Array(items) if items.is_empty()));
    }
    value
}

/// `GET /metadata`.
pub async fn metadata(State(state): State<AppState>, format: Format) -> Response {
    format.respond(StatusCode::OK, capability_statement(&state).to_string())
}
