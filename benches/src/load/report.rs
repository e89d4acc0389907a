//! The side-by-side report: results of repeated runs against two systems, reduced to the
//! median of each metric, and the members' memory after the load, as markdown.
//!
//! Input: one JSON [`Record`] per line (what `strata-bench <workload> --json` prints), and
//! optionally memory samples, one `system member rss_kib` line each. Each metric's median is
//! taken on its own across a system's runs of a workload (the median of p99s, not the p99 of
//! merged runs); errors are summed, since one failing run matters whatever the others did.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::stats::Summary;

/// One run of one workload against one system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Which system ran it (`--label`): the report compares two of them.
    pub system: String,
    pub workload: String,
    #[serde(default)]
    pub rep: Option<u32>,
    pub clients: usize,
    pub conns: usize,
    pub total: u64,
    #[serde(flatten)]
    pub summary: Summary,
    /// User + system CPU of the system's members over the run (setup included), per
    /// successful operation, in µs; `ci/bench.sh` adds it from `/proc/PID/stat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_op: Option<f64>,
}

/// Resident memory of one member after the load.
#[derive(Clone, Debug, PartialEq)]
pub struct RssSample {
    pub system: String,
    pub member: String,
    pub rss_kib: u64,
}

/// Parses JSON-lines records; blank lines are skipped.
pub fn parse_records(text: &str) -> Result<Vec<Record>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| format!("results line {}: {e}", i + 1))
        })
        .collect()
}

/// Parses `system member rss_kib` lines.
pub fn parse_rss(text: &str) -> Result<Vec<RssSample>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [system, member, kib] = fields[..] else {
                return Err(format!("rss line {}: want `system member kib`", i + 1));
            };
            let rss_kib = kib
                .parse()
                .map_err(|e| format!("rss line {}: {kib}: {e}", i + 1))?;
            Ok(RssSample {
                system: system.into(),
                member: member.into(),
                rss_kib,
            })
        })
        .collect()
}

/// The median of each metric over `runs` (none: `None`).
pub fn median(runs: &[&Summary]) -> Option<Summary> {
    if runs.is_empty() {
        return None;
    }
    let of = |metric: fn(&Summary) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(|s| metric(s)).collect();
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        }
    };
    Some(Summary {
        ok: of(|s| s.ok as f64).round() as u64,
        errors: runs.iter().map(|s| s.errors).sum(),
        elapsed_secs: of(|s| s.elapsed_secs),
        ops_per_sec: of(|s| s.ops_per_sec),
        p50_ms: of(|s| s.p50_ms),
        p90_ms: of(|s| s.p90_ms),
        p99_ms: of(|s| s.p99_ms),
        max_ms: of(|s| s.max_ms),
        // The series is one run's; across runs the worst run's slowest second is what counts.
        per_second: Vec::new(),
        slowest_second_ratio: runs
            .iter()
            .filter_map(|s| s.slowest_second_ratio)
            .min_by(f64::total_cmp),
    })
}

/// The markdown report comparing `candidate` with `baseline`, workloads in first-run order.
pub fn markdown(records: &[Record], rss: &[RssSample], baseline: &str, candidate: &str) -> String {
    let mut workloads: Vec<&str> = Vec::new();
    for r in records {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    let runs = |workload: &str, system: &str| -> Vec<&Summary> {
        records
            .iter()
            .filter(|r| r.workload == workload && r.system == system)
            .map(|r| &r.summary)
            .collect()
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | {baseline} ops/s | {candidate} ops/s | {candidate}/{baseline} ops/s \
         | {baseline} p99 ms | {candidate} p99 ms | {candidate}/{baseline} p99 \
         | {baseline} CPU µs/op | {candidate} CPU µs/op | {candidate}/{baseline} CPU/op \
         | errors {baseline} / {candidate} | runs |"
    );
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let cpu = |workload: &str, system: &str| -> Option<f64> {
        let mut v: Vec<f64> = records
            .iter()
            .filter(|r| r.workload == workload && r.system == system)
            .filter_map(|r| r.server_cpu_us_per_op)
            .collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    };
    for &workload in &workloads {
        let (b_runs, c_runs) = (runs(workload, baseline), runs(workload, candidate));
        let (b, c) = (median(&b_runs), median(&c_runs));
        let cell =
            |s: &Option<Summary>, f: fn(&Summary) -> String| s.as_ref().map_or("–".into(), f);
        let _ = writeln!(
            out,
            "| {workload} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
            cell(&b, |s| format!("{:.0}", s.ops_per_sec)),
            cell(&c, |s| format!("{:.0}", s.ops_per_sec)),
            ratio(
                b.as_ref().map(|s| s.ops_per_sec),
                c.as_ref().map(|s| s.ops_per_sec)
            ),
            cell(&b, |s| ms(s.p99_ms)),
            cell(&c, |s| ms(s.p99_ms)),
            ratio(b.as_ref().map(|s| s.p99_ms), c.as_ref().map(|s| s.p99_ms)),
            cpu(workload, baseline).map_or("–".into(), |v| format!("{v:.0}")),
            cpu(workload, candidate).map_or("–".into(), |v| format!("{v:.0}")),
            ratio(cpu(workload, baseline), cpu(workload, candidate)),
            cell(&b, |s| s.errors.to_string()),
            cell(&c, |s| s.errors.to_string()),
            b_runs.len(),
            c_runs.len(),
        );
    }

    out.push_str(
        "\nMedians per run: operations that succeeded, latency in ms; the slowest whole second \
         of the worst run over its median second (below 0.5: a collapse):\n\n",
    );
    out.push_str(
        "| workload | system | ops | p50 | p90 | p99 | max | slowest s / median s |\n\
         |---|---|--:|--:|--:|--:|--:|--:|\n",
    );
    for &workload in &workloads {
        for system in [baseline, candidate] {
            if let Some(s) = median(&runs(workload, system)) {
                let _ = writeln!(
                    out,
                    "| {workload} | {system} | {} | {} | {} | {} | {} | {} |",
                    s.ok,
                    ms(s.p50_ms),
                    ms(s.p90_ms),
                    ms(s.p99_ms),
                    ms(s.max_ms),
                    s.slowest_second_ratio
                        .map_or("–".into(), |r| format!("{r:.2}"))
                );
            }
        }
    }

    if !rss.is_empty() {
        out.push_str(&rss_table(rss, baseline, candidate));
    }
    out
}

/// Members side by side in the order they were sampled, then the sum.
fn rss_table(rss: &[RssSample], baseline: &str, candidate: &str) -> String {
    let of =
        |system: &str| -> Vec<&RssSample> { rss.iter().filter(|s| s.system == system).collect() };
    let (b, c) = (of(baseline), of(candidate));
    let mib = |kib: u64| format!("{:.0}", kib as f64 / 1024.0);
    let mut out = format!(
        "\nResident memory (VmRSS) after the load, MiB:\n\n\
         | member | {baseline} | {candidate} |\n|---|--:|--:|\n"
    );
    for i in 0..b.len().max(c.len()) {
        let name = |s: &[&RssSample]| s.get(i).map_or("–".into(), |s| s.member.clone());
        let value = |s: &[&RssSample]| s.get(i).map_or("–".into(), |s| mib(s.rss_kib));
        let _ = writeln!(
            out,
            "| {} / {} | {} | {} |",
            name(&b),
            name(&c),
            value(&b),
            value(&c)
        );
    }
    let total = |s: &[&RssSample]| mib(s.iter().map(|s| s.rss_kib).sum());
    let _ = writeln!(out, "| total | {} | {} |", total(&b), total(&c));
    out
}

fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

fn ratio(baseline: Option<f64>, candidate: Option<f64>) -> String {
    match (baseline, candidate) {
        (Some(b), Some(c)) if b > 0.0 => format!("{:.2}", c / b),
        _ => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(system: &str, workload: &str, ops_per_sec: f64, p99_ms: f64) -> Record {
        Record {
            system: system.into(),
            workload: workload.into(),
            rep: None,
            clients: 16,
            conns: 4,
            total: 1000,
            summary: Summary {
                ok: 1000,
                errors: 0,
                elapsed_secs: 1000.0 / ops_per_sec,
                ops_per_sec,
                p50_ms: p99_ms / 4.0,
                p90_ms: p99_ms / 2.0,
                p99_ms,
                max_ms: p99_ms * 2.0,
                per_second: Vec::new(),
                slowest_second_ratio: Some(0.9),
            },
            server_cpu_us_per_op: Some(1e6 / ops_per_sec),
        }
    }

    #[test]
    fn records_round_trip_through_json_lines() {
        let r = record("etcd", "put-seq", 2000.0, 8.0);
        let line = serde_json::to_string(&r).unwrap();
        assert!(
            line.contains("\"ops_per_sec\":2000.0"),
            "flat record: {line}"
        );
        assert_eq!(
            parse_records(&format!("{line}\n\n{line}\n")).unwrap(),
            [r.clone(), r]
        );
        assert!(parse_records("{")
            .unwrap_err()
            .starts_with("results line 1:"));
    }

    #[test]
    fn each_metric_takes_its_own_median_and_errors_add_up() {
        let runs = [
            record("s", "w", 100.0, 9.0).summary,
            record("s", "w", 300.0, 1.0).summary,
            Summary {
                errors: 2,
                ..record("s", "w", 200.0, 5.0).summary
            },
        ];
        let m = median(&runs.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!((m.ops_per_sec, m.p99_ms, m.errors), (200.0, 5.0, 2));
        let even = median(&runs[..2].iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(even.ops_per_sec, 200.0);
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn report_compares_candidate_with_baseline() {
        let records = [
            record("etcd", "put-seq", 2000.0, 8.0),
            record("strata", "put-seq", 3000.0, 4.0),
            record("etcd", "range-linearizable", 5000.0, 2.0),
        ];
        let rss = parse_rss("etcd e1 20480\nstrata s1 10240\n").unwrap();
        let md = markdown(&records, &rss, "etcd", "strata");
        assert!(
            md.contains(
                "| put-seq | 2000 | 3000 | 1.50 | 8.00 | 4.00 | 0.50 | 500 | 333 | 0.67 | 0 / 0 | 1 / 1 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| range-linearizable | 5000 | – | – | 2.00 | – | – | 200 | – | – | 0 / – | 1 / 0 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| put-seq | strata | 1000 | 1.00 | 2.00 | 4.00 | 8.00 |"),
            "{md}"
        );
        assert!(md.contains("| e1 / s1 | 20 | 10 |"), "{md}");
        assert!(md.contains("| total | 20 | 10 |"), "{md}");
        assert!(parse_rss("etcd e1").is_err());
    }
}
