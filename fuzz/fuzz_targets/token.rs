//! Fuzz target `token`: the property check lives in `meridian_fuzz::token`
//! (fuzz/src/lib.rs), shared with the corpus regression test.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::token(data));
