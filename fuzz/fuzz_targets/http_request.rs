//! `cargo +nightly fuzz run http_request`: see `wxtoken_fuzz::http_request` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wxtoken_fuzz::http_request(data));
