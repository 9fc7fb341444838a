//! `cargo xtask bench`: what leaktrace costs the process it traces, and
//! what the daemon can take.
//!
//! One malloc+free loop (xtask/bench/pairs.c) runs, interleaved in one
//! invocation and several times each (these machines are noisy: only ratios
//! within one run mean anything):
//! - untraced;
//! - floor: the same probes at the same offsets, attached to empty programs;
//! - leaktrace exact (`leaktrace run`, .`eh_frame` stacks), which also checks
//!   no event was lost;
//! - leaktrace exact with frame-pointer stacks (`--stack-mode fp`);
//! - leaktrace sampling (`--sample-bytes 512k`, the continuous-mode rate);
//! - leaktrace with probes at offset 0 (`--probe-placement entry`);
//! - bpftrace doing what bcc memleak does (Debian's bpftrace, installed if
//!   missing; `BPFTRACE_MAP_KEYS_MAX` raised so its maps do not fill).
//!
//! Then the daemon's replay benchmark (benches/ingest.rs).
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{compile_c, leaktrace_binary, workspace_root};

/// A bcc-memleak-like script: size at malloc entry per thread, the block
/// with its stack at malloc's return, deleted at free.
const BPFTRACE_MEMLEAK: &str = r"
uprobe:LIBC:malloc /pid == cpid/ { @size[tid] = arg0; }
uretprobe:LIBC:malloc /pid == cpid && @size[tid]/ { @allocs[retval] = (@size[tid], ustack); delete(@size[tid]); }
uprobe:LIBC:free /pid == cpid/ { delete(@allocs[arg0]); }
END { clear(@allocs); clear(@size); }
";

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Untraced,
    Floor,
    Exact,
    ExactFp,
    Sampled,
    ExactAtEntry,
    Bpftrace,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Floor => "floor (empty programs)",
            Mode::Exact => "leaktrace exact",
            Mode::ExactFp => "leaktrace exact, fp stacks",
            Mode::Sampled => "leaktrace sampled 512k",
            Mode::ExactAtEntry => "leaktrace exact, offset 0",
            Mode::Bpftrace => "bpftrace memleak-like",
        }
    }
}

/// ns per pair, as the loop printed it (last line of its stdout).
fn parse_ns(stdout: &[u8]) -> Result<f64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .next_back()
        .context("the loop printed no ns/pair figure")
}

struct Measured {
    ns: f64,
    lost: u64,
    events: u64,
    /// The daemon's CPU (ms) and peak memory (MiB), from its last line.
    daemon: Option<(f64, f64)>,
}

/// "leaktrace: the daemon used X ms of CPU and Y MiB of memory at most"
fn daemon_usage(stderr: &[u8]) -> Option<(f64, f64)> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().find(|l| l.contains("the daemon used"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let number_before = |unit: &str| -> Option<f64> {
        let at = words.iter().position(|w| *w == unit)?;
        words.get(at.checked_sub(1)?)?.parse().ok()
    };
    Some((number_before("ms")?, number_before("MiB")?))
}

fn leaktrace_run(extra: &[&str], program: &Path, pairs: u64, report: &Path) -> Result<Measured> {
    let output = Command::new(leaktrace_binary())
        .args(["run", "--format", "json", "--output"])
        .arg(report)
        .args(extra)
        .arg("--")
        .arg(program)
        .arg(pairs.to_string())
        .output()?;
    if !output.status.success() {
        bail!(
            "leaktrace run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let json = std::fs::read_to_string(report)?;
    let field = |name: &str| -> u64 {
        json.split(&format!("\"{name}\": "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok(Measured {
        ns: parse_ns(&output.stdout)?,
        lost: field("total"),
        events: field("events"),
        daemon: daemon_usage(&output.stderr),
    })
}

fn measure(mode: Mode, program: &Path, pairs: u64, dir: &Path) -> Result<Measured> {
    let report = dir.join("report.json");
    match mode {
        Mode::Untraced => {
            let output = Command::new(program).arg(pairs.to_string()).output()?;
            Ok(Measured {
                ns: parse_ns(&output.stdout)?,
                lost: 0,
                events: 0,
                daemon: None,
            })
        }
        Mode::Floor => leaktrace_run(&["--empty-programs"], program, pairs, &report),
        Mode::Exact => leaktrace_run(&[], program, pairs, &report),
        Mode::ExactFp => leaktrace_run(&["--stack-mode", "fp"], program, pairs, &report),
        Mode::Sampled => leaktrace_run(&["--sample-bytes", "512k"], program, pairs, &report),
        Mode::ExactAtEntry => {
            leaktrace_run(&["--probe-placement", "entry"], program, pairs, &report)
        }
        Mode::Bpftrace => {
            let script = BPFTRACE_MEMLEAK.replace("LIBC", LIBC);
            let output = Command::new("bpftrace")
                .arg("-e")
                .arg(script)
                .arg("-c")
                .arg(format!("{} {pairs}", program.display()))
                .env("BPFTRACE_MAP_KEYS_MAX", (4 * pairs + 65536).to_string())
                .output()
                .context("running bpftrace")?;
            Ok(Measured {
                ns: parse_ns(&output.stdout)?,
                lost: 0,
                events: 0,
                daemon: None,
            })
        }
    }
}

fn ensure_bpftrace() -> Result<()> {
    if Command::new("bpftrace").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian's bpftrace (the bench compares against it)");
    crate::run(Command::new("apt-get").args(["install", "-y", "-q", "bpftrace"]))
}

fn stats(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[0], sorted[sorted.len() / 2])
}

pub(crate) fn run(pairs: u64, runs: usize) -> Result<()> {
    ensure_bpftrace()?;
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let program = dir.join("pairs");
    compile_c(&workspace_root().join("xtask/bench/pairs.c"), &program)?;

    let modes = [
        Mode::Untraced,
        Mode::Floor,
        Mode::Exact,
        Mode::ExactFp,
        Mode::Sampled,
        Mode::ExactAtEntry,
        Mode::Bpftrace,
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    // Daemon (CPU ms, peak MiB) per run, for the leaktrace modes.
    let mut daemon: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
    let (mut events, mut lost) = (0, 0);
    eprintln!(
        "xtask: {runs} interleaved rounds of {pairs} malloc+free pairs in {} modes",
        modes.len()
    );
    for round in 0..runs {
        for (i, &mode) in modes.iter().enumerate() {
            let measured = measure(mode, &program, pairs, &dir)
                .with_context(|| format!("round {round}, {}", mode.label()))?;
            samples[i].push(measured.ns);
            if let Some(usage) = measured.daemon {
                daemon[i].push(usage);
            }
            if mode == Mode::Exact {
                events += measured.events;
                lost += measured.lost;
            }
        }
    }
    let medians: Vec<f64> = samples.iter().map(|s| stats(s).1).collect();
    let (untraced, floor) = (medians[0], medians[1]);
    println!("malloc+free pair, {runs} rounds of {pairs} pairs:");
    println!(
        "  {:<28} {:>10} {:>10} {:>9} {:>11}",
        "mode", "min ns", "median ns", "x floor", "x untraced"
    );
    for (i, mode) in modes.iter().enumerate() {
        let (min, median) = stats(&samples[i]);
        println!(
            "  {:<28} {:>10.1} {:>10.1} {:>9.2} {:>11.0}",
            mode.label(),
            min,
            median,
            median / floor,
            median / untraced
        );
    }
    let exact = medians[2];
    println!(
        "  leaktrace exact is {:.2}x the floor and {:.1}x cheaper than bpftrace; placement saves {:.1}x",
        exact / floor,
        medians[6] / exact,
        medians[5] / exact
    );
    println!(
        "  .eh_frame stacks cost {:.0} ns more per recorded allocation than frame-pointer stacks",
        exact - medians[3]
    );
    println!(
        "  sampling at 512k costs {:.2}x the floor (its calls still trap twice)",
        medians[4] / floor
    );
    println!("  the daemon, per run of {pairs} pairs (median CPU, median peak memory):");
    for (i, mode) in modes.iter().enumerate() {
        if daemon[i].is_empty() {
            continue;
        }
        let cpu: Vec<f64> = daemon[i].iter().map(|d| d.0).collect();
        let mib: Vec<f64> = daemon[i].iter().map(|d| d.1).collect();
        let (_, cpu) = stats(&cpu);
        let (_, mib) = stats(&mib);
        println!(
            "    {:<28} {:>8.0} ms CPU {:>6.0} MiB",
            mode.label(),
            cpu,
            mib
        );
    }
    println!(
        "live drain: {events} events in the exact runs, {lost} lost ({:.0} events/s from one thread at the median)",
        2.0 * 1e9 / exact
    );
    if lost > 0 {
        println!("  WARNING: events were lost");
    }
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "bench",
                "--quiet",
                "--package",
                "leaktrace",
                "--features",
                "bench",
                "--bench",
                "ingest",
            ]),
    )
}
