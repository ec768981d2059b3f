//! Content negotiation, the CapabilityStatement, routing errors, health, and a real socket.

use std::collections::BTreeSet;

use axum::http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{fixtures, TestApp};

pub async fn xml_is_refused_with_406(app: TestApp) {
    let r = app.get("metadata?_format=xml").await;
    r.expect(406);
    assert_eq!(r.issues()[0]["code"], "not-supported");
    app.send(Method::GET, "metadata", &[("accept", "application/fhir+xml")], None).await.expect(406);
    app.send(Method::GET, "metadata", &[("accept", "application/fhir+xml, application/fhir+json;q=0.9")], None)
        .await
        .expect(200);
}

pub async fn json_flavours_and_pretty_printing(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let plain = app.send(Method::GET, &path, &[("accept", "application/json")], None).await;
    plain.expect(200);
    assert!(plain.header("content-type").unwrap().starts_with("application/json"));
    let fhir = app.get(&format!("{path}?_format=json")).await;
    assert!(fhir.header("content-type").unwrap().starts_with("application/fhir+json"));
    assert!(!fhir.text.contains('\n'));
    let pretty = app.get(&format!("{path}?_pretty=true")).await;
    assert!(pretty.text.contains("\n  \"resourceType\""));
    assert_eq!(pretty.json, fhir.json);
}

pub async fn metadata_lists_exactly_what_is_served(app: TestApp) {
    let r = app.get("metadata").await;
    r.expect(200);
    let cs = &r.json;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["kind"], "instance");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let types: BTreeSet<&str> = resources.iter().map(|r| r["type"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = [
        "AuditEvent",
        "CarePlan",
        "CareTeam",
        "Condition",
        "Consent",
        "Encounter",
        "Goal",
        "Observation",
        "Organization",
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "QuestionnaireResponse",
        "ServiceRequest",
        "Subscription",
        "Task",
    ]
    .into();
    assert_eq!(types, expected);
    // Every advertised type answers its interactions; a type not listed does not.
    for resource in resources {
        let ty = resource["type"].as_str().unwrap();
        let codes: Vec<&str> =
            resource["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
        assert!(codes.contains(&"read") && codes.contains(&"search-type"));
        if ty == "AuditEvent" {
            // The audit trail: read and search only.
            assert_eq!(codes, ["read", "search-type"]);
            app.get(&format!("{ty}/_history")).await.expect(405);
        } else {
            assert!(codes.contains(&"history-type"));
            app.get(&format!("{ty}/_history")).await.expect(200);
        }
        app.get(ty).await.expect(200);
        // Every advertised search parameter is accepted by the search.
        for p in resource["searchParam"].as_array().unwrap() {
            let (name, kind) = (p["name"].as_str().unwrap(), p["type"].as_str().unwrap());
            let value = match kind {
                "date" => "2024-01-01",
                "number" | "quantity" => "1",
                "reference" => "Patient/x",
                "composite" => "c$2024",
                _ => "x",
            };
            let r =
                app.send(Method::GET, &format!("{ty}?{name}={value}"), &[("prefer", "handling=strict")], None).await;
            assert_eq!(r.status.as_u16(), 200, "{ty}?{name}: {}", r.text);
        }
        app.get(&format!("{ty}/unknown-id")).await.expect(404);
    }
    let system: Vec<&str> =
        cs["rest"][0]["interaction"].as_array().unwrap().iter().filter_map(|i| i["code"].as_str()).collect();
    assert_eq!(system, ["transaction", "batch", "history-system"]);
    // The statement itself is a valid R4 resource.
    let defs = liaison::fhir::definitions::Definitions::r4();
    let report = liaison::fhir::validate::validate(&defs, cs.as_object().unwrap());
    assert!(report.issues.is_empty(), "{:?}", report.issues);
}

pub async fn unknown_routes_and_methods_get_operation_outcomes(app: TestApp) {
    let r = app.get("/nowhere").await;
    r.expect(404);
    assert_eq!(r.issues()[0]["code"], "not-found");
    let r = app.send(Method::POST, "Patient/1", &[], None).await;
    r.expect(405);
    assert_eq!(r.issues()[0]["code"], "not-supported");
    app.send(Method::DELETE, "metadata", &[], None).await.expect(405);
}

pub async fn health_endpoints_answer(app: TestApp) {
    app.get("/health/live").await.expect(200);
    let r = app.get("/health/ready").await;
    r.expect(200);
    assert_eq!(r.json["status"], "pass");
}

/// One request through a real TCP socket: the router as `serve` runs it.
pub async fn serves_over_a_real_socket(app: TestApp) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(liaison::serve(listener, app.router.clone(), None, Default::default(), async {
        let _ = stopped.await;
    }));
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nAccept: application/fhir+json\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    socket.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("x-request-id:"), "every response carries a request id");
    let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["resourceType"], "CapabilityStatement");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Two servers on one database behave as one: nothing lives in a server's memory.
pub async fn two_servers_share_one_database(app: TestApp) {
    let other = TestApp::connect(app.backend, &app.database_url).await;
    let created = app.create(fixtures::patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    other.get(&path).await.expect(200);
    let body = Some(created.to_string());
    other.send(Method::PUT, &path, &[("if-match", "W/\"1\"")], body.clone()).await.expect(200);
    app.send(Method::PUT, &path, &[("if-match", "W/\"1\"")], body).await.expect(412);
    assert_eq!(app.get(&path).await.json["meta"]["versionId"], "2");
}

/// Hostile or odd request details get clean 4xx answers, never a database error.
pub async fn control_characters_versions_and_request_ids(app: TestApp) {
    let created = app.create(fixtures::patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    app.get("Patient?name=a%00b").await.expect(400);
    app.get("Patient/_history?_cursor=1:Patient:%00:1").await.expect(400);
    app.send(Method::POST, "Patient", &[("if-none-exist", "identifier=%00")], Some(fixtures::patient().to_string()))
        .await
        .expect(400);
    let mut nul = fixtures::patient();
    nul["name"][0]["family"] = serde_json::json!("a\u{0}b");
    app.post("Patient", &nul).await.expect(400);

    // fhirVersion on media types (versioning.html).
    app.send(Method::GET, &path, &[("accept", "application/fhir+json; fhirVersion=4.0")], None).await.expect(200);
    app.send(Method::GET, &path, &[("accept", "application/fhir+json; fhirVersion=3.0")], None).await.expect(406);
    let body = Some(fixtures::patient().to_string());
    app.send(Method::POST, "Patient", &[("content-type", "application/fhir+json; fhirVersion=5.0")], body)
        .await
        .expect(415);

    // If-None-Match compares weakly.
    app.send(Method::GET, &path, &[("if-none-match", "\"1\"")], None).await.expect(304);

    // A plain request id is echoed; one that could forge log lines is replaced.
    let r = app.send(Method::GET, &path, &[("x-request-id", "abc-123")], None).await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let r = app.send(Method::GET, &path, &[("x-request-id", "evil\" level=error")], None).await;
    assert_ne!(r.header("x-request-id"), Some("evil\" level=error"));
    assert!(r.header("x-request-id").is_some_and(|id| id.len() == 36));
}

/// Index rows written by an older server are rebuilt at start-up: searches and reference
/// protection work on data stored before they existed.
pub async fn start_up_rebuilds_an_outdated_index(app: TestApp) {
    let p = app.create(fixtures::patient()).await;
    let pid = p["id"].as_str().unwrap();
    app.create(fixtures::care_plan(pid)).await;
    app.execute_sql(&[
        "DELETE FROM search_token",
        "DELETE FROM search_reference",
        "DELETE FROM resource_links",
        "UPDATE index_state SET version = 0",
    ])
    .await;
    let r = app.get(&format!("CarePlan?subject=Patient/{pid}")).await;
    assert!(r.json.get("entry").is_none(), "the index really was emptied");

    let restarted = TestApp::connect(app.backend, &app.database_url).await;
    let r = restarted.get(&format!("CarePlan?subject=Patient/{pid}&status=active")).await;
    assert_eq!(r.json["total"], 1, "{}", r.text);
    restarted.delete(&format!("Patient/{pid}")).await.expect(409);
}

/// The OpenAPI document and its offline documentation page are served, and the document is the
/// committed one.
pub async fn openapi_document_and_docs_page(app: TestApp) {
    let r = app.get("openapi.json").await;
    r.expect(200);
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string("openapi/openapi.json").expect("the committed document"))
            .unwrap();
    assert_eq!(r.json, committed);
    let page = app.get("docs/").await;
    page.expect(200);
    assert!(page.text.contains("swagger-ui"), "{}", page.text);
    // Every script and stylesheet comes from this server.
    for attribute in ["src=\"http", "href=\"http", "src='http", "href='http"] {
        assert!(!page.text.contains(attribute), "an outside asset: {}", page.text);
    }
    app.get("docs/swagger-ui-bundle.js").await.expect(200);
    let init = app.get("docs/swagger-initializer.js").await;
    assert!(init.text.contains("\"/fhir/openapi.json\"") && init.text.contains("\"validatorUrl\": \"none\""));
}
