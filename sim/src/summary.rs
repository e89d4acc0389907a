//! Swarms spread over many machines: which seeds a shard runs, the one-line JSON record each
//! run leaves, and the merge of the shards' records into one verdict.
//!
//! `strata-sim swarm --seeds A..B --shard K/N` runs the seeds whose position in `A..B` is
//! `K-1` modulo `N` (interleaved, so every shard gets early and late seeds alike) and writes a
//! [`SeedRecord`] per seed as JSON lines; `strata-sim merge` reads the shards' files and
//! reports the whole swarm. There is no coordinator: a CI matrix or a Kubernetes Job array
//! starts shards `1/N..N/N` with the same `A..B`, and every failing seed replays alone with
//! `strata-sim run swarm:SEED --seed SEED`.
//!
//! Invariants the merge checks: no seed appears twice (two shards overlapped, or one ran
//! twice), and when the parts name their range and shard count, every shard `1..=N` is present
//! and covers exactly its seeds (a lost shard is an error, not a smaller swarm).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `K/N`: the K-th of N disjoint parts, `1 <= K <= N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub fn parse(s: &str) -> Result<Shard, String> {
        let bad = || format!("shard {s:?}: expected K/N with 1 <= K <= N");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = k.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The seeds of `seeds` this shard runs: every N-th, starting at position K-1.
    pub fn select(self, seeds: &[u64]) -> Vec<u64> {
        seeds
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 % self.count == self.index - 1)
            .map(|(_, s)| *s)
            .collect()
    }
}

/// One run of a swarm, as one JSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedRecord {
    pub seed: u64,
    /// `"PASS"` or `"FAIL"`.
    pub verdict: String,
    /// The first violated checker of a failed run.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checker: Option<String>,
    /// The trace hash, 16 hex digits: a replay must reproduce it.
    pub trace_hash: String,
    pub simulated_secs: f64,
    pub wall_secs: f64,
    pub ops: u64,
    /// The swarm this record belongs to (`A..B`) and its shard (`K/N`), so the merge can
    /// tell a missing shard from a smaller swarm.
    pub seeds: String,
    pub shard: String,
    /// The injected catalogue bug, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bug: Option<String>,
}

impl SeedRecord {
    pub fn passed(&self) -> bool {
        self.verdict == "PASS"
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a seed record serialises")
    }
}

/// The whole swarm, merged from its shards.
#[derive(Debug, Default, PartialEq)]
pub struct Merged {
    pub records: Vec<SeedRecord>,
    pub by_checker: BTreeMap<String, u64>,
    pub simulated_secs: f64,
    pub wall_secs: f64,
    pub ops: u64,
}

impl Merged {
    pub fn failed(&self) -> Vec<&SeedRecord> {
        self.records.iter().filter(|r| !r.passed()).collect()
    }

    /// Seeds per core-hour over the shards' summed wall time.
    pub fn seeds_per_core_hour(&self) -> f64 {
        self.records.len() as f64 * 3600.0 / self.wall_secs.max(1e-9)
    }
}

/// Merges the JSON lines of every part (`(file name, contents)`); errors name the file and
/// line.
pub fn merge(parts: &[(String, String)]) -> Result<Merged, String> {
    let mut by_seed: BTreeMap<u64, (String, SeedRecord)> = BTreeMap::new();
    for (file, text) in parts {
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: SeedRecord = serde_json::from_str(line)
                .map_err(|e| format!("{file}:{}: not a seed record: {e}", n + 1))?;
            if let Some((first, _)) = by_seed.get(&record.seed) {
                return Err(format!(
                    "{file}:{}: seed {} also in {first}: the shards overlap",
                    n + 1,
                    record.seed
                ));
            }
            by_seed.insert(record.seed, (file.clone(), record));
        }
    }
    check_complete(&by_seed)?;
    let mut merged = Merged::default();
    for (_, (_, r)) in by_seed {
        merged.simulated_secs += r.simulated_secs;
        merged.wall_secs += r.wall_secs;
        merged.ops += r.ops;
        if let Some(c) = r.checker.as_ref().filter(|_| !r.passed()) {
            *merged.by_checker.entry(c.clone()).or_default() += 1;
        }
        merged.records.push(r);
    }
    Ok(merged)
}

/// Every swarm the records name is whole: each of its shards ran each of its seeds.
fn check_complete(by_seed: &BTreeMap<u64, (String, SeedRecord)>) -> Result<(), String> {
    let mut swarms: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
    for (_, r) in by_seed.values() {
        let shard = Shard::parse(&r.shard)?;
        swarms
            .entry((r.seeds.clone(), shard.count))
            .or_default()
            .push(r.seed);
    }
    for ((range, count), seen) in swarms {
        let (a, b) = range
            .split_once("..")
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .unwrap_or_else(|| {
                let n = range.parse().unwrap_or(0);
                (n, n)
            });
        let missing: Vec<u64> = (a..=b).filter(|s| seen.binary_search(s).is_err()).collect();
        if let Some(first) = missing.first() {
            let all: Vec<u64> = (a..=b).collect();
            let shards: Vec<String> = (1..=count)
                .filter(|k| {
                    Shard { index: *k, count }
                        .select(&all)
                        .iter()
                        .any(|s| missing.contains(s))
                })
                .map(|k| format!("{k}/{count}"))
                .collect();
            return Err(format!(
                "swarm {range}: {} seeds never ran (first {first}); missing or unfinished shards: {}",
                missing.len(),
                shards.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seed: u64, shard: &str, verdict: &str) -> SeedRecord {
        SeedRecord {
            seed,
            verdict: verdict.into(),
            checker: (verdict == "FAIL").then(|| "linearizability".to_string()),
            trace_hash: format!("{seed:016x}"),
            simulated_secs: 10.0,
            wall_secs: 0.5,
            ops: 100,
            seeds: "1..10".into(),
            shard: shard.into(),
            bug: None,
        }
    }

    fn part(shard: Shard, fail: &[u64]) -> (String, String) {
        let all: Vec<u64> = (1..=10).collect();
        let name = format!("{}/{}", shard.index, shard.count);
        let lines: Vec<String> = shard
            .select(&all)
            .into_iter()
            .map(|s| {
                let verdict = if fail.contains(&s) { "FAIL" } else { "PASS" };
                record(s, &name, verdict).to_line()
            })
            .collect();
        (format!("shard-{}.jsonl", shard.index), lines.join("\n"))
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_range() {
        let all: Vec<u64> = (100..=199).collect();
        let mut seen = Vec::new();
        for k in 1..=7 {
            let part = Shard { index: k, count: 7 }.select(&all);
            assert!((14..=15).contains(&part.len()), "balanced: {}", part.len());
            seen.extend(part);
        }
        seen.sort();
        assert_eq!(seen, all);
    }

    #[test]
    fn shard_parse_refuses_nonsense() {
        assert_eq!(Shard::parse("2/3"), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merge_totals_and_failures() {
        let parts: Vec<_> = (1..=3)
            .map(|k| part(Shard { index: k, count: 3 }, &[4, 9]))
            .collect();
        let merged = merge(&parts).unwrap();
        assert_eq!(merged.records.len(), 10);
        let failed: Vec<u64> = merged.failed().iter().map(|r| r.seed).collect();
        assert_eq!(failed, vec![4, 9]);
        assert_eq!(merged.by_checker["linearizability"], 2);
        assert_eq!(merged.ops, 1000);
        assert!((merged.wall_secs - 5.0).abs() < 1e-9);
    }

    #[test]
    fn merge_refuses_a_missing_shard_and_an_overlap() {
        let parts: Vec<_> = [1, 3]
            .map(|k| part(Shard { index: k, count: 3 }, &[]))
            .to_vec();
        let err = merge(&parts).unwrap_err();
        assert!(err.contains("missing or unfinished shards: 2/3"), "{err}");

        let mut parts: Vec<_> = (1..=3)
            .map(|k| part(Shard { index: k, count: 3 }, &[]))
            .collect();
        parts.push(parts[0].clone());
        let err = merge(&parts).unwrap_err();
        assert!(err.contains("the shards overlap"), "{err}");

        let garbage = vec![("x.jsonl".to_string(), "{\"seed\": 1}".to_string())];
        assert!(merge(&garbage)
            .unwrap_err()
            .starts_with("x.jsonl:1: not a seed record"));
    }
}
