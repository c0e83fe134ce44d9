#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pq_proto::fuzz_targets::frontend_messages(data));
