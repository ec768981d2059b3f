//! Concurrent writers: no lost update, If-Match has exactly one winner, conditional creates make
//! exactly one resource.

use axum::http::Method;
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::{fixtures, TestApp};

const WRITERS: usize = 32;

pub async fn concurrent_if_match_writers_exactly_one_wins(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let attempts = (0..WRITERS).map(|i| {
        let app = app.clone();
        let mut body = created.clone();
        body["name"][0]["given"] = json!([format!("writer {i}")]);
        let path = format!("Patient/{id}");
        tokio::spawn(async move {
            app.send(Method::PUT, &path, &[("if-match", "W/\"1\"")], Some(body.to_string())).await.status
        })
    });
    let statuses: Vec<u16> = join_all(attempts).await.into_iter().map(|s| s.unwrap().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), WRITERS - 1, "{statuses:?}");
    assert_eq!(app.get(&format!("Patient/{id}")).await.json["meta"]["versionId"], "2");
}

pub async fn concurrent_updates_lose_nothing(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let writes = (0..WRITERS).map(|_| {
        let app = app.clone();
        let body = created.clone();
        let path = format!("Patient/{id}");
        tokio::spawn(async move { app.put(&path, &body).await.status.as_u16() })
    });
    let statuses: Vec<u16> = join_all(writes).await.into_iter().map(Result::unwrap).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let current = app.get(&format!("Patient/{id}")).await;
    assert_eq!(current.json["meta"]["versionId"], (WRITERS + 1).to_string());
    let history = app.get(&format!("Patient/{id}/_history?_count=100")).await;
    assert_eq!(history.json["entry"].as_array().unwrap().len(), WRITERS + 1);
}

pub async fn concurrent_conditional_creates_make_one_resource(app: TestApp) {
    let mut patient = fixtures::patient();
    patient["identifier"] = json!([{"system": "urn:mrn", "value": "race"}]);
    let creates = (0..WRITERS).map(|_| {
        let app = app.clone();
        let body = patient.to_string();
        tokio::spawn(async move {
            app.send(Method::POST, "Patient", &[("if-none-exist", "identifier=urn:mrn|race")], Some(body))
                .await
                .status
                .as_u16()
        })
    });
    let statuses: Vec<u16> = join_all(creates).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), WRITERS - 1, "{statuses:?}");
    let history = app.get("Patient/_history").await;
    assert_eq!(history.json["entry"].as_array().unwrap().len(), 1);
}

/// Concurrent creates, half of them refused at commit (a reference to a missing patient): each
/// refused one leaves nothing, each accepted one is stored whole (readable, searchable,
/// audited), whichever writes the store committed together.
pub async fn concurrent_writes_that_fail_leave_the_others_whole(app: TestApp) {
    let patient = app.create(fixtures::patient()).await;
    let pid = patient["id"].as_str().unwrap().to_owned();
    let creates = (0..WRITERS).map(|i| {
        let app = app.clone();
        let subject = if i % 2 == 0 { format!("Patient/{pid}") } else { "Patient/missing".to_owned() };
        let body = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "urn:test", "code": format!("c{i}")}]},
            "subject": {"reference": subject}, "valueInteger": i});
        tokio::spawn(async move {
            let r = app.post("Observation", &body).await;
            (r.status.as_u16(), r.json["id"].as_str().map(str::to_owned))
        })
    });
    let outcomes: Vec<(u16, Option<String>)> = join_all(creates).await.into_iter().map(Result::unwrap).collect();
    for (i, (status, id)) in outcomes.iter().enumerate() {
        let code = format!("Observation?code=urn:test|c{i}");
        if i % 2 == 0 {
            assert_eq!(*status, 201, "write {i}");
            let id = id.as_deref().unwrap();
            app.get(&format!("Observation/{id}")).await.expect(200);
            let found = app.get(&code).await;
            assert_eq!(found.json["total"], 1, "write {i}: {}", found.text);
            assert_eq!(found.json["entry"][0]["resource"]["id"], id);
        } else {
            assert_eq!(*status, 422, "write {i}");
            assert_eq!(app.get(&code).await.json["total"], 0, "write {i}");
        }
    }
    let stored = app.get(&format!("Observation?subject=Patient/{pid}&_summary=count")).await;
    assert_eq!(stored.json["total"], WRITERS / 2);
    let creates = app.get("AuditEvent?subtype=create&outcome=0&_summary=count").await;
    assert_eq!(creates.json["total"], WRITERS / 2 + 1, "one per stored resource: {}", creates.text);
    let chain = liaison::verify_audit(&liaison::Config::for_database(&app.database_url)).await.unwrap();
    assert_eq!(chain.broken, None);
}

/// Writes whose requests are dropped part-way (the client went away) leave each resource
/// stored whole or not at all, and never stall the writes that follow.
pub async fn cancelled_writes_leave_nothing_half_done(app: TestApp) {
    let patient = app.create(fixtures::patient()).await;
    let pid = patient["id"].as_str().unwrap().to_owned();
    let observation = |code: String| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "urn:cancel", "code": code}]},
            "subject": {"reference": format!("Patient/{pid}")}})
    };
    let writes = (0..WRITERS).map(|i| {
        let app = app.clone();
        let body = observation(format!("c{i}"));
        tokio::spawn(async move {
            let patience = Duration::from_micros(200 * (i as u64 % 16));
            let _ = tokio::time::timeout(patience, app.post("Observation", &body)).await;
        })
    });
    join_all(writes).await;
    let after = tokio::time::timeout(Duration::from_secs(20), app.post("Observation", &observation("after".into())))
        .await
        .expect("writes go on after cancelled ones");
    after.expect(201);
    for i in 0..WRITERS {
        let found = app.get(&format!("Observation?code=urn:cancel|c{i}")).await;
        let total = found.json["total"].as_u64().unwrap();
        assert!(total <= 1, "write {i}: {}", found.text);
        if total == 1 {
            let id = found.json["entry"][0]["resource"]["id"].as_str().unwrap();
            app.get(&format!("Observation/{id}")).await.expect(200);
            let history = app.get(&format!("Observation/{id}/_history")).await;
            assert_eq!(history.json["entry"].as_array().map(Vec::len), Some(1), "write {i}: {}", history.text);
        }
    }
    let chain = liaison::verify_audit(&liaison::Config::for_database(&app.database_url)).await.unwrap();
    assert_eq!(chain.broken, None);
}
