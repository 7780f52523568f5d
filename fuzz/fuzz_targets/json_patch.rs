//! Fuzz target `json_patch`: the property check lives in `meridian_fuzz::json_patch`
//! (fuzz/src/lib.rs), shared with the corpus regression test.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::json_patch(data));
