#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsplug_fuzz::utf8(data));
