//! What one seed does, decided before anything runs: the Look, the config, the posters, their
//! stores and crash points, the faults and the mapping change. Pure and deterministic: the same
//! seed (and the same [`super::Options`]) always gives the same [`Scenario`].

use std::fmt;

use rust_decimal::Decimal;

use crate::domain::config::{BalancingStyle, Posting, VoucherBy};
use crate::engine::CrashPoint;

/// Fee types of the generated Look, and the main account each maps to in the base config.
pub const FEE_TYPES: [(&str, &str); 2] = [("Marketplace fee", "618100"), ("Commission", "618200")];
/// The balancing account of every voucher (never the target of a mapping change, so D365's
/// total on the other accounts is the Looker total).
pub const BALANCING_ACCOUNT: &str = "200150";
/// Accounts a mapping change may move a fee type to (all open and postable in the sandbox).
const OTHER_ACCOUNTS: [&str; 4] = ["618100", "618200", "618900", "110110"];
const CHANNELS: [&str; 3] = ["Amazon", "eBay", "Shopify"];
const COST_CENTERS: [&str; 2] = ["022", "031"];

/// One row of the generated Look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub channel: &'static str,
    pub cost_center: &'static str,
    pub fee_type: &'static str,
    /// Two decimals, never zero (so every row is exactly one detail line, no rounding residue).
    pub amount: Decimal,
}

/// Where a poster keeps its audit trail. Posters with the same `group` share one store (each
/// with its own connection / client, as separate processes would).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreSlot {
    pub backend: Backend,
    pub group: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// A SQLite file (what `ml-connector run` uses).
    Sqlite,
    /// A DynamoDB table on the local moto server (what the Lambdas use).
    Dynamo,
}

/// Which config a poster runs: the base mapping, or the changed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    Base,
    Changed,
}

/// One concurrent poster: an engine with its own clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poster {
    pub store: StoreSlot,
    pub mapping: Mapping,
    /// Waits this long after its wave starts.
    pub start_ms: u64,
    /// Killed (as a process would be) the first time it reaches this step.
    pub crash: Option<CrashPoint>,
    /// Period lock lease; a short one can run out while the poster is still writing.
    pub lease_ms: u64,
    /// After a crash or a failed run, replays its run once (still under the faults).
    pub replay_on_failure: bool,
}

/// A fault of the D365 simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The next `n` F&O requests answer 429, with `Retry-After: 0` or without (the client's
    /// fallback wait).
    Throttle { n: usize, retry_after: bool },
    /// The next `n` single writes (header, line, DELETE) answer `status` (0 = the connection
    /// drops); with `commit` the write is applied first.
    Write { n: usize, status: u16, commit: bool },
    /// The next `n` `$batch` requests answer `status` (0 = drop); with `commit` applied first.
    Batch { n: usize, status: u16, commit: bool },
    /// Every F&O answer is delayed this long from then on.
    Latency { ms: u64 },
}

/// When a fault is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Before the posters start.
    Start,
    /// As soon as D365 holds a journal header (mid-run).
    AfterHeader,
    /// This long after the posters started.
    AfterMs(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub trigger: Trigger,
}

/// A different main account for one mapping rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingChange {
    pub fee_type: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    /// The posters of the changed config start only once every base poster has finished (a
    /// change between two posts); otherwise they overlap.
    pub after_base: bool,
}

/// Everything one seed does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub seed: u64,
    pub rows: Vec<Row>,
    pub posting: Posting,
    pub voucher_by: VoucherBy,
    pub balancing: BalancingStyle,
    pub max_voucher_lines: usize,
    pub max_journal_lines: usize,
    pub batch_operations: usize,
    /// F&O latency from the start, before any fault.
    pub latency_ms: u64,
    pub posters: Vec<Poster>,
    pub faults: Vec<Fault>,
    pub change: Option<MappingChange>,
    /// Control mode: every engine's natural-key lookup of headers is blinded (see
    /// [`super::Options::naive`]).
    pub naive: bool,
}

impl Scenario {
    /// The scenario of `seed`. `dynamo`: some stores may be DynamoDB tables.
    pub fn generate(seed: u64, dynamo: bool, naive: bool) -> Scenario {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n_rows = rng.usize(6..=20);
        let rows: Vec<Row> = (0..n_rows)
            .map(|i| {
                // The first two rows cover both fee types, so a mapping change always changes
                // at least one line.
                let fee_type = if i < 2 {
                    FEE_TYPES[i].0
                } else {
                    FEE_TYPES[rng.usize(0..2)].0
                };
                let cents = rng.i64(100..=500_000);
                let cents = if rng.u8(0..10) == 0 { -cents } else { cents };
                Row {
                    channel: CHANNELS[rng.usize(0..CHANNELS.len())],
                    cost_center: COST_CENTERS[rng.usize(0..COST_CENTERS.len())],
                    fee_type,
                    amount: Decimal::new(cents, 2),
                }
            })
            .collect();

        let posting = if rng.u8(0..100) < 65 {
            Posting::Batch
        } else {
            Posting::Lines
        };
        let voucher_by = if rng.u8(0..100) < 60 {
            VoucherBy::TransDate
        } else {
            VoucherBy::Row
        };
        let balancing = if rng.u8(0..100) < 75 {
            BalancingStyle::Lines
        } else {
            BalancingStyle::Offset
        };
        let max_voucher_lines = if rng.bool() { rng.usize(3..=8) } else { 100 };
        let batch_operations = if max_voucher_lines == 100 {
            200
        } else {
            rng.usize(max_voucher_lines..=max_voucher_lines * 3)
        };
        // About half the seeds split the journal into several headers (parts).
        let max_journal_lines = if rng.bool() {
            let base = max_voucher_lines.min(12);
            rng.usize(base..=base * 2 + 3).max(max_voucher_lines)
        } else {
            2000
        };
        let latency_ms = [0, 0, 1, 2, 5][rng.usize(0..5)];

        // Stores: all separate, all shared, or mixed groups; each group SQLite or DynamoDB.
        let n_posters = rng.usize(2..=4);
        let layout = rng.u8(0..10);
        let groups: Vec<usize> = (0..n_posters)
            .map(|i| match layout {
                0..=3 => i,            // separate stores
                4..=6 => 0,            // one shared store
                _ => rng.usize(0..=1), // mixed
            })
            .collect();
        let n_groups = groups.iter().max().map_or(0, |m| m + 1);
        let backends: Vec<Backend> = (0..n_groups)
            .map(|_| {
                if dynamo && rng.u8(0..10) < 3 {
                    Backend::Dynamo
                } else {
                    Backend::Sqlite
                }
            })
            .collect();

        const POINTS: [CrashPoint; 5] = [
            CrashPoint::Recorded,
            CrashPoint::Locked,
            CrashPoint::HeaderCreated,
            CrashPoint::LinesWritten,
            CrashPoint::Posted,
        ];
        let mut posters: Vec<Poster> = groups
            .iter()
            .map(|&g| Poster {
                store: StoreSlot {
                    backend: backends[g],
                    group: g,
                },
                mapping: Mapping::Base,
                start_ms: [0, 0, rng.u64(0..=5), rng.u64(0..=30)][rng.usize(0..4)],
                crash: (!naive && rng.u8(0..100) < 35).then(|| POINTS[rng.usize(0..POINTS.len())]),
                lease_ms: if rng.u8(0..10) < 3 {
                    rng.u64(100..=400)
                } else {
                    300_000
                },
                replay_on_failure: rng.bool(),
            })
            .collect();

        // Sometimes the mapping changes between posts: the last poster(s) run the new config.
        let change = (!naive && rng.u8(0..100) < 30).then(|| {
            let (fee_type, from) = FEE_TYPES[rng.usize(0..FEE_TYPES.len())];
            let choices: Vec<&'static str> =
                OTHER_ACCOUNTS.into_iter().filter(|a| *a != from).collect();
            MappingChange {
                fee_type,
                from,
                to: choices[rng.usize(0..choices.len())],
                after_base: rng.bool(),
            }
        });
        if change.is_some() {
            // 1 ..= n-1 posters run the changed config; the first always runs the base one.
            let changed = rng.usize(1..n_posters);
            for p in posters.iter_mut().skip(n_posters - changed) {
                p.mapping = Mapping::Changed;
            }
        }

        let n_faults = if naive { 0 } else { rng.usize(0..=3) };
        let statuses = [0u16, 500, 502, 503, 504];
        let faults = (0..n_faults)
            .map(|_| {
                let kind = match rng.u8(0..7) {
                    0 => FaultKind::Throttle {
                        n: rng.usize(1..=4),
                        retry_after: rng.bool(),
                    },
                    1 | 2 => FaultKind::Write {
                        n: rng.usize(1..=2),
                        status: statuses[rng.usize(0..statuses.len())],
                        commit: rng.u8(0..3) > 0,
                    },
                    3 | 4 => FaultKind::Batch {
                        n: rng.usize(1..=2),
                        status: statuses[rng.usize(0..statuses.len())],
                        commit: rng.u8(0..3) > 0,
                    },
                    _ => FaultKind::Latency {
                        ms: rng.u64(1..=15),
                    },
                };
                let trigger = match rng.u8(0..3) {
                    0 => Trigger::Start,
                    1 => Trigger::AfterHeader,
                    _ => Trigger::AfterMs(rng.u64(0..=40)),
                };
                Fault { kind, trigger }
            })
            .collect();

        Scenario {
            seed,
            rows,
            posting,
            voucher_by,
            balancing,
            max_voucher_lines,
            max_journal_lines,
            batch_operations,
            latency_ms,
            posters,
            faults,
            change,
            naive,
        }
    }

    /// The exact Looker total of the rows.
    pub fn looker_total(&self) -> Decimal {
        self.rows.iter().map(|r| r.amount).sum()
    }

    /// Whether any two posters have separate stores (the case only D365 itself can arbitrate).
    pub fn has_separate_stores(&self) -> bool {
        let first = self.posters.first().map(|p| p.store);
        self.posters.iter().any(|p| Some(p.store) != first)
    }

    pub fn uses_dynamo(&self) -> bool {
        self.posters
            .iter()
            .any(|p| p.store.backend == Backend::Dynamo)
    }
}

fn point(p: CrashPoint) -> &'static str {
    match p {
        CrashPoint::Recorded => "recorded",
        CrashPoint::Locked => "locked",
        CrashPoint::HeaderCreated => "header",
        CrashPoint::LinesWritten => "lines",
        CrashPoint::Posted => "posted",
    }
}

fn status(s: u16) -> String {
    if s == 0 {
        "drop".into()
    } else {
        s.to_string()
    }
}

impl fmt::Display for Poster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = match self.store.backend {
            Backend::Sqlite => "sqlite",
            Backend::Dynamo => "dynamo",
        };
        write!(f, "{b}#{}", self.store.group)?;
        if self.mapping == Mapping::Changed {
            write!(f, " changed-mapping")?;
        }
        if self.start_ms > 0 {
            write!(f, " +{}ms", self.start_ms)?;
        }
        if let Some(p) = self.crash {
            write!(f, " crash@{}", point(p))?;
        }
        if self.lease_ms < 60_000 {
            write!(f, " lease {}ms", self.lease_ms)?;
        }
        if self.replay_on_failure {
            write!(f, " replays")?;
        }
        Ok(())
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::Throttle { n, retry_after } => write!(
                f,
                "429×{n}{}",
                if retry_after {
                    " Retry-After 0"
                } else {
                    " no Retry-After"
                }
            )?,
            FaultKind::Write {
                n,
                status: s,
                commit,
            } => write!(
                f,
                "single write {}×{n}{}",
                status(s),
                if commit { " after commit" } else { "" }
            )?,
            FaultKind::Batch {
                n,
                status: s,
                commit,
            } => write!(
                f,
                "$batch {}×{n}{}",
                status(s),
                if commit { " after commit" } else { "" }
            )?,
            FaultKind::Latency { ms } => write!(f, "latency {ms}ms")?,
        }
        match self.trigger {
            Trigger::Start => write!(f, " at start"),
            Trigger::AfterHeader => write!(f, " once a header exists"),
            Trigger::AfterMs(ms) => write!(f, " after {ms}ms"),
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} rows (total {}), posting {:?}, vouchers by {:?}, balancing {:?}, max_voucher_lines {}, max_journal_lines {}, batch_operations {}, latency {}ms{}",
            self.seed,
            self.rows.len(),
            self.looker_total(),
            self.posting,
            self.voucher_by,
            self.balancing,
            self.max_voucher_lines,
            self.max_journal_lines,
            self.batch_operations,
            self.latency_ms,
            if self.naive { ", NAIVE control" } else { "" }
        )?;
        for (i, p) in self.posters.iter().enumerate() {
            writeln!(f, "  poster {i}: {p}")?;
        }
        for x in &self.faults {
            writeln!(f, "  fault: {x}")?;
        }
        if let Some(c) = &self.change {
            writeln!(
                f,
                "  mapping change: {:?} {} -> {} ({})",
                c.fee_type,
                c.from,
                c.to,
                if c.after_base {
                    "after the base posters finished"
                } else {
                    "overlapping"
                }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_scenario() {
        for seed in 0..200 {
            let a = Scenario::generate(seed, true, false);
            assert_eq!(a, Scenario::generate(seed, true, false));
            assert!((2..=4).contains(&a.posters.len()));
            assert!((6..=20).contains(&a.rows.len()));
            assert!(a.rows.iter().all(|r| !r.amount.is_zero()));
            assert!(a.max_journal_lines >= a.max_voucher_lines);
            if a.posting == Posting::Batch {
                assert!(a.max_voucher_lines <= a.batch_operations);
            }
            if a.change.is_some() {
                assert!(a.posters[0].mapping == Mapping::Base);
                assert!(a.posters.iter().any(|p| p.mapping == Mapping::Changed));
            }
        }
        assert_ne!(
            Scenario::generate(1, false, false),
            Scenario::generate(2, false, false)
        );
    }

    #[test]
    fn the_seeds_cover_every_kind_of_scenario() {
        let all: Vec<Scenario> = (0..200)
            .map(|s| Scenario::generate(s, true, false))
            .collect();
        assert!(all.iter().any(|s| s.has_separate_stores()));
        assert!(all.iter().any(|s| !s.has_separate_stores()));
        assert!(all.iter().any(|s| s.uses_dynamo()));
        assert!(all.iter().any(|s| s.change.is_some()));
        assert!(all.iter().any(|s| s.posting == Posting::Lines));
        assert!(all.iter().any(|s| s.balancing == BalancingStyle::Offset));
        assert!(all.iter().any(|s| s.max_journal_lines < 2000));
        assert!(all
            .iter()
            .any(|s| s.posters.iter().any(|p| p.crash.is_some())));
        for kind in 0..4 {
            assert!(all.iter().any(|s| s.faults.iter().any(|f| {
                matches!(
                    (kind, f.kind),
                    (0, FaultKind::Throttle { .. })
                        | (1, FaultKind::Write { commit: true, .. })
                        | (2, FaultKind::Batch { commit: true, .. })
                        | (3, FaultKind::Latency { .. })
                )
            })));
        }
        assert!(!Scenario::generate(3, false, false).uses_dynamo());
    }
}
