//! Arbitrary configuration text: every problem is an error value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = cachet::Config::parse(text, "fuzz.toml");
    }
});
