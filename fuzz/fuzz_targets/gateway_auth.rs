#![no_main]
libfuzzer_sys::fuzz_target!(|call: kefu_fuzz::auth::Call<'_>| kefu_fuzz::auth::check(call));
