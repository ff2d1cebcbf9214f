//! One `ROW` line per figure of the benchmark table: the figure, its
//! baseline measured in the same run, the ratio and the target, and whether
//! the target is met. `scripts/bench.sh` runs every bench and collects these
//! lines into the table it prints (and BENCHMARKS.md records).

#![allow(dead_code)]

/// What a figure must reach.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// value ÷ baseline at least this.
    RatioAtLeast(f64),
    /// value ÷ baseline at most this.
    RatioAtMost(f64),
    /// The value itself at most this (in its unit).
    AtMost(f64),
    /// The value itself at least this (in its unit).
    AtLeast(f64),
}

/// Print the row of `figure`: `value` in `unit`, beside `baseline` (same unit) if any.
pub fn row(figure: &str, value: f64, unit: &str, baseline: Option<f64>, goal: Goal) {
    let ratio = baseline.map(|b| value / b);
    let (target, met) = match goal {
        Goal::RatioAtLeast(r) => (format!("≥ {r}×"), ratio.is_some_and(|x| x >= r)),
        Goal::RatioAtMost(r) => (format!("≤ {r}×"), ratio.is_some_and(|x| x <= r)),
        Goal::AtMost(v) => (format!("≤ {} {unit}", fmt(v)), value <= v),
        Goal::AtLeast(v) => (format!("≥ {} {unit}", fmt(v)), value >= v),
    };
    println!(
        "ROW | {figure} | {} {unit} | {} | {} | {target} | {} |",
        fmt(value),
        baseline.map_or("—".into(), |b| format!("{} {unit}", fmt(b))),
        ratio.map_or("—".into(), |r| format!("{r:.2}×")),
        if met { "yes" } else { "**no**" }
    );
}

/// A number with precision suited to its size.
fn fmt(v: f64) -> String {
    match v.abs() {
        x if x >= 100.0 => format!("{v:.0}"),
        x if x >= 10.0 => format!("{v:.1}"),
        x if x >= 0.1 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// Median of `samples` (sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// CPU time (user + system) this process used so far, in seconds.
pub fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The peak resident memory of this process so far (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib / 1024.0
}
