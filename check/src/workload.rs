//! The workers: exactly the command sequences of Django's Redis cache backend around a
//! real database, shaped per profile (few hot keys and many workers where a race must
//! happen within seconds).
//!
//! - `cache.get(k)` -> `GET k`; on a miss the application reads the database, then
//!   `cache.set(k, v, ttl)` -> `SET k v EX ttl` (or `cache.add` -> `SET k v EX ttl NX`),
//!   on the connection it read on;
//! - `cache.get_many(ks)` -> `MGET ks…` (misses are not filled, as Django's; with
//!   `set_many`, the application fills them as redis-py's transaction pipeline:
//!   `MULTI`, `MSET`, `EXPIRE` each, `EXEC`);
//! - a write: `UPDATE … ver = ver + 1`, `COMMIT`, then `DEL k` (`cache.delete`), or per
//!   profile `SET k new EX ttl` after the commit (write-through), or `DEL k` before the
//!   commit (pre-commit delete).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::client::Conn;
use super::db::Db;
use super::history::{Event, Op, cache_value, parse_version};
use super::{Invalidation, Shape};

/// Cache entries' TTL (seconds): long, so that staleness lasts until invalidated.
pub const TTL_SECS: u64 = 300;

/// What all workers of one run share.
pub struct Shared {
    pub base: Instant,
    pub db: Arc<Db>,
    pub shape: Shape,
    pub stop: AtomicBool,
    pub ops: AtomicU64,
    pub errors: AtomicU64,
    pub db_reads: AtomicU64,
    /// Stale reads seen as they happen (for the progress line; the final figures come
    /// from the history).
    pub stale_online: AtomicU64,
    /// Per key, the highest version whose write completed (for `stale_online`).
    pub completed: Vec<AtomicI64>,
}

impl Shared {
    pub fn new(db: Arc<Db>, shape: Shape) -> Shared {
        Shared {
            base: Instant::now(),
            db,
            completed: (0..shape.keys).map(|_| AtomicI64::new(1)).collect(),
            shape,
            stop: AtomicBool::new(false),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            db_reads: AtomicU64::new(0),
            stale_online: AtomicU64::new(0),
        }
    }

    pub fn micros(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

/// A small, seedable generator (xorshift64*), one per worker.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that neighbouring seeds diverge at once.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A duration uniform in `lo..=hi` milliseconds (microsecond grain).
    pub fn millis(&mut self, (lo, hi): (u64, u64)) -> Duration {
        let span = hi.saturating_sub(lo) * 1000;
        Duration::from_micros(lo * 1000 + self.below(span + 1))
    }
}

/// Key choice: uniform, or Zipf-distributed with exponent `s` over `n` keys.
pub struct KeyChooser {
    cdf: Vec<f64>,
}

impl KeyChooser {
    pub fn new(n: u32, zipf: Option<f64>) -> KeyChooser {
        let s = zipf.unwrap_or(0.0);
        let weights: Vec<f64> = (1..=n.max(1)).map(|k| 1.0 / f64::from(k).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        KeyChooser { cdf }
    }

    pub fn pick(&self, rng: &mut Rng) -> u32 {
        let u = rng.unit();
        let i = self.cdf.partition_point(|&c| c < u);
        i.min(self.cdf.len().saturating_sub(1)) as u32
    }
}

/// One application worker: its own Redis connection, its history.
pub struct Worker {
    pub id: u32,
    pub conn: Conn,
    pub rng: Rng,
    pub events: Vec<Event>,
    pub shared: Arc<Shared>,
}

impl Worker {
    fn push(&mut self, key: u32, start_us: u64, op: Op) {
        let end = self.shared.micros();
        if matches!(op, Op::Error { .. }) {
            self.shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.events
            .push(Event::new(self.id, key, start_us, end, op));
    }

    fn error(&mut self, key: u32, start_us: u64, kind: String) {
        self.push(key, start_us, Op::Error { kind });
    }

    fn key(&self, n: u32) -> String {
        self.shared.shape.key(n)
    }

    /// The mixed-operation loop of every profile but `herd`, until told to stop.
    pub async fn run(mut self, keys: Arc<KeyChooser>) -> Worker {
        let shape = self.shared.shape.clone();
        if let (Some(rate), 0) = (shape.writes_per_sec, self.id) {
            return self.write_at(rate).await;
        }
        while !self.shared.stop.load(Ordering::Relaxed) {
            let think = self.rng.millis(shape.think_ms);
            if !think.is_zero() {
                tokio::time::sleep(think).await;
            }
            let key = keys.pick(&mut self.rng);
            let r = self.rng.unit();
            if r < shape.write_ratio {
                self.write(key).await;
            } else if r < shape.write_ratio + shape.mget_ratio {
                let many: Vec<u32> = (0..4).map(|_| keys.pick(&mut self.rng)).collect();
                self.get_many(&many).await;
            } else {
                let nx = self.rng.unit() < shape.add_ratio;
                self.get_or_fill(key, nx).await;
            }
            self.shared.ops.fetch_add(1, Ordering::Relaxed);
        }
        self
    }

    /// The one writer of a fixed-rate profile: uniformly chosen keys, `rate` a second.
    async fn write_at(mut self, rate: f64) -> Worker {
        let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut next = tokio::time::Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            next += every;
            tokio::time::sleep_until(next).await;
            let key = self.rng.below(u64::from(self.shared.shape.keys)) as u32;
            self.write(key).await;
            self.shared.ops.fetch_add(1, Ordering::Relaxed);
        }
        self
    }

    /// `cache.get(k)`, and on a miss: database read, (delay), `cache.set` (or
    /// `cache.add` when `nx`). Whether it hit.
    pub async fn get_or_fill(&mut self, key: u32, nx: bool) -> bool {
        let floor = self.completed(key);
        let start = self.shared.micros();
        let got: Result<Option<Vec<u8>>, String> =
            self.conn.run(redis::cmd("GET").arg(self.key(key))).await;
        match got {
            Ok(Some(v)) => {
                self.hit(key, start, floor, &v);
                true
            }
            Ok(None) => {
                self.push(key, start, Op::Miss);
                self.fill(key, nx).await;
                false
            }
            Err(kind) => {
                self.error(key, start, kind);
                false
            }
        }
    }

    fn completed(&self, key: u32) -> i64 {
        self.shared
            .completed
            .get(key as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn hit(&mut self, key: u32, start: u64, floor: i64, value: &[u8]) {
        match parse_version(value) {
            Some(ver) => {
                if ver < floor {
                    self.shared.stale_online.fetch_add(1, Ordering::Relaxed);
                }
                self.push(key, start, Op::Hit { ver });
            }
            None => self.error(key, start, "bad-value".into()),
        }
    }

    async fn fill(&mut self, key: u32, nx: bool) {
        let start = self.shared.micros();
        let (ver, payload) = match self.shared.db.read(key).await {
            Ok(row) => row,
            Err(_) => return self.error(key, start, "db".into()),
        };
        self.shared.db_reads.fetch_add(1, Ordering::Relaxed);
        self.push(key, start, Op::DbRead { ver });
        let delay = self.rng.millis(self.shared.shape.fill_delay_ms);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key))
            .arg(cache_value(ver, &payload))
            .arg("EX")
            .arg(TTL_SECS);
        if nx {
            cmd.arg("NX");
        }
        let start = self.shared.micros();
        match self.conn.run::<redis::Value>(&cmd).await {
            Ok(_) => self.push(key, start, Op::Fill { ver, nx }),
            Err(kind) => self.error(key, start, kind),
        }
    }

    /// `cache.get_many(ks)`: one `MGET`, one read per key; with `set_many`, the misses
    /// are read from the database and filled in one transaction.
    pub async fn get_many(&mut self, keys: &[u32]) {
        let floors: Vec<i64> = keys.iter().map(|&k| self.completed(k)).collect();
        let start = self.shared.micros();
        let mut cmd = redis::cmd("MGET");
        for &k in keys {
            cmd.arg(self.key(k));
        }
        let mut missed = Vec::new();
        match self.conn.run::<Vec<Option<Vec<u8>>>>(&cmd).await {
            Ok(values) => {
                for ((&key, floor), v) in keys.iter().zip(floors).zip(values) {
                    match v {
                        Some(v) => self.hit(key, start, floor, &v),
                        None => {
                            self.push(key, start, Op::Miss);
                            if !missed.contains(&key) {
                                missed.push(key);
                            }
                        }
                    }
                }
            }
            Err(kind) => {
                let key = keys.first().copied().unwrap_or(0);
                self.error(key, start, kind);
            }
        }
        if self.shared.shape.set_many && !missed.is_empty() {
            self.set_many(&missed).await;
        }
    }

    /// `cache.set_many`: database reads, then `MULTI`, `MSET`, `EXPIRE` each, `EXEC`.
    async fn set_many(&mut self, keys: &[u32]) {
        let mut rows = Vec::with_capacity(keys.len());
        for &key in keys {
            let start = self.shared.micros();
            match self.shared.db.read(key).await {
                Ok((ver, payload)) => {
                    self.shared.db_reads.fetch_add(1, Ordering::Relaxed);
                    self.push(key, start, Op::DbRead { ver });
                    rows.push((key, ver, payload));
                }
                Err(_) => return self.error(key, start, "db".into()),
            }
        }
        let delay = self.rng.millis(self.shared.shape.fill_delay_ms);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut mset = redis::cmd("MSET");
        for (key, ver, payload) in &rows {
            mset.arg(self.key(*key)).arg(cache_value(*ver, payload));
        }
        pipe.add_command(mset).ignore();
        for (key, _, _) in &rows {
            pipe.cmd("EXPIRE")
                .arg(self.key(*key))
                .arg(TTL_SECS)
                .ignore();
        }
        let start = self.shared.micros();
        match self.conn.run_pipe(&pipe).await {
            Ok(()) => {
                for (key, ver, _) in rows {
                    self.push(key, start, Op::Fill { ver, nx: false });
                }
            }
            Err(kind) => {
                let key = rows.first().map_or(0, |r| r.0);
                self.error(key, start, kind);
            }
        }
    }

    /// A write of row `key` and its invalidation, in the profile's order.
    pub async fn write(&mut self, key: u32) {
        let start = self.shared.micros();
        let db = Arc::clone(&self.shared.db);
        let txn = match db.begin_update(key).await {
            Ok(t) => t,
            Err(_) => return self.error(key, start, "db".into()),
        };
        let (ver, payload) = (txn.ver, txn.payload.clone());
        let hold = self.rng.millis(self.shared.shape.hold_ms);
        let invalidation = self.shared.shape.invalidation;
        let mut invalidated = Ok(());
        let commit_us;
        if invalidation == Invalidation::PreCommitDelete {
            // Django's `transaction.atomic()` with the delete inside: a failed DEL
            // raises and rolls the transaction back.
            if let Err(kind) = self.del(key).await {
                let _ = txn.rollback().await;
                return self.error(key, start, kind);
            }
            tokio::time::sleep(hold).await;
            if txn.commit().await.is_err() {
                return self.error(key, start, "db".into());
            }
            commit_us = self.shared.micros();
        } else {
            if txn.commit().await.is_err() {
                return self.error(key, start, "db".into());
            }
            commit_us = self.shared.micros();
            invalidated = if invalidation == Invalidation::WriteThrough {
                tokio::time::sleep(hold).await;
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.key(key))
                    .arg(cache_value(ver, &payload))
                    .arg("EX")
                    .arg(TTL_SECS);
                self.conn.run::<redis::Value>(&cmd).await.map(|_| ())
            } else {
                self.del(key).await
            };
        }
        let op = Op::Write {
            ver,
            commit_us,
            invalidated: invalidated.is_ok(),
        };
        self.push(key, start, op);
        match invalidated {
            Ok(()) => {
                if let Some(c) = self.shared.completed.get(key as usize) {
                    c.fetch_max(ver, Ordering::Relaxed);
                }
            }
            Err(kind) => self.error(key, start, kind),
        }
    }

    async fn del(&mut self, key: u32) -> Result<(), String> {
        self.conn
            .run::<redis::Value>(redis::cmd("DEL").arg(self.key(key)))
            .await
            .map(|_| ())
    }
}
