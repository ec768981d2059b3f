//! The audit trail: an AuditEvent for every interaction (reads, searches, failures and denials
//! included), searchable only with an audit scope, never writable through the API, written in
//! the same transaction as the write it records, failing closed, and a hash chain that the
//! linker extends after the commits and `verify-audit` checks.

use axum::http::Method;
use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::{fixtures, Backend, TestApp};

fn events(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default().into_iter().map(|e| e["resource"].clone()).collect()
}

fn subtype(event: &Value) -> &str {
    event["subtype"][0]["code"].as_str().unwrap_or("")
}

fn entity_refs(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .map(|es| es.iter().filter_map(|e| e["what"]["reference"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn verify(app: &TestApp) -> liaison::store::ChainReport {
    liaison::verify_audit(&liaison::Config::for_database(&app.database_url)).await.expect("the database opens")
}

pub async fn every_interaction_is_audited(app: TestApp) {
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let plan = app.create(fixtures::care_plan(&pid)).await;
    let plan_id = plan["id"].as_str().unwrap().to_owned();
    app.get(&format!("CarePlan/{plan_id}")).await.expect(200);
    app.get(&format!("CarePlan?patient={pid}&status=active")).await.expect(200);
    let mut changed = plan.clone();
    changed["status"] = json!("completed");
    app.put(&format!("CarePlan/{plan_id}"), &changed).await.expect(200);
    let mut bad = fixtures::care_plan(&pid);
    bad["status"] = json!("bogus");
    app.post("CarePlan", &bad).await.expect(400);
    app.get("CarePlan/nothing-here").await.expect(404);
    app.delete(&format!("CarePlan/{plan_id}")).await.expect(204);

    let trail = app.get("AuditEvent?_count=100&_sort=date").await;
    trail.expect(200);
    let all = events(&trail.json);
    let codes: Vec<&str> = all.iter().map(subtype).collect();
    assert_eq!(codes, ["create", "create", "read", "search-type", "update", "create", "read", "delete"], "{codes:?}");
    let read = &all[2];
    assert_eq!(read["action"], "R");
    assert_eq!(read["outcome"], "0");
    assert_eq!(read["type"]["code"], "rest");
    assert!(read["recorded"].as_str().is_some());
    assert_eq!(read["source"]["observer"]["display"], "Liaison");
    assert_eq!(entity_refs(read), [format!("CarePlan/{plan_id}/_history/1"), format!("Patient/{pid}")]);
    let search = &all[3];
    assert_eq!(search["action"], "E");
    let query = search["entity"].as_array().unwrap().iter().find_map(|e| e["query"].as_str()).unwrap();
    let query = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(query).unwrap()).unwrap();
    assert!(query.contains("status=active"), "{query}");
    assert!(entity_refs(search).contains(&format!("Patient/{pid}")));
    assert_eq!(all[4]["action"], "U");
    assert_eq!(entity_refs(&all[4])[0], format!("CarePlan/{plan_id}/_history/2"));
    assert_eq!((all[5]["action"].as_str(), all[5]["outcome"].as_str()), (Some("C"), Some("4")), "a refused create");
    assert_eq!(all[6]["outcome"], "4", "a read of nothing");
    assert_eq!(all[7]["action"], "D");
    // Searchable by the parameters an auditor uses.
    let by = |q: &str| {
        let app = app.clone();
        let q = q.to_owned();
        async move { events(&app.get(&format!("AuditEvent?{q}&_count=100")).await.json) }
    };
    assert_eq!(by("action=D").await.len(), 1);
    assert_eq!(by("outcome=4").await.len(), 2);
    assert_eq!(by(&format!("entity=CarePlan/{plan_id}")).await.len(), 4, "read, update, delete, create");
    assert!(by(&format!("patient=Patient/{pid}")).await.len() >= 4);
    assert_eq!(by("subtype=update").await.len(), 1);
    assert!(!by("date=ge2020-01-01").await.is_empty());
    // Reading the trail is itself audited (the first search and every one since); the trail
    // cannot be written.
    assert_eq!(by("subtype=search-type").await.len(), 8);
    app.post("AuditEvent", &json!({"resourceType": "AuditEvent"})).await.expect(405);
    let id = all[0]["id"].as_str().unwrap();
    app.delete(&format!("AuditEvent/{id}")).await.expect(405);
    app.get(&format!("AuditEvent/{id}")).await.expect(200);
    // Deleting a resource is not blocked by the audit events that name it.
    let report = verify(&app).await;
    assert_eq!(report.broken, None);
    assert!(report.verified >= 10, "{report:?}");
}

pub async fn requests_no_route_takes_are_audited(app: TestApp) {
    app.send(Method::DELETE, "metadata", &[], None).await.expect(405);
    app.get("Patient/a/b/c/d/e").await.expect(404);
    let all = events(&app.get("AuditEvent?outcome=4&_count=10&_sort=date").await.json);
    let seen: Vec<(&str, &str)> = all.iter().map(|e| (subtype(e), e["action"].as_str().unwrap_or(""))).collect();
    assert_eq!(seen, [("delete", "D"), ("operation", "E")]);
    assert_eq!(all[1]["entity"].as_array().map(Vec::len).unwrap_or(0), 0, "no resource was touched");
    assert_eq!(verify(&app).await.broken, None);
}

pub async fn bundles_record_each_write_in_their_transaction(app: TestApp) {
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "CarePlan"}, "resource": fixtures::care_plan(&pid)},
        {"request": {"method": "POST", "url": "Goal"}, "resource": {"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": "Sleep"}, "subject": {"reference": format!("Patient/{pid}")}}},
    ]});
    app.post("/fhir", &tx).await.expect(200);
    let mut failing = tx.clone();
    failing["entry"][1]["resource"]["lifecycleStatus"] = json!("bogus");
    app.post("/fhir", &failing).await.expect(400);
    let all = events(&app.get("AuditEvent?_count=100&_sort=date").await.json);
    let codes: Vec<&str> = all.iter().map(subtype).collect();
    // The failed transaction's entries left no trace but its own refusal.
    assert_eq!(codes, ["create", "create", "create", "transaction", "transaction"], "{codes:?}");
    assert_eq!(all[4]["outcome"], "4");
    assert_eq!(verify(&app).await.broken, None);
}

pub async fn audit_needs_its_own_scope_and_records_denials(app: TestApp) {
    let s = crate::auth::Secured::new(&app).await;
    s.app.get("Patient").await.expect(401);
    let wildcard = s.token("user/*.cruds", None);
    s.get(&wildcard, "AuditEvent").await.expect(403);
    s.get(&wildcard, "Goal").await.expect(200);
    s.get(&s.token("user/Goal.r", None), "Goal").await.expect(403);
    let auditor = s.token("system/AuditEvent.rs", None);
    let r = s.get(&auditor, "AuditEvent?_count=100&_sort=date").await;
    r.expect(200);
    let all = events(&r.json);
    let outcomes: Vec<(&str, &str)> = all.iter().map(|e| (subtype(e), e["outcome"].as_str().unwrap_or(""))).collect();
    assert_eq!(outcomes, [("search-type", "4"), ("search-type", "4"), ("search-type", "0"), ("search-type", "4")]);
    assert_eq!(all[0]["agent"][0]["who"]["display"], "unauthenticated");
    let user = &all[2]["agent"][0];
    assert_eq!(user["who"]["identifier"]["value"], "dr-rivera");
    assert_eq!(user["requestor"], true);
    assert_eq!(all[2]["agent"][1]["who"]["identifier"]["value"], "ehr-1", "the client application");
    let by_agent = s.get(&auditor, "AuditEvent?agent-name=dr-rivera&outcome=4").await;
    assert_eq!(events(&by_agent.json).len(), 2);
    // Writes and even a wildcard audit scope leave the trail alone.
    let writer = s.token("system/AuditEvent.cruds", None);
    s.send(&writer, Method::POST, "AuditEvent", Some(json!({"resourceType": "AuditEvent"}))).await.expect(405);
}

pub async fn audit_failure_fails_the_request(app: TestApp) {
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    // A storage fault where each engine takes a write's AuditEvents into the chain: SQLite
    // links them at commit (a row in the way of the next link), PostgreSQL queues them for the
    // linker (the queue gone).
    let (fault, repair) = match app.backend {
        Backend::Sqlite => (
            "INSERT INTO audit_chain (seq, id, prev_hash, hash) SELECT seq + 1, 'blocker', 'x', 'x' FROM audit_head",
            "DELETE FROM audit_chain WHERE id = 'blocker'",
        ),
        Backend::Postgres => (
            "ALTER TABLE audit_unlinked RENAME TO audit_unlinked_away",
            "ALTER TABLE audit_unlinked_away RENAME TO audit_unlinked",
        ),
    };
    app.execute_sql(&[fault]).await;
    let r = app.post("CarePlan", &fixtures::care_plan(&pid)).await;
    r.expect(503);
    app.get(&format!("Patient/{pid}")).await.expect(503);
    app.execute_sql(&[repair]).await;
    // Nothing of the write that could not be audited was stored, and the chain holds.
    let plans = app.get("CarePlan").await;
    assert_eq!(plans.json["total"], 0, "{}", plans.text);
    assert_eq!(verify(&app).await.broken, None);
}

/// On PostgreSQL writes never wait for the chain's head: when the chain cannot take links,
/// requests are still answered, and their records are linked, none lost, once it can again.
pub async fn a_blocked_chain_delays_links_and_loses_no_record(app: TestApp) {
    if app.backend != Backend::Postgres {
        // SQLite links a write's AuditEvents at commit: a blocked chain fails the request
        // (`audit_failure_fails_the_request`).
        return;
    }
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let before = verify(&app).await;
    assert_eq!(before.broken, None);
    // A row in the way of the chain's next link: every link fails.
    let blocker =
        "INSERT INTO audit_chain (seq, id, prev_hash, hash) SELECT seq + 1, 'blocker', 'x', 'x' FROM audit_head";
    app.execute_sql(&[blocker]).await;
    for _ in 0..3 {
        app.get(&format!("Patient/{pid}")).await.expect(200);
    }
    app.post("CarePlan", &fixtures::care_plan(&pid)).await.expect(201);
    let blocked = verify(&app).await;
    assert_eq!(blocked.broken.map(|b| b.seq), Some(before.verified as i64 + 1), "the walk stops at the blocker");
    app.execute_sql(&["DELETE FROM audit_chain WHERE id = 'blocker'"]).await;
    let after = verify(&app).await;
    assert_eq!(after.broken, None, "{after:?}");
    assert_eq!(after.verified, before.verified + 4, "three reads and a create, each linked once");
    let reads = app.get("AuditEvent?action=R&_count=100").await;
    assert_eq!(events(&reads.json).len(), 3, "{}", reads.text);
}

/// Searches from other types that read the trail's index (a reverse include, a reverse chain)
/// see every record of the requests answered before them, and concurrent searches of the
/// trail count each record once.
pub async fn the_trail_is_found_from_other_types_and_counted_once(app: TestApp) {
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    for _ in 0..20 {
        app.get(&format!("Patient/{pid}")).await.expect(200);
    }
    let with_trail = app.get(&format!("Patient?_id={pid}&_revinclude=AuditEvent:entity&_count=100")).await;
    with_trail.expect(200);
    let included = events(&with_trail.json).into_iter().filter(|r| r["resourceType"] == "AuditEvent").count();
    assert!(included >= 21, "the create and twenty reads: {included}");
    let has = app.get(&format!("Patient?_has:AuditEvent:entity:action=R&_id={pid}")).await;
    assert_eq!(has.json["total"], 1, "{}", has.text);
    let searches = (0..8).map(|_| {
        let app = app.clone();
        async move { app.get("AuditEvent?action=R&_total=accurate&_count=0").await }
    });
    for r in futures::future::join_all(searches).await {
        assert_eq!(r.json["total"], 20, "{}", r.text);
    }
}

pub async fn tampering_breaks_the_chain(app: TestApp) {
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    for _ in 0..4 {
        app.get(&format!("Patient/{pid}")).await.expect(200);
    }
    let report = verify(&app).await;
    assert_eq!(report.broken, None);
    assert_eq!(report.verified, 5);
    // Editing a record: rewrite who did the third.
    let third = "(SELECT id FROM audit_chain WHERE seq = 3)";
    app.execute_sql(&[&format!(
        "UPDATE resources SET content = replace(content, '\"read\"', '\"vread\"') WHERE resource_type = 'AuditEvent' AND id = {third}"
    )])
    .await;
    let report = verify(&app).await;
    let broken = report.broken.expect("the edit is detected");
    assert_eq!(broken.seq, 3);
    assert_eq!(report.verified, 2);
    assert!(broken.reason.contains("altered"), "{broken:?}");
    // The CLI says so too, with a failing exit status.
    let exe = env!("CARGO_BIN_EXE_liaison");
    let out = std::process::Command::new(exe)
        .args(["--database-url", &app.database_url, "verify-audit"])
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("BROKEN at record 3"));
}

pub async fn removing_records_breaks_the_chain(app: TestApp) {
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        app.get(&format!("Patient/{pid}")).await.expect(200);
    }
    assert_eq!(verify(&app).await.verified, 4, "every record is linked");
    // Remove the second record and its link.
    app.execute_sql(&[
        "DELETE FROM resources WHERE resource_type = 'AuditEvent' AND id = (SELECT id FROM audit_chain WHERE seq = 2)",
        "DELETE FROM audit_chain WHERE seq = 2",
    ])
    .await;
    let report = verify(&app).await;
    assert_eq!(report.broken.map(|b| b.seq), Some(2));
    // Removing the newest record is caught by the head.
    let other = TestApp::connect(app.backend, &fresh_database(&app).await).await;
    other.get("metadata").await.expect(200);
    other.get("metadata").await.expect(200);
    assert_eq!(verify(&other).await.verified, 2, "every record is linked");
    other
        .execute_sql(&[
            "DELETE FROM resources WHERE resource_type = 'AuditEvent' AND id = (SELECT id FROM audit_chain WHERE seq = 2)",
            "DELETE FROM audit_chain WHERE seq = 2",
        ])
        .await;
    let report = verify(&other).await;
    assert!(report.broken.as_ref().is_some_and(|b| b.reason.contains("removed")), "{report:?}");
}

/// A second, empty database of the same engine as `app`'s.
async fn fresh_database(app: &TestApp) -> String {
    match app.backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap().keep();
            format!("sqlite://{}?mode=rwc", dir.join("second.db").display())
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&crate::helpers::postgres_url()).await.unwrap();
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
            let sep = if crate::helpers::postgres_url().contains('?') { '&' } else { '?' };
            format!("{}{sep}options[search_path]={schema}", crate::helpers::postgres_url())
        }
    }
}

/// The chain verifies while requests append to it from many clients at once: concurrent
/// appends link in order, and the walk reads one snapshot, so records committed meanwhile are
/// not reported as damage.
pub async fn chain_verifies_under_concurrent_appends(app: TestApp) {
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let clients: Vec<_> = (0..8)
        .map(|k| {
            let (app, pid) = (app.clone(), pid.clone());
            tokio::spawn(async move {
                for i in 0..12 {
                    if (i + k) % 3 == 0 {
                        app.create(fixtures::care_plan(&pid)).await;
                    } else {
                        app.get(&format!("Patient/{pid}")).await.expect(200);
                    }
                }
            })
        })
        .collect();
    let mut walks = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        let report = verify(&app).await;
        assert_eq!(report.broken, None, "{report:?}");
        walks += 1;
    }
    for c in clients {
        c.await.expect("client");
    }
    let report = verify(&app).await;
    assert_eq!(report.broken, None);
    assert!(report.verified >= 97, "{report:?}");
    assert!(walks > 0);
}
