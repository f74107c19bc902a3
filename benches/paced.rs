//! Open-loop latency probe: `GET`s at a fixed rate, for "added latency at a given load".
//!
//!     cargo bench --bench paced -- --addr 127.0.0.1:6379 --rate 40000 [--connections 50]
//!         [--seconds 5] [--warmup 1]
//!
//! `redis-benchmark` only runs flat out, so it cannot say what a proxy adds at half
//! load. This probe spreads `--rate` requests/s evenly over `--connections`
//! connections, each a thread that sleeps until its next slot, sends one `GET`, and
//! waits for the reply (slots are staggered across connections so arrivals are even,
//! not bursts). It reports percentiles of two latencies as one JSON line:
//! `service` (reply time minus send time) and `response` (reply time minus the
//! scheduled slot, which also counts time spent behind a late reply, so a stall is
//! not hidden by coordinated omission). `benches/load.py` runs it against every
//! target at 50 % of direct Redis's throughput and reports the difference.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "paced:probe";
const VALUE: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

struct Args {
    addr: String,
    rate: f64,
    connections: usize,
    seconds: f64,
    warmup: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        addr: "127.0.0.1:6379".into(),
        rate: 10_000.0,
        connections: 50,
        seconds: 5.0,
        warmup: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value(),
            "--rate" => args.rate = value().parse().expect("--rate: a number"),
            "--connections" => args.connections = value().parse().expect("--connections"),
            "--seconds" => args.seconds = value().parse().expect("--seconds: a number"),
            "--warmup" => args.warmup = value().parse().expect("--warmup: a number"),
            // What `cargo bench` adds.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(args.rate > 0.0 && args.connections > 0 && args.seconds > 0.0);
    args
}

/// Sends one command and reads until `expect` arrived; panics on anything else.
fn roundtrip(conn: &mut TcpStream, request: &[u8], expect: &[u8], buf: &mut [u8]) {
    conn.write_all(request).expect("send");
    let mut got = 0;
    while got < expect.len() {
        let n = conn.read(&mut buf[got..expect.len()]).expect("receive");
        assert!(n > 0, "connection closed");
        got += n;
    }
    assert_eq!(&buf[..got], expect, "unexpected reply");
}

fn main() {
    let args = parse_args();
    let mut set = format!("*3\r\n$3\r\nSET\r\n${}\r\n{KEY}\r\n$32\r\n", KEY.len()).into_bytes();
    set.extend_from_slice(VALUE);
    set.extend_from_slice(b"\r\n");
    let get = format!("*2\r\n$3\r\nGET\r\n${}\r\n{KEY}\r\n", KEY.len()).into_bytes();
    let mut reply = b"$32\r\n".to_vec();
    reply.extend_from_slice(VALUE);
    reply.extend_from_slice(b"\r\n");
    let mut buf = [0u8; 64];
    roundtrip(
        &mut TcpStream::connect(&args.addr).expect("connect"),
        &set,
        b"+OK\r\n",
        &mut buf,
    );

    let (get, reply) = (Arc::new(get), Arc::new(reply));
    let conns: Vec<TcpStream> = (0..args.connections)
        .map(|_| {
            let c = TcpStream::connect(&args.addr).expect("connect");
            c.set_nodelay(true).expect("nodelay");
            c
        })
        .collect();
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let (get, reply) = (get.clone(), reply.clone());
            let offset = interval.mul_f64(i as f64 / args.connections as f64);
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut service = Vec::new();
                let mut response = Vec::new();
                let mut slot = start + offset;
                while slot < end {
                    let now = Instant::now();
                    if slot > now {
                        std::thread::sleep(slot - now);
                    }
                    let sent = Instant::now();
                    roundtrip(&mut conn, &get, &reply, &mut buf);
                    let done = Instant::now();
                    if slot >= measure_from {
                        service.push((done - sent).as_nanos() as u64);
                        response.push((done - slot).as_nanos() as u64);
                    }
                    slot += interval;
                }
                (service, response)
            })
        })
        .collect();
    let mut service = Vec::new();
    let mut response = Vec::new();
    for t in threads {
        let (s, r) = t.join().expect("probe thread");
        service.extend(s);
        response.extend(r);
    }
    service.sort_unstable();
    response.sort_unstable();
    let us = |v: &[u64], p: f64| -> f64 {
        let i = ((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    let achieved = service.len() as f64 / args.seconds;
    println!(
        "{{\"addr\":\"{}\",\"rate\":{},\"achieved\":{achieved:.0},\"requests\":{},\
         \"service_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},\
         \"response_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}}}}",
        args.addr,
        args.rate,
        service.len(),
        us(&service, 50.0),
        us(&service, 99.0),
        us(&service, 99.9),
        us(&service, 100.0),
        us(&response, 50.0),
        us(&response, 99.0),
        us(&response, 99.9),
        us(&response, 100.0),
    );
}
