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

/// Hostile queries, ids and numbers: each gets a 4xx OperationOutcome (or a bounded answer), and
/// the server stays healthy.
pub async fn hostile_queries_ids_and_numbers_get_4xx(app: TestApp) {
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    // Thousands of parameters.
    let many = (0..5000).map(|i| format!("name=x{i}")).collect::<Vec<_>>().join("&");
    let r = app.get(&format!("Patient?{many}")).await;
    r.expect(400);
    assert!(r.issues()[0]["diagnostics"].as_str().unwrap().contains("at most 100 parameters"), "{}", r.text);
    let r =
        app.get(&format!("Patient?name={}", (0..5000).map(|i| format!("x{i}")).collect::<Vec<_>>().join(","))).await;
    r.expect(400);
    // As many as allowed still answer.
    let r = app.get(&format!("Patient?name={}", (0..200).map(|i| format!("x{i}")).collect::<Vec<_>>().join(","))).await;
    r.expect(200);
    let dates = (0..200).map(|i| format!("ap2024-01-{:02}", 1 + i % 28)).collect::<Vec<_>>().join(",");
    app.get(&format!("Patient?birthdate={dates}")).await.expect(200);
    let r = app.get(&format!("Patient?name={}", (0..201).map(|i| format!("x{i}")).collect::<Vec<_>>().join(","))).await;
    r.expect(400);
    let r = app
        .get(&format!("Patient?{}", (0..100).map(|i| format!("name:contains=x{i}")).collect::<Vec<_>>().join("&")))
        .await;
    r.expect(200);
    // Absurd `_count`: capped, or refused when it is no number.
    let r = app.get("Patient?_count=1000000000").await;
    r.expect(200);
    for bad in ["-1", "99999999999999999999999", "1e9", "lots"] {
        let r = app.get(&format!("Patient?_count={bad}")).await;
        assert_eq!(r.status.as_u16(), 400, "_count={bad}: {}", r.text);
    }
    // Include cycles with :iterate end.
    let r = app.get("Patient?_include:iterate=Patient:link&_revinclude:iterate=Patient:link&_include:iterate=Patient:general-practitioner").await;
    r.expect(200);
    // Chains deeper than allowed.
    let r = app.get("CarePlan?subject:Patient.link:Patient.link:Patient.link:Patient.link:Patient.link.name=x").await;
    r.expect(400);
    // Path traversal and odd ids.
    for path in
        ["Patient/..%2F..%2Fetc%2Fpasswd", "Patient/%2e%2e", "Patient/a%00b", &format!("Patient/{}", "a".repeat(65))]
    {
        let r = app.get(path).await;
        assert!(matches!(r.status.as_u16(), 400 | 404), "{path}: {} {}", r.status, r.text);
    }
    let mut p = fixtures::patient();
    p["id"] = json!("../escape");
    let r = app.put("Patient/..%2Fescape", &p).await;
    assert!(matches!(r.status.as_u16(), 400 | 404), "{} {}", r.status, r.text);
    // Numbers out of range.
    for value in ["1e400", "-1e400", "123456789012345678901234567890"] {
        let body = format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/{pid}"}},"valueInteger":{value}}}"#
        );
        let r = app.send(Method::POST, "Observation", &[], Some(body)).await;
        r.expect(400);
    }
    // A huge array within the size limit.
    let mut p = fixtures::patient();
    p["identifier"] =
        json!((0..5000).map(|i| json!({"system": "urn:x", "value": format!("v{i}")})).collect::<Vec<_>>());
    let r = app.post("Patient", &p).await;
    assert!(matches!(r.status.as_u16(), 201 | 400 | 413), "{} {}", r.status, r.text);
    app.get("Patient").await.expect(200);
}
