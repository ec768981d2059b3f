//! Several replicas on one PostgreSQL behave as one server: two `liaison` processes on the same
//! database, driven concurrently through both — updates with If-Match, plain updates,
//! conditional creates, transactions — lose no update, create no duplicate, and answer
//! searches alike.

use futures::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{Backend, ServerProcess, TestApp};

const WRITERS: usize = 16;

pub async fn two_replicas_behave_as_one_server(app: TestApp) {
    if app.backend != Backend::Postgres {
        // Replicas share a PostgreSQL; SQLite is the single-process, embedded engine.
        return;
    }
    let replicas = std::sync::Arc::new([ServerProcess::start(&app, &[]).await, ServerProcess::start(&app, &[]).await]);
    let on = |i: usize| &replicas[i % 2];

    // If-Match: of sixteen writers holding version 1, across both replicas, exactly one wins.
    let (status, patient) = on(0)
        .request("POST", "/fhir/Patient", Some(json!({"resourceType": "Patient", "name": [{"family": "Shared"}]})))
        .await
        .unwrap();
    assert_eq!(status, 201);
    let id = patient["id"].as_str().unwrap().to_owned();
    let attempts = (0..WRITERS).map(|i| {
        let (replicas, id, mut body) = (replicas.clone(), id.clone(), patient.clone());
        body["name"][0]["given"] = json!([format!("writer {i}")]);
        tokio::spawn(async move {
            let path = format!("/fhir/Patient/{id}");
            replicas[i % 2].send("PUT", &path, &[("if-match", "W/\"1\"")], Some(body)).await.unwrap().0
        })
    });
    let statuses: Vec<u16> = join_all(attempts).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), WRITERS - 1, "{statuses:?}");

    // Plain updates through both: every one becomes a version, none is lost.
    let updates = (0..WRITERS).map(|i| {
        let (replicas, id, body) = (replicas.clone(), id.clone(), patient.clone());
        tokio::spawn(async move { replicas[i % 2].request("PUT", &format!("/fhir/Patient/{id}"), Some(body)).await })
    });
    for r in join_all(updates).await {
        assert_eq!(r.unwrap().unwrap().0, 200);
    }
    let (_, current) = on(1).request("GET", &format!("/fhir/Patient/{id}"), None).await.unwrap();
    assert_eq!(current["meta"]["versionId"], json!((WRITERS + 2).to_string()), "no update lost");
    let (_, history) = on(0).request("GET", &format!("/fhir/Patient/{id}/_history?_count=100"), None).await.unwrap();
    assert_eq!(history["entry"].as_array().unwrap().len(), WRITERS + 2);

    // Conditional creates of the same identifier through both: exactly one resource.
    let creates = (0..WRITERS).map(|i| {
        let replicas = replicas.clone();
        let body = json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "77"}]});
        tokio::spawn(async move {
            replicas[i % 2]
                .send("POST", "/fhir/Patient", &[("if-none-exist", "identifier=urn:mrn|77")], Some(body))
                .await
        })
    });
    let statuses: Vec<u16> = join_all(creates).await.into_iter().map(|r| r.unwrap().unwrap().0).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 201), "{statuses:?}");

    // Transactions through both, each a patient with a care plan referring to it.
    let bundles = (0..WRITERS).map(|i| {
        let replicas = replicas.clone();
        let urn = format!("urn:uuid:5b0c1f0e-0000-4000-8000-{i:012}");
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": urn, "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:replicas", "value": i.to_string()}]}},
            {"request": {"method": "POST", "url": "CarePlan"},
             "resource": {"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": urn}}}]});
        tokio::spawn(async move { replicas[i % 2].request("POST", "/fhir", Some(bundle)).await })
    });
    for r in join_all(bundles).await {
        let (status, body) = r.unwrap().unwrap();
        assert_eq!(status, 200, "{body}");
    }

    // Both replicas answer every search alike, and see all of it.
    for query in [
        "/fhir/Patient?identifier=urn:mrn|77&_total=accurate",
        "/fhir/Patient?identifier=urn:replicas|&_total=accurate",
        "/fhir/CarePlan?subject.identifier=urn:replicas|&_total=accurate&_count=100",
    ] {
        let (_, a) = on(0).request("GET", query, None).await.unwrap();
        let (_, b) = on(1).request("GET", query, None).await.unwrap();
        let ids = |bundle: &Value| -> Vec<String> {
            let mut ids: Vec<String> = bundle["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&a), ids(&b), "{query}");
        assert_eq!(a["total"], b["total"], "{query}");
    }
    let (_, mrn) = on(1).request("GET", "/fhir/Patient?identifier=urn:mrn|77&_total=accurate", None).await.unwrap();
    assert_eq!(mrn["total"], 1, "exactly one conditional create");
    let (_, plans) =
        on(0).request("GET", "/fhir/CarePlan?subject.identifier=urn:replicas|&_total=accurate", None).await.unwrap();
    assert_eq!(plans["total"], json!(WRITERS), "every transaction stored whole");
}
