//! Sensitive records: security labels (from clients and from label rules), patients' Consents
//! and break-the-glass, proven by a matrix of callers — psychotherapist, psychiatrist, social
//! worker, external organisation, patient, and the social worker breaking the glass — against
//! every path data leaves by: read, vread, search (totals included), `_include`,
//! `_revinclude`, `_has`, history, `$everything`, Bundle entries and notifications; and the
//! audit trail that records each decision and answers the patient's "who accessed my record".

use std::collections::BTreeSet;

use axum::http::Method;
use serde_json::{json, Value};

use crate::auth::Secured;
use crate::helpers::{TestApp, TestResponse};
use crate::subscription::{subscription, Receiver};

const NOTE_CODE: &str = "http://liaison.example/codes|psychotherapy-note";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Label rules: a psychotherapy note is `PSYTHPN` and restricted, whoever writes it.
fn label_rules() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("label-rules.json");
    let rules = json!([{"resourceType": "Observation", "criteria": format!("code={NOTE_CODE}"), "labels": [
        {"system": ACT_CODE, "code": "PSYTHPN"},
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}]);
    std::fs::write(&path, rules.to_string()).unwrap();
    (dir, path)
}

fn reference(r: &str) -> Value {
    json!({"reference": r})
}

/// A Consent actor: `r` as a primary recipient.
fn actor(r: &str) -> Value {
    json!({"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
        "reference": reference(r)})
}

/// Patient p's record: six resources, two of them sensitive; and the Consents of the scenario.
async fn record(s: &Secured, writer: &str) {
    let put = |path: &'static str, mut body: Value| async move {
        body["id"] = json!(path.split_once('/').unwrap().1);
        let r = s.send(writer, Method::PUT, path, Some(body)).await;
        assert!(r.status.is_success(), "{path}: {}", r.text);
        r.json
    };
    for (ty, id) in [("Practitioner", "therapist"), ("Practitioner", "psychiatrist"), ("Practitioner", "social")] {
        let path: &'static str = Box::leak(format!("{ty}/{id}").into_boxed_str());
        put(path, json!({"resourceType": ty, "id": id, "name": [{"family": id}]})).await;
    }
    put("Organization/ext", json!({"resourceType": "Organization", "id": "ext", "name": "Community services"})).await;
    for id in ["p", "q"] {
        let path: &'static str = Box::leak(format!("Patient/{id}").into_boxed_str());
        put(path, json!({"resourceType": "Patient", "id": id, "name": [{"family": "Doe"}]})).await;
    }
    let subject = || reference("Patient/p");
    put(
        "CarePlan/cp",
        json!({"resourceType": "CarePlan", "id": "cp", "status": "active", "intent": "plan", "subject": subject()}),
    )
    .await;
    put(
        "Goal/g",
        json!({"resourceType": "Goal", "id": "g", "lifecycleStatus": "active",
        "description": {"text": "Sleep through the night"}, "subject": subject()}),
    )
    .await;
    put(
        "Encounter/enc",
        json!({"resourceType": "Encounter", "id": "enc", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject()}),
    )
    .await;
    // Labelled by the rules, not by the client.
    let (system, code) = NOTE_CODE.split_once('|').unwrap();
    let note = put(
        "Observation/note",
        json!({"resourceType": "Observation", "id": "note", "status": "final",
        "code": {"coding": [{"system": system, "code": code}]}, "subject": subject(),
        "valueString": "Session notes"}),
    )
    .await;
    let labels: Vec<&str> =
        note["meta"]["security"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap()).collect();
    assert_eq!(labels, ["PSYTHPN", "R"], "the rules label the note");
    // Labelled by the client; its evidence is the note.
    put(
        "Condition/dx",
        json!({"resourceType": "Condition", "id": "dx", "subject": subject(),
        "meta": {"security": [{"system": ACT_CODE, "code": "PSY"}]},
        "code": {"text": "Generalised anxiety"}, "evidence": [{"detail": [reference("Observation/note")]}]}),
    )
    .await;
    // "Share my care plan with the social worker, but nothing else."
    put(
        "Consent/social",
        consent(json!({"type": "deny", "actor": [actor("Practitioner/social")],
        "provision": [{"type": "permit", "class": [
            {"system": "http://hl7.org/fhir/resource-types", "code": "CarePlan"},
            {"system": "http://hl7.org/fhir/resource-types", "code": "Patient"}]}]})),
    )
    .await;
    // "Everyone in my care, but not my psychotherapy notes to the psychiatrist."
    put(
        "Consent/notes",
        consent(json!({"type": "permit", "provision": [{"type": "deny",
        "actor": [actor("Practitioner/psychiatrist")],
        "securityLabel": [{"system": ACT_CODE, "code": "PSYTHPN"}]}]})),
    )
    .await;
}

fn consent(provision: Value) -> Value {
    json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": reference("Patient/p"), "provision": provision})
}

const RECORD: [&str; 6] = ["Patient/p", "CarePlan/cp", "Goal/g", "Encounter/enc", "Observation/note", "Condition/dx"];

/// The caller matrix: name, token, break-glass reason, and the part of the record it may see.
fn callers(s: &Secured) -> Vec<(&'static str, String, Option<&'static str>, Vec<&'static str>)> {
    let user = |who: &str, clearance: &str| s.token_with("user/*.rs", json!({"fhirUser": who, "clearance": clearance}));
    vec![
        ("psychotherapist", user("Practitioner/therapist", "R PSY PSYTHPN"), None, RECORD.to_vec()),
        (
            "psychiatrist",
            user("Practitioner/psychiatrist", "R PSY PSYTHPN"),
            None,
            vec!["Patient/p", "CarePlan/cp", "Goal/g", "Encounter/enc", "Condition/dx"],
        ),
        ("social worker", user("Practitioner/social", ""), None, vec!["Patient/p", "CarePlan/cp"]),
        (
            "external organisation",
            s.token_with("system/*.rs", json!({"fhirUser": "Organization/ext"})),
            None,
            vec!["Patient/p", "CarePlan/cp", "Goal/g", "Encounter/enc"],
        ),
        (
            "patient",
            s.token_with("patient/*.rs", json!({"patient": "p", "fhirUser": "Patient/p"})),
            None,
            vec!["Patient/p", "CarePlan/cp", "Goal/g", "Encounter/enc"],
        ),
        (
            "social worker breaking the glass",
            user("Practitioner/social", "BTG"),
            Some("patient in acute crisis in the emergency department"),
            RECORD.to_vec(),
        ),
    ]
}

async fn fetch(s: &Secured, headers: &[(&str, String)], path: String) -> TestResponse {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.app.send(Method::GET, &path, &h, None).await
}

fn entries(bundle: &Value) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let r = &e["resource"];
            let ty = r["resourceType"].as_str()?;
            (ty != "OperationOutcome").then(|| format!("{ty}/{}", r["id"].as_str().unwrap_or("")))
        })
        .collect()
}

pub async fn labels_and_consents_leak_through_no_path(app: TestApp) {
    let (_dir, rules) = label_rules();
    let s = Secured::with(&app, |c| c.label_rules = Some(rules)).await;
    let writer = s.token_with("system/*.cruds", json!({"clearance": "V PSY PSYTHPN"}));
    record(&s, &writer).await;

    for (name, token, glass, visible) in callers(&s) {
        let headers: Vec<(&str, String)> = [("authorization", format!("Bearer {token}"))]
            .into_iter()
            .chain(glass.map(|g| ("x-break-glass-reason", g.to_owned())))
            .collect();
        let get = |path: String| fetch(&s, &headers, path);
        let shown = |list: &[&str]| -> BTreeSet<String> {
            list.iter().filter(|r| visible.contains(r)).map(|r| r.to_string()).collect()
        };

        // Read, vread and instance history: 200 or 403, never the content.
        for r in RECORD {
            let read = get(r.to_owned()).await;
            let expected = if visible.contains(&r) { 200 } else { 403 };
            assert_eq!(read.status.as_u16(), expected, "{name} reads {r}: {}", read.text);
            assert_eq!(read.text.contains("Session notes"), r == "Observation/note" && expected == 200, "{name} {r}");
            assert_eq!(get(format!("{r}/_history/1")).await.status.as_u16(), expected, "{name} vreads {r}");
            assert_eq!(get(format!("{r}/_history")).await.status.as_u16(), expected, "{name}: history of {r}");
            if glass.is_some() {
                assert_eq!(read.header("x-break-glass"), Some("granted"), "{name}: the answer is marked");
            }
        }
        // Searches: what is withheld is neither found nor counted.
        for ty in ["CarePlan", "Goal", "Encounter", "Observation", "Condition"] {
            let found = get(format!("{ty}?patient=Patient/p&_total=accurate")).await;
            let expected =
                shown(&RECORD.iter().copied().filter(|r| r.starts_with(&format!("{ty}/"))).collect::<Vec<_>>());
            assert_eq!(entries(&found.json), expected, "{name} searches {ty}");
            assert_eq!(found.json["total"], json!(expected.len()), "{name}: total of {ty}");
            let count = get(format!("{ty}?patient=Patient/p&_summary=count")).await;
            assert_eq!(count.json["total"], json!(expected.len()), "{name}: _summary=count of {ty}");
        }
        // _revinclude, _include and _has follow only what may be seen.
        let around =
            get("Patient?_id=p&_revinclude=CarePlan:subject&_revinclude=Goal:subject&_revinclude=Encounter:subject\
             &_revinclude=Observation:subject&_revinclude=Condition:subject"
                .into())
            .await;
        assert_eq!(entries(&around.json), shown(&RECORD), "{name}: _revinclude");
        let evidence = get("Condition?_id=dx&_include=Condition:evidence-detail".into()).await;
        assert_eq!(entries(&evidence.json), shown(&["Condition/dx", "Observation/note"]), "{name}: _include");
        let has = get(format!("Patient?_has:Observation:subject:code={NOTE_CODE}")).await;
        assert_eq!(
            entries(&has.json),
            shown(&["Patient/p"]).into_iter().filter(|_| visible.contains(&"Observation/note")).collect(),
            "{name}: _has"
        );
        let chained = get("Condition?evidence-detail:Observation.code=psychotherapy-note".into()).await;
        let both = visible.contains(&"Condition/dx") && visible.contains(&"Observation/note");
        assert_eq!(entries(&chained.json).len(), usize::from(both), "{name}: chain");
        // Type history and $everything.
        let history = get("Observation/_history".into()).await;
        assert_eq!(entries(&history.json), shown(&["Observation/note"]), "{name}: type history");
        let everything =
            get("Patient/p/$everything?_type=Patient,CarePlan,Goal,Encounter,Observation,Condition".into()).await;
        assert_eq!(entries(&everything.json), shown(&RECORD), "{name}: $everything");
        // Bundle entries are requests of the caller's own.
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": RECORD.iter()
            .map(|r| json!({"request": {"method": "GET", "url": r}})).collect::<Vec<_>>()});
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answered = s.app.send(Method::POST, "/fhir", &h, Some(batch.to_string())).await;
        for (entry, r) in answered.json["entry"].as_array().unwrap().iter().zip(RECORD) {
            let status = entry["response"]["status"].as_str().unwrap();
            assert_eq!(status.starts_with("200"), visible.contains(&r), "{name}: batch GET {r}: {status}");
        }
    }

    // The external organisation calls over mutual TLS, as referral partners do.
    let partner = crate::tls::MutualTls::start(&s.app, "referrals.community.example").await;
    let external = s.token_with("system/*.rs", json!({"fhirUser": "Organization/ext"}));
    let expected = ["Patient/p", "CarePlan/cp", "Goal/g", "Encounter/enc"];
    for r in RECORD {
        let (status, body) = partner.get(r, &external).await;
        assert_eq!(status, if expected.contains(&r) { 200 } else { 403 }, "external over mTLS reads {r}: {body}");
    }
    let (status, body) = partner.get("Observation?patient=Patient/p&_total=accurate", &external).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"total\":0") && !body.contains("Session notes"), "{body}");

    // Writing is no way around it either: the psychiatrist may not change the note.
    let psychiatrist =
        s.token_with("user/*.cruds", json!({"fhirUser": "Practitioner/psychiatrist", "clearance": "R PSY PSYTHPN"}));
    let patch = json!([{"op": "replace", "path": "/status", "value": "amended"}]);
    let r = s
        .app
        .send(
            Method::PATCH,
            "Observation/note",
            &[("authorization", &format!("Bearer {psychiatrist}")), ("content-type", "application/json-patch+json")],
            Some(patch.to_string()),
        )
        .await;
    r.expect(403);
    // A conditional delete matches only what its caller may see.
    let h = [("authorization", format!("Bearer {psychiatrist}"))];
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = s.app.send(Method::DELETE, &format!("Observation?code={NOTE_CODE}"), &h, None).await;
    assert!(r.status.is_success() && !r.text.contains("note"), "{}", r.text);
    let therapist = s.token_with("user/*.rs", json!({"fhirUser": "Practitioner/therapist", "clearance": "R PSYTHPN"}));
    s.get(&therapist, "Observation/note").await.expect(200);
    // History pages never carry a cursor that names a withheld entry.
    let social = s.token_with("user/*.rs user/Subscription.rs", json!({"fhirUser": "Practitioner/social"}));
    let page = s.get(&social, "_history?_count=1").await;
    page.expect(200);
    let mut next = page.json["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").cloned();
    let mut pages = 0;
    while let Some(link) = next {
        let url = link["url"].as_str().unwrap().trim_start_matches(crate::helpers::BASE).trim_start_matches('/');
        assert!(!url.contains("note") && !url.contains("dx"), "{url}");
        let page = s.get(&social, url).await;
        assert!(!page.text.contains("Observation/note") && !page.text.contains("Session notes"));
        next = page.json["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").cloned();
        pages += 1;
        assert!(pages < 100, "history paging ends");
    }
    assert!(pages > 3, "the social worker pages through what it may see: {pages} pages; first: {}", page.text);
    // Breaking the glass takes a reason and the permission.
    let social = s.token_with("user/*.rs", json!({"fhirUser": "Practitioner/social"}));
    let r = s
        .app
        .send(
            Method::GET,
            "Observation/note",
            &[("authorization", &format!("Bearer {social}")), ("x-break-glass-reason", "curious")],
            None,
        )
        .await;
    r.expect(403);
    assert!(r.text.contains("BTG"), "{}", r.text);
    let narrow = s.token_with("user/Patient.rs", json!({"fhirUser": "Practitioner/social", "clearance": "BTG"}));
    let r = s
        .app
        .send(
            Method::GET,
            "Observation/note",
            &[("authorization", &format!("Bearer {narrow}")), ("x-break-glass-reason", "crisis")],
            None,
        )
        .await;
    r.expect(403);
    assert_eq!(
        r.header("x-break-glass"),
        None,
        "breaking the glass does not widen scopes, and a refusal is not marked"
    );

    // The audit trail: the refusal, the filtering and the break-glass alert are all there.
    let auditor = s.token("system/AuditEvent.rs", None);
    let events = s.get(&auditor, "AuditEvent?_count=1000").await;
    let events: Vec<&Value> = events.json["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    let withheld_note = |e: &&Value| {
        e["entity"].as_array().into_iter().flatten().any(|x| {
            x["what"]["reference"].as_str().is_some_and(|r| r.starts_with("Observation/note"))
                && x["detail"][0]["valueString"] == "withheld"
        })
    };
    let by = |e: &&Value, who: &str| e["agent"].as_array().unwrap().iter().any(|a| a["who"]["reference"] == who);
    assert!(
        events.iter().any(|e| withheld_note(e) && by(e, "Practitioner/psychiatrist") && e["outcome"] == "4"),
        "the psychiatrist's refused read is recorded with what was withheld"
    );
    assert!(
        events.iter().any(|e| withheld_note(e) && by(e, "Practitioner/social") && e["outcome"] == "0"),
        "a search that withheld the note from the social worker is recorded"
    );
    let alerts: Vec<&&Value> = events.iter().filter(|e| e["type"]["code"] == "110113").collect();
    assert!(!alerts.is_empty(), "break-glass raises security alerts");
    assert!(
        alerts.iter().any(|a| a["outcome"] == "4" && a["purposeOfEvent"][0]["text"] == "curious"),
        "refused attempts too"
    );
    assert!(alerts
        .iter()
        .all(|a| a["purposeOfEvent"][0]["coding"][0]["code"] == "BTG" && by(a, "Practitioner/social")));
    assert!(
        alerts.iter().any(|a| a["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["what"]["reference"].as_str().is_some_and(|r| r.starts_with("Observation/note")))),
        "the alert lists what was disclosed"
    );

    // "Who accessed my record, and when": the patient asks, another patient may not.
    let patient = s.token_with("patient/Patient.rs", json!({"patient": "p"}));
    let log = s.get(&patient, "Patient/p/$access-log?_count=1000").await;
    log.expect(200);
    let who: BTreeSet<String> = log.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["resource"]["agent"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|a| a["who"]["reference"].as_str())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    for practitioner in ["Practitioner/therapist", "Practitioner/psychiatrist", "Practitioner/social"] {
        assert!(who.contains(practitioner), "{practitioner} in {who:?}");
    }
    assert!(!log.text.contains("\"network\""), "no network details for the patient");
    assert!(log.json["entry"][0]["resource"]["recorded"].is_string());
    let other = s.token_with("patient/Patient.rs", json!({"patient": "q"}));
    s.get(&other, "Patient/p/$access-log").await.expect(403);

    // Consent changes apply at once, on every server over the database: another replica (an
    // unrestricted one here) withdraws the social worker's Consent; this one sees it at once.
    app.delete("Consent/social").await.expect(204);
    let social = s.token_with("user/*.rs", json!({"fhirUser": "Practitioner/social"}));
    s.get(&social, "Goal/g").await.expect(200);
    s.get(&social, "Observation/note").await.expect(403);
}

pub async fn consents_are_enforced_as_written_or_refused(app: TestApp) {
    // Provisions this server cannot enforce are refused, never stored and ignored.
    let deep = consent(json!({"type": "deny", "provision": [{"type": "permit", "provision": [{"type": "deny"}]}]}));
    let r = app.post("Consent", &deep).await;
    r.expect(422);
    assert!(r.text.contains("nested"), "{}", r.text);
    let coded = consent(json!({"type": "deny", "code": [{"text": "letters"}]}));
    app.post("Consent", &coded).await.expect(422);
    // Criteria that could not be matched would widen a permit or narrow a deny: refused too.
    let elsewhere = consent(json!({"type": "deny", "actor": [{"role": {"text": "nurses"},
        "reference": {"reference": "https://other.example/fhir/Practitioner/x"}}]}));
    app.post("Consent", &elsewhere).await.expect(422);
    let purpose_without_system = consent(json!({"type": "deny", "purpose": [{"code": "HPAYMT"}]}));
    app.post("Consent", &purpose_without_system).await.expect(422);
    let mut policy_only = consent(json!({}));
    policy_only.as_object_mut().unwrap().remove("provision");
    app.post("Consent", &policy_only).await.expect(422);
    // The specification's own example is accepted ("not this Task"), and applies to data.
    let s = Secured::new(&app).await;
    let writer = s.token("system/*.cruds", None);
    for (path, body) in [
        ("Patient/p", json!({"resourceType": "Patient", "id": "p"})),
        (
            "Task/t1",
            json!({"resourceType": "Task", "id": "t1", "status": "requested", "intent": "order", "for": reference("Patient/p")}),
        ),
        (
            "Task/t2",
            json!({"resourceType": "Task", "id": "t2", "status": "requested", "intent": "order", "for": reference("Patient/p")}),
        ),
    ] {
        assert!(s.send(&writer, Method::PUT, path, Some(body)).await.status.is_success());
    }
    let not_this = consent(json!({"data": [{"meaning": "instance", "reference": reference("Task/t1")}]}));
    s.send(&writer, Method::POST, "Consent", Some(not_this)).await.expect(201);
    let reader = s.token_with("user/*.rs", json!({"fhirUser": "Practitioner/anyone", "purpose_of_use": "TREAT"}));
    let tasks = s.get(&reader, "Task?patient=Patient/p&_total=accurate").await;
    assert_eq!(entries(&tasks.json), BTreeSet::from(["Task/t2".to_owned()]));
    assert_eq!(tasks.json["total"], 1);
    s.get(&reader, "Task/t1").await.expect(403);
    // A Consent for another purpose of use does not apply to treatment.
    let billing = consent(json!({"type": "deny", "purpose": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HPAYMT"}]}));
    s.send(&writer, Method::POST, "Consent", Some(billing)).await.expect(201);
    s.get(&reader, "Task/t2").await.expect(200);
    let payer = s.token_with("user/*.rs", json!({"fhirUser": "Organization/payer", "purpose_of_use": ["HPAYMT"]}));
    s.get(&payer, "Task/t2").await.expect(403);
    // A caller that declares no purpose may have any: the denial for payment applies to it.
    let undeclared = s.token_with("user/*.rs", json!({"fhirUser": "Practitioner/anyone"}));
    s.get(&undeclared, "Task/t2").await.expect(403);

    // An expired Consent no longer applies.
    let expired = consent(json!({"type": "deny", "period": {"end": "2020-01-01"}}));
    s.send(&writer, Method::POST, "Consent", Some(expired)).await.expect(201);
    s.get(&reader, "Task/t2").await.expect(200);
    // "Nobody": everything of the patient is withheld, from searches and counts too; the audit
    // trail still shows auditors every access to the patient's record.
    s.send(&writer, Method::POST, "Consent", Some(consent(json!({"type": "deny"})))).await.expect(201);
    s.get(&reader, "Task/t2").await.expect(403);
    s.get(&reader, "Patient/p").await.expect(403);
    let none = s.get(&reader, "Task?_total=accurate").await;
    assert_eq!((entries(&none.json).len(), none.json["total"].clone()), (0, json!(0)));
    let auditor = s.token("system/AuditEvent.rs", None);
    let trail = s.get(&auditor, "AuditEvent?patient=Patient/p&_total=accurate").await;
    assert!(trail.json["total"].as_u64().unwrap() > 5, "{}", trail.text);
    // Once deleted, t2's versions are judged by their content: still withheld.
    app.delete("Task/t2").await.expect(204);
    s.get(&reader, "Task/t2/_history/1").await.expect(403);
    // The patient's own Consents never restrict the patient, deleted records included.
    let own = s.token_with("user/*.rs", json!({"fhirUser": "Patient/p"}));
    s.get(&own, "Task/t2/_history/1").await.expect(200);
    let history = s.get(&reader, "Task/_history").await;
    history.expect(200);
    assert!(!history.text.contains("Task/t2") && !history.text.contains("Task/t1"), "{}", history.text);
}

pub async fn notifications_carry_only_what_anyone_may_see(app: TestApp) {
    let (_dir, rules) = label_rules();
    let receiver = Receiver::start().await;
    let server = TestApp::connect_with(app.backend, &app.database_url, |c| {
        c.subscription_allow_http = true;
        c.subscription_retry_ms = 20;
        c.label_rules = Some(rules);
    })
    .await;
    let patient = server.create(json!({"resourceType": "Patient"})).await["id"].as_str().unwrap().to_owned();
    let guarded = server.create(json!({"resourceType": "Patient"})).await["id"].as_str().unwrap().to_owned();
    let org =
        server.create(json!({"resourceType": "Organization", "name": "X"})).await["id"].as_str().unwrap().to_owned();
    let mut c = consent(json!({"type": "deny", "actor": [actor(&format!("Organization/{org}"))]}));
    c["patient"] = reference(&format!("Patient/{guarded}"));
    server.post("Consent", &c).await.expect(201);
    server.post("Subscription", &subscription("Observation", &receiver.url, "requested")).await.expect(201);
    tokio::spawn(liaison::subscription::deliver(server.state.clone()));
    let (system, code) = NOTE_CODE.split_once('|').unwrap();
    let observation = |subject: &str, coded: bool| {
        let code = if coded { json!({"coding": [{"system": system, "code": code}]}) } else { json!({"text": "mood"}) };
        json!({"resourceType": "Observation", "status": "final", "code": code,
            "subject": reference(&format!("Patient/{subject}")), "valueString": "private words"})
    };
    server.post("Observation", &observation(&patient, false)).await.expect(201);
    server.post("Observation", &observation(&patient, true)).await.expect(201);
    server.post("Observation", &observation(&guarded, false)).await.expect(201);
    let got = receiver.wait_for(3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let with_content: Vec<&str> = got.iter().map(|n| n.body.as_str()).filter(|b| !b.is_empty()).collect();
    assert_eq!(with_content.len(), 1, "only the unlabelled Observation without a Consent goes out whole");
    assert!(with_content[0].contains(&patient) && !with_content[0].contains("PSYTHPN"));
}
