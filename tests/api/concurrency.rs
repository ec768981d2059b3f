//! Concurrent writers: no lost update, If-Match has exactly one winner, conditional creates make
//! exactly one resource.

use axum::http::Method;
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
