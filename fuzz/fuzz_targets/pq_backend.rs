#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pq_proto::fuzz_targets::backend_messages(data));
