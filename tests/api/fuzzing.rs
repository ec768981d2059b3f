//! The fuzz inputs (`fuzz/seeds/`: curated seeds and every input that ever made a target fail,
//! once fixed; `fuzz/corpus/`: what the fuzzers kept, minimised) replayed through the real router on both engines, so that
//! each is a regression test of `cargo test`: no input may get a 5xx or panic the server.

use std::path::Path;

use axum::http::Method;
use serde_json::json;

use crate::helpers::TestApp;

/// The inputs of one fuzz target (the curated seeds and regressions, then what the fuzzers
/// kept), in a stable order.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs: Vec<(String, Vec<u8>)> = ["seeds", "corpus"]
        .iter()
        .flat_map(|kind| {
            let dir = root.join(kind).join(target);
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(move |entry| {
                let path = entry.unwrap().path();
                let name = format!("{kind}/{target}/{}", path.file_name().unwrap().to_string_lossy());
                (name, std::fs::read(&path).unwrap())
            })
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the {target} corpus has inputs");
    inputs
}

/// A URL-safe form of arbitrary bytes, as the search target sends them.
fn percent_encoded(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            true => (b as char).to_string(),
            false => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn corpus_inputs_never_fail_the_server(app: TestApp) {
    // What the fuzz targets' server holds before the first input.
    for (path, body) in [
        (
            "Patient/p1",
            json!({"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:mrn", "value": "1"}]}),
        ),
        ("Practitioner/dr", json!({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Doc"}]})),
        (
            "CarePlan/cp",
            json!({"resourceType": "CarePlan", "id": "cp", "status": "active", "intent": "plan",
                "subject": {"reference": "Patient/p1"}}),
        ),
    ] {
        app.put(path, &body).await.expect(201);
    }
    let types = liaison::fhir::registry::SUPPORTED_TYPES;
    let mut replayed = 0;
    let mut check = |name: &str, status: u16, text: &str| {
        assert!(status < 500, "{name} answered {status}: {text}");
        replayed += 1;
    };
    for (name, input) in corpus("search") {
        let Some((&pick, query)) = input.split_first() else { continue };
        let ty = types[pick as usize % types.len()];
        let r = app.get(&format!("{ty}?{}", percent_encoded(query))).await;
        check(&name, r.status.as_u16(), &r.text);
    }
    for (name, input) in corpus("bundle") {
        let r = app.send_bytes(Method::POST, "/fhir", &[], Some(input)).await;
        check(&name, r.status.as_u16(), &r.text);
    }
    for (name, input) in corpus("resource") {
        // Each resource is created as what it says it is (a Patient through `POST /Patient`).
        let ty = serde_json::from_slice::<serde_json::Value>(&input)
            .ok()
            .and_then(|r| r["resourceType"].as_str().map(str::to_owned))
            .filter(|t| types.contains(&t.as_str()))
            .unwrap_or_else(|| "Patient".into());
        let r = app.send_bytes(Method::POST, &ty, &[], Some(input)).await;
        check(&name, r.status.as_u16(), &r.text);
    }
    for (name, input) in corpus("patch") {
        let json_patch = input.first() == Some(&b'[');
        let headers: &[(&str, &str)] =
            if json_patch { &[("content-type", "application/json-patch+json")] } else { &[] };
        let r = app.send_bytes(Method::PATCH, "CarePlan/cp", headers, Some(input)).await;
        check(&name, r.status.as_u16(), &r.text);
    }
    assert!(replayed >= 20, "the corpus was replayed: {replayed} inputs");
    app.get("/health/ready").await.expect(200);
}
