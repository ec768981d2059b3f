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
    let receiver = s.user_token("user/*.cruds", &format!("{}/Practitioner/{}", crate::helpers::BASE, p.receiver));
    let stranger = s.user_token("user/*.cruds", "Practitioner/someone-else");
    // The same id on another server is someone else.
    let impostor = s.user_token("user/*.cruds", &format!("https://other-ehr.example/fhir/Practitioner/{}", p.receiver));

    let request = id_of(&app, referral(&p)).await;
    // A referral Task starts as draft or requested.
    let r = s.send(&sender, Method::POST, "Task", Some(task(&p, &request, "accepted"))).await;
    r.expect(409);
    assert!(r.text.contains("draft or requested"), "{}", r.text);
    // A patient app cannot hang a Task on another patient's referral (to revoke it, say).
    let other = id_of(&app, fixtures::patient()).await;
    let other_app = s.token("patient/*.cruds", Some(&other));
    let mut foreign = task(&p, &request, "requested");
    foreign["for"] = json!({"reference": format!("Patient/{other}")});
    foreign.as_object_mut().unwrap().remove("requester");
    s.send(&other_app, Method::POST, "Task", Some(foreign)).await.expect(403);
    let created = s.send(&sender, Method::POST, "Task", Some(task(&p, &request, "requested"))).await;
    created.expect(201);
    let t = created.json;

    // Only the owner accepts; a skipped step names both statuses.
    assert_eq!(move_to(&s, &stranger, &t, "accepted", None).await, 403);
    assert_eq!(move_to(&s, &impostor, &t, "accepted", None).await, 403);
    // The parties and the focus of a referral stay as they are: no taking it over, no escaping
    // the rules by dropping the focus.
    for (element, value) in
        [("owner", json!({"reference": format!("PractitionerRole/{}", p.sender_role)})), ("focus", Value::Null)]
    {
        let mut hijack = s.get(&sender, &format!("Task/{}", t["id"].as_str().unwrap())).await.json;
        match value {
            Value::Null => hijack.as_object_mut().unwrap().remove(element),
            v => hijack.as_object_mut().unwrap().insert(element.into(), v),
        };
        let r = s.send(&sender, Method::PUT, &format!("Task/{}", t["id"].as_str().unwrap()), Some(hijack)).await;
        r.expect(409);
        assert!(r.text.contains(element), "{}", r.text);
    }
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

/// The care-coordination story end to end: a psychotherapist's assessment, a care plan with
/// goals, a referral packet to a psychiatrist as one transaction, the psychiatrist's system
/// notified over HTTP, acceptance, a follow-up encounter, the plan updated, a social worker
/// joining the care team, a second referral rejected with a reason — and the audit trail of it.
pub async fn care_coordination_scenario(app: TestApp) {
    let receiver = crate::subscription::Receiver::start().await;
    let server = crate::subscription::notifying(&app, 10).await;
    tokio::spawn(liaison::subscription::deliver(server.state.clone()));
    let s = Secured::new(&app).await;
    let p = parties(&server).await;
    let subject = json!({"reference": format!("Patient/{}", p.patient)});
    let social_worker = id_of(&server, json!({"resourceType": "Practitioner", "name": [{"family": "Haddad"}]})).await;
    let social_role = id_of(
        &server,
        json!({"resourceType": "PractitionerRole", "practitioner": {"reference": format!("Practitioner/{social_worker}")},
            "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "106328005", "display": "Social worker"}]}]}),
    )
    .await;
    // The psychiatrist's system subscribes to referrals addressed to the psychiatrist.
    let criteria = format!("Task?owner=PractitionerRole/{}", p.receiver_role);
    server
        .post("Subscription", &crate::subscription::subscription(&criteria, &receiver.url, "active"))
        .await
        .expect(201);

    // The psychotherapist's assessment.
    let therapist = s.user_token("user/*.cruds", &format!("PractitionerRole/{}", p.sender_role));
    let post = |ty: &str, body: Value| {
        let (s, therapist, ty) = (&s, therapist.clone(), ty.to_owned());
        async move {
            let r = s.send(&therapist, Method::POST, &ty, Some(body)).await;
            r.expect(201);
            r.json["id"].as_str().unwrap().to_owned()
        }
    };
    let encounter = post(
        "Encounter",
        json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject,
        "period": {"start": "2024-03-04T10:00:00Z", "end": "2024-03-04T11:00:00Z"}}),
    )
    .await;
    let answers = post(
        "QuestionnaireResponse",
        json!({"resourceType": "QuestionnaireResponse", "status": "completed",
        "questionnaire": "http://loinc.org/q/44249-1", "subject": subject,
        "encounter": {"reference": format!("Encounter/{encounter}")},
        "item": [{"linkId": "44261-6", "answer": [{"valueInteger": 17}]}]}),
    )
    .await;
    let score = post(
        "Observation",
        json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6", "display": "PHQ-9 total score"}]},
        "subject": subject, "encounter": {"reference": format!("Encounter/{encounter}")},
        "derivedFrom": [{"reference": format!("QuestionnaireResponse/{answers}")}], "valueInteger": 17}),
    )
    .await;
    let condition = post(
        "Condition",
        json!({"resourceType": "Condition", "subject": subject,
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "F32.1"}]},
        "evidence": [{"detail": [{"reference": format!("Observation/{score}")}]}]}),
    )
    .await;
    // The plan, its goals, and the care team.
    let team = post("CareTeam", json!({"resourceType": "CareTeam", "status": "active", "subject": subject,
        "participant": [{"role": [{"coding": [{"system": "http://snomed.info/sct", "code": "59944000", "display": "Psychologist"}]}],
            "member": {"reference": format!("PractitionerRole/{}", p.sender_role)}}]})).await;
    let mut goals = Vec::new();
    for text in ["PHQ-9 below 10 within 12 weeks", "Back at work part-time"] {
        goals.push(
            post(
                "Goal",
                json!({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": text},
            "subject": subject, "addresses": [{"reference": format!("Condition/{condition}")}]}),
            )
            .await,
        );
    }
    let plan = post(
        "CarePlan",
        json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": subject,
        "careTeam": [{"reference": format!("CareTeam/{team}")}],
        "addresses": [{"reference": format!("Condition/{condition}")}],
        "goal": goals.iter().map(|g| json!({"reference": format!("Goal/{g}")})).collect::<Vec<_>>()}),
    )
    .await;

    // The referral packet, in one transaction.
    let mut request = referral(&p);
    request["reasonReference"] = json!([{"reference": format!("Condition/{condition}")}]);
    request["supportingInfo"] = json!([{"reference": format!("Observation/{score}")}]);
    let packet = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:2b7c1c1e-0000-4000-8000-0000000000aa", "request": {"method": "POST", "url": "ServiceRequest"},
         "resource": request},
        {"request": {"method": "POST", "url": "Task"}, "resource": {
            "resourceType": "Task", "status": "requested", "intent": "order",
            "focus": {"reference": "urn:uuid:2b7c1c1e-0000-4000-8000-0000000000aa"}, "for": subject,
            "requester": {"reference": format!("PractitionerRole/{}", p.sender_role)},
            "owner": {"reference": format!("PractitionerRole/{}", p.receiver_role)}}}]});
    let done = s.send(&therapist, Method::POST, "/fhir", Some(packet)).await;
    done.expect(200);
    let location = |i: usize| done.json["entry"][i]["response"]["location"].as_str().unwrap().to_owned();
    let request_id = location(0).split('/').nth(1).unwrap().to_owned();
    let task_id = location(1).split('/').nth(1).unwrap().to_owned();
    // The psychiatrist's system hears of it at once.
    let heard = receiver.wait_for(1).await;
    assert_eq!(serde_json::from_str::<Value>(&heard[0].body).unwrap()["id"], task_id.as_str());

    // The psychiatrist accepts and sees the patient; the plan and the team move on.
    let psychiatrist = s.user_token("user/*.cruds", &format!("Practitioner/{}", p.receiver));
    let task = json!({"id": task_id});
    for status in ["accepted", "in-progress"] {
        assert_eq!(move_to(&s, &psychiatrist, &task, status, None).await, 200, "{status}");
    }
    assert_eq!(receiver.wait_for(3).await.len(), 3, "every change of the referral is notified");
    let follow_up = s
        .send(
            &psychiatrist,
            Method::POST,
            "Encounter",
            Some(json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject,
            "basedOn": [{"reference": format!("ServiceRequest/{request_id}")}]})),
        )
        .await;
    follow_up.expect(201);
    let mut updated = server.get(&format!("CarePlan/{plan}")).await.json;
    updated["description"] = json!("Psychotherapy weekly; sertraline started after the psychiatric review");
    s.send(&psychiatrist, Method::PUT, &format!("CarePlan/{plan}"), Some(updated)).await.expect(200);
    let mut care_team = server.get(&format!("CareTeam/{team}")).await.json;
    care_team["participant"].as_array_mut().unwrap().push(json!({
        "role": [{"coding": [{"system": "http://snomed.info/sct", "code": "106328005", "display": "Social worker"}]}],
        "member": {"reference": format!("PractitionerRole/{social_role}")}}));
    s.send(&therapist, Method::PUT, &format!("CareTeam/{team}"), Some(care_team)).await.expect(200);
    assert_eq!(move_to(&s, &psychiatrist, &task, "completed", None).await, 200);
    assert_eq!(request_status(&server, &request_id).await, "completed");

    // A second referral, to the social worker, is declined with a reason.
    let mut housing = referral(&p);
    housing["code"] = json!({"text": "Housing support"});
    housing["performer"] = json!([{"reference": format!("PractitionerRole/{social_role}")}]);
    let housing = post("ServiceRequest", housing).await;
    let mut second = super::referral::task(&p, &housing, "requested");
    second["owner"] = json!({"reference": format!("PractitionerRole/{social_role}")});
    let second_id = post("Task", second).await;
    let worker = s.user_token("user/*.cruds", &format!("PractitionerRole/{social_role}"));
    let second = json!({"id": second_id});
    assert_eq!(move_to(&s, &worker, &second, "rejected", None).await, 422, "a reason is required");
    assert_eq!(move_to(&s, &worker, &second, "rejected", Some("Outside our catchment area")).await, 200);
    assert_eq!(request_status(&server, &housing).await, "revoked");

    // The audit trail tells the story: who did what to this patient's record.
    let trail = server.get(&format!("AuditEvent?patient=Patient/{}&_count=200&_sort=date", p.patient)).await.json;
    let events: Vec<&Value> = trail["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    let count = |subtype: &str| events.iter().filter(|e| e["subtype"][0]["code"] == subtype).count();
    assert!(count("create") >= 12, "assessment, plan, goals, team, referral, follow-up: {}", count("create"));
    assert!(count("update") >= 6, "task moves, plan, team: {}", count("update"));
    let updates = events.iter().filter(|e| e["subtype"][0]["code"] == "update");
    assert!(
        updates.clone().all(|e| e["agent"][0]["who"]["identifier"]["value"] == "dr-rivera"),
        "every change names the token's user"
    );
    let rejection = events
        .iter()
        .find(|e| {
            e["subtype"][0]["code"] == "update"
                && e["entity"].as_array().is_some_and(|es| es.iter().any(|x| x.to_string().contains(&housing)))
        })
        .expect("the rejection's event names the revoked referral");
    assert_eq!(rejection["outcome"], "0");
    assert_eq!(liaison::verify_audit(&liaison::Config::for_database(&app.database_url)).await.unwrap().broken, None);
}
