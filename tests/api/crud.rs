//! create, read, vread, update, delete and conditional create (R4 http.html).

use axum::http::Method;
use serde_json::json;

use crate::bundle::{bundle, entry};
use crate::helpers::{fixtures, TestApp, BASE};

pub async fn create_assigns_id_version_and_headers(app: TestApp) {
    let r = app.post("Patient", &fixtures::patient()).await;
    r.expect(201);
    let id = r.json["id"].as_str().expect("server assigned an id");
    assert_eq!(r.json["meta"]["versionId"], "1");
    assert!(r.json["meta"]["lastUpdated"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert_eq!(r.header("location"), Some(format!("{BASE}/Patient/{id}/_history/1").as_str()));
    assert!(r.header("last-modified").is_some_and(|d| d.ends_with("GMT")));
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/fhir+json")));
}

pub async fn create_ignores_client_id_and_server_meta(app: TestApp) {
    let mut patient = fixtures::patient();
    patient["id"] = json!("chosen-by-client");
    patient["meta"] = json!({"versionId": "7", "lastUpdated": "2001-01-01T00:00:00Z", "tag": [{"code": "keep"}]});
    let created = app.create(patient).await;
    assert_ne!(created["id"], "chosen-by-client");
    assert_eq!(created["meta"]["versionId"], "1");
    assert_ne!(created["meta"]["lastUpdated"], "2001-01-01T00:00:00Z");
    assert_eq!(created["meta"]["tag"][0]["code"], "keep", "client meta elements are kept");
}

/// Server-assigned ids are UUIDs whose leading bits are the time (version 7), so that ids
/// assigned one after another sort in that order, through create and through a transaction.
pub async fn assigned_ids_sort_in_creation_order(app: TestApp) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned());
    }
    let create = || entry(None, "POST", "Patient", Some(fixtures::patient()));
    let r = app.post("/fhir", &bundle("transaction", vec![create(), create()])).await;
    r.expect(200);
    for e in r.json["entry"].as_array().unwrap() {
        let location = e["response"]["location"].as_str().unwrap();
        ids.push(location.split('/').nth(1).unwrap().to_owned());
    }
    for id in &ids {
        let parsed = uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("{id} is a UUID"));
        assert_eq!(parsed.get_version_num(), 7, "{id}");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    // The transaction's two entries are created at one moment; they follow the creates.
    assert_eq!(sorted.len(), 5);
    assert_eq!(sorted[..3], ids[..3], "created one after another");
    assert!(ids[3..].iter().all(|id| id > &ids[2]), "ids assigned later sort after");
}

pub async fn read_returns_the_resource_as_sent(app: TestApp) {
    let patient = app.create(fixtures::patient()).await;
    let pid = patient["id"].as_str().unwrap();
    let mut observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "_status": {"extension": [{"url": "http://example.org/why", "valueCode": "reviewed"}]},
        "code": {"coding": [{"system": "http://loinc.org", "code": "44249-1"}], "text": "PHQ-9"},
        "subject": {"reference": format!("Patient/{pid}")},
        "valueQuantity": {"value": 12.50, "unit": "score"},
        "extension": [{"url": "http://example.org/precision", "valueDecimal": 0.100}]
    });
    // Decimal precision (12.50, 0.100) is part of the value in FHIR and must survive.
    observation["valueQuantity"]["value"] = serde_json::from_str("12.50").unwrap();
    observation["extension"][0]["valueDecimal"] = serde_json::from_str("0.100").unwrap();
    let created = app.create(observation.clone()).await;
    let id = created["id"].as_str().unwrap();

    let r = app.get(&format!("Observation/{id}")).await;
    r.expect(200);
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    let mut read = r.json.clone();
    read.as_object_mut().unwrap().remove("meta");
    read.as_object_mut().unwrap().remove("id");
    assert_eq!(read, observation);
    assert!(r.text.contains("12.50") && r.text.contains("0.100"), "decimal text kept: {}", r.text);
}

pub async fn read_of_unknown_id_is_404(app: TestApp) {
    let r = app.get("Patient/does-not-exist").await;
    r.expect(404);
    assert_eq!(r.issues()[0]["code"], "not-found");
}

pub async fn unknown_or_unsupported_type_is_404(app: TestApp) {
    for path in ["Spaceship/1", "Medication/1", "Spaceship"] {
        let r = app.get(path).await;
        r.expect(404);
        assert_eq!(r.issues()[0]["code"], "not-supported", "{path}");
    }
    app.post("Medication", &json!({"resourceType": "Medication"})).await.expect(404);
}

pub async fn malformed_id_in_url_is_400(app: TestApp) {
    let r = app.get("Patient/has%20space").await;
    r.expect(400);
    let too_long = "x".repeat(65);
    app.put(&format!("Patient/{too_long}"), &json!({"resourceType": "Patient", "id": too_long})).await.expect(400);
}

pub async fn update_with_current_if_match_makes_version_2(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let id = created["id"].as_str().unwrap();
    let mut changed = created.clone();
    changed["active"] = json!(true);
    let body = Some(changed.to_string());
    let r = app.send(Method::PUT, &format!("Patient/{id}"), &[("if-match", "W/\"1\"")], body).await;
    r.expect(200);
    assert_eq!(r.json["meta"]["versionId"], "2");
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    assert_eq!(r.json["active"], true);
    assert_eq!(app.get(&format!("Patient/{id}")).await.json["active"], true);
}

pub async fn update_with_stale_if_match_is_412(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let id = created["id"].as_str().unwrap();
    app.put(&format!("Patient/{id}"), &created).await.expect(200);
    let r =
        app.send(Method::PUT, &format!("Patient/{id}"), &[("if-match", "W/\"1\"")], Some(created.to_string())).await;
    r.expect(412);
    assert_eq!(r.issues()[0]["code"], "conflict");
    assert_eq!(app.get(&format!("Patient/{id}")).await.json["meta"]["versionId"], "2", "nothing stored");
    let r =
        app.send(Method::PUT, &format!("Patient/{id}"), &[("if-match", "yesterday")], Some(created.to_string())).await;
    r.expect(400);
}

pub async fn update_of_unknown_id_creates_it(app: TestApp) {
    let r = app
        .put("Patient/client-chosen", &json!({"resourceType": "Patient", "id": "client-chosen", "active": true}))
        .await;
    r.expect(201);
    assert_eq!(r.json["meta"]["versionId"], "1");
    assert_eq!(r.header("location"), Some(format!("{BASE}/Patient/client-chosen/_history/1").as_str()));
    app.get("Patient/client-chosen").await.expect(200);
}

pub async fn update_needs_the_url_id_in_the_body(app: TestApp) {
    app.put("Patient/a1", &json!({"resourceType": "Patient", "id": "b2"})).await.expect(400);
    app.put("Patient/a1", &json!({"resourceType": "Patient"})).await.expect(400);
    app.get("Patient/a1").await.expect(404);
}

pub async fn delete_then_read_is_410_and_delete_is_idempotent(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let id = created["id"].as_str().unwrap();
    let r = app.delete(&format!("Patient/{id}")).await;
    r.expect(204);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let r = app.get(&format!("Patient/{id}")).await;
    r.expect(410);
    assert_eq!(r.issues()[0]["code"], "deleted");
    app.delete(&format!("Patient/{id}")).await.expect(204);
    app.delete("Patient/never-existed").await.expect(204);
    // The deletion is a version of its own; the earlier version stays readable.
    app.get(&format!("Patient/{id}/_history/2")).await.expect(410);
    app.get(&format!("Patient/{id}/_history/1")).await.expect(200);
    let history = app.get(&format!("Patient/{id}/_history")).await;
    assert_eq!(history.json["entry"].as_array().unwrap().len(), 2, "a repeated delete adds no version");
}

pub async fn update_after_delete_revives_the_resource(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let id = created["id"].as_str().unwrap();
    app.delete(&format!("Patient/{id}")).await.expect(204);
    let r = app.put(&format!("Patient/{id}"), &created).await;
    r.expect(201);
    assert_eq!(r.json["meta"]["versionId"], "3");
    app.get(&format!("Patient/{id}")).await.expect(200);
}

pub async fn vread_returns_each_version(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let id = created["id"].as_str().unwrap();
    let mut v2 = created.clone();
    v2["gender"] = json!("other");
    app.put(&format!("Patient/{id}"), &v2).await.expect(200);

    let first = app.get(&format!("Patient/{id}/_history/1")).await;
    first.expect(200);
    assert_eq!(first.header("etag"), Some("W/\"1\""));
    assert!(first.json.get("gender").is_none());
    let second = app.get(&format!("Patient/{id}/_history/2")).await;
    assert_eq!(second.json["gender"], "other");
    app.get(&format!("Patient/{id}/_history/3")).await.expect(404);
    app.get(&format!("Patient/{id}/_history/latest")).await.expect(404);
}

pub async fn conditional_create_by_identifier_returns_the_match(app: TestApp) {
    let mut patient = fixtures::patient();
    patient["identifier"] = json!([{"system": "urn:mrn", "value": "123"}]);
    let header = [("if-none-exist", "identifier=urn:mrn|123")];
    let first = app.send(Method::POST, "Patient", &header, Some(patient.to_string())).await;
    first.expect(201);
    let second = app.send(Method::POST, "Patient", &header, Some(patient.to_string())).await;
    second.expect(200);
    assert_eq!(second.json["id"], first.json["id"]);
    assert_eq!(second.json["meta"]["versionId"], "1");
    // Code only, and |code (no system), follow token search rules.
    let any_system = [("if-none-exist", "identifier=123")];
    app.send(Method::POST, "Patient", &any_system, Some(patient.to_string())).await.expect(200);
    let no_system = [("if-none-exist", "identifier=%7C123")];
    app.send(Method::POST, "Patient", &no_system, Some(patient.to_string())).await.expect(201);
}

pub async fn conditional_create_by_id_and_errors(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let id = created["id"].as_str().unwrap();
    let header = format!("_id={id}");
    let r =
        app.send(Method::POST, "Patient", &[("if-none-exist", &header)], Some(fixtures::patient().to_string())).await;
    r.expect(200);
    assert_eq!(r.json["id"], id);
    // Any search parameter works as the condition; unknown ones are refused, not ignored.
    let body = Some(fixtures::patient().to_string());
    let r = app.send(Method::POST, "Patient", &[("if-none-exist", "family=test&birthdate=1980")], body.clone()).await;
    r.expect(200);
    assert_eq!(r.json["id"], id);
    app.send(Method::POST, "Patient", &[("if-none-exist", "colour=blue")], body.clone()).await.expect(400);
    app.send(Method::POST, "Patient", &[("if-none-exist", "birthdate=yesterday")], body).await.expect(400);
}

pub async fn conditional_create_with_two_matches_is_412(app: TestApp) {
    let mut patient = fixtures::patient();
    patient["identifier"] = json!([{"system": "urn:mrn", "value": "dup"}]);
    app.create(patient.clone()).await;
    app.create(patient.clone()).await;
    let header = [("if-none-exist", "identifier=urn:mrn|dup")];
    app.send(Method::POST, "Patient", &header, Some(patient.to_string())).await.expect(412);
}

pub async fn prefer_return_minimal_and_operation_outcome(app: TestApp) {
    let body = Some(fixtures::patient().to_string());
    let r = app.send(Method::POST, "Patient", &[("prefer", "return=minimal")], body.clone()).await;
    r.expect(201);
    assert!(r.text.is_empty());
    assert!(r.header("location").is_some() && r.header("etag") == Some("W/\"1\""));
    let r = app.send(Method::POST, "Patient", &[("prefer", "return=OperationOutcome")], body).await;
    r.expect(201);
    assert_eq!(r.issues()[0]["severity"], "information");
}

pub async fn read_with_if_none_match_is_304(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let r = app.send(Method::GET, &path, &[("if-none-match", "W/\"1\"")], None).await;
    r.expect(304);
    app.send(Method::GET, &path, &[("if-none-match", "W/\"0\"")], None).await.expect(200);
}
