//! History at instance, type and system level (R4 http.html#history).

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::helpers::{fixtures, TestApp, BASE};

fn entries(bundle: &Value) -> Vec<Value> {
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "history");
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == "next")?["url"].as_str().map(str::to_owned)
}

pub async fn instance_history_lists_versions_newest_first(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let id = created["id"].as_str().unwrap();
    app.put(&format!("Patient/{id}"), &created).await.expect(200);
    app.delete(&format!("Patient/{id}")).await.expect(204);

    let r = app.get(&format!("Patient/{id}/_history")).await;
    r.expect(200);
    let e = entries(&r.json);
    let methods: Vec<&str> = e.iter().map(|e| e["request"]["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    let etags: Vec<&str> = e.iter().map(|e| e["response"]["etag"].as_str().unwrap()).collect();
    assert_eq!(etags, ["W/\"3\"", "W/\"2\"", "W/\"1\""]);
    assert!(e[0].get("resource").is_none(), "a deletion carries no resource");
    assert_eq!(e[1]["resource"]["meta"]["versionId"], "2");
    assert_eq!(e[2]["fullUrl"], format!("{BASE}/Patient/{id}"));
    assert_eq!(e[2]["response"]["status"], "201 Created");
}

pub async fn type_history_pages_through_every_version_once(app: TestApp) {
    let mut expected = HashSet::new();
    for _ in 0..5 {
        let p = app.create(fixtures::patient()).await;
        let id = p["id"].as_str().unwrap().to_owned();
        app.put(&format!("Patient/{id}"), &p).await.expect(200);
        expected.insert((id.clone(), "1".to_owned()));
        expected.insert((id, "2".to_owned()));
    }
    app.create(json!({"resourceType": "Organization", "name": "Clinic"})).await;

    let mut seen = HashSet::new();
    let mut url = "Patient/_history?_count=3".to_owned();
    let mut pages = 0;
    loop {
        let r = app.get(&url).await;
        r.expect(200);
        pages += 1;
        for e in entries(&r.json) {
            let key = (
                e["resource"]["id"].as_str().unwrap().to_owned(),
                e["resource"]["meta"]["versionId"].as_str().unwrap().to_owned(),
            );
            assert!(seen.insert(key), "an entry appeared twice");
        }
        match next_link(&r.json) {
            Some(next) => url = next.strip_prefix(BASE).unwrap().trim_start_matches('/').to_owned(),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, expected);
}

pub async fn since_keeps_only_later_versions(app: TestApp) {
    let first = app.create(fixtures::patient()).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = app.create(fixtures::patient()).await;
    let since = second["meta"]["lastUpdated"].as_str().unwrap();
    let r = app.get(&format!("Patient/_history?_since={}", since.replace('+', "%2B"))).await;
    r.expect(200);
    let ids: Vec<Value> = entries(&r.json).iter().map(|e| e["resource"]["id"].clone()).collect();
    assert_eq!(ids, [second["id"].clone()]);
    assert_ne!(first["id"], second["id"]);
    let next = r.json["link"][0]["url"].as_str().unwrap();
    assert!(next.contains("_since="), "self link keeps _since: {next}");
}

pub async fn system_history_spans_types(app: TestApp) {
    let p = app.create(fixtures::patient()).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let plan = app.create(fixtures::care_plan(p["id"].as_str().unwrap())).await;
    let r = app.get("_history").await;
    r.expect(200);
    let types: Vec<Value> = entries(&r.json).iter().map(|e| e["resource"]["resourceType"].clone()).collect();
    assert_eq!(types, [json!("CarePlan"), json!("Patient")]);
    assert_eq!(entries(&r.json)[0]["resource"]["id"], plan["id"]);
}

pub async fn history_errors(app: TestApp) {
    app.get("Patient/nobody/_history").await.expect(404);
    app.get("Patient/_history?_count=many").await.expect(400);
    app.get("Patient/_history?_since=yesterday").await.expect(400);
    app.get("Patient/_history?_cursor=forged").await.expect(400);
    app.get("Patient/_history?colour=blue").await.expect(400);
    app.get("Spaceship/_history").await.expect(404);
}
