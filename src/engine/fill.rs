//! The fill protocol of `cache` keyspaces, as pure functions over one key's state
//! (docs/fill-protocol.md).
//!
//! Every decision is taken upstream, by the scripts in `scripts.rs`, atomically with
//! the read or write it judges, from a small hash kept beside the key and the
//! upstream's own clock (`TIME`). Nothing here depends on which cachet or which client
//! connection carries a command: a `SET` is judged against every miss of its key that
//! could explain it. These functions are the scripts' twin, step for step: the model
//! checker (`tests/fill_model.rs`) explores them, and `tests/fill_scripts.rs` runs both
//! on the same inputs against a real Redis.
//!
//! The state of one key, every field a time in milliseconds of the upstream's clock:
//!
//! | field | meaning |
//! |---|---|
//! | `m` | miss horizon: the latest miss answered nil, plus `fill_window`. While it lies ahead, a `SET` may be that miss's fill |
//! | `s` | stale horizon: until then some miss that may still be filled happened before the latest invalidation (or under a tombstone), so no `SET` is trusted as a fill |
//! | `t` | tombstone: `hold_off` after the latest invalidation; a miss before it can never be filled |
//! | `l` | herd lease: while ahead, another client is filling, and missers wait for it |
//! | `w` | collapse horizon (`write_through = "collapse"`): a write-through within it deletes the key |
//! | `x` | write horizon: the latest write of the key (its own invalidation, or a `SET` stored as a write), plus `fill_window`. A re-sent invalidation of a write sent before that write leaves the key in place |
//!
//! All misses share one lifetime, so "some live miss is older than the latest
//! invalidation" is exactly "the latest miss before it is still live": invalidating
//! sets `s` to `m`. A store advances it too (`s = m`): a `SET` that a miss explained
//! may have been a write-through, and the older fill of that same miss must not land
//! after it.

/// Milliseconds of the upstream's clock.
pub type Ms = u64;

/// One key's state upstream; all zero when it has none (or it expired).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyState {
    pub m: Ms,
    pub s: Ms,
    pub t: Ms,
    pub l: Ms,
    pub w: Ms,
    pub x: Ms,
}

impl KeyState {
    /// When the hash expires upstream: once every horizon has passed it says nothing.
    pub fn expires_at(&self) -> Ms {
        self.m
            .max(self.s)
            .max(self.t)
            .max(self.l)
            .max(self.w)
            .max(self.x)
    }

    /// The state as it reads at `now` (an expired hash is gone).
    pub fn at(self, now: Ms) -> KeyState {
        if self.expires_at() <= now {
            KeyState::default()
        } else {
            self
        }
    }

    /// Whether the key has a hash upstream at all.
    pub fn is_live(&self, now: Ms) -> bool {
        self.expires_at() > now
    }
}

/// The protocol's lengths of time, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Windows {
    /// How long a miss may take to be filled (`fill_window`).
    pub fill: Ms,
    /// How long the first misser is waited for (`lease_ttl`).
    pub lease: Ms,
    /// How long after an invalidation a miss cannot be filled (`hold_off`).
    pub hold_off: Ms,
}

/// How a read of an absent key is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadMode {
    /// May be told to wait (a tombstone or another client's lease).
    Wait,
    /// Answered now: the miss is recorded.
    Final,
}

/// What a read of an absent key comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Miss {
    /// Answered nil; the miss is recorded. `poisoned`: it happened under a tombstone,
    /// so its fill can never be stored.
    Recorded { holder: bool, poisoned: bool },
    /// Under a tombstone: ask again once it ends, after this long.
    HeldOff(Ms),
    /// Another client holds the lease: ask again (its fill may land), at most this long.
    Leased(Ms),
}

/// A read answered nil (the `READ` script's miss branch). `absent`: the key is absent
/// now (a client answered nil by an earlier plain read is recorded even if it is not;
/// only then is no lease taken).
pub fn miss(st: &mut KeyState, now: Ms, mode: ReadMode, absent: bool, win: Windows) -> Miss {
    *st = st.at(now);
    if mode == ReadMode::Wait {
        if st.t > now {
            return Miss::HeldOff(st.t - now);
        }
        if st.l > now {
            return Miss::Leased(st.l - now);
        }
    }
    st.m = now + win.fill;
    let poisoned = st.t > now;
    if poisoned {
        st.s = st.s.max(st.m);
    }
    let holder = st.l <= now && absent;
    if holder {
        st.l = now + win.lease;
    }
    Miss::Recorded { holder, poisoned }
}

/// What the keyspace does with a `SET` no miss explains (`write_through`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Stored in arrival order.
    Set,
    /// Stored, unless another `SET` was stored within `fill_window`: then the key is
    /// deleted (unless it holds that very value). Every refused `SET` invalidates.
    Collapse,
    /// Never stored: the key is deleted.
    Invalidate,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Set => "set",
            Policy::Collapse => "collapse",
            Policy::Invalidate => "invalidate",
        }
    }
}

/// What the key looks like when a `SET` arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Current {
    pub exists: bool,
    /// The key holds exactly the value being set.
    pub same_value: bool,
}

/// The options of the `SET` that matter to the judgement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetFlags {
    pub nx: bool,
    pub xx: bool,
}

/// What a `SET` of a `cache` key comes to (the `SET` script's reply code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// No miss explains it: a write, stored with its invalidation.
    StoredWrite = 1,
    /// A fill no invalidation can have overtaken: stored.
    StoredFill = 2,
    /// Refused, but the key already holds this value: nothing changes.
    Kept = 3,
    /// Refused while the key holds another value: the key is deleted (the `SET` may
    /// have been a write-through of a newer value).
    Deleted = 4,
    /// Refused while the key is absent (or upstream state was lost): nothing stored.
    Dropped = 5,
    /// `NX` of an existing key or `XX` of an absent one: Redis would set nothing.
    NotSet = 6,
    /// A write the keyspace turns into an invalidation (`write_through`).
    Invalidated = 7,
}

impl Verdict {
    pub fn from_code(code: i64) -> Option<Verdict> {
        Some(match code {
            1 => Verdict::StoredWrite,
            2 => Verdict::StoredFill,
            3 => Verdict::Kept,
            4 => Verdict::Deleted,
            5 => Verdict::Dropped,
            6 => Verdict::NotSet,
            7 => Verdict::Invalidated,
            _ => return None,
        })
    }

    /// Whether the value was written.
    pub fn stored(self) -> bool {
        matches!(self, Verdict::StoredWrite | Verdict::StoredFill)
    }

    /// Whether a miss explained the `SET` and it was refused.
    pub fn refused(self) -> bool {
        matches!(self, Verdict::Kept | Verdict::Deleted | Verdict::Dropped)
    }
}

/// Judges a `SET` (the `SET` script). `amnesia_until`: until then the upstream is known
/// to have lost its state (a restart), so any `SET` may be the fill of a miss it
/// forgot, older than an invalidation since: none is stored.
pub fn judge_set(
    st: &mut KeyState,
    now: Ms,
    cur: Current,
    flags: SetFlags,
    policy: Policy,
    amnesia_until: Ms,
    win: Windows,
) -> Verdict {
    if (flags.nx && cur.exists) || (flags.xx && !cur.exists) {
        return Verdict::NotSet;
    }
    *st = st.at(now);
    let verdict = if st.m <= now {
        if now < amnesia_until {
            // The upstream lost the misses it kept: this may be the fill of one.
            Verdict::Dropped
        } else if policy == Policy::Invalidate || (policy == Policy::Collapse && st.w > now) {
            Verdict::Invalidated
        } else {
            Verdict::StoredWrite
        }
    } else if st.s.max(amnesia_until) <= now && !(policy == Policy::Collapse && st.w > now) {
        Verdict::StoredFill
    } else if cur.exists && cur.same_value {
        Verdict::Kept
    } else if cur.exists || policy != Policy::Set {
        Verdict::Deleted
    } else {
        Verdict::Dropped
    };
    match verdict {
        Verdict::StoredWrite | Verdict::StoredFill => {
            if verdict == Verdict::StoredFill {
                st.s = st.m;
            } else {
                st.x = now + win.fill;
            }
            st.l = 0;
        }
        Verdict::Deleted | Verdict::Invalidated => {
            st.s = st.s.max(st.m);
            st.l = 0;
        }
        // No fill is coming any more: missers waiting for one stop waiting.
        Verdict::Kept | Verdict::Dropped => st.l = 0,
        Verdict::NotSet => {}
    }
    if policy == Policy::Collapse {
        // Any SET may be a write-through: one within the window after it collapses.
        st.w = now + win.fill;
    }
    verdict
}

/// Any other write of the key, or its deletion (the `INVALIDATE` script): every live
/// miss is now older than an invalidation, a tombstone is left for `hold_off`, the
/// lease is void, and the write is recorded for `fill_window` (`x`).
pub fn invalidate(st: &mut KeyState, now: Ms, win: Windows) {
    void(st, now, win);
    st.x = now + win.fill;
}

/// The invalidation of a write of unknown fate, re-sent (the `INVALIDATE` script with a
/// sending time): the same invalidation, and whether the key is to be deleted too. It
/// is, unless the key was written at or after `sent` (no earlier than when the lost
/// write was planned, in the upstream's clock): that write came after the lost one,
/// is acknowledged, and ran its own invalidation. Deleting it would lose it; leaving
/// it leaves nothing older than the lost write in place. Not itself a write.
pub fn resend(st: &mut KeyState, now: Ms, win: Windows, sent: Ms) -> bool {
    void(st, now, win);
    st.x < sent.saturating_add(win.fill)
}

fn void(st: &mut KeyState, now: Ms, win: Windows) {
    *st = st.at(now);
    st.s = st.s.max(st.m);
    st.t = now + win.hold_off;
    st.l = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIN: Windows = Windows {
        fill: 100,
        lease: 50,
        hold_off: 10,
    };
    const ABSENT: Current = Current {
        exists: false,
        same_value: false,
    };
    const NONE: SetFlags = SetFlags {
        nx: false,
        xx: false,
    };

    fn set(st: &mut KeyState, now: Ms, cur: Current) -> Verdict {
        judge_set(st, now, cur, NONE, Policy::Set, 0, WIN)
    }

    #[test]
    fn a_fill_after_its_miss_is_stored_and_a_set_no_miss_explains_is_a_write() {
        let mut st = KeyState::default();
        assert_eq!(set(&mut st, 1, ABSENT), Verdict::StoredWrite);
        assert!(matches!(
            miss(&mut st, 2, ReadMode::Wait, true, WIN),
            Miss::Recorded { holder: true, .. }
        ));
        assert_eq!(set(&mut st, 3, ABSENT), Verdict::StoredFill);
    }

    #[test]
    fn an_invalidation_after_a_miss_refuses_every_fill_until_that_miss_expires() {
        let mut st = KeyState::default();
        miss(&mut st, 0, ReadMode::Wait, true, WIN);
        invalidate(&mut st, 5, WIN);
        // A later miss waits out the tombstone, then is recorded.
        assert_eq!(
            miss(&mut st, 6, ReadMode::Wait, true, WIN),
            Miss::HeldOff(9)
        );
        miss(&mut st, 20, ReadMode::Wait, true, WIN);
        // Either fill may arrive: both are refused while the first miss lives.
        assert_eq!(set(&mut st, 30, ABSENT), Verdict::Dropped);
        assert_eq!(set(&mut st, 99, ABSENT), Verdict::Dropped);
        // After it, the second miss alone explains a SET: a fill.
        assert_eq!(set(&mut st, 101, ABSENT), Verdict::StoredFill);
    }

    #[test]
    fn a_miss_under_a_tombstone_is_never_filled() {
        let mut st = KeyState::default();
        invalidate(&mut st, 0, WIN);
        assert_eq!(
            miss(&mut st, 5, ReadMode::Final, true, WIN),
            Miss::Recorded {
                holder: true,
                poisoned: true
            }
        );
        assert_eq!(set(&mut st, 50, ABSENT), Verdict::Dropped);
        assert_eq!(set(&mut st, 104, ABSENT), Verdict::Dropped);
        assert_eq!(set(&mut st, 105, ABSENT), Verdict::StoredWrite);
    }

    #[test]
    fn a_stored_set_makes_the_misses_before_it_stale() {
        let mut st = KeyState::default();
        miss(&mut st, 0, ReadMode::Wait, true, WIN);
        // A write-through the miss explains is stored...
        assert_eq!(set(&mut st, 1, ABSENT), Verdict::StoredFill);
        // ...and the miss's own, older fill does not overwrite it.
        let present = Current {
            exists: true,
            same_value: false,
        };
        assert_eq!(set(&mut st, 2, present), Verdict::Deleted);
        // A refused fill of the value the key holds changes nothing.
        let same = Current {
            exists: true,
            same_value: true,
        };
        assert_eq!(set(&mut st, 3, same), Verdict::Kept);
    }

    #[test]
    fn nx_and_xx_are_checked_before_anything_is_judged() {
        let mut st = KeyState::default();
        miss(&mut st, 0, ReadMode::Wait, true, WIN);
        invalidate(&mut st, 1, WIN);
        let before = st;
        let present = Current {
            exists: true,
            same_value: false,
        };
        let nx = SetFlags {
            nx: true,
            xx: false,
        };
        let xx = SetFlags {
            nx: false,
            xx: true,
        };
        assert_eq!(
            judge_set(&mut st, 2, present, nx, Policy::Set, 0, WIN),
            Verdict::NotSet
        );
        assert_eq!(
            judge_set(&mut st, 2, ABSENT, xx, Policy::Set, 0, WIN),
            Verdict::NotSet
        );
        assert_eq!(st, before);
    }

    #[test]
    fn collapse_deletes_a_second_write_through_within_the_window() {
        let mut st = KeyState::default();
        let c = |st: &mut KeyState, now| judge_set(st, now, ABSENT, NONE, Policy::Collapse, 0, WIN);
        assert_eq!(c(&mut st, 0), Verdict::StoredWrite);
        assert_eq!(c(&mut st, 50), Verdict::Invalidated);
        // Every SET renews the window: a key written through more often stays deleted.
        assert_eq!(c(&mut st, 149), Verdict::Invalidated);
        assert_eq!(c(&mut st, 250), Verdict::StoredWrite);
    }

    #[test]
    fn after_the_upstream_lost_its_state_no_set_is_stored_for_a_window() {
        let mut st = KeyState::default();
        assert_eq!(
            judge_set(&mut st, 5, ABSENT, NONE, Policy::Set, 10, WIN),
            Verdict::Dropped
        );
        // A miss after the restart does not make a SET trustworthy: it may still be
        // the fill of a miss from before it.
        miss(&mut st, 6, ReadMode::Final, true, WIN);
        assert_eq!(
            judge_set(&mut st, 7, ABSENT, NONE, Policy::Set, 10, WIN),
            Verdict::Dropped
        );
        assert_eq!(
            judge_set(&mut st, 10, ABSENT, NONE, Policy::Set, 10, WIN),
            Verdict::StoredFill
        );
    }
}
