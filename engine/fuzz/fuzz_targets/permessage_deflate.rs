#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| percore_fuzz::permessage_deflate(data));
