//! libFuzzer entry for `leaktrace::fuzz::Target::Elf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| leaktrace::fuzz::Target::Elf.run(data));
