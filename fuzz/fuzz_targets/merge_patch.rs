//! Fuzz target `merge_patch`: the property check lives in `meridian_fuzz::merge_patch`
//! (fuzz/src/lib.rs), shared with the corpus regression test.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::merge_patch(data));
