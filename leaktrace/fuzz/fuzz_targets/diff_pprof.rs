//! libFuzzer entry for `leaktrace::fuzz::Target::DiffPprof`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| leaktrace::fuzz::Target::DiffPprof.run(data));
