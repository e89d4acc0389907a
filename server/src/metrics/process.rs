//! The standard `process_*` families Prometheus client libraries export (etcd's Go client
//! does), read from `/proc/self` when `/metrics` is rendered: resident and virtual memory, CPU
//! seconds, open and maximum file descriptors, start time. Where `/proc` cannot be read, the
//! families are left out rather than reported as zero.

use std::fmt::Write as _;

/// Clock ticks per second of `/proc`'s CPU times (Linux's USER_HZ, 100 on every platform it
/// runs on).
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_BYTES: u64 = 4096;

pub fn render(out: &mut String) {
    let Some(stat) = read_stat() else {
        return;
    };
    let mut family = |name: &str, help: &str, kind: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    family(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
        stat.cpu_ticks as f64 / TICKS_PER_SECOND,
    );
    family(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        (stat.rss_pages * PAGE_BYTES) as f64,
    );
    family(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        "gauge",
        stat.vsize_bytes as f64,
    );
    if let Some(boot) = boot_time() {
        family(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            boot + stat.start_ticks as f64 / TICKS_PER_SECOND,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            fds.count() as f64,
        );
    }
    if let Some(max) = max_fds() {
        family(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            "gauge",
            max,
        );
    }
}

struct Stat {
    cpu_ticks: u64,
    start_ticks: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

/// `/proc/self/stat`: fields after the command name (which may hold spaces, so it is cut at
/// its closing parenthesis): utime 14, stime 15, starttime 22, vsize 23, rss 24 (1-based).
fn read_stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn max_fds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let mut out = String::new();
        super::render(&mut out);
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                out.contains(&format!("\n{family} ")),
                "{family} missing:\n{out}"
            );
        }
    }
}
