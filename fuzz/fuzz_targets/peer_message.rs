//! Fuzz target `peer_message`: the property check lives in `meridian_fuzz::peer_message`
//! (fuzz/src/lib.rs), shared with the corpus regression test.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::peer_message(data));
