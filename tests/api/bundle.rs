//! Transaction and batch Bundles (http.html#transaction): referral packets land whole or not at
//! all, batches isolate failures, concurrent transactions stay consistent.

use axum::http::Method;
use base64::Engine;
use futures::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{fixtures, TestApp, TestResponse};

pub(crate) fn entry(full_url: Option<&str>, method: &str, url: &str, resource: Option<Value>) -> Value {
    let mut e = json!({"request": {"method": method, "url": url}});
    if let Some(f) = full_url {
        e["fullUrl"] = json!(f);
    }
    if let Some(r) = resource {
        e["resource"] = r;
    }
    e
}

pub(crate) fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

async fn post_bundle(app: &TestApp, body: &Value) -> TestResponse {
    app.post("/fhir", body).await
}

/// A referral packet as a sending system posts it: the task and referral first, what they
/// reference after, all linked by urn:uuid.
fn referral_packet(mrn: &str) -> Vec<Value> {
    let p = "urn:uuid:6f0e8d2a-0000-4000-8000-000000000001";
    let dr = "urn:uuid:6f0e8d2a-0000-4000-8000-000000000002";
    let sr = "urn:uuid:6f0e8d2a-0000-4000-8000-000000000003";
    let cond = "urn:uuid:6f0e8d2a-0000-4000-8000-000000000004";
    vec![
        entry(
            None,
            "POST",
            "Task",
            Some(json!({
                "resourceType": "Task", "status": "requested", "intent": "order",
                "focus": {"reference": sr}, "for": {"reference": p}, "owner": {"reference": dr},
            })),
        ),
        entry(
            Some(sr),
            "POST",
            "ServiceRequest",
            Some(json!({
                "resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}]}],
                "subject": {"reference": p}, "performer": [{"reference": dr}], "reasonReference": [{"reference": cond}],
            })),
        ),
        entry(
            Some(cond),
            "POST",
            "Condition",
            Some(json!({
                "resourceType": "Condition", "subject": {"reference": p}, "code": {"text": "Depressive episode"},
            })),
        ),
        entry(
            Some(p),
            "POST",
            "Patient",
            Some(json!({
                "resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}], "name": [{"family": "Referred"}],
            })),
        ),
        entry(
            Some(dr),
            "POST",
            "Practitioner",
            Some(json!({"resourceType": "Practitioner", "name": [{"family": "Psychiatrist"}]})),
        ),
    ]
}

pub async fn referral_packet_lands_with_references_resolved(app: TestApp) {
    let mut entries = referral_packet("900");
    entries.push(entry(None, "GET", "Patient?identifier=urn:mrn|900", None));
    let r = post_bundle(&app, &bundle("transaction", entries)).await;
    r.expect(200);
    assert_eq!(r.json["type"], "transaction-response");
    let out = r.json["entry"].as_array().unwrap();
    assert_eq!(out.len(), 6);
    for e in &out[..5] {
        assert_eq!(e["response"]["status"], "201 Created", "{e}");
        assert!(e["response"]["location"].as_str().unwrap().contains("/_history/1"));
        assert_eq!(e["response"]["etag"], "W/\"1\"");
        assert!(e["response"]["lastModified"].as_str().is_some());
    }
    let id = |i: usize| out[i]["resource"]["id"].as_str().unwrap().to_owned();
    let (task, referral, condition, patient, doctor) = (id(0), id(1), id(2), id(3), id(4));
    // Every urn:uuid became the id the server assigned.
    let stored = app.get(&format!("ServiceRequest/{referral}")).await.json;
    assert_eq!(stored["subject"]["reference"], format!("Patient/{patient}"));
    assert_eq!(stored["performer"][0]["reference"], format!("Practitioner/{doctor}"));
    assert_eq!(stored["reasonReference"][0]["reference"], format!("Condition/{condition}"));
    let found = app.get(&format!("Task?focus=ServiceRequest/{referral}&owner=Practitioner/{doctor}")).await;
    assert_eq!(found.json["total"], 1);
    assert_eq!(found.json["entry"][0]["resource"]["id"], task.as_str());
    // The GET entry ran after the writes and sees them.
    assert_eq!(out[5]["response"]["status"], "200 OK");
    assert_eq!(out[5]["resource"]["total"], 1);
    // Prefer: return=minimal leaves the resources out.
    let r = app
        .send(
            Method::POST,
            "/fhir",
            &[("prefer", "return=minimal")],
            Some(bundle("transaction", referral_packet("901")).to_string()),
        )
        .await;
    r.expect(200);
    assert!(r.json["entry"][0].get("resource").is_none());
    assert_eq!(r.json["entry"][0]["response"]["status"], "201 Created");
}

pub async fn a_bad_entry_fails_the_whole_transaction(app: TestApp) {
    let count = |app: &TestApp| {
        let app = app.clone();
        async move { app.get("Patient?identifier=urn:mrn|902").await.json["total"].clone() }
    };
    // An invalid resource: 400, naming the entry; nothing stored.
    let mut entries = referral_packet("902");
    entries[1]["resource"]["status"] = json!("bogus");
    let r = post_bundle(&app, &bundle("transaction", entries)).await;
    r.expect(400);
    assert!(r.issue_expressions().iter().any(|e| e == "Bundle.entry[1].resource.status"), "{}", r.text);
    assert_eq!(count(&app).await, 0);
    // A reference to a resource that does not exist: 422, naming the entry.
    let mut entries = referral_packet("902");
    entries[2]["resource"]["asserter"] = json!({"reference": "Practitioner/nobody"});
    let r = post_bundle(&app, &bundle("transaction", entries)).await;
    r.expect(422);
    assert!(r.issues()[0]["diagnostics"].as_str().unwrap().starts_with("Bundle.entry[2]"), "{}", r.text);
    assert_eq!(count(&app).await, 0);
    // A urn:uuid that is no entry's fullUrl.
    let mut entries = referral_packet("902");
    entries[0]["resource"]["requester"] = json!({"reference": "urn:uuid:00000000-0000-4000-8000-00000000dead"});
    post_bundle(&app, &bundle("transaction", entries)).await.expect(400);
    assert_eq!(count(&app).await, 0);
    // A later entry failing after earlier ones were written rolls those back too.
    let mut entries = referral_packet("902");
    entries.push(entry(None, "PUT", "Patient/fails-late", Some(json!({"resourceType": "Patient", "id": "other"}))));
    post_bundle(&app, &bundle("transaction", entries)).await.expect(400);
    entries = referral_packet("902");
    entries.push(entry(None, "DELETE", "Organization?identifier=a,b", None));
    app.create(json!({"resourceType": "Organization", "identifier": [{"value": "a"}]})).await;
    app.create(json!({"resourceType": "Organization", "identifier": [{"value": "b"}]})).await;
    post_bundle(&app, &bundle("transaction", entries)).await.expect(412);
    assert_eq!(count(&app).await, 0);
    assert_eq!(app.get("Task").await.json["total"], 0);
}

pub async fn conditional_entries_patches_and_preconditions(app: TestApp) {
    let mut existing = fixtures::patient();
    existing["identifier"] = json!([{"system": "urn:mrn", "value": "1"}]);
    let existing = app.create(existing).await;
    let pid = existing["id"].as_str().unwrap().to_owned();
    let plan = app.create(fixtures::care_plan(&pid)).await;
    let plan_id = plan["id"].as_str().unwrap().to_owned();
    app.create(
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "2"}], "birthDate": "1975"}),
    )
    .await;
    let p = "urn:uuid:6f0e8d2a-0000-4000-8000-0000000000aa";
    let json_patch = json!([{"op": "replace", "path": "/status", "value": "on-hold"}]).to_string();
    let binary = json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
        "data": base64::engine::general_purpose::STANDARD.encode(json_patch)});
    let fhirpath = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"},
        {"name": "value", "valueDate": "1975-05-05"}]}]});
    let mut conditional_create = entry(Some(p), "POST", "Patient", Some(json!({"resourceType": "Patient"})));
    conditional_create["request"]["ifNoneExist"] = json!("identifier=urn:mrn|1");
    let entries = vec![
        conditional_create,
        // References to the conditional create's fullUrl name the match.
        entry(
            None,
            "POST",
            "Goal",
            Some(json!({"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": "Sleep through the night"}, "subject": {"reference": p}})),
        ),
        // A conditional reference.
        entry(
            None,
            "POST",
            "Encounter",
            Some(json!({"resourceType": "Encounter", "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": "Patient?identifier=urn:mrn|1"}})),
        ),
        entry(None, "PATCH", &format!("CarePlan/{plan_id}"), Some(binary)),
        entry(None, "PATCH", "Patient?identifier=urn:mrn|2", Some(fhirpath)),
        entry(
            None,
            "PUT",
            "Organization?identifier=urn:org|9",
            Some(json!({"resourceType": "Organization",
            "identifier": [{"system": "urn:org", "value": "9"}], "name": "Community mental health team"})),
        ),
    ];
    let r = post_bundle(&app, &bundle("transaction", entries)).await;
    r.expect(200);
    let out = r.json["entry"].as_array().unwrap();
    let statuses: Vec<&str> = out.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["200 OK", "201 Created", "201 Created", "200 OK", "200 OK", "201 Created"]);
    assert_eq!(out[0]["resource"]["id"], pid.as_str(), "the conditional create matched");
    assert_eq!(out[1]["resource"]["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(out[2]["resource"]["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(out[3]["resource"]["status"], "on-hold");
    assert_eq!(out[4]["resource"]["birthDate"], "1975-05-05");
    assert_eq!(app.get("Patient?identifier=urn:mrn|1").await.json["total"], 1);

    // A stale ifMatch fails the transaction with 412 and changes nothing.
    let mut stale = entry(
        None,
        "PUT",
        &format!("CarePlan/{plan_id}"),
        Some({
            let mut p = fixtures::care_plan(&pid);
            p["id"] = json!(plan_id);
            p
        }),
    );
    stale["request"]["ifMatch"] = json!("W/\"1\"");
    let goal = entry(
        None,
        "POST",
        "Goal",
        Some(json!({"resourceType": "Goal", "lifecycleStatus": "active",
        "description": {"text": "Never stored"}, "subject": {"reference": format!("Patient/{pid}")}})),
    );
    let r = post_bundle(&app, &bundle("transaction", vec![goal.clone(), stale])).await;
    r.expect(412);
    assert!(r.issues()[0]["diagnostics"].as_str().unwrap().starts_with("Bundle.entry[1]"), "{}", r.text);
    assert_eq!(app.get("Goal").await.json["total"], 1);
    // Two entries for one resource are refused rather than merged.
    let twice = vec![
        entry(None, "PUT", "Patient?identifier=urn:mrn|1", Some(fixtures::patient())),
        entry(None, "DELETE", &format!("Patient/{pid}"), None),
    ];
    let r = post_bundle(&app, &bundle("transaction", twice)).await;
    r.expect(400);
    assert!(r.text.contains("Bundle.entry[0]"), "{}", r.text);
    // Ambiguous and unmatched conditional references fail it.
    app.create(json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "dup"}]})).await;
    app.create(json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "dup"}]})).await;
    for reference in ["Patient?identifier=urn:mrn|dup", "Patient?identifier=urn:mrn|none"] {
        let mut g = goal.clone();
        g["resource"]["subject"]["reference"] = json!(reference);
        post_bundle(&app, &bundle("transaction", vec![g])).await.expect(412);
    }
    assert_eq!(app.get("Goal").await.json["total"], 1);
}

pub async fn delete_and_unlink_in_one_transaction(app: TestApp) {
    let old = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let new = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let plan = app.create(fixtures::care_plan(&old)).await;
    let plan_id = plan["id"].as_str().unwrap().to_owned();
    // Deleting a still-referenced patient fails, naming the entry.
    let r =
        post_bundle(&app, &bundle("transaction", vec![entry(None, "DELETE", &format!("Patient/{old}"), None)])).await;
    r.expect(409);
    assert!(r.text.contains("Bundle.entry[0]"), "{}", r.text);
    // Moving the plan and deleting the patient together succeeds: integrity holds at the end.
    let mut moved = fixtures::care_plan(&new);
    moved["id"] = json!(plan_id);
    let entries = vec![
        entry(None, "PUT", &format!("CarePlan/{plan_id}"), Some(moved)),
        entry(None, "DELETE", &format!("Patient/{old}"), None),
    ];
    let r = post_bundle(&app, &bundle("transaction", entries)).await;
    r.expect(200);
    assert_eq!(r.json["entry"][1]["response"]["status"], "204 No Content");
    app.get(&format!("Patient/{old}")).await.expect(410);
}

pub async fn batch_isolates_failures(app: TestApp) {
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let mut bad = fixtures::care_plan(&pid);
    bad["status"] = json!("bogus");
    let entries = vec![
        entry(None, "POST", "CarePlan", Some(fixtures::care_plan(&pid))),
        entry(None, "POST", "CarePlan", Some(bad)),
        entry(None, "GET", "CarePlan/does-not-exist", None),
        entry(None, "POST", "CarePlan", Some(fixtures::care_plan("missing-patient"))),
        entry(None, "GET", &format!("Patient/{pid}"), None),
        entry(None, "POST", "Unknown", Some(json!({"resourceType": "Unknown"}))),
        entry(None, "DELETE", &format!("Patient/{pid}"), None),
    ];
    let r = post_bundle(&app, &bundle("batch", entries)).await;
    r.expect(200);
    assert_eq!(r.json["type"], "batch-response");
    let out = r.json["entry"].as_array().unwrap();
    let statuses: Vec<&str> = out.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "400 Bad Request",
            "404 Not Found",
            "422 Unprocessable Entity",
            "200 OK",
            "404 Not Found",
            "409 Conflict"
        ]
    );
    assert_eq!(out[1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert!(out[0]["response"]["location"].as_str().unwrap().starts_with("CarePlan/"));
    assert_eq!(out[4]["resource"]["id"], pid.as_str());
    assert_eq!(app.get("CarePlan").await.json["total"], 1, "only the good entry was stored");
}

pub async fn bundle_shape_and_limits(app: TestApp) {
    post_bundle(&app, &fixtures::patient()).await.expect(400);
    post_bundle(&app, &bundle("collection", vec![])).await.expect(400);
    post_bundle(&app, &json!({"resourceType": "Bundle", "entry": []})).await.expect(400);
    let no_request =
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": fixtures::patient()}]});
    post_bundle(&app, &no_request).await.expect(400);
    let no_resource = bundle("transaction", vec![entry(None, "POST", "Patient", None)]);
    post_bundle(&app, &no_resource).await.expect(400);
    let same = "urn:uuid:6f0e8d2a-0000-4000-8000-0000000000bb";
    let duplicate = bundle(
        "transaction",
        vec![
            entry(Some(same), "POST", "Patient", Some(fixtures::patient())),
            entry(Some(same), "POST", "Patient", Some(fixtures::patient())),
        ],
    );
    let r = post_bundle(&app, &duplicate).await;
    r.expect(400);
    assert!(r.text.contains("Bundle.entry[1]"), "{}", r.text);
    let odd = bundle("transaction", vec![entry(None, "POST", "Patient/123/_history", Some(fixtures::patient()))]);
    post_bundle(&app, &odd).await.expect(400);
    // An empty transaction is a no-op.
    let r = post_bundle(&app, &bundle("transaction", vec![])).await;
    r.expect(200);
    // The entry limit and the body limit.
    let small = TestApp::connect_with(app.backend, &app.database_url, |c| c.max_bundle_entries = 3).await;
    let four: Vec<Value> = (0..4).map(|_| entry(None, "POST", "Patient", Some(fixtures::patient()))).collect();
    post_bundle(&small, &bundle("batch", four)).await.expect(413);
    let long = json!({"resourceType": "Patient", "name": [{"text": "x".repeat(1000)}]});
    let big: Vec<Value> = (0..300).map(|_| entry(None, "POST", "Patient", Some(long.clone()))).collect();
    post_bundle(&app, &bundle("transaction", big)).await.expect(413);
    assert_eq!(app.get("Patient").await.json["total"], 0);
    app.send(Method::GET, "/fhir", &[], None).await.expect(405);
}

/// Transactions that write the same two resources in opposite orders, concurrently: each lands
/// whole (deadlocks are retried), so both resources always carry the same writer's mark.
pub async fn concurrent_transactions_stay_consistent(app: TestApp) {
    const WRITERS: usize = 12;
    let put = |id: &str, mark: usize| {
        entry(
            None,
            "PUT",
            &format!("Patient/{id}"),
            Some(json!({"resourceType": "Patient", "id": id,
            "identifier": [{"system": "urn:writer", "value": mark.to_string()}]})),
        )
    };
    let runs = (0..WRITERS).map(|i| {
        let app = app.clone();
        let entries =
            if i % 2 == 0 { vec![put("left", i), put("right", i)] } else { vec![put("right", i), put("left", i)] };
        tokio::spawn(async move { post_bundle(&app, &bundle("transaction", entries)).await.status.as_u16() })
    });
    let statuses: Vec<u16> = join_all(runs).await.into_iter().map(Result::unwrap).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let left = app.get("Patient/left").await.json;
    let right = app.get("Patient/right").await.json;
    assert_eq!(left["identifier"], right["identifier"], "both carry the last transaction's mark");
    assert_eq!(left["meta"]["versionId"], WRITERS.to_string());
    assert_eq!(right["meta"]["versionId"], WRITERS.to_string());

    // Conflicting ifMatch transactions: exactly one wins, the others fail whole with 412.
    let runs = (0..WRITERS).map(|i| {
        let app = app.clone();
        let mut a = put("left", 100 + i);
        let mut b = put("right", 100 + i);
        a["request"]["ifMatch"] = json!(format!("W/\"{WRITERS}\""));
        b["request"]["ifMatch"] = json!(format!("W/\"{WRITERS}\""));
        tokio::spawn(async move { post_bundle(&app, &bundle("transaction", vec![a, b])).await.status.as_u16() })
    });
    let statuses: Vec<u16> = join_all(runs).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), WRITERS - 1, "{statuses:?}");
    let left = app.get("Patient/left").await.json;
    let right = app.get("Patient/right").await.json;
    assert_eq!(left["identifier"], right["identifier"]);
}
