//! Resource validation and indexing: any bytes as a resource, parsed with the server's JSON
//! reader, validated against the R4 definitions and, when valid, turned into search-index rows.
#![no_main]

use liaison::fhir::{json, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(resource) = json::parse_object(data) else { return };
    let registry = liaison_fuzz::registry();
    // The server checks the type against the URL before it validates.
    let Some(ty) = resource.get("resourceType").and_then(|t| t.as_str()) else { return };
    if !registry.definitions.is_resource_type(ty) {
        return;
    }
    let report = validate::validate(&registry.definitions, &resource);
    if report.issues.is_empty() && registry.resource_type(ty).is_some() {
        let value = serde_json::Value::Object(resource.clone());
        let _ = registry.derive(ty, &value, report.references, "http://fuzz.test/fhir");
    }
});
