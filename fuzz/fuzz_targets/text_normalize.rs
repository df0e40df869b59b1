#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kefu_fuzz::text::check(&String::from_utf8_lossy(data)));
