//! Per-key ordering tokens: conflicting writes from all clients of one cachet reach the
//! upstream in the order cachet received them.
//!
//! A key's token is held by one upstream connection at a time, from the moment a write
//! of the key is queued on it until its reply comes back. Writes queued on the same
//! connection never wait for each other (the connection's FIFO already orders them, so
//! a client pipelining 1,000 writes to one key pays no round trips); a write that would
//! go out on another connection waits until the holder's writes of that key are
//! answered. Multi-key writes take all their tokens or none, in one global (sorted)
//! order, so waiting never holds anything and cannot deadlock. Reads take no token.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug)]
struct Holder {
    owner: u64,
    count: u32,
    /// Made by the first writer that has to wait (most tokens are never waited for).
    released: Option<Arc<Notify>>,
}

/// All tokens of one cachet. Every write hashes its keys here twice (take, release):
/// foldhash, seeded per process, costs a fraction of SipHash and still keeps clients
/// from choosing colliding keys.
#[derive(Debug, Default)]
pub struct KeyLocks {
    map: DashMap<Bytes, Holder, foldhash::fast::RandomState>,
}

/// Tokens held for one write; released when dropped (when its reply arrives, or when
/// the request fails).
#[derive(Debug)]
pub struct Held {
    locks: Arc<KeyLocks>,
    keys: Vec<Bytes>,
}

impl Held {
    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for key in &self.keys {
            self.locks.release_one(key);
        }
    }
}

/// The wait for a token outlasted the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTimeout;

impl KeyLocks {
    /// Takes the tokens of `keys` for `owner`, or tells what to wait on. `keys` need not
    /// be sorted or unique.
    pub fn try_acquire(self: &Arc<Self>, owner: u64, keys: &[Bytes]) -> Result<Held, Arc<Notify>> {
        let mut held = self.none_held(keys.len());
        self.try_acquire_into(owner, keys, &mut held)?;
        Ok(held)
    }

    /// No token yet, with room for `keys`: what `try_acquire_into` adds to.
    pub fn none_held(self: &Arc<Self>, keys: usize) -> Held {
        Held {
            locks: self.clone(),
            keys: Vec::with_capacity(keys),
        }
    }

    /// Takes the tokens of `keys` for `owner` into `held` (tokens of these locks, of the
    /// same owner: one release for a whole transaction of writes), or tells what to
    /// wait on and leaves `held` as it was.
    pub fn try_acquire_into(
        &self,
        owner: u64,
        keys: &[Bytes],
        held: &mut Held,
    ) -> Result<(), Arc<Notify>> {
        debug_assert!(std::ptr::eq(Arc::as_ptr(&held.locks), self));
        let sorted;
        let ordered: &[Bytes] = if keys.len() <= 1 {
            keys
        } else {
            let mut copy = keys.to_vec();
            copy.sort_unstable();
            copy.dedup();
            sorted = copy;
            &sorted
        };
        let mark = held.keys.len();
        for key in ordered {
            match self.map.entry(key.clone()) {
                Entry::Vacant(v) => {
                    v.insert(Holder {
                        owner,
                        count: 1,
                        released: None,
                    });
                }
                Entry::Occupied(mut o) => {
                    let h = o.get_mut();
                    if h.owner != owner {
                        let notify = h
                            .released
                            .get_or_insert_with(|| Arc::new(Notify::new()))
                            .clone();
                        drop(o);
                        // What this call took so far is given back.
                        for taken in held.keys.drain(mark..) {
                            self.release_one(&taken);
                        }
                        return Err(notify);
                    }
                    h.count += 1;
                }
            }
            held.keys.push(key.clone());
        }
        Ok(())
    }

    /// Takes the tokens, waiting for other connections' writes of these keys to be
    /// answered, for at most `limit`.
    pub async fn acquire(
        self: &Arc<Self>,
        owner: u64,
        keys: &[Bytes],
        limit: Duration,
    ) -> Result<Held, LockTimeout> {
        let deadline = Instant::now() + limit;
        let mut notify = match self.try_acquire(owner, keys) {
            Ok(h) => return Ok(h),
            Err(n) => n,
        };
        loop {
            let current = notify.clone();
            let notified = current.notified();
            tokio::pin!(notified);
            // Registered before the second look, so a release in between is not missed.
            notified.as_mut().enable();
            notify = match self.try_acquire(owner, keys) {
                Ok(h) => return Ok(h),
                // Released and taken by another connection meanwhile: wait on the new
                // holder's release, not the old one's (which has happened).
                Err(n) if !Arc::ptr_eq(&n, &current) => n,
                Err(_) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(LockTimeout);
                    }
                    match self.try_acquire(owner, keys) {
                        Ok(h) => return Ok(h),
                        Err(n) => n,
                    }
                }
            };
        }
    }

    fn release_one(&self, key: &Bytes) {
        // One lookup, and no copy of the key: the count drops, and at zero the entry
        // goes.
        let removed = self.map.remove_if_mut(key, |_, h| {
            h.count = h.count.saturating_sub(1);
            h.count == 0
        });
        if let Some((
            _,
            Holder {
                released: Some(released),
                ..
            },
        )) = removed
        {
            released.notify_waiters();
        }
    }

    /// Keys with a token currently held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<Bytes> {
        k.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn same_owner_never_waits() {
        let locks = Arc::new(KeyLocks::default());
        let a = locks.try_acquire(1, &keys(&["k"])).unwrap();
        let b = locks.try_acquire(1, &keys(&["k", "k"])).unwrap();
        assert!(locks.try_acquire(2, &keys(&["k"])).is_err());
        drop(a);
        assert!(locks.try_acquire(2, &keys(&["k"])).is_err());
        drop(b);
        assert!(locks.is_empty());
        assert!(locks.try_acquire(2, &keys(&["k"])).is_ok());
    }

    #[test]
    fn all_or_nothing() {
        let locks = Arc::new(KeyLocks::default());
        let _b = locks.try_acquire(1, &keys(&["b"])).unwrap();
        assert!(locks.try_acquire(2, &keys(&["a", "b", "c"])).is_err());
        // Nothing of the failed attempt stays held.
        assert_eq!(locks.len(), 1);
    }

    #[tokio::test]
    async fn waiter_proceeds_when_released_and_times_out_otherwise() {
        let locks = Arc::new(KeyLocks::default());
        let held = locks.try_acquire(1, &keys(&["k"])).unwrap();
        let l2 = locks.clone();
        let waiter =
            tokio::spawn(async move { l2.acquire(2, &keys(&["k"]), Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
        let _held = locks.try_acquire(3, &keys(&["x"])).unwrap();
        let r = locks
            .acquire(4, &keys(&["x"]), Duration::from_millis(20))
            .await;
        assert_eq!(r.unwrap_err(), LockTimeout);
    }
}
