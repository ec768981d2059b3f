//! `Patient/{id}/$everything`: the patient's whole compartment, paged, within the caller's
//! scopes.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::auth::Secured;
use crate::helpers::{fixtures, TestApp};

async fn id_of(app: &TestApp, resource: Value) -> String {
    let created = app.create(resource).await;
    format!("{}/{}", created["resourceType"].as_str().unwrap(), created["id"].as_str().unwrap())
}

/// A patient's record: a resource of most compartment types.
async fn record(app: &TestApp, patient: &str, clinician: &str) -> BTreeSet<String> {
    let subject = json!({"reference": patient});
    let mut plan = fixtures::care_plan(patient.trim_start_matches("Patient/"));
    plan["title"] = json!("Depression plan");
    let goal = json!({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "Sleep"}, "subject": subject});
    let encounter = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject});
    let observation = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]}, "subject": subject, "valueInteger": 14});
    let condition = json!({"resourceType": "Condition", "subject": subject, "code": {"text": "Depressive episode"}});
    let team = json!({"resourceType": "CareTeam", "subject": subject,
        "participant": [{"member": {"reference": clinician}}]});
    let referral = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": subject,
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}]});
    let mut out = BTreeSet::from([patient.to_owned()]);
    for resource in [plan, goal, encounter, observation, condition, team, referral] {
        out.insert(id_of(app, resource).await);
    }
    out
}

/// Every match of `path` and the pages after it, following `next` links.
async fn all_pages(app: &TestApp, path: &str) -> (Vec<String>, usize) {
    let mut found = Vec::new();
    let mut pages = 0;
    let mut next = Some(path.to_owned());
    while let Some(url) = next {
        let r = app.get(url.trim_start_matches(crate::helpers::BASE).trim_start_matches('/')).await;
        r.expect(200);
        assert_eq!(r.json["type"], "searchset");
        pages += 1;
        for e in r.json["entry"].as_array().into_iter().flatten() {
            found.push(format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            ));
        }
        next = r.json["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
    }
    (found, pages)
}

pub async fn everything_returns_the_patients_compartment_in_pages(app: TestApp) {
    let clinician = id_of(&app, json!({"resourceType": "Practitioner", "name": [{"family": "Okafor"}]})).await;
    let alice = id_of(&app, fixtures::patient()).await;
    let bob = id_of(&app, fixtures::patient()).await;
    let alices = record(&app, &alice, &clinician).await;
    let bobs = record(&app, &bob, &clinician).await;

    let (found, pages) = all_pages(&app, &format!("{alice}/$everything")).await;
    assert_eq!(pages, 1);
    assert_eq!(found.iter().cloned().collect::<BTreeSet<_>>(), alices, "the record, not Bob's or the clinician");
    assert_eq!(found[0], alice, "the patient comes first");
    // Small pages neither repeat nor skip, across the types.
    let (paged, pages) = all_pages(&app, &format!("{alice}/$everything?_count=3")).await;
    assert_eq!(pages, 3);
    assert_eq!(paged, found);
    // `_type` narrows it.
    let (some, _) = all_pages(&app, &format!("{alice}/$everything?_type=CarePlan,Goal")).await;
    assert_eq!(some.len(), 2);
    assert!(some.iter().all(|r| r.starts_with("CarePlan/") || r.starts_with("Goal/")));
    let none = app.get(&format!("{alice}/$everything?_count=0")).await.json;
    assert!(none["link"].as_array().unwrap().iter().all(|l| l["relation"] != "next"), "{none}");
    app.get(&format!("{alice}/$everything?_type=Spaceship")).await.expect(400);
    app.get(&format!("{alice}/$everything?_cursor=bogus")).await.expect(400);
    app.get("Patient/nobody/$everything").await.expect(404);
    // A Patient record that links to Alice's is in her compartment (Patient.link).
    let mut linked = fixtures::patient();
    linked["link"] = json!([{"other": {"reference": alice}, "type": "seealso"}]);
    let linked = id_of(&app, linked).await;
    let (patients, _) = all_pages(&app, &format!("{alice}/$everything?_type=Patient")).await;
    assert_eq!(patients.into_iter().collect::<BTreeSet<_>>(), [alice.clone(), linked].into_iter().collect());

    // A patient-scoped caller gets their own record only.
    let s = Secured::new(&app).await;
    let bob_id = bob.trim_start_matches("Patient/");
    let own = s.token("patient/*.rs", Some(bob_id));
    s.get(&own, &format!("{alice}/$everything")).await.expect(403);
    let r = s.get(&own, &format!("{bob}/$everything")).await;
    r.expect(200);
    assert_eq!(r.json["entry"].as_array().unwrap().len(), bobs.len());
    // Types the caller may not search are left out.
    let plans_only = s.token("patient/CarePlan.rs patient/Patient.r", Some(bob_id));
    let r = s.get(&plans_only, &format!("{bob}/$everything")).await;
    r.expect(200);
    let types: BTreeSet<&str> =
        r.json["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    assert_eq!(types, BTreeSet::from(["CarePlan"]));
    // The disclosure is audited with the patient.
    let trail = app.get(&format!("AuditEvent?subtype=operation&patient={alice}")).await.json;
    assert!(trail["entry"].as_array().is_some_and(|e| !e.is_empty()), "{trail}");
}
