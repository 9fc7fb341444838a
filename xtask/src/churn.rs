//! `cargo xtask bench-all` and `cargo xtask soak`: `leaktrace trace --all`
//! on a host where processes come and go. Rounds of short-lived `leaky`
//! processes (the test fixture: about 20,000 calls each, 146 KiB leaked at
//! exit) run one after the other, untraced and then under `--all` in the
//! mode asked for (`growth`, its default, or `allocations` at its default
//! sampling), while long-lived processes (`soak_grower`) keep growing and
//! churning beside them. After each traced round it prints the daemon's
//! resident memory and CPU, the processes it dropped at exit and the call
//! sites its report holds. It fails unless every exit of the processes it
//! ran was counted, the long-lived ones are still reported with their
//! growth at their growing site, and the daemon's memory stayed flat (the
//! last round within 10% or 8 MiB of the second, the first being warm-up).
//! `soak` is the same for a given time (a week of a host's process churn
//! compressed into minutes).
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    compile_c, leaktrace_binary,
    redis::{cpu_ticks, kill},
    workspace_root,
};

/// The daemon's anonymous resident memory (`RssAnon`), in MiB: what it
/// allocated, not the pages of the files it reads (which the kernel can
/// take back).
fn rss_anon_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// How long the churn goes on.
#[derive(Clone, Copy)]
pub(crate) enum Until {
    Rounds(usize),
    Minutes(u64),
}

/// What the report says after a round.
struct Counts {
    exited: u64,
    sites: usize,
    /// Bytes at `grow_slowly` in each long-lived process still reported.
    grower_bytes: Vec<(u32, u64)>,
}

/// Runs `program` `count` times, one after the other; seconds taken.
fn run_processes(program: &Path, count: usize) -> Result<f64> {
    let started = Instant::now();
    for _ in 0..count {
        let status = Command::new(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running leaky")?;
        if !status.success() {
            bail!("leaky failed: {status}");
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The report's counts, with the bytes at `grow_slowly` in `growers`.
fn report_counts(path: &Path, growers: &[u32]) -> Result<Counts> {
    let text = std::fs::read_to_string(path).context("reading the --all report")?;
    let report: serde_json::Value = serde_json::from_str(&text)?;
    let sites = report["sites"].as_array().map_or(&[][..], Vec::as_slice);
    let grower_bytes = growers
        .iter()
        .map(|&pid| {
            let bytes = sites
                .iter()
                .filter(|site| site["pid"].as_u64() == Some(u64::from(pid)))
                .filter(|site| {
                    site["frames"].as_array().is_some_and(|frames| {
                        frames
                            .iter()
                            .any(|f| f["function"].as_str() == Some("grow_slowly"))
                    })
                })
                .filter_map(|site| site["bytes"].as_u64())
                .sum();
            (pid, bytes)
        })
        .collect();
    Ok(Counts {
        exited: report["totals"]["exited_processes"].as_u64().unwrap_or(0),
        sites: sites.len(),
        grower_bytes,
    })
}

/// Waits for a report written after `after` (two report intervals and
/// more: the last exits drained and reported) and reads it.
fn fresh_counts(path: &Path, growers: &[u32], after: std::time::SystemTime) -> Result<Counts> {
    let waited = Instant::now();
    loop {
        let fresh = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified > after);
        if fresh && let Ok(counts) = report_counts(path, growers) {
            return Ok(counts);
        }
        if waited.elapsed() > Duration::from_mins(2) {
            bail!("no report written for 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Long-lived processes growing 256 KiB/s each (up to 64 MiB), killed
/// when dropped.
struct Growers(Vec<std::process::Child>);

impl Growers {
    fn start(program: &Path, count: usize) -> Result<Growers> {
        let mut growers = Growers(Vec::new());
        for _ in 0..count {
            let mut child = Command::new(program)
                .args(["256", "64"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting soak_grower")?;
            let mut ready = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
                &mut ready,
            )?;
            growers.0.push(child);
        }
        Ok(growers)
    }

    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(std::process::Child::id).collect()
    }
}

impl Drop for Growers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _: std::io::Result<()> = child.kill();
            let _: std::io::Result<_> = child.wait();
        }
    }
}

pub(crate) fn run(until: Until, processes: usize, mode: &str, growers: usize) -> Result<()> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let fixtures = workspace_root().join("leaktrace/tests/fixtures");
    let leaky = dir.join("leaky");
    compile_c(&fixtures.join("leaky.c"), &leaky)?;
    let grower = dir.join("soak_grower");
    compile_c(&fixtures.join("soak_grower.c"), &grower)?;
    let untraced = run_processes(&leaky, processes)?;
    let report = dir.join("churn.json");
    let mut tracer = Command::new(leaktrace_binary())
        .args(["trace", "--all", "--mode", mode, "--interval", "500ms"])
        .args(["--format", "json"])
        .arg("--output")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting leaktrace trace --all")?;
    crate::wait_for_stderr(&mut tracer, "leaktrace: tracing all processes")?;
    let pid = tracer.id();
    let result = churn(
        &leaky, &grower, &report, pid, until, processes, growers, untraced,
    );
    // SAFETY: signalling our own child.
    unsafe { kill(pid as i32, 15) };
    tracer.wait()?;
    let summary = result?;
    println!("{summary}");
    Ok(())
}

/// The rounds, under the tracer `pid`; their verdict.
#[allow(clippy::too_many_arguments)]
fn churn(
    leaky: &Path,
    grower: &Path,
    report: &Path,
    pid: u32,
    until: Until,
    processes: usize,
    growers: usize,
    untraced: f64,
) -> Result<String> {
    let growers = Growers::start(grower, growers)?;
    let grower_pids = growers.pids();
    println!(
        "trace --all: {processes} leaky processes per round, one after the other ({:.2} ms each untraced), {} long-lived growing processes",
        untraced * 1000.0 / processes as f64,
        grower_pids.len()
    );
    println!(
        "{:>5} {:>10} {:>10} {:>9} {:>8} {:>11} {:>11} {:>14}",
        "round",
        "processes",
        "ms each",
        "exited",
        "sites",
        "daemon RSS",
        "daemon CPU",
        "growers' KiB"
    );
    let ticks_per_second = 100.0;
    let started = Instant::now();
    let (mut warm_rss, mut last_rss, mut last) = (None, 0.0, None);
    let mut round = 0;
    while match until {
        Until::Rounds(rounds) => round < rounds,
        Until::Minutes(minutes) => started.elapsed() < Duration::from_mins(minutes),
    } {
        round += 1;
        let cpu_before = cpu_ticks(pid);
        let seconds = run_processes(leaky, processes)?;
        let cpu = (cpu_ticks(pid) - cpu_before) as f64 / ticks_per_second;
        let counts = fresh_counts(report, &grower_pids, std::time::SystemTime::now())?;
        last_rss = rss_anon_mib(pid);
        if round == 2 {
            warm_rss = Some(last_rss);
        }
        let grown: Vec<String> = counts
            .grower_bytes
            .iter()
            .map(|(_, bytes)| (bytes / 1024).to_string())
            .collect();
        println!(
            "{round:>5} {:>10} {:>10.2} {:>9} {:>8} {last_rss:>7.1} MiB {:>8.0} ms {:>14}",
            round * processes,
            seconds * 1000.0 / processes as f64,
            counts.exited,
            counts.sites,
            cpu * 1000.0,
            grown.join(",")
        );
        last = Some(counts);
    }
    drop(growers);
    let last = last.context("no round ran")?;
    let ran = (round * processes) as u64;
    let mut failures = Vec::new();
    // Other processes of the host exit too: at least ours were counted.
    if last.exited < ran {
        failures.push(format!(
            "{ran} processes ran and exited, but the report counts {} exits",
            last.exited
        ));
    }
    for (grower, bytes) in &last.grower_bytes {
        if *bytes == 0 {
            failures.push(format!(
                "long-lived process {grower} has no growth at grow_slowly"
            ));
        }
    }
    if let Some(warm) = warm_rss
        && last_rss > warm + (warm * 0.1).max(8.0)
    {
        failures.push(format!(
            "the daemon's anonymous memory grew from {warm:.1} MiB (round 2) to {last_rss:.1} MiB"
        ));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(format!(
        "{ran} short processes in {round} rounds over {:.0} s: every exit counted ({} exits), the long-lived processes' growth at their site, the daemon's anonymous memory {} MiB at round 2 and {last_rss:.1} MiB at the end",
        started.elapsed().as_secs_f64(),
        last.exited,
        warm_rss.map_or("-".to_string(), |w| format!("{w:.1}")),
    ))
}
