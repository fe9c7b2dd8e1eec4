//! Any bytes as a manifest file (YAML, and JSON, which is YAML too): the reader never panics
//! and reads the same bytes the same way twice; what it read translates (deterministically).
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    ferry_fuzz::invariants::read_and_translate(bytes);
});
