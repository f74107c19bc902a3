//! Property tests of the wire format: arbitrary bytes never panic the request decoder
//! or the reply scanner; any valid command sequence decodes to itself whatever the read
//! boundaries; classification of arbitrary arguments never panics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use cachet::command::CommandTable;
use cachet::resp::request::encode_command;
use cachet::resp::{Decoder, Limits, Scanner};

fn small_limits() -> Limits {
    Limits {
        max_bulk_len: 4096,
        max_multibulk_len: 64,
        max_inline_len: 256,
    }
}

fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(arg(), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(input in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut d = Decoder::new(small_limits());
        let mut buf = BytesMut::from(&input[..]);
        // Decode until an error or "not yet"; both are fine, a panic is not.
        for _ in 0..1000 {
            match d.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn commands_round_trip_at_any_split(cmds in prop::collection::vec(command(), 1..8), split in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for c in &cmds {
            let args: Vec<Bytes> = c.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            encode_command(&mut wire, &args);
        }
        let at = split.index(wire.len() + 1);
        let mut d = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&wire[..at]);
        let mut got = Vec::new();
        while let Some(r) = d.decode(&mut buf).unwrap() {
            got.push(r);
        }
        buf.extend_from_slice(&wire[at..]);
        while let Some(r) = d.decode(&mut buf).unwrap() {
            got.push(r);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got.len(), cmds.len());
        let mut raw_again = BytesMut::new();
        for (r, c) in got.iter().zip(&cmds) {
            let args: Vec<Vec<u8>> = r.args.iter().map(|a| a.to_vec()).collect();
            prop_assert_eq!(&args, c);
            raw_again.extend_from_slice(&r.raw);
        }
        // The forwarded bytes are exactly the client's bytes.
        prop_assert_eq!(&raw_again[..], &wire[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_reply_scanner(input in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut pos = 0;
        let mut s = Scanner::default();
        while pos < input.len() {
            match s.scan(&input[pos..]) {
                Ok(Some(f)) => { prop_assert!(f.len > 0); pos += f.len; }
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn classification_of_arbitrary_arguments_never_panics(name in 0usize..400, args in prop::collection::vec(arg(), 0..8)) {
        let table = CommandTable::builtin();
        let names: Vec<String> = table.iter().map(|c| c.name.clone()).collect();
        let name = &names[name % names.len()];
        let mut argv: Vec<Bytes> = name.split('|').map(|p| Bytes::copy_from_slice(p.as_bytes())).collect();
        argv.extend(args.into_iter().map(Bytes::from));
        if let Some(info) = table.lookup(&argv) {
            let mut keys = Vec::new();
            info.keys(&argv, &mut keys);
            for k in keys {
                prop_assert!(k.index < argv.len());
            }
            let _ = info.is_blocking(&argv);
        }
    }
}
