//! Validation on every write: each problem is an OperationOutcome issue with a FHIRPath
//! expression, and nothing is stored.

use axum::http::Method;
use serde_json::json;

use crate::helpers::{fixtures, TestApp};

async fn nothing_stored(app: &TestApp, ty: &str) {
    let r = app.get(&format!("{ty}/_history")).await;
    assert!(r.json.get("entry").is_none(), "nothing may be stored: {}", r.text);
}

pub async fn bad_care_plan_names_every_problem(app: TestApp) {
    let plan = json!({
        "resourceType": "CarePlan",
        "status": "actve",
        "intent": "plan",
        "colour": "blue",
        "activity": [{"detail": {"status": "not-a-status"}}]
    });
    let r = app.post("CarePlan", &plan).await;
    r.expect(400);
    let mut expressions = r.issue_expressions();
    expressions.sort();
    assert_eq!(
        expressions,
        ["CarePlan.activity[0].detail.status", "CarePlan.colour", "CarePlan.status", "CarePlan.subject"]
    );
    let codes: Vec<String> = r.issues().iter().map(|i| i["code"].as_str().unwrap().to_owned()).collect();
    assert!(
        codes.contains(&"code-invalid".into())
            && codes.contains(&"structure".into())
            && codes.contains(&"required".into())
    );
    assert!(r.issues().iter().all(|i| i["severity"] == "error" && i["diagnostics"].is_string()));
    nothing_stored(&app, "CarePlan").await;
}

pub async fn resource_type_must_match_the_url(app: TestApp) {
    let r = app.post("CarePlan", &fixtures::patient()).await;
    r.expect(400);
    assert_eq!(r.issues()[0]["code"], "invalid");
    app.post("Patient", &json!({"name": [{"family": "X"}]})).await.expect(400);
}

pub async fn malformed_json_is_400(app: TestApp) {
    for body in ["{", "[1,2]", "\"Patient\"", "{\"resourceType\": \"Patient\",}", "\u{0}"] {
        let r = app.send(Method::POST, "Patient", &[], Some(body.to_owned())).await;
        r.expect(400);
        assert_eq!(r.issues()[0]["code"], "structure", "{body:?}");
    }
    let duplicate = r#"{"resourceType": "Patient", "active": true, "active": false}"#;
    let r = app.send(Method::POST, "Patient", &[], Some(duplicate.to_owned())).await;
    r.expect(400);
    assert!(r.issues()[0]["diagnostics"].as_str().unwrap().contains("duplicate JSON key 'active'"));
    let invalid_utf8 = b"{\"resourceType\":\"Patient\",\"name\":[{\"text\":\"\xff\"}]}".to_vec();
    app.send_bytes(Method::POST, "Patient", &[], Some(invalid_utf8)).await.expect(400);
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    app.send(Method::POST, "Patient", &[], Some(format!("{{\"resourceType\":\"Patient\",\"x\":{deep}}}")))
        .await
        .expect(400);
}

pub async fn wrong_content_type_is_415(app: TestApp) {
    let body = Some(fixtures::patient().to_string());
    for ct in ["application/fhir+xml", "text/plain", "application/x-www-form-urlencoded"] {
        let r = app.send(Method::POST, "Patient", &[("content-type", ct)], body.clone()).await;
        r.expect(415);
        assert_eq!(r.issues()[0]["code"], "not-supported");
    }
    let r = app.send(Method::POST, "Patient", &[("content-type", "application/json; charset=utf-8")], body).await;
    r.expect(201);
}

pub async fn oversized_body_is_413(app: TestApp) {
    let mut patient = fixtures::patient();
    patient["name"][0]["text"] = json!("x".repeat(300 * 1024));
    let r = app.post("Patient", &patient).await;
    r.expect(413);
    assert_eq!(r.issues()[0]["code"], "too-long");
    nothing_stored(&app, "Patient").await;
}

pub async fn missing_reference_target_is_422_and_nothing_is_stored(app: TestApp) {
    let r = app.post("CarePlan", &fixtures::care_plan("nobody")).await;
    r.expect(422);
    assert_eq!(r.issue_expressions(), ["CarePlan.subject.reference"]);
    assert_eq!(r.issues()[0]["code"], "not-found");
    nothing_stored(&app, "CarePlan").await;

    // A referenced resource cannot be deleted (409 naming the holder); once the holder is gone
    // it can, and a deleted target does not count for a new reference.
    let p = app.create(fixtures::patient()).await;
    let pid = p["id"].as_str().unwrap();
    let plan = app.create(fixtures::care_plan(pid)).await;
    let plan_id = plan["id"].as_str().unwrap();
    let r = app.delete(&format!("Patient/{pid}")).await;
    r.expect(409);
    assert!(r.issues()[0]["diagnostics"].as_str().unwrap().contains(&format!("CarePlan/{plan_id}")));
    app.get(&format!("Patient/{pid}")).await.expect(200);
    app.delete(&format!("CarePlan/{plan_id}")).await.expect(204);
    app.delete(&format!("Patient/{pid}")).await.expect(204);
    app.post("CarePlan", &fixtures::care_plan(pid)).await.expect(422);
    // References to types this server does not hold are not resolved here.
    let mut plan = fixtures::care_plan(pid);
    plan["subject"] = json!({"reference": "Group/elsewhere"});
    app.post("CarePlan", &plan).await.expect(201);
}

pub async fn reference_to_a_disallowed_type_is_400(app: TestApp) {
    let org = app.create(json!({"resourceType": "Organization", "name": "Clinic"})).await;
    let r = app
        .post("CarePlan", &fixtures::care_plan_subject(&format!("Organization/{}", org["id"].as_str().unwrap())))
        .await;
    r.expect(400);
    assert_eq!(r.issue_expressions(), ["CarePlan.subject.reference"]);
    app.post("CarePlan", &fixtures::care_plan_subject("Patient/")).await.expect(400);
    app.post("CarePlan", &fixtures::care_plan_subject("not a reference")).await.expect(400);
}

pub async fn primitive_formats_are_checked(app: TestApp) {
    let patient = json!({
        "resourceType": "Patient",
        "birthDate": "1980-02-30",
        "active": "yes",
        "multipleBirthInteger": 3000000000_i64,
        "name": [{"family": ""}],
        "telecom": {"system": "phone", "value": "1"}
    });
    let r = app.post("Patient", &patient).await;
    r.expect(400);
    let mut expressions = r.issue_expressions();
    expressions.sort();
    assert_eq!(
        expressions,
        [
            "Patient.active",
            "Patient.birthDate",
            "Patient.multipleBirthInteger",
            "Patient.name[0].family",
            "Patient.telecom"
        ]
    );
}

pub async fn contained_references_resolve(app: TestApp) {
    let p = app.create(fixtures::patient()).await;
    let mut plan = fixtures::care_plan(p["id"].as_str().unwrap());
    plan["contained"] = json!([{"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active",
        "description": {"text": "Sleep better"}, "subject": {"reference": format!("Patient/{}", p["id"].as_str().unwrap())}}]);
    plan["goal"] = json!([{"reference": "#g1"}]);
    app.post("CarePlan", &plan).await.expect(201);
    plan["goal"] = json!([{"reference": "#g2"}]);
    let r = app.post("CarePlan", &plan).await;
    r.expect(400);
    assert_eq!(r.issue_expressions(), ["CarePlan.goal[0].reference"]);
    plan["goal"] = json!([{"reference": "#g1"}]);
    plan["contained"][0]["lifecycleStatus"] = json!("sometime");
    let r = app.post("CarePlan", &plan).await;
    r.expect(400);
    assert_eq!(r.issue_expressions(), ["CarePlan.contained[0].lifecycleStatus"]);
}
