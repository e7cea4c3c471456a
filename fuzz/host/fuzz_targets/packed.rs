#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsplug_fuzz_host::packed(data));
