//! PATCH in both formats (http.html#patch, fhirpatch.html) and `$validate`.

use axum::http::Method;
use serde_json::{json, Value};

use crate::helpers::{fixtures, TestApp, TestResponse};

const JSON_PATCH: (&str, &str) = ("content-type", "application/json-patch+json");

async fn json_patch(app: &TestApp, path: &str, ops: Value, extra: &[(&str, &str)]) -> TestResponse {
    let mut headers = vec![JSON_PATCH];
    headers.extend_from_slice(extra);
    app.send(Method::PATCH, path, &headers, Some(ops.to_string())).await
}

async fn fhirpath_patch(app: &TestApp, path: &str, operations: Vec<Value>) -> TestResponse {
    let parameters = json!({
        "resourceType": "Parameters",
        "parameter": operations.into_iter().map(|parts| json!({"name": "operation", "part": parts})).collect::<Vec<_>>(),
    });
    app.send(Method::PATCH, path, &[], Some(parameters.to_string())).await
}

/// One FHIRPath Patch operation's parts.
fn op(kind: &str, path: &str, more: Vec<Value>) -> Value {
    let mut parts = vec![json!({"name": "type", "valueCode": kind}), json!({"name": "path", "valueString": path})];
    parts.extend(more);
    Value::Array(parts)
}

async fn care_plan(app: &TestApp) -> (String, String) {
    let patient = app.create(fixtures::patient()).await;
    let pid = patient["id"].as_str().unwrap().to_owned();
    let plan = app.create(fixtures::care_plan(&pid)).await;
    (pid, plan["id"].as_str().unwrap().to_owned())
}

pub async fn json_patch_changes_one_field_and_reindexes(app: TestApp) {
    let (pid, id) = care_plan(&app).await;
    let ops = json!([
        {"op": "test", "path": "/intent", "value": "plan"},
        {"op": "replace", "path": "/status", "value": "completed"},
        {"op": "add", "path": "/description", "value": "Reviewed with the patient"},
    ]);
    let r = json_patch(&app, &format!("CarePlan/{id}"), ops, &[("if-match", "W/\"1\"")]).await;
    r.expect(200);
    assert_eq!(r.json["status"], "completed");
    assert_eq!(r.json["description"], "Reviewed with the patient");
    assert_eq!(r.json["title"], "Initial treatment plan", "untouched elements are kept");
    assert_eq!(r.json["meta"]["versionId"], "2");
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let found = app.get(&format!("CarePlan?patient={pid}&status=completed")).await;
    assert_eq!(found.json["total"], 1, "the patched version is indexed");
    let old = app.get(&format!("CarePlan?patient={pid}&status=active")).await;
    assert_eq!(old.json["total"], 0);
    let history = app.get(&format!("CarePlan/{id}/_history")).await;
    assert_eq!(history.json["entry"].as_array().map(Vec::len), Some(2));
}

pub async fn failing_patches_change_nothing(app: TestApp) {
    let (_, id) = care_plan(&app).await;
    let path = format!("CarePlan/{id}");
    // A failing test operation.
    let r = json_patch(
        &app,
        &path,
        json!([{"op": "test", "path": "/status", "value": "draft"}, {"op": "remove", "path": "/title"}]),
        &[],
    )
    .await;
    r.expect(422);
    // A path that does not exist.
    json_patch(&app, &path, json!([{"op": "replace", "path": "/nothing/here", "value": 1}]), &[]).await.expect(422);
    // A result that is not valid R4: a code outside the required value set, a removed
    // required element, a changed id.
    let r = json_patch(&app, &path, json!([{"op": "replace", "path": "/status", "value": "finished"}]), &[]).await;
    r.expect(422);
    assert!(r.issue_expressions().iter().any(|e| e.contains("status")), "{}", r.text);
    json_patch(&app, &path, json!([{"op": "remove", "path": "/intent"}]), &[]).await.expect(422);
    json_patch(&app, &path, json!([{"op": "replace", "path": "/id", "value": "other"}]), &[]).await.expect(422);
    // A stale version.
    let r = json_patch(
        &app,
        &path,
        json!([{"op": "replace", "path": "/status", "value": "revoked"}]),
        &[("if-match", "W/\"7\"")],
    )
    .await;
    r.expect(412);
    // Malformed documents and media types.
    json_patch(&app, &path, json!({"op": "replace"}), &[]).await.expect(400);
    json_patch(&app, &path, json!([{"op": "frobnicate", "path": "/status"}]), &[]).await.expect(400);
    let r = app.send(Method::PATCH, &path, &[("content-type", "text/plain")], Some("status=x".into())).await;
    r.expect(415);
    let read = app.get(&path).await;
    assert_eq!(read.json["meta"]["versionId"], "1", "nothing was stored: {}", read.text);
    assert_eq!(read.json["status"], "active");
    // Missing and deleted targets.
    json_patch(&app, "CarePlan/missing", json!([{"op": "remove", "path": "/title"}]), &[]).await.expect(404);
    app.delete(&path).await.expect(204);
    json_patch(&app, &path, json!([{"op": "remove", "path": "/title"}]), &[]).await.expect(410);
}

pub async fn fhirpath_patch_operations(app: TestApp) {
    let mut patient = fixtures::patient();
    patient["identifier"] = json!([
        {"system": "urn:mrn", "value": "1"},
        {"system": "urn:ssn", "value": "2"},
    ]);
    let id = app.create(patient).await["id"].as_str().unwrap().to_owned();
    let path = format!("Patient/{id}");
    let r = fhirpath_patch(
        &app,
        &path,
        vec![
            op("replace", "Patient.birthDate", vec![json!({"name": "value", "valueDate": "1979-12-31"})]),
            op(
                "add",
                "Patient",
                vec![
                    json!({"name": "name", "valueString": "deceased"}),
                    json!({"name": "value", "valueBoolean": false}),
                ],
            ),
            op(
                "add",
                "Patient",
                vec![
                    json!({"name": "name", "valueString": "telecom"}),
                    json!({"name": "value", "valueContactPoint": {"system": "phone", "value": "555-0100"}}),
                ],
            ),
            op(
                "insert",
                "Patient.identifier",
                vec![
                    json!({"name": "index", "valueInteger": 0}),
                    json!({"name": "value", "valueIdentifier": {"system": "urn:nhs", "value": "0"}}),
                ],
            ),
            op(
                "move",
                "Patient.identifier",
                vec![json!({"name": "source", "valueInteger": 2}), json!({"name": "destination", "valueInteger": 0})],
            ),
            op("delete", "Patient.identifier.where(system='urn:mrn')", vec![]),
            op("delete", "Patient.gender", vec![]),
            // A backbone element, built from parts.
            op(
                "add",
                "Patient",
                vec![
                    json!({"name": "name", "valueString": "contact"}),
                    json!({"name": "value", "part": [
                        {"name": "name", "valueHumanName": {"family": "Kin"}},
                        {"name": "gender", "valueCode": "female"},
                    ]}),
                ],
            ),
        ],
    )
    .await;
    r.expect(200);
    assert_eq!(r.json["birthDate"], "1979-12-31");
    assert_eq!(r.json["deceasedBoolean"], false);
    assert_eq!(r.json["telecom"], json!([{"system": "phone", "value": "555-0100"}]));
    assert_eq!(r.json["identifier"], json!([{"system": "urn:ssn", "value": "2"}, {"system": "urn:nhs", "value": "0"}]));
    assert_eq!(r.json["contact"][0]["name"]["family"], "Kin");
    assert_eq!(r.json["meta"]["versionId"], "2");
    let found = app.get("Patient?identifier=urn:nhs|0").await;
    assert_eq!(found.json["total"], 1);

    // Indexers, and deleting the last item drops the list.
    let r = fhirpath_patch(
        &app,
        &path,
        vec![op("delete", "Patient.identifier[0]", vec![]), op("delete", "Patient.identifier", vec![])],
    )
    .await;
    r.expect(200);
    assert!(r.json.get("identifier").is_none(), "{}", r.text);

    // Failures: no match for replace, several for delete, an invalid result, malformed input.
    let replace_missing = op("replace", "Patient.gender", vec![json!({"name": "value", "valueCode": "other"})]);
    fhirpath_patch(&app, &path, vec![replace_missing]).await.expect(422);
    let r = fhirpath_patch(
        &app,
        &path,
        vec![op("replace", "Patient.birthDate", vec![json!({"name": "value", "valueString": "soon"})])],
    )
    .await;
    r.expect(422);
    fhirpath_patch(&app, &path, vec![op("explode", "Patient", vec![])]).await.expect(400);
    fhirpath_patch(&app, &path, vec![op("delete", "Patient.name.select(given)", vec![])]).await.expect(400);
    let not_parameters = json!({"resourceType": "Patient"});
    app.send(Method::PATCH, &path, &[], Some(not_parameters.to_string())).await.expect(400);
    assert_eq!(app.get(&path).await.json["meta"]["versionId"], "3");
}

pub async fn validate_in_every_mode(app: TestApp) {
    let (pid, plan_id) = care_plan(&app).await;
    let info = |r: &TestResponse| r.issues().iter().all(|i| i["severity"] == "information");
    // Type level, no mode: the content only.
    let r = app.post("CarePlan/$validate", &fixtures::care_plan(&pid)).await;
    r.expect(200);
    assert!(info(&r), "{}", r.text);
    let mut bad = fixtures::care_plan(&pid);
    bad["status"] = json!("finished");
    let r = app.post("CarePlan/$validate", &bad).await;
    r.expect(200);
    assert!(r.issue_expressions().iter().any(|e| e.contains("status")), "{}", r.text);
    // Mode create checks what the write checks: here a reference to nothing.
    let dangling = fixtures::care_plan("nobody");
    let r = app.post("CarePlan/$validate", &dangling).await;
    assert!(info(&r), "no mode: content only: {}", r.text);
    let r = app.post("CarePlan/$validate?mode=create", &dangling).await;
    r.expect(200);
    assert_eq!(r.issues()[0]["code"], "not-found", "{}", r.text);
    let r = app.post("CarePlan/$validate?mode=create", &fixtures::care_plan(&pid)).await;
    assert!(info(&r), "{}", r.text);
    assert_eq!(app.get("CarePlan").await.json["total"], 1, "validation stores nothing");
    // Instance level, mode update, in a Parameters body.
    let mut plan = fixtures::care_plan(&pid);
    plan["id"] = json!("another-id");
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "update"},
        {"name": "resource", "resource": plan},
    ]});
    let r = app.post(&format!("CarePlan/{plan_id}/$validate"), &params).await;
    r.expect(200);
    assert!(!info(&r), "the id must match the URL: {}", r.text);
    plan["id"] = json!(plan_id);
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "update"},
        {"name": "resource", "resource": plan},
    ]});
    let r = app.post(&format!("CarePlan/{plan_id}/$validate"), &params).await;
    assert!(info(&r), "{}", r.text);
    assert_eq!(app.get(&format!("CarePlan/{plan_id}")).await.json["meta"]["versionId"], "1");
    // Mode delete: referential integrity, and nothing deleted.
    let delete = json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]});
    let r = app.post(&format!("Patient/{pid}/$validate"), &delete).await;
    r.expect(200);
    assert_eq!(r.issues()[0]["code"], "conflict", "the care plan still references the patient: {}", r.text);
    let r = app.post(&format!("CarePlan/{plan_id}/$validate?mode=delete"), &delete).await;
    assert!(info(&r), "{}", r.text);
    app.get(&format!("CarePlan/{plan_id}")).await.expect(200);
    // Errors of the operation itself.
    app.post("CarePlan/$validate?mode=update", &fixtures::care_plan(&pid)).await.expect(400);
    app.post("CarePlan/$validate?mode=sideways", &fixtures::care_plan(&pid)).await.expect(400);
    app.post("CarePlan/$validate?profile=http://example.org/custom", &fixtures::care_plan(&pid)).await.expect(400);
    app.send(Method::GET, "CarePlan/$validate", &[], None).await.expect(405);
}
