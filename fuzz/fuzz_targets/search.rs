//! Search-parameter parsing, SQL compilation and execution: the input is the query string of a
//! search on one of the served types (picked by its first byte), sent to a real server.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(path) = liaison_fuzz::search_path(data) {
        liaison_fuzz::request("GET", &path, Vec::new());
    }
});
