#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| safekeeper::fuzz_targets::control_file(data));
