//! The figures of a run, the side-by-side table, the JSON line, and the verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::Profile;
use super::history::{Event, Op};
use super::linearizability::{Findings, StaleRead};

/// What the final audit found.
#[derive(Debug, Default, Clone)]
pub struct Audit {
    pub keys: u64,
    /// Keys whose cache entry is older than the database's version.
    pub stale_keys: Vec<u32>,
    /// Keys whose cache entry is newer than the database's version (impossible).
    pub future_keys: Vec<u32>,
    /// Keys whose cache entry is older than the database's version but not than the
    /// last completed invalidation: the last delete failed at the client (a killed
    /// cachet).
    pub failed_delete_keys: Vec<u32>,
}

/// One run's figures.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunReport {
    pub profile: String,
    pub target: String,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Cache reads (`GET`s and `MGET` keys) and how many hit.
    pub reads: u64,
    pub hits: u64,
    pub hit_rate: f64,
    /// The hit rate of the reads that started once the cache was warm: after the
    /// first `fill_window` (how far a cold start's misses reach: a key missed then and
    /// written within `fill_window` is not cacheable until that miss's record ends), or
    /// after half the run when it is shorter than twice that.
    pub warm_hit_rate: f64,
    pub writes: u64,
    pub fills: u64,
    pub db_reads: u64,
    pub stale_reads: u64,
    pub stale_age_ms_p50: f64,
    pub stale_age_ms_p99: f64,
    pub stale_age_ms_max: f64,
    /// Keys with at least one stale read.
    pub stale_keys: u64,
    pub future_reads: u64,
    pub ryw_violations: u64,
    pub audit_keys: u64,
    pub audit_stale: u64,
    /// Keys that failed the per-key check or the final audit.
    pub violations: u64,
    pub errors: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub herd: Option<Herd>,
    /// The keys with the most stale reads: (key, stale reads).
    pub worst_keys: Vec<(u32, u64)>,
    pub examples: Vec<StaleRead>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Set when the run itself failed (it then counts as failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Database reads of the hot key per herd round.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Herd {
    pub rounds: u64,
    pub workers: u32,
    pub db_reads_per_round_max: u64,
    pub db_reads_per_round_mean: f64,
}

impl RunReport {
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        profile: Profile,
        shape: &super::Shape,
        label: &str,
        seconds: f64,
        ops: u64,
        events: &[Event],
        findings: &Findings,
        audit: &Audit,
        herd_rounds: &[u64],
        warm_from_us: u64,
    ) -> RunReport {
        let mut r = RunReport {
            profile: profile.name().into(),
            target: label.into(),
            seconds: round(seconds, 2),
            ops,
            ops_per_sec: round(ops as f64 / seconds.max(0.001), 0),
            ..RunReport::default()
        };
        let (mut warm_reads, mut warm_hits) = (0u64, 0u64);
        for e in events {
            let warm = e.start_us >= warm_from_us;
            match &e.op {
                Op::Hit { .. } => {
                    r.reads += 1;
                    r.hits += 1;
                    warm_reads += u64::from(warm);
                    warm_hits += u64::from(warm);
                }
                Op::Miss => {
                    r.reads += 1;
                    warm_reads += u64::from(warm);
                }
                Op::DbRead { .. } => r.db_reads += 1,
                Op::Fill { .. } => r.fills += 1,
                Op::Write { .. } if e.worker != super::history::SETUP => r.writes += 1,
                Op::Error { kind } => *r.errors.entry(kind.clone()).or_default() += 1,
                _ => {}
            }
        }
        r.hit_rate = round(r.hits as f64 / (r.reads.max(1)) as f64, 3);
        r.warm_hit_rate = round(warm_hits as f64 / (warm_reads.max(1)) as f64, 3);
        let mut ages = findings.ages_us.clone();
        ages.sort_unstable();
        r.stale_reads = findings.stale_reads;
        r.stale_age_ms_p50 = percentile_ms(&ages, 0.5);
        r.stale_age_ms_p99 = percentile_ms(&ages, 0.99);
        r.stale_age_ms_max = percentile_ms(&ages, 1.0);
        r.future_reads = findings.future_reads;
        r.ryw_violations = findings.ryw_violations;
        r.stale_keys = findings.keys.values().filter(|k| k.stale > 0).count() as u64;
        r.audit_keys = audit.keys;
        r.audit_stale = audit.stale_keys.len() as u64;
        let mut bad: BTreeSet<u32> = findings.violating_keys().map(|(k, _)| *k).collect();
        bad.extend(audit.stale_keys.iter().chain(&audit.future_keys));
        r.violations = bad.len() as u64;
        let mut worst: Vec<(u32, u64)> = findings
            .keys
            .iter()
            .filter(|(_, f)| f.stale > 0)
            .map(|(k, f)| (*k, f.stale))
            .collect();
        worst.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        worst.truncate(5);
        r.worst_keys = worst;
        r.examples = findings.examples.iter().take(3).cloned().collect();
        if profile == Profile::Herd {
            let n = herd_rounds.len() as u64;
            r.herd = Some(Herd {
                rounds: n,
                workers: shape.workers,
                db_reads_per_round_max: herd_rounds.iter().copied().max().unwrap_or(0),
                db_reads_per_round_mean: round(
                    herd_rounds.iter().sum::<u64>() as f64 / n.max(1) as f64,
                    1,
                ),
            });
        }
        r
    }

    /// A run that could not be carried out.
    pub fn failed(profile: Profile, label: &str, why: String) -> RunReport {
        RunReport {
            profile: profile.name().into(),
            target: label.into(),
            failed: Some(why),
            ..RunReport::default()
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    let us = sorted_us.get(i).copied().unwrap_or(0);
    round(us as f64 / 1000.0, 1)
}

/// One profile: the same workload directly and through cachet.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    pub profile: Profile,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub direct: Option<RunReport>,
    pub cachet: Option<RunReport>,
}

impl ProfileReport {
    pub fn new(profile: Profile) -> ProfileReport {
        ProfileReport {
            profile,
            skipped: None,
            direct: None,
            cachet: None,
        }
    }
}

/// Why the suite fails (empty: it passes): any stale read or violation through
/// cachet, a racy profile that showed no stale read directly, a run that failed.
pub fn failures(reports: &[ProfileReport]) -> Vec<String> {
    let mut out = Vec::new();
    for p in reports {
        let name = p.profile.name();
        if p.skipped.is_some() {
            continue;
        }
        for run in [&p.direct, &p.cachet].into_iter().flatten() {
            if let Some(why) = &run.failed {
                out.push(format!("{name} {}: run failed: {why}", run.target));
            }
        }
        if let Some(c) = &p.cachet
            && c.failed.is_none()
            && (c.stale_reads > 0 || c.violations > 0)
        {
            out.push(format!(
                "{name}: {} stale reads and {} violating keys through cachet",
                c.stale_reads, c.violations
            ));
        }
        if let Some(d) = &p.direct
            && p.profile.racy()
            && d.failed.is_none()
            && d.stale_reads == 0
            && d.violations == 0
        {
            out.push(format!(
                "{name}: no stale read and no stale key directly against Redis: the checker lost its teeth"
            ));
        }
    }
    out
}

/// The table: one block per profile, direct and cachet side by side.
pub fn table(reports: &[ProfileReport]) -> String {
    let mut s = String::new();
    for p in reports {
        let _ = writeln!(s, "== {}", p.profile.name());
        if let Some(why) = &p.skipped {
            let _ = writeln!(s, "   skipped: {why}\n");
            continue;
        }
        let (d, c) = (
            p.direct.clone().unwrap_or_default(),
            p.cachet.clone().unwrap_or_default(),
        );
        let _ = writeln!(s, "   {:<26}{:>14}{:>14}", "", "direct", "cachet");
        let mut row = |name: &str, f: &dyn Fn(&RunReport) -> String| {
            let _ = writeln!(s, "   {name:<26}{:>14}{:>14}", f(&d), f(&c));
        };
        row("operations", &|r| r.ops.to_string());
        row("operations/s", &|r| format!("{:.0}", r.ops_per_sec));
        row("cache reads", &|r| r.reads.to_string());
        row("hit rate", &|r| format!("{:.1}%", r.hit_rate * 100.0));
        row("hit rate, warm", &|r| {
            format!("{:.1}%", r.warm_hit_rate * 100.0)
        });
        row("writes", &|r| r.writes.to_string());
        row("fills sent", &|r| r.fills.to_string());
        row("database reads", &|r| r.db_reads.to_string());
        row("STALE READS", &|r| r.stale_reads.to_string());
        row("  age p50/p99/max ms", &|r| {
            format!(
                "{}/{}/{}",
                r.stale_age_ms_p50, r.stale_age_ms_p99, r.stale_age_ms_max
            )
        });
        row("  keys with stale reads", &|r| r.stale_keys.to_string());
        row("read-your-writes viol.", &|r| r.ryw_violations.to_string());
        row("future reads", &|r| r.future_reads.to_string());
        row("audit: stale keys", &|r| {
            format!("{}/{}", r.audit_stale, r.audit_keys)
        });
        row("VIOLATIONS (keys)", &|r| r.violations.to_string());
        row("errors", &|r| r.errors.values().sum::<u64>().to_string());
        if d.herd.is_some() || c.herd.is_some() {
            let h = |r: &RunReport| r.herd.clone().unwrap_or_default();
            row("herd rounds", &|r| h(r).rounds.to_string());
            row("  db reads/round mean", &|r| {
                format!("{:.1}", h(r).db_reads_per_round_mean)
            });
            row("  db reads/round max", &|r| {
                h(r).db_reads_per_round_max.to_string()
            });
        }
        for r in [&d, &c] {
            let label = &r.target;
            if !r.errors.is_empty() {
                let _ = writeln!(s, "   {label} errors: {:?}", r.errors);
            }
            if !r.worst_keys.is_empty() {
                let _ = writeln!(
                    s,
                    "   {label} worst keys (key, stale reads): {:?}",
                    r.worst_keys
                );
            }
            if let Some(n) = &r.note {
                let _ = writeln!(s, "   {label}: {n}");
            }
            if let Some(f) = &r.failed {
                let _ = writeln!(s, "   {label} RUN FAILED: {f}");
            }
        }
        s.push('\n');
    }
    s
}
