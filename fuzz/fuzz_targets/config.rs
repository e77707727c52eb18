//! `cargo +nightly fuzz run config`: see `wxtoken_fuzz::config` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wxtoken_fuzz::config(data));
