//! libFuzzer entry for `leaktrace::fuzz::Target::Http`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| leaktrace::fuzz::Target::Http.run(data));
