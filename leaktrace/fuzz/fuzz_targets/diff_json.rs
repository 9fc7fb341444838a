//! libFuzzer entry for `leaktrace::fuzz::Target::DiffJson`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| leaktrace::fuzz::Target::DiffJson.run(data));
