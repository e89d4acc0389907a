//! Swarm mode: a seed draws a whole scenario — cluster size, workload, which fault families
//! are switched on at all (swarm testing, as FoundationDB and TigerBeetle's VOPR do: a run
//! with fewer kinds of faults explores each kind more deeply), their rates and timings.
//!
//! Invariants: the same seed always draws the same scenario (a private splitmix64 stream, not
//! madsim's); every drawn scenario passes [`Scenario::validate`]; every disruptive fault is
//! followed by its repair before the end of the timeline, except those the run's final heal
//! undoes; at most one member ever suffers bit rot or removal, so a healed cluster keeps a
//! quorum of healthy voters.

use crate::scenario::{
    Checks, Cluster, CrashDisk, Fault, Mix, Scenario, Span, Target, Timed, Workload,
};

/// A tiny seeded generator (splitmix64), independent of the simulation's RNG.
pub struct Draw(u64);

impl Draw {
    pub fn new(seed: u64) -> Draw {
        Draw(seed ^ 0x5eed_5717_a7a5_0001)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.next_u64() as usize % items.len()].clone()
    }
}

/// Fault families a swarm run may switch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Network,
    Process,
    Disk,
    Clock,
    Membership,
    Maintenance,
}

/// A swizzle-clog of two or more of the voters, each order drawn (FoundationDB's: a random
/// subset, clogged one by one, unclogged in a random order), lasting at most `budget_ms`. Its
/// own reconnects repair it.
fn draw_swizzle(d: &mut Draw, voters: u32, budget_ms: u64) -> Fault {
    let mut nodes: Vec<u32> = (0..voters).collect();
    shuffle(d, &mut nodes);
    nodes.truncate(d.range(2, voters as u64) as usize);
    let mut reconnect = nodes.clone();
    shuffle(d, &mut reconnect);
    let hold = d.range(0, 3000.min(budget_ms / 4));
    let gaps = 2 * (nodes.len() as u64 - 1);
    let every = d.range(100, 1500.min((budget_ms - hold) / gaps).max(100));
    Fault::Swizzle {
        nodes,
        every: Span::ms(every),
        hold: Span::ms(hold),
        reconnect,
    }
}

/// Fisher–Yates with the swarm's own generator.
fn shuffle<T>(d: &mut Draw, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = d.range(0, i as u64) as usize;
        items.swap(i, j);
    }
}

/// The scenario seed `seed` stands for.
pub fn scenario(seed: u64) -> Scenario {
    let mut d = Draw::new(seed);
    let voters = d.pick(&[1, 3, 3, 3, 5]);
    let duration_s = d.range(10, 30);
    let families: Vec<Family> = [
        Family::Network,
        Family::Process,
        Family::Disk,
        Family::Clock,
        Family::Membership,
        Family::Maintenance,
    ]
    .into_iter()
    .filter(|_| d.chance(0.5))
    .collect();
    let mut cluster = Cluster {
        voters,
        learners: 0,
        ..Cluster::default()
    };
    if d.chance(0.3) {
        cluster.snapshot_count = d.pick(&[20, 100, 500]);
        cluster.snapshot_catch_up_entries = d.pick(&[10, 100, 5000]);
    }
    let mix = Mix {
        get: d.range(0, 40) as u32,
        serializable_get: d.range(0, 10) as u32,
        put: d.range(5, 40) as u32,
        delete: d.range(0, 10) as u32,
        cas: d.range(0, 30) as u32,
        multi_put: d.range(0, 10) as u32,
        range: d.range(0, 10) as u32,
        lease_put: d.range(0, 10) as u32,
        lock: 0,
        election: 0,
        compare_txn: 0,
        historical_read: 0,
    };
    let mut workload = Workload {
        clients: d.range(1, 6) as u32,
        keys: d.range(1, 6) as u32,
        think: Span::ms(d.range(5, 60)),
        mix,
        watchers: d.range(0, 3) as u32,
        lease_ttl_secs: d.range(2, 8) as i64,
        lease_abandon: d.pick(&[0.0, 0.0, 0.1, 0.3]),
        ..Workload::default()
    };

    let mut faults = Vec::new();
    let end_ms = duration_s * 1000;
    let mut rotted = false;
    let mut removed = false;
    let mut added = 0u32;
    let members = |added: u32| voters + added;
    let events = d.range(2, 4 + duration_s / 3);
    for _ in 0..events {
        if families.is_empty() {
            break;
        }
        let family = d.pick(&families);
        let at = d.range(1000, end_ms.saturating_sub(2000).max(1001));
        let repair_at = (at + d.range(500, 6000)).min(end_ms);
        let node = |d: &mut Draw, n: u32| match d.range(0, 3) {
            0 => Target::Leader,
            1 => Target::Follower,
            _ => Target::Index(d.range(0, n as u64 - 1) as u32),
        };
        let mut push = |at: u64, fault: Fault| {
            faults.push(Timed {
                at: Span::ms(at),
                fault,
            })
        };
        match family {
            Family::Network => match d.range(0, 4) {
                0 if voters > 1 => {
                    let cut = d.range(1, voters as u64 - 1) as u32;
                    push(
                        at,
                        Fault::Partition {
                            groups: vec![(0..cut).collect(), (cut..voters).collect()],
                        },
                    );
                    push(repair_at, Fault::Heal);
                }
                1 if voters >= 3 && d.chance(0.4) => {
                    let swizzle = draw_swizzle(&mut d, voters, end_ms - 1000);
                    let length = swizzle.length().0.as_millis() as u64;
                    push(at.min(end_ms - length), swizzle);
                }
                1 => {
                    push(
                        at,
                        Fault::Isolate {
                            node: node(&mut d, voters),
                        },
                    );
                    push(repair_at, Fault::Heal);
                }
                2 if voters > 1 => {
                    let a = d.range(0, voters as u64 - 1) as u32;
                    let b = (a + 1) % voters;
                    push(
                        at,
                        Fault::OneWay {
                            from: vec![a],
                            to: vec![b],
                        },
                    );
                    push(repair_at, Fault::Heal);
                }
                3 => {
                    push(
                        at,
                        Fault::Loss {
                            rate: d.pick(&[0.01, 0.05, 0.2]),
                        },
                    );
                    push(repair_at, Fault::Heal);
                }
                _ => {
                    let min = d.range(1, 20);
                    push(
                        at,
                        Fault::Latency {
                            min: Span::ms(min),
                            max: Span::ms(min + d.range(0, 200)),
                        },
                    );
                    push(repair_at, Fault::Heal);
                }
            },
            Family::Process => {
                let target = Target::Index(d.range(0, voters as u64 - 1) as u32);
                if d.chance(0.7) {
                    let disk = d.pick(&[
                        CrashDisk::LoseUnsynced,
                        CrashDisk::TornTail,
                        CrashDisk::KeepUnsynced,
                    ]);
                    push(
                        at,
                        Fault::Kill {
                            node: target.clone(),
                            disk,
                        },
                    );
                    push(repair_at, Fault::Restart { node: target });
                } else {
                    push(
                        at,
                        Fault::Pause {
                            node: target.clone(),
                        },
                    );
                    push(repair_at, Fault::Resume { node: target });
                }
            }
            Family::Disk => {
                let target = Target::Index(d.range(0, voters as u64 - 1) as u32);
                match d.range(0, 2) {
                    0 => {
                        push(
                            at,
                            Fault::FsyncError {
                                node: target.clone(),
                            },
                        );
                        push(repair_at, Fault::Restart { node: target });
                    }
                    1 => {
                        push(
                            at,
                            Fault::SlowDisk {
                                node: target.clone(),
                                fsync: Span::ms(d.range(5, 300)),
                            },
                        );
                        push(
                            repair_at,
                            Fault::SlowDisk {
                                node: target,
                                fsync: Span::ms(0),
                            },
                        );
                    }
                    _ if !rotted && voters >= 3 => {
                        rotted = true;
                        push(
                            at,
                            Fault::Kill {
                                node: target.clone(),
                                disk: CrashDisk::LoseUnsynced,
                            },
                        );
                        push(
                            at + 1,
                            Fault::Bitrot {
                                node: target.clone(),
                            },
                        );
                        push(repair_at, Fault::Restart { node: target });
                    }
                    _ => {}
                }
            }
            Family::Clock => {
                let target = node(&mut d, voters);
                if d.chance(0.5) {
                    let ppm = d.pick(&[-100_000i64, -20_000, 20_000, 100_000]);
                    push(
                        at,
                        Fault::ClockDrift {
                            node: target.clone(),
                            ppm,
                        },
                    );
                    push(
                        repair_at,
                        Fault::ClockDrift {
                            node: target,
                            ppm: 0,
                        },
                    );
                } else {
                    push(
                        at,
                        Fault::ClockJump {
                            node: target,
                            by: Span::ms(d.range(100, 3000)),
                        },
                    );
                }
            }
            Family::Membership => match d.range(0, 2) {
                0 if added < 2 => {
                    added += 1;
                    push(at, Fault::AddLearner);
                    if d.chance(0.5) {
                        push(repair_at, Fault::Promote);
                    }
                }
                1 if !removed && members(added) > voters && added > 0 => {
                    removed = true;
                    push(
                        at,
                        Fault::Remove {
                            node: Target::Index(voters + added - 1),
                        },
                    );
                }
                _ => push(
                    at,
                    Fault::TransferLeader {
                        to: Target::Follower,
                    },
                ),
            },
            Family::Maintenance => {
                if d.chance(0.6) {
                    push(
                        at,
                        Fault::Compact {
                            keep: d.range(0, 50) as i64,
                        },
                    );
                } else {
                    push(
                        at,
                        Fault::Defrag {
                            node: node(&mut d, voters),
                        },
                    );
                }
            }
        }
    }
    faults.sort_by_key(|t| t.at);
    // Drawn last, so adding them left every earlier draw of a seed as it was.
    if d.chance(0.4) {
        workload.mix.lock = d.range(0, 8) as u32;
        workload.mix.election = d.range(0, 8) as u32;
    }
    // Lease checkpoints fire within a run (etcd's default interval, 5 minutes, never does):
    // remaining TTLs are replicated, reset by keep-alives and restored by new leaders.
    if d.chance(0.5) {
        cluster.lease_checkpoint_interval = Span::ms(d.range(500, 5_000));
    }
    // Watchers ask for progress notifications, which come every 0.2-2 s instead of etcd's 10
    // minutes: bookmarks must never run ahead of the events a watcher was sent.
    if d.chance(0.5) {
        cluster.progress_notify_interval = Span::ms(d.range(200, 2_000));
        workload.watch_progress_notify = true;
    }
    // Txns compare every target with every result, not only mod_revision equality.
    if d.chance(0.5) {
        workload.mix.compare_txn = d.range(5, 30) as u32;
    }
    // Reads at past revisions, around the compaction revision once one is refused.
    if d.chance(0.5) {
        workload.mix.historical_read = d.range(5, 20) as u32;
    }
    let names: Vec<String> = families
        .iter()
        .map(|f| format!("{f:?}").to_lowercase())
        .collect();
    let mut s =
        Scenario {
            name: format!("swarm-{seed}"),
            duration: Span::ms(end_ms),
            cluster,
            workload,
            faults,
            checks: Checks::default(),
            seeds: vec![seed],
            story: format!(
            "Drawn by `strata-sim swarm` from seed {seed}: {voters} voter(s), fault families: {}.",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ),
        };
    // Removal targets must exist when the timeline reaches them; drop what cannot apply.
    let max = s.max_members();
    s.faults.retain(|t| match &t.fault {
        Fault::Remove {
            node: Target::Index(i),
        } => *i < max,
        _ => true,
    });
    debug_assert!(s.validate().is_ok(), "{:?}", s.validate());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_scenario_and_all_valid() {
        for seed in 0..2000 {
            let a = scenario(seed);
            assert_eq!(a, scenario(seed));
            a.validate().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let again = Scenario::parse("swarm.toml", &a.to_file()).unwrap();
            assert_eq!(again.faults, a.faults, "seed {seed} round-trips");
        }
    }

    #[test]
    fn seeds_vary_the_shape() {
        let sizes: std::collections::BTreeSet<u32> =
            (0..200).map(|s| scenario(s).cluster.voters).collect();
        assert!(sizes.len() >= 3, "{sizes:?}");
        let kinds: std::collections::BTreeSet<&str> = (0..200)
            .flat_map(|s| scenario(s).faults.into_iter().map(|t| t.fault.kind()))
            .collect();
        assert!(kinds.len() >= 15, "{kinds:?}");
        assert!(kinds.contains("swizzle"), "{kinds:?}");
        let contended = (0..200)
            .filter(|s| {
                let mix = scenario(*s).workload.mix;
                mix.lock > 0 && mix.election > 0
            })
            .count();
        assert!(
            contended > 20,
            "{contended} of 200 seeds use locks and elections"
        );
    }
}
