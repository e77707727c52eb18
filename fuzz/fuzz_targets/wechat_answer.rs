//! `cargo +nightly fuzz run wechat_answer`: see `wxtoken_fuzz::wechat_answer` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wxtoken_fuzz::wechat_answer(data));
