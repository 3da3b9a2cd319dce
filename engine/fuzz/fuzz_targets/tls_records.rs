#![no_main]

// The body lives beside the others but outside the library, so that the proto corpus test that
// includes src/lib.rs does not carry it.
#[path = "../src/tls_records.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::tls_records(data));
