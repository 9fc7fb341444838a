//! libFuzzer entry for `leaktrace::fuzz::Target::Placement`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| leaktrace::fuzz::Target::Placement.run(data));
