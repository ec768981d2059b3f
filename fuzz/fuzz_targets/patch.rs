//! FHIRPath Patch (and JSON Patch) application: the input is a patch document, applied to a
//! stored-shape CarePlan; the result is validated as an update would be.
#![no_main]

use liaison::fhir::patch::Patch;
use liaison::fhir::{json, validate};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let registry = liaison_fuzz::registry();
    let patch = match json::parse_object(data) {
        Ok(parameters) => Patch::parse_fhirpath(&parameters),
        Err(_) => match serde_json::from_slice::<Value>(data) {
            Ok(doc) => Patch::parse_json_patch(doc),
            Err(_) => return,
        },
    };
    let Ok(patch) = patch else { return };
    let mut care_plan = json!({
        "resourceType": "CarePlan", "id": "cp", "meta": {"versionId": "1"},
        "status": "active", "intent": "plan", "subject": {"reference": "Patient/p1"},
        "goal": [{"reference": "Goal/g1"}, {"reference": "Goal/g2"}],
        "activity": [{"detail": {"status": "scheduled", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "228557008"}]}}}],
        "note": [{"text": "weekly"}]
    });
    if patch.apply(&registry.definitions, "CarePlan", &mut care_plan).is_ok() {
        if let Some(patched) = care_plan.as_object() {
            let _ = validate::validate(&registry.definitions, patched);
        }
    }
});
