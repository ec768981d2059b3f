//! Measures the validator on the official R4 examples of the supported types.
//!
//!     cargo run --release --example validate_bench
//!
//! Prints the start-up cost of loading the embedded definitions and the time per resource.

use std::time::Instant;

use liaison::fhir::definitions::Definitions;
use liaison::fhir::validate::validate;
use serde_json::Value;

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/fixtures/examples");
    let resources: Vec<Value> = std::fs::read_dir(dir)
        .expect("fixtures directory")
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    let bytes: usize = resources.iter().map(|r| r.to_string().len()).sum();

    let start = Instant::now();
    let defs = Definitions::r4();
    println!("definitions loaded in {:.1} ms", start.elapsed().as_secs_f64() * 1e3);

    let rounds = 200;
    let start = Instant::now();
    let mut issues = 0;
    for _ in 0..rounds {
        for r in &resources {
            issues += validate(&defs, r.as_object().unwrap()).issues.len();
        }
    }
    let per = start.elapsed().as_secs_f64() / (rounds * resources.len()) as f64;
    println!(
        "validated {} resources (mean {} bytes) x {rounds}: {:.1} µs per resource, {:.0} MB/s, {} issues per round",
        resources.len(),
        bytes / resources.len(),
        per * 1e6,
        bytes as f64 / resources.len() as f64 / per / 1e6,
        issues / rounds
    );
}
