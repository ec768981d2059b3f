//! The referral workflow (task.html#statemachine): a referral ServiceRequest carried by a Task
//! from its requester (sender) to its owner (receiver). The state machine, who may move it, the
//! reason a rejection or cancellation needs, and the ServiceRequest following its Task in the
//! same transaction.

use axum::http::Method;
use serde_json::{json, Value};

use crate::auth::Secured;
use crate::helpers::{fixtures, TestApp};

struct Parties {
    patient: String,
    sender_role: String,
    receiver: String,
    receiver_role: String,
}

async fn id_of(app: &TestApp, resource: Value) -> String {
    app.create(resource).await["id"].as_str().unwrap().to_owned()
}

async fn parties(app: &TestApp) -> Parties {
    let clinic = id_of(app, json!({"resourceType": "Organization", "name": "Riverside Mental Health"})).await;
    let practitioner = |family: &str| json!({"resourceType": "Practitioner", "name": [{"family": family}]});
    let therapist = id_of(app, practitioner("Rivera")).await;
    let receiver = id_of(app, practitioner("Okafor")).await;
    let role = |who: &str, code: &str| {
        json!({"resourceType": "PractitionerRole", "practitioner": {"reference": format!("Practitioner/{who}")},
            "organization": {"reference": format!("Organization/{clinic}")},
            "code": [{"coding": [{"system": "http://snomed.info/sct", "code": code}]}]})
    };
    let sender_role = id_of(app, role(&therapist, "59944000")).await; // psychologist
    let receiver_role = id_of(app, role(&receiver, "80584001")).await; // psychiatrist
    let patient = id_of(app, fixtures::patient()).await;
    Parties { patient, sender_role, receiver, receiver_role }
}

fn referral(p: &Parties) -> Value {
    json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}]}],
        "code": {"text": "Medication review"},
        "subject": {"reference": format!("Patient/{}", p.patient)},
        "requester": {"reference": format!("PractitionerRole/{}", p.sender_role)},
        "performer": [{"reference": format!("PractitionerRole/{}", p.receiver_role)}]})
}

fn task(p: &Parties, request: &str, status: &str) -> Value {
    json!({"resourceType": "Task", "status": status, "intent": "order",
        "focus": {"reference": format!("ServiceRequest/{request}")},
        "for": {"reference": format!("Patient/{}", p.patient)},
        "requester": {"reference": format!("PractitionerRole/{}", p.sender_role)},
        "owner": {"reference": format!("PractitionerRole/{}", p.receiver_role)}})
}

/// Moves `task` to `status` as the holder of `token`; the response status.
async fn move_to(s: &Secured, token: &str, task: &Value, status: &str, reason: Option<&str>) -> u16 {
    let mut next = s.get(token, &format!("Task/{}", task["id"].as_str().unwrap())).await.json;
    next["status"] = json!(status);
    if let Some(reason) = reason {
        next["statusReason"] = json!({"text": reason});
    }
    let path = format!("Task/{}", next["id"].as_str().unwrap());
    let r = s.send(token, Method::PUT, &path, Some(next)).await;
    if r.status.as_u16() >= 400 {
        assert_eq!(r.json["resourceType"], "OperationOutcome", "{}", r.text);
    }
    r.status.as_u16()
}

async fn request_status(app: &TestApp, id: &str) -> String {
    app.get(&format!("ServiceRequest/{id}")).await.json["status"].as_str().unwrap_or_default().to_owned()
}

pub async fn referral_tasks_follow_the_state_machine(app: TestApp) {
    let p = parties(&app).await;
    let s = Secured::new(&app).await;
    let sender = s.user_token("user/*.cruds", &format!("PractitionerRole/{}", p.sender_role));
    // The psychiatrist signs in as a Practitioner and acts for the role the referral names.
    let receiver = s.user_token("user/*.cruds", &format!("https://idp.example.org/fhir/Practitioner/{}", p.receiver));
    let stranger = s.user_token("user/*.cruds", "Practitioner/someone-else");

    let request = id_of(&app, referral(&p)).await;
    // A referral Task starts as draft or requested.
    let r = s.send(&sender, Method::POST, "Task", Some(task(&p, &request, "accepted"))).await;
    r.expect(409);
    assert!(r.text.contains("draft or requested"), "{}", r.text);
    let created = s.send(&sender, Method::POST, "Task", Some(task(&p, &request, "requested"))).await;
    created.expect(201);
    let t = created.json;

    // Only the owner accepts; a skipped step names both statuses.
    assert_eq!(move_to(&s, &stranger, &t, "accepted", None).await, 403);
    assert_eq!(move_to(&s, &sender, &t, "accepted", None).await, 403);
    let skip = {
        let mut next = t.clone();
        next["status"] = json!("completed");
        s.send(&receiver, Method::PUT, &format!("Task/{}", t["id"].as_str().unwrap()), Some(next)).await
    };
    skip.expect(409);
    assert!(skip.text.contains("from requested to completed"), "{}", skip.text);
    for status in ["received", "accepted", "in-progress"] {
        assert_eq!(move_to(&s, &receiver, &t, status, None).await, 200, "{status}");
        assert_eq!(request_status(&app, &request).await, "active");
    }
    // Completing the Task completes the referral, in the same transaction.
    assert_eq!(move_to(&s, &receiver, &t, "completed", None).await, 200);
    assert_eq!(request_status(&app, &request).await, "completed");
    assert_eq!(move_to(&s, &receiver, &t, "in-progress", None).await, 409, "completed is final");
    let versions = app.get(&format!("ServiceRequest/{request}/_history")).await.json;
    assert_eq!(versions["entry"].as_array().map(Vec::len), Some(2), "created, then completed");

    // A rejection needs a reason, and revokes the referral.
    let second = id_of(&app, referral(&p)).await;
    let t2 = s.send(&sender, Method::POST, "Task", Some(task(&p, &second, "requested"))).await.json;
    assert_eq!(move_to(&s, &receiver, &t2, "rejected", None).await, 422);
    assert_eq!(request_status(&app, &second).await, "active", "nothing was stored");
    assert_eq!(move_to(&s, &receiver, &t2, "rejected", Some("No capacity this quarter")).await, 200);
    assert_eq!(request_status(&app, &second).await, "revoked");
    // The audit record of the rejection names the referral it revoked.
    let trail = app.get(&format!("AuditEvent?entity=ServiceRequest/{second}&subtype=update")).await.json;
    assert_eq!(trail["entry"].as_array().map(Vec::len), Some(1), "{trail}");

    // Only the requester cancels.
    let third = id_of(&app, referral(&p)).await;
    let t3 = s.send(&sender, Method::POST, "Task", Some(task(&p, &third, "requested"))).await.json;
    assert_eq!(move_to(&s, &receiver, &t3, "cancelled", Some("Duplicate")).await, 403);
    assert_eq!(move_to(&s, &sender, &t3, "cancelled", Some("Duplicate")).await, 200);
    assert_eq!(request_status(&app, &third).await, "revoked");

    // Tasks that carry no referral are not bound by the referral workflow.
    let lab = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "code": {"text": "Lipid panel"}, "subject": {"reference": format!("Patient/{}", p.patient)}});
    let lab = id_of(&app, lab).await;
    app.post("Task", &task(&p, &lab, "completed")).await.expect(201);
}

pub async fn referral_packets_run_the_rules_in_a_transaction(app: TestApp) {
    let p = parties(&app).await;
    let packet = |status: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:6f1e0b5c-0000-4000-8000-000000000001", "request": {"method": "POST", "url": "ServiceRequest"},
             "resource": referral(&p)},
            {"request": {"method": "POST", "url": "Task"}, "resource": {
                "resourceType": "Task", "status": status, "intent": "order",
                "focus": {"reference": "urn:uuid:6f1e0b5c-0000-4000-8000-000000000001"},
                "for": {"reference": format!("Patient/{}", p.patient)},
                "requester": {"reference": format!("PractitionerRole/{}", p.sender_role)},
                "owner": {"reference": format!("PractitionerRole/{}", p.receiver_role)}}}]})
    };
    let r = app.post("/fhir", &packet("accepted")).await;
    r.expect(409);
    assert!(r.text.contains("Bundle.entry[1]"), "{}", r.text);
    assert_eq!(app.get("ServiceRequest").await.json["total"], 0, "nothing of the packet was stored");
    app.post("/fhir", &packet("requested")).await.expect(200);
    assert_eq!(app.get("Task?status=requested").await.json["total"], 1);
}
