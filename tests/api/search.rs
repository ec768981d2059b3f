//! Search (R4 search.html) over a small care-coordination data set: every parameter type,
//! modifiers, prefixes, chains, `_has`, includes, sorting, paging and errors.

use std::collections::{BTreeSet, HashSet};

use axum::http::Method;
use serde_json::{json, Value};

use crate::helpers::{TestApp, BASE};

/// Ids of the created data set.
struct Data {
    alice: String,
    bob: String,
    psychiatrist: String,
    clinic: String,
    plan_active: String,
    plan_done: String,
    phq9: String,
    referral: String,
}

async fn id_of(app: &TestApp, resource: Value) -> String {
    app.create(resource).await["id"].as_str().unwrap().to_owned()
}

async fn load(app: &TestApp) -> Data {
    let clinic = id_of(app, json!({"resourceType": "Organization", "name": "Riverside Mental Health"})).await;
    let psychiatrist = id_of(
        app,
        json!({"resourceType": "Practitioner", "name": [{"family": "Okafor", "given": ["Ngozi"]}],
            "identifier": [{"system": "urn:npi", "value": "npi-77"}]}),
    )
    .await;
    let alice = id_of(
        app,
        json!({"resourceType": "Patient", "active": true, "gender": "female", "birthDate": "1985-03-14",
            "name": [{"family": "Çelik", "given": ["Alice"]}],
            "identifier": [{"system": "urn:mrn", "value": "A-100",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "telecom": [{"system": "email", "value": "alice@example.org"}],
            "managingOrganization": {"reference": format!("Organization/{clinic}")},
            "meta": {"tag": [{"system": "urn:tags", "code": "pilot"}], "profile": ["http://example.org/fhir/StructureDefinition/mh-patient"]}}),
    )
    .await;
    let bob = id_of(
        app,
        json!({"resourceType": "Patient", "active": false, "gender": "male", "birthDate": "1990-11",
            "name": [{"family": "Brown", "given": ["Bob"]}],
            "identifier": [{"system": "urn:mrn", "value": "B-200"}]}),
    )
    .await;
    let plan = |patient: &str, status: &str, start: &str, title: &str| {
        json!({"resourceType": "CarePlan", "status": status, "intent": "plan", "title": title,
            "subject": {"reference": format!("Patient/{patient}")},
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "736353004", "display": "Psychiatry care plan"}]}],
            "period": {"start": start},
            "instantiatesUri": ["http://example.org/protocols/depression/v2"]})
    };
    let plan_active = id_of(app, plan(&alice, "active", "2024-01-10", "Depression plan")).await;
    let plan_done = id_of(app, plan(&alice, "completed", "2023-03-01", "Anxiety plan")).await;
    id_of(app, plan(&bob, "active", "2024-06-01", "Housing support")).await;
    let phq9 = id_of(
        app,
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6", "display": "PHQ-9 total score"}]},
            "subject": {"reference": format!("Patient/{alice}")},
            "effectiveDateTime": "2024-01-09T10:30:00Z",
            "valueQuantity": {"value": 17, "system": "http://unitsofmeasure.org", "code": "{score}"}}),
    )
    .await;
    id_of(
        app,
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
            "subject": {"reference": format!("Patient/{bob}")},
            "effectiveDateTime": "2024-02-01T09:00:00Z",
            "valueQuantity": {"value": 4, "system": "http://unitsofmeasure.org", "code": "{score}"}}),
    )
    .await;
    let referral = id_of(
        app,
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "urgent",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}]}],
            "subject": {"reference": format!("Patient/{alice}")},
            "requester": {"reference": format!("Organization/{clinic}")},
            "performer": [{"reference": format!("Practitioner/{psychiatrist}"), "identifier": {"system": "urn:npi", "value": "npi-77"}}],
            "authoredOn": "2024-01-12T08:00:00+01:00"}),
    )
    .await;
    Data { alice, bob, psychiatrist, clinic, plan_active, plan_done, phq9, referral }
}

/// The ids of the matches (search.mode = match) of a search, which must succeed.
async fn ids(app: &TestApp, query: &str) -> BTreeSet<String> {
    let r = app.get(query).await;
    assert_eq!(r.status.as_u16(), 200, "{query}: {}", r.text);
    assert_eq!(r.json["type"], "searchset");
    entries(&r.json, "match").into_iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect()
}

/// The values of `field` in the matches' resources, in order.
fn matched(bundle: &Value, field: &str) -> Vec<String> {
    entries(bundle, "match").iter().map(|e| e["resource"][field].as_str().unwrap_or_default().to_owned()).collect()
}

fn entries(bundle: &Value, mode: &str) -> Vec<Value> {
    bundle["entry"].as_array().into_iter().flatten().filter(|e| e["search"]["mode"] == mode).cloned().collect()
}

/// The path (below the base) of a Bundle's link with relation `rel`.
fn link(bundle: &Value, rel: &str) -> Option<String> {
    bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == rel)
        .map(|l| l["url"].as_str().unwrap().strip_prefix(BASE).unwrap().trim_start_matches('/').to_owned())
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).clone()).collect()
}

pub async fn token_search_forms(app: TestApp) {
    let d = load(&app).await;
    assert_eq!(ids(&app, "CarePlan?status=active").await.len(), 2);
    assert_eq!(ids(&app, "CarePlan?status=active,completed").await.len(), 3, "comma is OR");
    assert_eq!(ids(&app, "CarePlan?status:not=active").await, set(&[&d.plan_done]));
    assert_eq!(ids(&app, "CarePlan?category=http://snomed.info/sct|736353004").await.len(), 3);
    assert!(ids(&app, "CarePlan?category=http://loinc.org|736353004").await.is_empty());
    assert_eq!(ids(&app, "CarePlan?category=http://snomed.info/sct|").await.len(), 3, "system| is any code");
    assert!(ids(&app, "CarePlan?category=|736353004").await.is_empty(), "|code needs no system");
    assert_eq!(ids(&app, "CarePlan?category:text=psychiatry").await.len(), 3);
    assert_eq!(ids(&app, "Patient?identifier=urn:mrn|A-100").await, set(&[&d.alice]));
    assert_eq!(ids(&app, "Patient?identifier=B-200").await, set(&[&d.bob]));
    let of_type = "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|A-100";
    assert_eq!(ids(&app, of_type).await, set(&[&d.alice]));
    assert_eq!(ids(&app, "Patient?active=true").await, set(&[&d.alice]));
    assert_eq!(ids(&app, "Patient?email=alice@example.org").await, set(&[&d.alice]));
    assert_eq!(ids(&app, "Patient?gender=male").await, set(&[&d.bob]));
    assert_eq!(ids(&app, "Observation?code=http://loinc.org|44261-6").await.len(), 2);
    assert_eq!(ids(&app, &format!("CarePlan?_id={},{}", d.plan_active, d.plan_done)).await.len(), 2);
    assert_eq!(ids(&app, "Patient?_tag=urn:tags|pilot").await, set(&[&d.alice]));
}

pub async fn string_search_is_case_and_accent_insensitive(app: TestApp) {
    let d = load(&app).await;
    assert_eq!(ids(&app, "Patient?family=celik").await, set(&[&d.alice]), "accents and case fold");
    assert_eq!(ids(&app, "Patient?name=ali").await, set(&[&d.alice]), "starts-with by default");
    assert!(ids(&app, "Patient?name=lice").await.is_empty());
    assert_eq!(ids(&app, "Patient?name:contains=lic").await, set(&[&d.alice]));
    assert_eq!(ids(&app, "Patient?family:exact=Çelik").await, set(&[&d.alice]));
    assert!(ids(&app, "Patient?family:exact=celik").await.is_empty());
    assert_eq!(ids(&app, "Organization?name=riverside").await, set(&[&d.clinic]));
    assert_eq!(ids(&app, "Patient?name=bob&name=brown").await, set(&[&d.bob]), "repetition is AND");
    assert!(ids(&app, "Patient?name=bob&name=alice").await.is_empty());
    assert_eq!(ids(&app, "Patient?name:contains=50%25").await.len(), 0, "LIKE wildcards are literal");
}

pub async fn reference_search_forms(app: TestApp) {
    let d = load(&app).await;
    let alice_plans = set(&[&d.plan_active, &d.plan_done]);
    assert_eq!(ids(&app, &format!("CarePlan?subject=Patient/{}", d.alice)).await, alice_plans);
    assert_eq!(ids(&app, &format!("CarePlan?subject={}", d.alice)).await, alice_plans);
    assert_eq!(ids(&app, &format!("CarePlan?patient={}", d.alice)).await, alice_plans);
    assert_eq!(ids(&app, &format!("CarePlan?subject={BASE}/Patient/{}", d.alice)).await, alice_plans);
    assert_eq!(ids(&app, &format!("CarePlan?subject:Patient={}", d.alice)).await, alice_plans);
    assert!(ids(&app, &format!("CarePlan?subject:Group={}", d.alice)).await.is_empty());
    let by_performer = format!("ServiceRequest?performer=Practitioner/{}", d.psychiatrist);
    assert_eq!(ids(&app, &by_performer).await, set(&[&d.referral]));
    assert_eq!(ids(&app, "ServiceRequest?performer:identifier=urn:npi|npi-77").await, set(&[&d.referral]));
    assert_eq!(ids(&app, &format!("Patient?organization={}", d.clinic)).await, set(&[&d.alice]));
}

pub async fn date_prefixes_and_partial_dates(app: TestApp) {
    let d = load(&app).await;
    // Periods start on 2023-03-01, 2024-01-10 and 2024-06-01, with no end.
    // An open-ended plan that started in 2023 is still running in 2024: it matches ge.
    assert_eq!(ids(&app, "CarePlan?date=ge2024-01-01").await.len(), 3);
    assert_eq!(ids(&app, "CarePlan?date=gt2024-01-01").await.len(), 3);
    assert_eq!(ids(&app, "CarePlan?date=lt2024-01-01").await, set(&[&d.plan_done]));
    assert_eq!(ids(&app, "CarePlan?date=sa2023-12-31").await.len(), 2);
    assert!(ids(&app, "CarePlan?date=eb2024-01-01").await.is_empty(), "open-ended periods never end before");
    // Observation effective instants.
    assert_eq!(ids(&app, "Observation?date=2024-01").await, set(&[&d.phq9]), "a month is a range");
    assert_eq!(ids(&app, "Observation?date=2024-01-09").await, set(&[&d.phq9]));
    assert_eq!(ids(&app, "Observation?date=eq2024-01-09T10:30:00Z").await, set(&[&d.phq9]));
    assert_eq!(ids(&app, "Observation?date=ne2024-01").await.len(), 1);
    assert_eq!(ids(&app, "Observation?date=gt2024-01-31").await.len(), 1);
    assert_eq!(ids(&app, "Observation?date=le2024-01-09").await, set(&[&d.phq9]));
    assert_eq!(ids(&app, "Observation?date=ge2024-01-09&date=lt2024-02").await, set(&[&d.phq9]));
    // ap widens the value by 10% of its distance from now (R4's recommendation).
    assert!(ids(&app, "Observation?date=ap2024-01-10").await.contains(&d.phq9));
    assert!(ids(&app, "Observation?date=ap2020-01-01").await.is_empty());
    assert_eq!(ids(&app, "Patient?birthdate=1990").await, set(&[&d.bob]));
    assert_eq!(ids(&app, "Patient?birthdate=lt1986").await, set(&[&d.alice]));
    assert_eq!(ids(&app, "ServiceRequest?authored=2024-01-12").await, set(&[&d.referral]));
    assert_eq!(ids(&app, "Patient?_lastUpdated=gt2000-01-01").await.len(), 2);
    assert!(ids(&app, "Patient?_lastUpdated=lt2000-01-01").await.is_empty());
}

pub async fn quantity_and_number_prefixes(app: TestApp) {
    let d = load(&app).await;
    assert_eq!(ids(&app, "Observation?value-quantity=17").await, set(&[&d.phq9]));
    assert_eq!(ids(&app, "Observation?value-quantity=gt10").await, set(&[&d.phq9]));
    assert_eq!(ids(&app, "Observation?value-quantity=le4").await.len(), 1);
    assert_eq!(ids(&app, "Observation?value-quantity=ne17").await.len(), 1);
    assert_eq!(ids(&app, "Observation?value-quantity=ap16").await, set(&[&d.phq9]), "within 10%");
    assert_eq!(ids(&app, "Observation?value-quantity=17|http://unitsofmeasure.org|{score}").await, set(&[&d.phq9]));
    assert!(ids(&app, "Observation?value-quantity=17||mg").await.is_empty());
    assert_eq!(ids(&app, "Observation?value-quantity=1.7e1").await, set(&[&d.phq9]));
}

pub async fn uri_missing_and_profile(app: TestApp) {
    let d = load(&app).await;
    assert_eq!(ids(&app, "CarePlan?instantiates-uri=http://example.org/protocols/depression/v2").await.len(), 3);
    assert_eq!(ids(&app, "CarePlan?instantiates-uri:below=http://example.org/protocols").await.len(), 3);
    assert_eq!(
        ids(&app, "CarePlan?instantiates-uri:above=http://example.org/protocols/depression/v2/extra").await.len(),
        3
    );
    assert!(ids(&app, "CarePlan?instantiates-uri:below=http://elsewhere").await.is_empty());
    assert_eq!(
        ids(&app, "Patient?_profile=http://example.org/fhir/StructureDefinition/mh-patient").await,
        set(&[&d.alice])
    );
    assert_eq!(ids(&app, "Patient?organization:missing=true").await, set(&[&d.bob]));
    assert_eq!(ids(&app, "Patient?organization:missing=false").await, set(&[&d.alice]));
    assert_eq!(ids(&app, "Patient?email:missing=true").await, set(&[&d.bob]));
}

pub async fn chains_and_has(app: TestApp) {
    let d = load(&app).await;
    let alice_plans = set(&[&d.plan_active, &d.plan_done]);
    assert_eq!(ids(&app, "CarePlan?subject:Patient.name=alice").await, alice_plans);
    assert_eq!(ids(&app, "CarePlan?patient.identifier=urn:mrn|A-100").await, alice_plans);
    assert_eq!(ids(&app, "CarePlan?subject.name=alice&status=active").await, set(&[&d.plan_active]));
    // Two levels: care plans of patients managed by the clinic.
    assert_eq!(ids(&app, "CarePlan?subject:Patient.organization.name=riverside").await, alice_plans);
    let sr = "ServiceRequest?performer:Practitioner.identifier=urn:npi|npi-77";
    assert_eq!(ids(&app, sr).await, set(&[&d.referral]));
    // Reverse chaining: patients with an active care plan, with a PHQ-9 above 10.
    assert_eq!(ids(&app, "Patient?_has:CarePlan:subject:status=active").await, set(&[&d.alice, &d.bob]));
    assert_eq!(ids(&app, "Patient?_has:Observation:patient:value-quantity=gt10").await, set(&[&d.alice]));
    assert_eq!(ids(&app, "Patient?_has:CarePlan:subject:status=completed").await, set(&[&d.alice]));
}

pub async fn include_and_revinclude(app: TestApp) {
    let d = load(&app).await;
    let r = app.get(&format!("CarePlan?_id={}&_include=CarePlan:subject", d.plan_active)).await;
    r.expect(200);
    assert_eq!(entries(&r.json, "match").len(), 1);
    let included = entries(&r.json, "include");
    assert_eq!(included.len(), 1);
    assert_eq!(included[0]["resource"]["id"], d.alice.as_str());
    assert_eq!(included[0]["fullUrl"], format!("{BASE}/Patient/{}", d.alice));
    assert_eq!(r.json["total"], 1, "includes do not count in total");

    let r =
        app.get(&format!("Patient?_id={}&_revinclude=CarePlan:subject&_revinclude=Observation:subject", d.alice)).await;
    let included: HashSet<String> =
        entries(&r.json, "include").iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(included, [d.plan_active.clone(), d.plan_done.clone(), d.phq9.clone()].into());

    // :iterate follows what was included: referral -> patient -> managing organization.
    let q = format!(
        "ServiceRequest?_id={}&_include=ServiceRequest:subject&_include:iterate=Patient:organization",
        d.referral
    );
    let r = app.get(&q).await;
    let types: BTreeSet<String> = entries(&r.json, "include")
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["Organization".to_owned(), "Patient".to_owned()].into());
    // Without :iterate the second hop is not taken.
    let q = format!("ServiceRequest?_id={}&_include=ServiceRequest:subject&_include=Patient:organization", d.referral);
    assert_eq!(entries(&app.get(&q).await.json, "include").len(), 1);
    // A cycle through :iterate ends.
    let q = format!("Patient?_id={}&_revinclude:iterate=CarePlan:subject&_include:iterate=CarePlan:subject", d.alice);
    app.get(&q).await.expect(200);
}

pub async fn sort_count_and_paging_links(app: TestApp) {
    let d = load(&app).await;
    let r = app.get("CarePlan?_sort=-date").await;
    assert_eq!(matched(&r.json, "title"), ["Housing support", "Depression plan", "Anxiety plan"]);
    let r = app.get("CarePlan?_sort=status,-date").await;
    assert_eq!(matched(&r.json, "title"), ["Housing support", "Depression plan", "Anxiety plan"]);
    let r = app.get("Patient?_sort=family").await;
    assert_eq!(matched(&r.json, "id"), [d.bob.clone(), d.alice.clone()]);
    let r = app.get("Patient?_sort=-family").await;
    assert_eq!(matched(&r.json, "id"), [d.alice.clone(), d.bob.clone()]);

    // Paging through sorted results, two at a time.
    let mut seen = Vec::new();
    let mut url = "CarePlan?_sort=date&_count=2&_total=accurate".to_owned();
    for _ in 0..5 {
        let r = app.get(&url).await;
        r.expect(200);
        if seen.is_empty() {
            assert_eq!(r.json["total"], 3, "the first page carries the total");
        }
        seen.extend(entries(&r.json, "match").iter().map(|e| e["resource"]["title"].as_str().unwrap().to_owned()));
        match link(&r.json, "next") {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!(seen, ["Anxiety plan", "Depression plan", "Housing support"]);
    let r = app.get("CarePlan?_total=none").await;
    assert!(r.json.get("total").is_none());
    let r = app.get("CarePlan?_summary=count").await;
    assert_eq!(r.json["total"], 3);
    assert!(r.json.get("entry").is_none());
}

/// Paging by id while others create, update and delete: no match appears twice, and every
/// resource that existed for the whole walk is seen.
pub async fn paging_is_stable_under_concurrent_writes(app: TestApp) {
    let mut stable = HashSet::new();
    for i in 0..30 {
        let id = id_of(
            &app,
            json!({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": format!("goal {i}")},
            "subject": {"reference": "Group/g"}}),
        )
        .await;
        stable.insert(id);
    }
    let mut seen = Vec::new();
    let mut url = "Goal?lifecycle-status=active&_count=7".to_owned();
    let mut page = 0;
    loop {
        let r = app.get(&url).await;
        r.expect(200);
        seen.extend(entries(&r.json, "match").iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()));
        // Between pages: new goals, and updates to goals already seen and not yet seen.
        id_of(&app, json!({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "new"}, "subject": {"reference": "Group/g"}})).await;
        for id in stable.iter().take(3) {
            let current = app.get(&format!("Goal/{id}")).await.json;
            app.put(&format!("Goal/{id}"), &current).await.expect(200);
        }
        page += 1;
        match link(&r.json, "next") {
            Some(next) => url = next,
            None => break,
        }
        assert!(page < 20);
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a resource appeared twice");
    assert!(stable.is_subset(&unique), "a resource that existed throughout was skipped");
}

pub async fn summary_and_elements(app: TestApp) {
    let d = load(&app).await;
    let r = app.get(&format!("CarePlan?_id={}&_elements=title", d.plan_active)).await;
    let plan = &entries(&r.json, "match")[0]["resource"];
    assert_eq!(plan["title"], "Depression plan");
    assert!(plan.get("category").is_none() && plan.get("period").is_none());
    assert!(plan.get("status").is_some() && plan.get("subject").is_some(), "mandatory elements stay");
    assert_eq!(plan["meta"]["tag"][0]["code"], "SUBSETTED");
    let r = app.get(&format!("CarePlan?_id={}&_summary=true", d.plan_active)).await;
    let plan = &entries(&r.json, "match")[0]["resource"];
    assert!(plan.get("title").is_some() && plan.get("period").is_some());
    assert!(plan.get("instantiatesUri").is_some(), "instantiatesUri is a summary element");
    let r = app.get(&format!("CarePlan?_id={}&_summary=data", d.plan_active)).await;
    assert!(entries(&r.json, "match")[0]["resource"].get("title").is_some());
}

pub async fn post_search_and_parameter_errors(app: TestApp) {
    let d = load(&app).await;
    let r = app
        .send(
            Method::POST,
            "CarePlan/_search",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(format!("patient={}&status=active", d.alice)),
        )
        .await;
    r.expect(200);
    assert_eq!(entries(&r.json, "match").len(), 1);
    let r =
        app.send(Method::POST, "CarePlan/_search", &[("content-type", "application/json")], Some("{}".into())).await;
    r.expect(415);

    // Unknown parameters: ignored and reported by default, refused with handling=strict.
    let r = app.get("CarePlan?colour=blue").await;
    r.expect(200);
    assert_eq!(entries(&r.json, "match").len(), 3);
    let outcome = entries(&r.json, "outcome");
    assert!(outcome[0]["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("colour"));
    let r = app.send(Method::GET, "CarePlan?colour=blue", &[("prefer", "handling=strict")], None).await;
    r.expect(400);
    assert_eq!(r.issue_expressions(), ["colour"]);

    for (query, param) in [
        ("CarePlan?date=tomorrow", "date"),
        ("CarePlan?date=xx2024", "date"),
        ("CarePlan?status:contains=act", "status:contains"),
        ("Observation?value-quantity=high", "value-quantity"),
        ("CarePlan?_count=-1", "_count"),
        ("CarePlan?_sort=colour", "_sort"),
        ("CarePlan?_include=CarePlan:status", "_include"),
        ("CarePlan?subject.colour=x", "subject.colour"),
        ("CarePlan?_cursor=%5B1%5D", "_cursor"),
    ] {
        let r = app.get(query).await;
        assert_eq!(r.status.as_u16(), 400, "{query}: {}", r.text);
        let text = r.text.clone();
        assert!(text.contains(param) || param == "_cursor", "{query} names {param}: {text}");
    }
    app.get("Spaceship?name=x").await.expect(404);
}

pub async fn index_follows_updates_and_deletes(app: TestApp) {
    let d = load(&app).await;
    let mut plan = app.get(&format!("CarePlan/{}", d.plan_active)).await.json;
    plan["status"] = json!("on-hold");
    app.put(&format!("CarePlan/{}", d.plan_active), &plan).await.expect(200);
    assert!(!ids(&app, "CarePlan?status=active").await.contains(&d.plan_active));
    assert!(ids(&app, "CarePlan?status=on-hold").await.contains(&d.plan_active));
    app.delete(&format!("CarePlan/{}", d.plan_active)).await.expect(204);
    assert!(ids(&app, "CarePlan?status=on-hold").await.is_empty());
    assert!(!ids(&app, "CarePlan").await.contains(&d.plan_active));
}

/// `_count` is bounded by the configured page size, and without `_total=accurate` the total is
/// counted only up to the configured cap and left out beyond it.
pub async fn configured_page_size_and_count_cap(app: TestApp) {
    load(&app).await;
    let small = TestApp::connect_with(app.backend, &app.database_url, |c| {
        c.max_page_size = 2;
        c.total_count_cap = 2;
    })
    .await;
    let r = small.get("CarePlan?_count=50&_total=estimate").await;
    r.expect(200);
    assert_eq!(entries(&r.json, "match").len(), 2);
    assert!(r.json.get("total").is_none(), "3 matches exceed the cap of 2");
    assert!(small.get("CarePlan").await.json.get("total").is_none(), "not free: more than one page");
    assert_eq!(small.get("CarePlan?status=completed").await.json["total"], 1, "free: all on one page");
    assert!(r.json["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));
    assert_eq!(small.get("CarePlan?_total=accurate").await.json["total"], 3);
    assert_eq!(small.get("CarePlan?_total=estimate&status=completed").await.json["total"], 1);
    assert!(small.get("CarePlan?_total=none&status=completed").await.json.get("total").is_none());
}

/// `previous` links walk back through the same pages, in the same order, for any sort.
pub async fn previous_links_walk_back(app: TestApp) {
    for i in 0..7 {
        id_of(
            &app,
            json!({"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": format!("goal {i}")}, "startDate": format!("2024-01-{:02}", 10 - i),
            "subject": {"reference": "Group/g"}}),
        )
        .await;
    }
    for query in ["Goal?_count=3", "Goal?_count=3&_sort=-start-date", "Goal?_count=3&_sort=start-date"] {
        let mut forward = Vec::new();
        let mut url = query.to_owned();
        let mut pages = Vec::new();
        loop {
            let r = app.get(&url).await;
            let ids = matched(&r.json, "id");
            forward.push(ids.clone());
            pages.push(r.json.clone());
            match link(&r.json, "next") {
                Some(next) => url = next,
                None => break,
            }
        }
        assert_eq!(forward.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1], "{query}");
        assert!(link(&pages[0], "previous").is_none(), "the first page has no previous");
        // From the last page back to the first.
        let mut back = vec![forward[2].clone()];
        let mut bundle = pages[2].clone();
        while let Some(previous) = link(&bundle, "previous") {
            bundle = app.get(&previous).await.json;
            back.push(matched(&bundle, "id"));
        }
        back.reverse();
        assert_eq!(back, forward, "{query}");
    }
}

/// Composite parameters pair a code with a value of the same element (search.html#composite).
pub async fn composite_parameters_pair_code_and_value(app: TestApp) {
    let d = load(&app).await;
    // A blood-pressure-like observation with components, to tell combo and component apart.
    let bp = id_of(
        &app,
        json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": format!("Patient/{}", d.bob)},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 150}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 95}}]}),
    )
    .await;
    let q = |s: &str| format!("Observation?{s}");
    assert_eq!(ids(&app, &q("code-value-quantity=http://loinc.org|44261-6$gt10")).await, set(&[&d.phq9]));
    assert!(ids(&app, &q("code-value-quantity=http://loinc.org|44261-6$gt20")).await.is_empty());
    assert_eq!(ids(&app, &q("code-value-quantity=44261-6$le4")).await.len(), 1, "code without system");
    // The code and the value must come from the same component.
    assert_eq!(ids(&app, &q("component-code-value-quantity=http://loinc.org|8480-6$gt140")).await, set(&[&bp]));
    assert!(ids(&app, &q("component-code-value-quantity=http://loinc.org|8462-4$gt140")).await.is_empty());
    assert_eq!(ids(&app, &q("combo-code-value-quantity=http://loinc.org|8462-4$95")).await, set(&[&bp]));
    assert_eq!(ids(&app, &q("combo-code-value-quantity=http://loinc.org|44261-6$17")).await, set(&[&d.phq9]));
    let r = app.get(&q("code-value-quantity=44261-6")).await;
    r.expect(400);
    assert_eq!(r.issue_expressions(), ["code-value-quantity"]);
}

pub async fn deceased_is_a_computed_boolean(app: TestApp) {
    let d = load(&app).await;
    let patient = |extra: Value| {
        let mut p = json!({"resourceType": "Patient", "name": [{"family": "Doe"}]});
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        p
    };
    let died_on = id_of(&app, patient(json!({"deceasedDateTime": "2024-02-01"}))).await;
    let died = id_of(&app, patient(json!({"deceasedBoolean": true}))).await;
    let living = id_of(&app, patient(json!({"deceasedBoolean": false}))).await;
    assert_eq!(ids(&app, "Patient?deceased=true").await, set(&[&died_on, &died]));
    // No deceased element at all is "not deceased" too (the expression is false, not empty).
    assert_eq!(ids(&app, "Patient?deceased=false").await, set(&[&living, &d.alice, &d.bob]));
    assert_eq!(ids(&app, "Patient?deceased=true&family=doe").await.len(), 2);
    let revived = json!({"resourceType": "Patient", "id": died, "deceasedBoolean": false});
    app.put(&format!("Patient/{died}"), &revived).await.expect(200);
    assert_eq!(ids(&app, "Patient?deceased=true").await, set(&[&died_on]));
}

/// Searches driven by one reference or identifier (the performer's referrals, paged by id): a
/// referral that names its performer twice, or carries one identifier value under two systems,
/// is one match, paging forward and back finds each open referral
/// once and in id order, and closed ones never.
pub async fn reference_driven_pages_hold_each_match_once(app: TestApp) {
    let role = id_of(&app, json!({"resourceType": "PractitionerRole", "active": true})).await;
    let mut open = Vec::new();
    for i in 0..9 {
        let status = if i % 3 == 2 { "completed" } else { "active" };
        let mut performers = vec![json!({"reference": format!("PractitionerRole/{role}")})];
        if i % 2 == 0 {
            performers.push(json!({"reference": format!("PractitionerRole/{role}"), "display": "again"}));
        }
        let id = id_of(
            &app,
            json!({"resourceType": "ServiceRequest", "status": status, "intent": "order",
                "subject": {"reference": "Group/g"}, "performer": performers,
                "identifier": [{"system": "urn:a", "value": format!("ref-{role}")}, {"system": "urn:b", "value": format!("ref-{role}")}]}),
        )
        .await;
        if status == "active" {
            open.push(id);
        }
    }
    open.sort();
    let query = format!("ServiceRequest?performer=PractitionerRole/{role}&status=active&_count=2");
    let (mut seen, mut pages) = (Vec::new(), Vec::new());
    let mut url = query.clone();
    loop {
        let r = app.get(&url).await;
        r.expect(200);
        seen.extend(matched(&r.json, "id"));
        pages.push(r.json.clone());
        match link(&r.json, "next") {
            Some(n) => url = n,
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(seen, open, "each open referral once, in id order");
    let mut back = matched(&pages[pages.len() - 1], "id");
    let mut bundle = pages[pages.len() - 1].clone();
    while let Some(previous) = link(&bundle, "previous") {
        bundle = app.get(&previous).await.json;
        let mut page = matched(&bundle, "id");
        page.extend(back);
        back = page;
    }
    assert_eq!(back, open, "walking back finds the same matches");
    let all = app.get(&format!("ServiceRequest?performer=PractitionerRole/{role}&_total=accurate")).await;
    assert_eq!(all.json["total"], 9);
    assert_eq!(matched(&all.json, "id").len(), 9);
    // An identifier value under two systems is two index rows of one resource.
    assert_eq!(
        matched(&app.get(&format!("ServiceRequest?identifier=ref-{role}&status=active")).await.json, "id"),
        open
    );
}
