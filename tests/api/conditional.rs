//! Conditional update, delete and patch (http.html#cond-update, #cdelete), `If-None-Match: *`,
//! and a capability statement that claims only what the server does.

use axum::http::Method;
use serde_json::{json, Value};

use crate::helpers::{fixtures, TestApp};

fn patient_with_mrn(mrn: &str) -> Value {
    let mut p = fixtures::patient();
    p["identifier"] = json!([{"system": "urn:mrn", "value": mrn}]);
    p
}

pub async fn conditional_update_rules(app: TestApp) {
    // No match, no id: a create with a server id.
    let r = app.put("Patient?identifier=urn:mrn|100", &patient_with_mrn("100")).await;
    r.expect(201);
    let first = r.json["id"].as_str().unwrap().to_owned();
    assert!(r.header("location").is_some_and(|l| l.contains(&first)));
    // One match, no id in the body: that resource is updated.
    let mut changed = patient_with_mrn("100");
    changed["birthDate"] = json!("1970-01-01");
    let r = app.put("Patient?identifier=urn:mrn|100", &changed).await;
    r.expect(200);
    assert_eq!(r.json["id"], first.as_str());
    assert_eq!(r.json["meta"]["versionId"], "2");
    // One match, the body naming it: updated; naming another: 400.
    changed["id"] = json!(first);
    app.put("Patient?identifier=urn:mrn|100", &changed).await.expect(200);
    changed["id"] = json!("someone-else");
    app.put("Patient?identifier=urn:mrn|100", &changed).await.expect(400);
    // No match, with an id: update as create with that id.
    let mut given = patient_with_mrn("200");
    given["id"] = json!("chosen-id");
    let r = app.put("Patient?identifier=urn:mrn|200", &given).await;
    r.expect(201);
    assert_eq!(r.json["id"], "chosen-id");
    // Several matches: 412, and nothing changes.
    app.create(patient_with_mrn("300")).await;
    app.create(patient_with_mrn("300")).await;
    let r = app.put("Patient?identifier=urn:mrn|300", &patient_with_mrn("300")).await;
    r.expect(412);
    assert_eq!(app.get("Patient?identifier=urn:mrn|300").await.json["total"], 2);
    // If-Match is honoured on the match.
    let stale = [("if-match", "W/\"1\"")];
    let body = Some(patient_with_mrn("100").to_string());
    app.send(Method::PUT, "Patient?identifier=urn:mrn|100", &stale, body).await.expect(412);
    // The condition must be a valid, known search.
    app.put("Patient", &patient_with_mrn("100")).await.expect(400);
    app.put("Patient?frobnicate=1", &patient_with_mrn("100")).await.expect(400);
    app.put("Patient?birthdate=notadate", &patient_with_mrn("100")).await.expect(400);
}

pub async fn if_none_match_star_creates_only(app: TestApp) {
    let mut p = fixtures::patient();
    p["id"] = json!("only-once");
    let star = [("if-none-match", "*")];
    let r = app.send(Method::PUT, "Patient/only-once", &star, Some(p.to_string())).await;
    r.expect(201);
    let r = app.send(Method::PUT, "Patient/only-once", &star, Some(p.to_string())).await;
    r.expect(412);
    assert_eq!(app.get("Patient/only-once").await.json["meta"]["versionId"], "1");
    let tagged = [("if-none-match", "W/\"1\"")];
    app.send(Method::PUT, "Patient/only-once", &tagged, Some(p.to_string())).await.expect(400);
    // A deleted resource counts as absent.
    app.delete("Patient/only-once").await.expect(204);
    app.send(Method::PUT, "Patient/only-once", &star, Some(p.to_string())).await.expect(201);
}

pub async fn conditional_delete_rules(app: TestApp) {
    // No match: nothing to do.
    app.delete("Patient?identifier=urn:mrn|404").await.expect(204);
    // One match: deleted.
    let one = app.create(patient_with_mrn("1")).await;
    let r = app.delete("Patient?identifier=urn:mrn|1").await;
    r.expect(204);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    app.get(&format!("Patient/{}", one["id"].as_str().unwrap())).await.expect(410);
    // Several matches: refused unless configured.
    app.create(patient_with_mrn("2")).await;
    app.create(patient_with_mrn("2")).await;
    app.delete("Patient?identifier=urn:mrn|2").await.expect(412);
    assert_eq!(app.get("Patient?identifier=urn:mrn|2").await.json["total"], 2);
    // Referential integrity holds for conditional deletes too.
    let held = app.create(patient_with_mrn("3")).await;
    app.create(fixtures::care_plan(held["id"].as_str().unwrap())).await;
    app.delete("Patient?identifier=urn:mrn|3").await.expect(409);
    app.delete("Patient?bogus=1").await.expect(400);

    let multiple = TestApp::connect_with(app.backend, &app.database_url, |c| c.max_conditional_deletes = 5).await;
    let statement = multiple.get("metadata").await.json;
    let patient = statement["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap();
    assert_eq!(patient["conditionalDelete"], "multiple");
    let r = multiple
        .send(Method::DELETE, "Patient?identifier=urn:mrn|2", &[("prefer", "return=OperationOutcome")], None)
        .await;
    r.expect(200);
    assert!(r.issues()[0]["diagnostics"].as_str().unwrap().contains("2 Patient"), "{}", r.text);
    assert_eq!(app.get("Patient?identifier=urn:mrn|2").await.json["total"], 0);
}

pub async fn conditional_patch_rules(app: TestApp) {
    let ops = json!([{"op": "replace", "path": "/birthDate", "value": "1990-01-01"}]).to_string();
    let patch = |path: &'static str| {
        app.send(Method::PATCH, path, &[("content-type", "application/json-patch+json")], Some(ops.clone()))
    };
    patch("Patient?identifier=urn:mrn|1").await.expect(404);
    let one = app.create(patient_with_mrn("1")).await;
    let r = patch("Patient?identifier=urn:mrn|1").await;
    r.expect(200);
    assert_eq!(r.json["id"], one["id"]);
    assert_eq!(r.json["birthDate"], "1990-01-01");
    app.create(patient_with_mrn("1")).await;
    patch("Patient?identifier=urn:mrn|1").await.expect(412);
}

/// Every interaction and operation `/metadata` claims works on every type, and what it does
/// not claim is refused.
pub async fn capability_statement_matches_behaviour(app: TestApp) {
    let statement = app.get("metadata").await.json;
    let rest = &statement["rest"][0];
    let formats: Vec<&str> = statement["patchFormat"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(formats, ["application/json-patch+json", "application/fhir+json"]);
    let patient = app.create(fixtures::patient()).await;
    let pid = patient["id"].as_str().unwrap();
    for resource in rest["resource"].as_array().unwrap() {
        let ty = resource["type"].as_str().unwrap();
        let claimed: Vec<&str> =
            resource["interaction"].as_array().unwrap().iter().filter_map(|i| i["code"].as_str()).collect();
        if ty == "AuditEvent" {
            // Written by the server alone: claimed read and search work, writes are refused.
            assert_eq!(claimed, ["read", "search-type"]);
            app.get("AuditEvent?_count=1").await.expect(200);
            let event = json!({"resourceType": "AuditEvent"});
            app.post("AuditEvent", &event).await.expect(405);
            app.put("AuditEvent/x", &event).await.expect(405);
            app.delete("AuditEvent/x").await.expect(405);
            app.post("AuditEvent/$validate", &event).await.expect(405);
            assert_eq!(resource["conditionalUpdate"], false);
            continue;
        }
        assert_eq!(resource["conditionalUpdate"], true);
        assert_eq!(resource["conditionalDelete"], "single");
        assert_eq!(resource["operation"][0]["name"], "validate");
        let body = minimal(ty, pid).unwrap_or_else(|| panic!("no minimal {ty} in this test"));
        for code in &claimed {
            let (method, path, content): (Method, String, Option<String>) = match *code {
                "create" => (Method::POST, ty.to_owned(), Some(body.to_string())),
                "search-type" => (Method::GET, format!("{ty}?_id=x"), None),
                "history-type" => (Method::GET, format!("{ty}/_history"), None),
                "read" => (Method::GET, format!("{ty}/cap-{ty}"), None),
                "vread" => (Method::GET, format!("{ty}/cap-{ty}/_history/1"), None),
                "history-instance" => (Method::GET, format!("{ty}/cap-{ty}/_history"), None),
                "update" | "patch" | "delete" => continue,
                other => panic!("unexpected interaction {other}"),
            };
            if *code == "read" {
                let mut with_id = body.clone();
                with_id["id"] = json!(format!("cap-{ty}"));
                app.put(&format!("{ty}/cap-{ty}"), &with_id).await.expect(201);
            }
            let r = app.send(method, &path, &[], content).await;
            assert!(r.status.is_success(), "{ty} {code}: {} {}", r.status, r.text);
        }
        assert!(claimed.contains(&"update") && claimed.contains(&"patch") && claimed.contains(&"delete"));
        let path = format!("{ty}/cap-{ty}");
        let ops = json!([{"op": "add", "path": "/meta/tag", "value": [{"code": "patched"}]}]).to_string();
        let r = app.send(Method::PATCH, &path, &[("content-type", "application/json-patch+json")], Some(ops)).await;
        r.expect(200);
        let r = app.send(Method::POST, &format!("{ty}/$validate"), &[], Some(body.to_string())).await;
        r.expect(200);
        app.delete(&path).await.expect(204);
    }
    // Not claimed, not served.
    assert!(rest["interaction"].as_array().unwrap().iter().all(|i| i["code"] != "search-system"));
    app.send(Method::POST, "Patient/1", &[], None).await.expect(405);
}

/// A minimal valid instance of `ty`, referencing patient `pid` where one is required.
fn minimal(ty: &str, pid: &str) -> Option<Value> {
    let subject = json!({"reference": format!("Patient/{pid}")});
    let coded = json!({"text": "assessment"});
    Some(match ty {
        "Patient" | "Practitioner" | "Organization" | "PractitionerRole" | "CareTeam" => json!({"resourceType": ty}),
        "CarePlan" => json!({"resourceType": ty, "status": "active", "intent": "plan", "subject": subject}),
        "Goal" => json!({"resourceType": ty, "lifecycleStatus": "active", "description": coded, "subject": subject}),
        "Encounter" => json!({"resourceType": ty, "status": "planned", "class": {"code": "AMB"}}),
        "ServiceRequest" => json!({"resourceType": ty, "status": "active", "intent": "order", "subject": subject}),
        "Task" => json!({"resourceType": ty, "status": "requested", "intent": "order"}),
        "Condition" => json!({"resourceType": ty, "subject": subject}),
        // A draft Consent: stored, and no rules until it is active.
        "Consent" => json!({"resourceType": ty, "status": "draft", "patient": subject,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]}),
        "Observation" => json!({"resourceType": ty, "status": "final", "code": coded}),
        "QuestionnaireResponse" => json!({"resourceType": ty, "status": "completed"}),
        "Subscription" => {
            json!({"resourceType": ty, "status": "off", "reason": "referrals", "criteria": "Task?status=requested",
            "channel": {"type": "rest-hook", "endpoint": "https://hooks.example.org/liaison"}})
        }
        _ => return None,
    })
}
