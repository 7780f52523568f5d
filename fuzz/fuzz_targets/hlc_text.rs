//! Fuzz target `hlc_text`: the property check lives in `meridian_fuzz::hlc_text`
//! (fuzz/src/lib.rs), shared with the corpus regression test.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::hlc_text(data));
