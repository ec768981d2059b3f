//! The fuzz inputs (`fuzz/seeds/`: curated seeds and every input that ever made a target fail,
//! once fixed; `fuzz/corpus/`: what the fuzzers kept, minimised) replayed through the real router on both engines, so that
//! each is a regression test of `cargo test`: no input may get a 5xx or panic the server.

use std::path::Path;

use axum::http::Method;

use crate::helpers::TestApp;

/// The fuzz targets' own mapping from input to request.
#[path = "../../fuzz/src/inputs.rs"]
mod inputs;

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

pub async fn corpus_inputs_never_fail_the_server(app: TestApp) {
    for (path, body) in inputs::SEED {
        app.send(Method::PUT, path, &[], Some((*body).to_owned())).await.expect(201);
    }
    let types = liaison::fhir::registry::SUPPORTED_TYPES;
    let mut replayed = 0;
    let mut check = |name: &str, status: u16, text: &str| {
        assert!(status < 500, "{name} answered {status}: {text}");
        replayed += 1;
    };
    for (name, input) in corpus("search") {
        let Some(path) = inputs::search_path(&input) else { continue };
        let r = app.get(&path).await;
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
