//! `cargo xtask bench-all`: `leaktrace trace --all` on a host where
//! processes come and go. Rounds of short-lived `leaky` processes (the test
//! fixture: about 20,000 calls each, 146 KiB leaked at exit) run one after
//! the other, untraced and then under `--all` in the mode asked for
//! (`growth`, its default, or `allocations` at its default sampling).
//! After each traced round it prints the daemon's resident memory, the
//! processes it dropped at exit and the call sites its report holds: with
//! every exited process let go, they stay flat however many processes ran.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    compile_c, leaktrace_binary,
    redis::{cpu_ticks, kill, rss_mib},
    workspace_root,
};

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

/// The report's (traced processes, exited processes, call sites).
fn report_counts(path: &Path) -> Result<(usize, u64, usize)> {
    let text = std::fs::read_to_string(path).context("reading the --all report")?;
    let report: serde_json::Value = serde_json::from_str(&text)?;
    let count = |key: &str| report[key].as_array().map_or(0, Vec::len);
    Ok((
        count("processes"),
        report["totals"]["exited_processes"].as_u64().unwrap_or(0),
        count("sites"),
    ))
}

pub(crate) fn run(rounds: usize, processes: usize, mode: &str) -> Result<()> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let leaky = dir.join("leaky");
    compile_c(
        &workspace_root().join("leaktrace/tests/fixtures/leaky.c"),
        &leaky,
    )?;
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
    println!(
        "trace --all --mode {mode}: {processes} leaky processes per round, one after the other: {:.2} ms each untraced",
        untraced * 1000.0 / processes as f64
    );
    println!(
        "{:>5} {:>10} {:>12} {:>9} {:>8} {:>11} {:>13}",
        "round", "processes", "ms each", "exited", "sites", "daemon RSS", "daemon CPU"
    );
    let ticks_per_second = 100.0;
    for round in 1..=rounds {
        let cpu_before = cpu_ticks(pid);
        let seconds = run_processes(&leaky, processes)?;
        let cpu = (cpu_ticks(pid) - cpu_before) as f64 / ticks_per_second;
        // Two report intervals: the last exits are drained and reported
        // (a daemon still catching up writes its first report later).
        std::thread::sleep(Duration::from_millis(1200));
        let waited = Instant::now();
        let (_, exited, sites) = loop {
            match report_counts(&report) {
                Ok(counts) => break counts,
                Err(_) if waited.elapsed() < Duration::from_mins(1) => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(err) => return Err(err),
            }
        };
        println!(
            "{round:>5} {:>10} {:>12.2} {exited:>9} {sites:>8} {:>7.1} MiB {:>9.0} ms",
            round * processes,
            seconds * 1000.0 / processes as f64,
            rss_mib(pid),
            cpu * 1000.0
        );
    }
    // SAFETY: signalling our own child.
    unsafe { kill(pid as i32, 15) };
    tracer.wait()?;
    Ok(())
}
