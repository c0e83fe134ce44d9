#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pageserver::fuzz_targets::http_bodies(data));
