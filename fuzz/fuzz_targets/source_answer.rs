#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| samblik_fuzz::source_answer::run(data));
