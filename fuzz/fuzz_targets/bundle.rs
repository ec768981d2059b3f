//! Bundle processing: the input is the body of `POST /fhir` (a transaction or batch, or
//! anything else), run by a real server over SQLite, which must answer it without a 5xx.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    liaison_fuzz::request("POST", "/fhir", data.to_vec());
});
