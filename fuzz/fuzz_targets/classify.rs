//! Arbitrary argument vectors through command lookup and key extraction: never a panic,
//! every key index inside the arguments.
#![no_main]

use bytes::Bytes;
use cachet::command::CommandTable;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static TABLE: OnceLock<CommandTable> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let table = TABLE.get_or_init(CommandTable::builtin);
    let args: Vec<Bytes> = data
        .split(|&b| b == b' ')
        .map(Bytes::copy_from_slice)
        .collect();
    if let Some(info) = table.lookup(&args) {
        let mut keys = Vec::new();
        info.keys(&args, &mut keys);
        for k in keys {
            assert!(k.index < args.len());
        }
        let _ = info.is_blocking(&args);
    }
});
