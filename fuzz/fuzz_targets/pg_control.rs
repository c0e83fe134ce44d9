#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postgres_ffi::fuzz_targets::pg_control(data));
