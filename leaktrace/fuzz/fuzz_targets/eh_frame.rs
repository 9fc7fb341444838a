//! libFuzzer entry for `leaktrace::fuzz::Target::EhFrame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| leaktrace::fuzz::Target::EhFrame.run(data));
