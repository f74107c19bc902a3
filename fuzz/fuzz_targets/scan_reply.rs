//! Arbitrary upstream bytes through the reply scanner: never a panic, frames never
//! longer than the input.
#![no_main]

use cachet::resp::Scanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    let mut s = Scanner::default();
    while pos < data.len() {
        match s.scan(&data[pos..]) {
            Ok(Some(f)) => {
                assert!(f.len > 0 && pos + f.len <= data.len());
                pos += f.len;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
