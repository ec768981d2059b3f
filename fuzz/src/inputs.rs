//! How fuzz inputs become requests, shared by the fuzz targets and by the test suite that
//! replays the committed inputs (`tests/api/fuzzing.rs` includes this file), so that both send
//! the same requests. Depends on nothing but `liaison`.

/// What the fuzz server holds before the first input: `(path, body)` of each PUT.
pub const SEED: &[(&str, &str)] = &[
    (
        "/fhir/Patient/p1",
        r#"{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:mrn","value":"1"}],"name":[{"family":"Fuzz"}]}"#,
    ),
    ("/fhir/Practitioner/dr", r#"{"resourceType":"Practitioner","id":"dr","name":[{"family":"Doc"}]}"#),
    (
        "/fhir/CarePlan/cp",
        r#"{"resourceType":"CarePlan","id":"cp","status":"active","intent":"plan","subject":{"reference":"Patient/p1"}}"#,
    ),
];

/// The search an input of the `search` target makes: its first byte picks a served type, the
/// rest is the query string. What RFC 3986 allows in a query passes (`%` too, so that inputs can
/// hold their own escapes); anything else is percent-encoded, as a client would. `None` for an
/// empty input.
pub fn search_path(input: &[u8]) -> Option<String> {
    let (&pick, query) = input.split_first()?;
    let types = liaison::fhir::registry::SUPPORTED_TYPES;
    let ty = types[pick as usize % types.len()];
    let mut path = format!("/fhir/{ty}?");
    for &b in query {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    Some(path)
}
