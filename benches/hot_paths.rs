//! Criterion benchmarks of the functions every command passes through: decoding a
//! client pipeline, framing upstream replies, classification with key extraction, and
//! encoding local replies.

#![allow(clippy::indexing_slicing)]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use cachet::command::CommandTable;
use cachet::resp::request::encode_command;
use cachet::resp::{Decoder, Limits, Scanner, reply};

fn pipeline(n: usize) -> Vec<u8> {
    pipeline_of(n, 32)
}

/// `n` commands, `SET key:i <value of size bytes>` and `GET key:i` in turn.
fn pipeline_of(n: usize, size: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..n {
        let args = if i % 2 == 0 {
            vec![
                Bytes::from("SET"),
                Bytes::from(format!("key:{i}")),
                Bytes::from(vec![b'x'; size]),
            ]
        } else {
            vec![Bytes::from("GET"), Bytes::from(format!("key:{i}"))]
        };
        encode_command(&mut out, &args);
    }
    out.to_vec()
}

fn decode(c: &mut Criterion) {
    let input = pipeline(1000);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("pipeline of 1000 GET/SET", |b| {
        b.iter(|| {
            let mut d = Decoder::new(Limits::default());
            let mut buf = BytesMut::from(&input[..]);
            let mut n = 0;
            while let Ok(Some(r)) = d.decode(&mut buf) {
                n += r.args.len();
            }
            black_box(n)
        })
    });
    g.finish();
}

/// cachet's request decoder against `redis-protocol`'s decoders on the same client
/// pipelines, each producing the arguments as `Bytes` that share the read buffer
/// (what the session needs): small commands, and large values. docs/performance.md
/// ("Request decoding") records the numbers; the faster one is the one cachet uses.
fn decode_vs_redis_protocol(c: &mut Criterion) {
    use redis_protocol::resp2::decode::{decode_bytes_mut, decode_range};
    use redis_protocol::resp2::types::{BytesFrame, RangeFrame};
    for (label, n, size) in [
        ("1000 small", 1000usize, 32usize),
        ("100 of 16 KiB", 100, 16 * 1024),
    ] {
        let input = pipeline_of(n, size);
        let mut g = c.benchmark_group(format!("decode {label}"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("cachet Decoder", |b| {
            b.iter(|| {
                let mut d = Decoder::new(Limits::default());
                let mut buf = BytesMut::from(&input[..]);
                let mut count = 0;
                while let Ok(Some(r)) = d.decode(&mut buf) {
                    count += r.args.len();
                }
                black_box(count)
            })
        });
        g.bench_function("redis-protocol decode_range", |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&input[..]);
                let mut count = 0;
                while let Ok(Some((frame, used))) = decode_range(&buf) {
                    let raw = buf.split_to(used).freeze();
                    if let RangeFrame::Array(items) = frame {
                        let args: Vec<Bytes> = items
                            .iter()
                            .filter_map(|f| match f {
                                RangeFrame::BulkString((start, end)) => {
                                    Some(raw.slice(*start..*end))
                                }
                                _ => None,
                            })
                            .collect();
                        count += args.len();
                    }
                }
                black_box(count)
            })
        });
        g.bench_function("redis-protocol decode_bytes_mut", |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&input[..]);
                let mut count = 0;
                while let Ok(Some((frame, _, _))) = decode_bytes_mut(&mut buf) {
                    if let BytesFrame::Array(items) = frame {
                        count += items.len();
                    }
                }
                black_box(count)
            })
        });
        g.finish();
    }
}

fn scan(c: &mut Criterion) {
    let mut replies = Vec::new();
    for i in 0..1000 {
        if i % 2 == 0 {
            replies.extend_from_slice(b"+OK\r\n");
        } else {
            replies.extend_from_slice(b"$32\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
        }
    }
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000 replies", |b| {
        b.iter(|| {
            let mut pos = 0;
            let mut s = Scanner::default();
            while let Ok(Some(f)) = s.scan(&replies[pos..]) {
                pos += f.len;
            }
            black_box(pos)
        })
    });
    g.finish();
}

fn classify(c: &mut Criterion) {
    let table = CommandTable::builtin();
    let cases: Vec<Vec<Bytes>> = [
        "GET user:1",
        "SET user:1 value EX 10",
        "MSET a 1 b 2 c 3",
        "EVAL return 1 2 k1 k2 arg",
        "XREAD COUNT 10 STREAMS s1 s2 0 0",
        "ZUNIONSTORE dest 2 a b WEIGHTS 1 2",
        "CLIENT SETNAME web",
    ]
    .iter()
    .map(|l| {
        l.split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    })
    .collect();
    let mut keys = Vec::new();
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(cases.len() as u64));
    g.bench_function("lookup + keys", |b| {
        b.iter(|| {
            let mut n = 0;
            for args in &cases {
                if let Some(info) = table.lookup(args) {
                    keys.clear();
                    info.keys(args, &mut keys);
                    n += keys.len() + usize::from(info.is_write());
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    c.bench_function("encode local replies", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..100 {
                reply::push_int(&mut out, i);
                reply::push_bulk(&mut out, b"client-name");
                reply::push_null(&mut out, 3);
            }
            black_box(out.len())
        })
    });
}

criterion_group!(
    benches,
    decode,
    decode_vs_redis_protocol,
    scan,
    classify,
    encode
);
criterion_main!(benches);
