//! The fill protocol's Lua scripts and their Rust twin (`engine::fill`, which the model
//! checker explores) take the same decisions: thousands of random states, keys and
//! commands, run through the scripts on a real `redis-server` and through the Rust
//! functions, must agree on the verdict and on the state left behind.
//!
//! Times are set relative to the upstream's clock in steps of seconds, so that the
//! milliseconds between setting a state up and running a script change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use bytes::Bytes;
use cachet::engine::fill::{
    self, Current, KeyState, Miss, Policy, ReadMode, SetFlags, Verdict, Windows,
};
use cachet::engine::scripts::Scripts;
use cachet::resp::reply::{elements, int_value, string_value};
use support::raw::{Raw, cmd};
use support::redis::RedisServer;

const WIN: Windows = Windows {
    fill: 50_000,
    lease: 20_000,
    hold_off: 5_000,
};
/// How far two clocks read a few milliseconds apart may differ, with margin.
const SLACK: i64 = 2_000;

/// A small deterministic generator (no dependency for it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

fn now_ms(c: &mut Raw) -> u64 {
    let t = c.call(&cmd(&[b"TIME"]));
    let el = elements(&t).unwrap();
    let s: u64 = std::str::from_utf8(string_value(el[0]).unwrap())
        .unwrap()
        .parse()
        .unwrap();
    let us: u64 = std::str::from_utf8(string_value(el[1]).unwrap())
        .unwrap()
        .parse()
        .unwrap();
    s * 1000 + us / 1000
}

/// A random horizon: unset, passed, or ahead by a few seconds.
fn horizon(r: &mut Rng, now: u64) -> u64 {
    r.pick(&[
        0,
        now - 20_000,
        now - 1_000 * 3,
        now + 10_000,
        now + 25_000,
        now + 40_000,
    ])
}

fn write_state(c: &mut Raw, key: &[u8], st: &KeyState, now: u64) {
    c.call(&cmd(&[b"DEL", key]));
    if st.expires_at() <= now {
        return;
    }
    let f = |v: u64| v.to_string().into_bytes();
    let (m, s, t, l, w, x) = (f(st.m), f(st.s), f(st.t), f(st.l), f(st.w), f(st.x));
    c.call(&cmd(&[
        b"HSET", key, b"m", &m, b"s", &s, b"t", &t, b"l", &l, b"w", &w, b"x", &x,
    ]));
    c.call(&cmd(&[b"PEXPIREAT", key, &f(st.expires_at())]));
}

fn read_state(c: &mut Raw, key: &[u8]) -> KeyState {
    let r = c.call(&cmd(&[b"HMGET", key, b"m", b"s", b"t", b"l", b"w", b"x"]));
    let el = elements(&r).unwrap();
    let v = |i: usize| -> u64 {
        string_value(el[i]).map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap())
    };
    KeyState {
        m: v(0),
        s: v(1),
        t: v(2),
        l: v(3),
        w: v(4),
        x: v(5),
    }
}

fn close(a: u64, b: u64) -> bool {
    (a as i64 - b as i64).abs() <= SLACK
}

fn same_state(script: &KeyState, rust: &KeyState) -> bool {
    close(script.m, rust.m)
        && close(script.s, rust.s)
        && close(script.t, rust.t)
        && close(script.l, rust.l)
        && close(script.w, rust.w)
        && close(script.x, rust.x)
}

fn eval(c: &mut Raw, body: &Bytes, keys: &[&[u8]], argv: &[&[u8]]) -> Vec<u8> {
    let n = keys.len().to_string();
    let mut args: Vec<&[u8]> = vec![b"EVAL", body, n.as_bytes()];
    args.extend_from_slice(keys);
    args.extend_from_slice(argv);
    c.call(&cmd(&args))
}

fn random_state(r: &mut Rng, now: u64) -> KeyState {
    KeyState {
        m: horizon(r, now),
        s: horizon(r, now),
        t: horizon(r, now),
        l: horizon(r, now),
        w: horizon(r, now),
        x: horizon(r, now),
    }
}

#[test]
fn set_script_and_judge_set_agree() {
    let redis = RedisServer::start();
    let mut c = Raw::connect(redis.addr());
    let scripts = Scripts::default();
    let mut r = Rng(7);
    let (key, state) = (&b"k"[..], &b"__cachet:{k}:s:k"[..]);
    let mut verdicts = std::collections::BTreeMap::new();
    for case in 0..1500 {
        let now = now_ms(&mut c);
        let st = random_state(&mut r, now);
        let exists = r.pick(&[None, Some(&b"v"[..]), Some(&b"other"[..])]);
        let policy = r.pick(&[Policy::Set, Policy::Collapse, Policy::Invalidate]);
        let flags = r.pick(&["", "n", "x"]);
        let amnesia = r.pick(&[0, now + 15_000, now - 15_000]);
        write_state(&mut c, state, &st, now);
        c.call(&cmd(&[b"DEL", key]));
        if let Some(v) = exists {
            c.call(&cmd(&[b"SET", key, v]));
        }
        let w = WIN.fill.to_string();
        let a = amnesia.to_string();
        let reply = eval(
            &mut c,
            &scripts.set.body,
            &[key, state],
            &[
                policy.as_str().as_bytes(),
                w.as_bytes(),
                b"chan",
                flags.as_bytes(),
                a.as_bytes(),
                b"tagged",
                b"0",
                b"v",
            ],
        );
        let got = Verdict::from_code(int_value(elements(&reply).unwrap()[0]).unwrap()).unwrap();
        let mut want_st = st;
        let want = fill::judge_set(
            &mut want_st,
            now,
            Current {
                exists: exists.is_some(),
                same_value: exists == Some(&b"v"[..]),
            },
            SetFlags {
                nx: flags == "n",
                xx: flags == "x",
            },
            policy,
            amnesia,
            WIN,
        );
        let after = read_state(&mut c, state);
        assert_eq!(
            got, want,
            "case {case}: {st:?} exists {exists:?} {policy:?} {flags:?}"
        );
        assert!(
            got == Verdict::NotSet || same_state(&after, &want_st.at(now)),
            "case {case}: state {after:?}, want {want_st:?} (from {st:?}, {policy:?})"
        );
        let value = c.call(&cmd(&[b"GET", key]));
        let stored = match got {
            Verdict::StoredWrite | Verdict::StoredFill => Some(&b"$1\r\nv\r\n"[..]),
            Verdict::Deleted | Verdict::Invalidated => Some(&b"$-1\r\n"[..]),
            _ => None,
        };
        if let Some(v) = stored {
            assert_eq!(value, v, "case {case}");
        }
        *verdicts.entry(format!("{got:?}")).or_insert(0) += 1;
    }
    // Every verdict was reached.
    assert_eq!(verdicts.len(), 7, "{verdicts:?}");
}

#[test]
fn read_script_and_miss_agree() {
    let redis = RedisServer::start();
    let mut c = Raw::connect(redis.addr());
    let scripts = Scripts::default();
    let mut r = Rng(11);
    let (key, state) = (&b"k"[..], &b"__cachet:{k}:s:k"[..]);
    for case in 0..1000 {
        let now = now_ms(&mut c);
        let st = random_state(&mut r, now);
        let present = r.pick(&[false, true]);
        let mode = r.pick(&["wait", "final", "record"]);
        write_state(&mut c, state, &st, now);
        c.call(&cmd(&[b"DEL", key]));
        if present {
            c.call(&cmd(&[b"SET", key, b"v"]));
        }
        let (ttl, w) = (WIN.lease.to_string(), WIN.fill.to_string());
        let reply = eval(
            &mut c,
            &scripts.read.body,
            &[key, state],
            &[mode.as_bytes(), ttl.as_bytes(), w.as_bytes()],
        );
        let el = elements(&reply).unwrap();
        let first = elements(el[0]).unwrap();
        let status = int_value(first[0]).unwrap();
        let after = read_state(&mut c, state);
        if present && mode != "record" {
            assert_eq!(status, 1, "case {case}");
            continue;
        }
        let mut want_st = st;
        let read_mode = if mode == "wait" {
            ReadMode::Wait
        } else {
            ReadMode::Final
        };
        let want = fill::miss(&mut want_st, now, read_mode, !present, WIN);
        match want {
            Miss::Recorded { holder, .. } => {
                assert_eq!(status, 2, "case {case}: {st:?} {mode}");
                assert_eq!(int_value(first[1]).unwrap() == 1, holder, "case {case}");
                assert!(
                    same_state(&after, &want_st),
                    "case {case}: {after:?} want {want_st:?} from {st:?} {mode} present {present}"
                );
            }
            Miss::HeldOff(_) => assert_eq!(status, 3, "case {case}"),
            Miss::Leased(_) => assert_eq!(status, 4, "case {case}"),
        }
    }
}

#[test]
fn invalidate_script_and_invalidate_agree() {
    let redis = RedisServer::start();
    let mut c = Raw::connect(redis.addr());
    let scripts = Scripts::default();
    let mut r = Rng(13);
    let (key, state) = (&b"k"[..], &b"__cachet:{k}:s:k"[..]);
    let (mut deleted, mut kept) = (0, 0);
    for case in 0..800 {
        let now = now_ms(&mut c);
        let st = random_state(&mut r, now);
        write_state(&mut c, state, &st, now);
        c.call(&cmd(&[b"SET", key, b"v"]));
        // The write's own invalidation, or one re-sent for a write sent at `sent`
        // (chosen so that `sent + fill` lies clear of every horizon `random_state`
        // draws, by more than the two clocks' slack).
        let sent = r.pick(&[
            None,
            Some(now - 45_000),
            Some(now - 32_000),
            Some(now - 18_000),
        ]);
        let mode = sent.map_or_else(|| b"keep".to_vec(), |t| t.to_string().into_bytes());
        let (fill, hold) = (WIN.fill.to_string(), WIN.hold_off.to_string());
        eval(
            &mut c,
            &scripts.invalidate.body,
            &[key, state],
            &[&mode, b"chan", fill.as_bytes(), hold.as_bytes()],
        );
        let mut want_st = st;
        let want_deleted = match sent {
            None => {
                fill::invalidate(&mut want_st, now, WIN);
                false
            }
            Some(sent) => fill::resend(&mut want_st, now, WIN, sent),
        };
        let after = read_state(&mut c, state);
        assert!(
            same_state(&after, &want_st),
            "case {case}: {after:?} want {want_st:?} (sent {sent:?})"
        );
        let exists = int_value(&c.call(&cmd(&[b"EXISTS", key]))).unwrap() == 1;
        assert_eq!(
            !exists, want_deleted,
            "case {case}: from {st:?}, sent {sent:?}"
        );
        if want_deleted {
            deleted += 1;
        } else if sent.is_some() {
            kept += 1;
        }
    }
    // A re-sent invalidation both deleted keys and left keys written since in place.
    assert!(deleted > 50 && kept > 50, "deleted {deleted}, kept {kept}");
}
