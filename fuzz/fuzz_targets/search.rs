//! Search-parameter parsing, SQL compilation and execution: the input is the query string of a
//! search on one of the served types (picked by its first byte), sent to a real server.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, query)) = data.split_first() else { return };
    let ty = liaison_fuzz::pick_type(pick);
    // What RFC 3986 allows in a query passes (`%` too, so that inputs can hold their own
    // escapes); anything else is percent-encoded, as a client would.
    let mut encoded = String::with_capacity(query.len());
    for &b in query {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    liaison_fuzz::request("GET", &format!("/fhir/{ty}?{encoded}"), Vec::new());
});
