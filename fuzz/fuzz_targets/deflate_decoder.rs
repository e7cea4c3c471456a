#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsplug_fuzz::deflate_decoder(data));
