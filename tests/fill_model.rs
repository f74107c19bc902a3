//! The fill protocol as a model, checked exhaustively with `stateright`
//! (docs/fill-protocol.md, "How it is proven").
//!
//! One key, a database whose rows carry a version, Redis (the key's value, tagged with
//! the version it was read from, and its fill-protocol state), and actors that
//! interleave freely: cache-aside readers (plain `GET`, then on a miss the `READ`
//! script, a database read, a fill `SET`), writers that invalidate after their commit,
//! a writer that deletes before it, a write-through writer, an invalidation lost on a
//! broken connection and re-sent, an upstream restart that loses every key, and the
//! clock. Every upstream step calls the same functions the scripts mirror
//! (`cachet::engine::fill`); nothing in the model knows which cachet or connection
//! carries a command (pooled connections and several cachets are the default case).
//!
//! Properties: no read returns a value older than the last completed invalidation,
//! and once everyone is done the key holds the database's value or nothing.
//! Assumptions, as in docs/consistency.md ("The guarantee"): a fill arrives within
//! `fill_window` of its miss, and a writer that deletes before its commit commits within
//! `hold_off`.
//!
//! `old_rules` keeps the previous protocol (leases per connection, marks per cachet,
//! `hold_off` checked at fill time) and shows the holes the model finds in it.
//!
//! A bounded depth runs in `cargo test`; `CACHET_MODEL_DEPTH=0 cargo test --release
//! --test fill_model -- --nocapture` explores every state (docs/fill-protocol.md, "How it
//! is proven").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use cachet::engine::fill::{
    self, Current, KeyState, Miss, Policy, ReadMode, SetFlags, Verdict, Windows,
};
use stateright::{Checker, Model, Property};

/// Ticks of the model's clock.
const WIN: Windows = Windows {
    fill: 4,
    lease: 2,
    hold_off: 1,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Reader {
    Idle,
    /// The plain `GET` found nothing; the `READ` script has not run yet.
    Reading,
    /// Answered nil at `at`; about to read the database.
    Missed {
        at: u8,
    },
    /// Read row version `val` from the database after a miss at `at`.
    Read {
        at: u8,
        val: u8,
    },
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum WriterKind {
    /// `UPDATE`, `COMMIT`, then `DEL`.
    AfterCommit,
    /// `DEL` inside the transaction, then `COMMIT` (within `hold_off`).
    BeforeCommit,
    /// `UPDATE`, `COMMIT`, then `SET` of the new row.
    WriteThrough,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Writer {
    Idle,
    /// Committed version `v` at `at`; its invalidation is next.
    Committed {
        v: u8,
        at: u8,
    },
    /// Deleted (before the commit) at `at`.
    Deleted {
        at: u8,
    },
    /// Its invalidation's connection broke; cachet re-sends it, with `sent`, when it
    /// was sent (the re-send deletes the key unless it was written since).
    Unknown {
        v: u8,
        sent: u8,
    },
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    now: u8,
    committed: u8,
    /// The database version as of the last completed invalidation.
    floor: u8,
    /// The cached value: the row version it was read from.
    cached: Option<u8>,
    st: KeyState,
    /// Until when a SET without state is dropped (an upstream restart was seen).
    amnesia: u64,
    readers: Vec<Reader>,
    writers: Vec<(WriterKind, Writer)>,
    restarts: u8,
    /// The first violation found on the way here.
    stale: Option<(u8, u8)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    Tick,
    /// A reader's plain `GET`.
    Get(usize),
    /// The `READ` script after a plain miss: may wait, or answers now; `record`: the
    /// reader is answered nil whatever the key holds (a later command of its pipeline
    /// was sent already).
    ReadScript(usize, ReadMode, bool),
    DbRead(usize),
    Fill(usize),
    /// A reader that never fills (gave up, errored).
    Abandon(usize),
    Commit(usize),
    /// The writer's invalidation lands; `lost`: its connection breaks, and whether it
    /// ran is unknown (`ran`).
    Invalidate {
        w: usize,
        lost: bool,
        ran: bool,
    },
    /// The re-sent invalidation lands (as a real one: the key deleted, unless it was
    /// written since the lost invalidation was sent).
    Retry(usize),
    SetNew(usize),
    RestartUpstream,
}

struct FillModel {
    readers: usize,
    writers: Vec<WriterKind>,
    policy: Policy,
    max_time: u8,
    upstream_restarts: u8,
    lost_invalidations: bool,
}

impl FillModel {
    fn at(&self, st: &State) -> u64 {
        u64::from(st.now)
    }
}

fn hit(st: &mut State, val: u8) {
    if val < st.floor && st.stale.is_none() {
        st.stale = Some((val, st.floor));
    }
}

impl Model for FillModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            now: 0,
            committed: 0,
            floor: 0,
            cached: None,
            st: KeyState::default(),
            amnesia: 0,
            readers: vec![Reader::Idle; self.readers],
            writers: self.writers.iter().map(|&k| (k, Writer::Idle)).collect(),
            restarts: 0,
            stale: None,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.now < self.max_time {
            out.push(Action::Tick);
        }
        for (i, r) in s.readers.iter().enumerate() {
            match r {
                Reader::Idle => out.push(Action::Get(i)),
                Reader::Reading => {
                    out.push(Action::ReadScript(i, ReadMode::Wait, false));
                    out.push(Action::ReadScript(i, ReadMode::Final, false));
                    out.push(Action::ReadScript(i, ReadMode::Final, true));
                }
                Reader::Missed { .. } => out.push(Action::DbRead(i)),
                Reader::Read { at, .. } => {
                    // The fill comes within the fill window of its miss (assumed).
                    if u64::from(s.now) < u64::from(*at) + WIN.fill {
                        out.push(Action::Fill(i));
                    }
                    out.push(Action::Abandon(i));
                }
                Reader::Done => {}
            }
        }
        for (w, (kind, state)) in s.writers.iter().enumerate() {
            match (kind, state) {
                (WriterKind::BeforeCommit, Writer::Idle) => out.push(Action::Invalidate {
                    w,
                    lost: false,
                    ran: true,
                }),
                (_, Writer::Idle) => out.push(Action::Commit(w)),
                // The commit lands within hold_off of the delete (assumed).
                (WriterKind::BeforeCommit, Writer::Deleted { at })
                    if u64::from(s.now) < u64::from(*at) + WIN.hold_off =>
                {
                    out.push(Action::Commit(w));
                }
                (WriterKind::AfterCommit, Writer::Committed { .. }) => {
                    out.push(Action::Invalidate {
                        w,
                        lost: false,
                        ran: true,
                    });
                    if self.lost_invalidations {
                        out.push(Action::Invalidate {
                            w,
                            lost: true,
                            ran: true,
                        });
                        out.push(Action::Invalidate {
                            w,
                            lost: true,
                            ran: false,
                        });
                    }
                }
                // A write-through arrives within the fill window of its commit, as a
                // fill does of its read (assumed).
                (WriterKind::WriteThrough, Writer::Committed { at, .. })
                    if u64::from(s.now) < u64::from(*at) + WIN.fill =>
                {
                    out.push(Action::SetNew(w));
                }
                (_, Writer::Unknown { .. }) => out.push(Action::Retry(w)),
                _ => {}
            }
        }
        if s.restarts < self.upstream_restarts {
            out.push(Action::RestartUpstream);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        let now = self.at(&s);
        match action {
            Action::Tick => s.now += 1,
            Action::Get(i) => match s.cached {
                Some(v) => {
                    hit(&mut s, v);
                    s.readers[i] = Reader::Done;
                }
                None => s.readers[i] = Reader::Reading,
            },
            Action::ReadScript(i, mode, record) => {
                if let (Some(v), false) = (s.cached, record) {
                    // Filled meanwhile: the waiting reader is answered with it.
                    hit(&mut s, v);
                    s.readers[i] = Reader::Done;
                } else {
                    let absent = s.cached.is_none();
                    match fill::miss(&mut s.st, now, mode, absent, WIN) {
                        Miss::Recorded { .. } => s.readers[i] = Reader::Missed { at: s.now },
                        // Waiting: nothing happens until the clock or a fill moves.
                        Miss::HeldOff(_) | Miss::Leased(_) => return None,
                    }
                }
            }
            Action::DbRead(i) => {
                let Reader::Missed { at } = s.readers[i] else {
                    return None;
                };
                s.readers[i] = Reader::Read {
                    at,
                    val: s.committed,
                };
            }
            Action::Fill(i) => {
                let Reader::Read { val, .. } = s.readers[i] else {
                    return None;
                };
                set(&mut s, now, val, self.policy);
                s.readers[i] = Reader::Done;
            }
            Action::Abandon(i) => s.readers[i] = Reader::Done,
            Action::Commit(w) => {
                s.committed += 1;
                let v = s.committed;
                s.writers[w].1 = match s.writers[w] {
                    (WriterKind::BeforeCommit, _) => {
                        s.floor = s.floor.max(v);
                        Writer::Done
                    }
                    _ => Writer::Committed { v, at: s.now },
                };
            }
            Action::Invalidate { w, lost, ran } => {
                if ran {
                    fill::invalidate(&mut s.st, now, WIN);
                    s.cached = None;
                }
                s.writers[w].1 = match s.writers[w] {
                    (WriterKind::BeforeCommit, _) => Writer::Deleted { at: s.now },
                    (_, Writer::Committed { v, .. }) if lost => Writer::Unknown { v, sent: s.now },
                    (_, Writer::Committed { v, .. }) => {
                        s.floor = s.floor.max(v);
                        Writer::Done
                    }
                    _ => return None,
                };
            }
            Action::Retry(w) => {
                let (_, Writer::Unknown { v, sent }) = s.writers[w] else {
                    return None;
                };
                if fill::resend(&mut s.st, now, WIN, u64::from(sent)) {
                    s.cached = None;
                }
                s.floor = s.floor.max(v);
                s.writers[w].1 = Writer::Done;
            }
            Action::SetNew(w) => {
                let (_, Writer::Committed { v, .. }) = s.writers[w] else {
                    return None;
                };
                set(&mut s, now, v, self.policy);
                s.floor = s.floor.max(v);
                s.writers[w].1 = Writer::Done;
            }
            Action::RestartUpstream => {
                s.cached = None;
                s.st = KeyState::default();
                s.amnesia = now + WIN.fill;
                s.restarts += 1;
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "no read older than the last completed invalidation",
                |_, s: &State| s.stale.is_none(),
            ),
            Property::always("converges to the database", |_, s: &State| {
                let done = s.readers.iter().all(|r| *r == Reader::Done)
                    && s.writers.iter().all(|(_, w)| *w == Writer::Done);
                !done || s.cached.is_none_or(|v| v == s.committed)
            }),
            Property::sometimes("a fill is stored and read", |_, s: &State| {
                s.cached.is_some() && s.floor > 0 && s.cached == Some(s.committed)
            }),
        ]
    }
}

/// A `SET` of row version `val` through the `SET` script.
fn set(s: &mut State, now: u64, val: u8, policy: Policy) {
    let cur = Current {
        exists: s.cached.is_some(),
        same_value: s.cached == Some(val),
    };
    match fill::judge_set(
        &mut s.st,
        now,
        cur,
        SetFlags::default(),
        policy,
        s.amnesia,
        WIN,
    ) {
        Verdict::StoredWrite | Verdict::StoredFill => s.cached = Some(val),
        Verdict::Deleted | Verdict::Invalidated => s.cached = None,
        Verdict::Kept | Verdict::Dropped | Verdict::NotSet => {}
    }
}

fn depth() -> usize {
    std::env::var("CACHET_MODEL_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(18)
}

fn check(model: FillModel) -> impl Checker<FillModel> {
    let depth = depth();
    let mut builder = model.checker();
    if depth > 0 {
        builder = builder.target_max_depth(depth);
    }
    let checker = builder.spawn_bfs().join();
    println!(
        "{} states ({} unique), depth {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth()
    );
    checker
}

#[test]
fn delete_after_commit_with_lost_invalidations_and_an_upstream_restart() {
    let checker = check(FillModel {
        readers: 2,
        writers: vec![WriterKind::AfterCommit, WriterKind::AfterCommit],
        policy: Policy::Set,
        max_time: 6,
        upstream_restarts: 1,
        lost_invalidations: true,
    });
    checker.assert_properties();
}

/// A lost invalidation re-sent after another writer deleted the key (before its own
/// commit): the re-send leaves the key to that writer's invalidation, which covers it.
#[test]
fn a_lost_invalidation_and_a_delete_before_commit() {
    let checker = check(FillModel {
        readers: 2,
        writers: vec![WriterKind::BeforeCommit, WriterKind::AfterCommit],
        policy: Policy::Set,
        max_time: 6,
        upstream_restarts: 0,
        lost_invalidations: true,
    });
    checker.assert_properties();
}

#[test]
fn delete_before_commit_with_a_writer_after_commit() {
    let checker = check(FillModel {
        readers: 3,
        writers: vec![WriterKind::BeforeCommit, WriterKind::AfterCommit],
        policy: Policy::Set,
        max_time: 6,
        upstream_restarts: 0,
        lost_invalidations: false,
    });
    checker.assert_properties();
}

#[test]
fn write_through_with_collapse() {
    let checker = check(FillModel {
        readers: 2,
        writers: vec![WriterKind::WriteThrough, WriteThrough2],
        policy: Policy::Collapse,
        max_time: 6,
        upstream_restarts: 0,
        lost_invalidations: false,
    });
    checker.assert_properties();
}

#[allow(non_upper_case_globals)]
const WriteThrough2: WriterKind = WriterKind::WriteThrough;

/// The previous protocol, kept to show what the model finds in it: a lease token per
/// client connection (granted on a miss when no other lease is live, checked by the
/// fill), a "recently leased" mark per cachet (a `SET` on a connection without a lease
/// while the mark lives is dropped and invalidates), and `hold_off` checked when the
/// fill arrives rather than when the miss happened.
mod old_rules {
    use super::*;

    /// Two cachets, two pooled connections each.
    const CACHETS: usize = 2;
    const CONNS: usize = 2;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum OldReader {
        Idle,
        Missed,
        Read { val: u8 },
        Done,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    pub struct OldState {
        now: u8,
        committed: u8,
        floor: u8,
        cached: Option<u8>,
        /// The live lease upstream: token and expiry.
        lease: Option<(u8, u8)>,
        /// Tombstone expiry.
        tomb: u8,
        next_token: u8,
        /// Per cachet and connection: the lease token it holds and until when (token 0:
        /// a miss within hold_off, whose fill is dropped).
        tokens: [[Option<(u8, u8)>; CONNS]; CACHETS],
        /// Per cachet: until when the key counts as recently leased.
        marks: [u8; CACHETS],
        /// Each reader's cachet (its pod's sidecar) and progress.
        readers: Vec<(usize, OldReader)>,
        writer: Writer,
        restarted: bool,
        stale: Option<(u8, u8)>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum OldAction {
        Tick,
        Get(usize, usize),
        DbRead(usize),
        Fill(usize, usize),
        Commit,
        Delete,
        RestartCachet(usize),
    }

    const LEASE: u8 = 2;
    const HOLD: u8 = 1;

    pub struct OldModel {
        pub readers: Vec<usize>,
    }

    impl Model for OldModel {
        type State = OldState;
        type Action = OldAction;

        fn init_states(&self) -> Vec<OldState> {
            vec![OldState {
                now: 0,
                committed: 0,
                floor: 0,
                cached: None,
                lease: None,
                tomb: 0,
                next_token: 1,
                tokens: [[None; CONNS]; CACHETS],
                marks: [0; CACHETS],
                readers: self.readers.iter().map(|&c| (c, OldReader::Idle)).collect(),
                writer: Writer::Idle,
                restarted: false,
                stale: None,
            }]
        }

        fn actions(&self, s: &OldState, out: &mut Vec<OldAction>) {
            if s.now < 6 {
                out.push(OldAction::Tick);
            }
            for (i, (_, r)) in s.readers.iter().enumerate() {
                match r {
                    OldReader::Idle => (0..CONNS).for_each(|c| out.push(OldAction::Get(i, c))),
                    OldReader::Missed => out.push(OldAction::DbRead(i)),
                    OldReader::Read { .. } => {
                        (0..CONNS).for_each(|c| out.push(OldAction::Fill(i, c)))
                    }
                    OldReader::Done => {}
                }
            }
            match s.writer {
                Writer::Idle => out.push(OldAction::Commit),
                Writer::Committed { .. } => out.push(OldAction::Delete),
                _ => {}
            }
            if !s.restarted {
                (0..CACHETS).for_each(|c| out.push(OldAction::RestartCachet(c)));
            }
        }

        fn next_state(&self, last: &OldState, action: OldAction) -> Option<OldState> {
            let mut s = last.clone();
            let now = s.now;
            let live = |until: u8| until > now;
            if s.lease.is_some_and(|(_, until)| !live(until)) {
                s.lease = None;
            }
            match action {
                OldAction::Tick => s.now += 1,
                OldAction::Get(i, conn) => {
                    let cachet = s.readers[i].0;
                    if let Some(v) = s.cached {
                        hit_old(&mut s, v);
                        s.readers[i].1 = OldReader::Done;
                        return Some(s);
                    }
                    if live(s.tomb) {
                        s.tokens[cachet][conn] = Some((0, now + HOLD));
                    } else if s.lease.is_none() {
                        let t = s.next_token;
                        s.next_token += 1;
                        s.lease = Some((t, now + LEASE));
                        s.tokens[cachet][conn] = Some((t, now + LEASE));
                        s.marks[cachet] = now + LEASE;
                    }
                    // A coalesced misser is answered nil and holds no lease.
                    s.readers[i].1 = OldReader::Missed;
                }
                OldAction::DbRead(i) => s.readers[i].1 = OldReader::Read { val: s.committed },
                OldAction::Fill(i, conn) => {
                    let OldReader::Read { val } = s.readers[i].1 else {
                        return None;
                    };
                    let cachet = s.readers[i].0;
                    match s.tokens[cachet][conn]
                        .take()
                        .filter(|&(_, until)| live(until))
                    {
                        Some((token, _)) => {
                            let mine = s.lease.is_some_and(|(t, _)| t == token);
                            if mine {
                                s.lease = None;
                            }
                            if mine && !live(s.tomb) {
                                s.cached = Some(val);
                            }
                        }
                        None if live(s.marks[cachet]) => {
                            // Dropped, and invalidates like a write.
                            s.lease = None;
                            s.cached = None;
                            s.tomb = now + HOLD;
                        }
                        None => {
                            s.lease = None;
                            s.cached = if live(s.tomb) { None } else { Some(val) };
                            s.tomb = now + HOLD;
                        }
                    }
                    s.readers[i].1 = OldReader::Done;
                }
                OldAction::Commit => {
                    s.committed += 1;
                    s.writer = Writer::Committed {
                        v: s.committed,
                        at: now,
                    };
                }
                OldAction::Delete => {
                    let Writer::Committed { v, .. } = s.writer else {
                        return None;
                    };
                    s.cached = None;
                    s.lease = None;
                    s.tomb = now + HOLD;
                    for m in &mut s.marks {
                        if *m > 0 {
                            *m = (*m).max(now + HOLD);
                        }
                    }
                    s.floor = v;
                    s.writer = Writer::Done;
                }
                OldAction::RestartCachet(c) => {
                    s.tokens[c] = [None; CONNS];
                    s.marks[c] = 0;
                    s.restarted = true;
                }
            }
            Some(s)
        }

        fn properties(&self) -> Vec<Property<Self>> {
            vec![Property::always(
                "no read older than the last completed invalidation",
                |_, s: &OldState| s.stale.is_none(),
            )]
        }
    }

    fn hit_old(s: &mut OldState, val: u8) {
        if val < s.floor && s.stale.is_none() {
            s.stale = Some((val, s.floor));
        }
    }

    /// The previous rules fail: the model finds a stale read, with readers of two
    /// cachets sharing connection pools.
    #[test]
    fn the_previous_rules_let_a_stale_fill_in() {
        let checker = OldModel {
            readers: vec![0, 1, 0],
        }
        .checker()
        .target_max_depth(14)
        .spawn_bfs()
        .join();
        let path = checker
            .discovery("no read older than the last completed invalidation")
            .expect("the old rules have a counterexample");
        println!("counterexample: {:?}", path.into_actions());
    }
}
