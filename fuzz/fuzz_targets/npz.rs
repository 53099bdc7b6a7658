#![no_main]
//! See _native::fuzzing::npz (rust/fuzzing.rs): what it checks on every input.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| _native::fuzzing::npz(data));
