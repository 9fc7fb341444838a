//! `cargo xtask bench-go`: what tracing a Go service costs it, by mode.
//! A Go allocation loop (`bench/go_alloc.go`: 64 B and 1 KiB objects into
//! a ring of live ones, the collector always running; no runtime/pprof,
//! so its heap profile is off), interleaved over rounds:
//! - untraced;
//! - `trace --pid` (allocations mode, the default): the Go heap from the
//!   runtime's own sampler, which leaktrace turns on at 512 KiB;
//! - the same with `--go-heap-sampling off` (goroutines only);
//! - `--go-heap-sampling 1` (every allocation in the runtime's profile);
//! - `--mode growth` (page faults with frame-pointer stacks).
//!
//! Printed: medians of ns per allocation, and the speed relative to
//! untraced (1.00x = no cost).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{leaktrace_binary, wait_for_stderr, workspace_root};

const ALLOCATIONS: &str = "5000000";

/// The traced configurations: a label and leaktrace's extra arguments
/// (None: untraced).
const CONFIGS: [(&str, Option<&[&str]>); 5] = [
    ("untraced", None),
    ("trace --pid (sampling on at 512k)", Some(&[])),
    (
        "--go-heap-sampling off",
        Some(&["--go-heap-sampling", "off"]),
    ),
    (
        "--go-heap-sampling 1 (every allocation)",
        Some(&["--go-heap-sampling", "1"]),
    ),
    ("--mode growth", Some(&["--mode", "growth"])),
];

/// The newest Go toolchain installed.
fn go_command() -> PathBuf {
    ["1.23", "1.22", "1.21", "1.19"]
        .iter()
        .map(|r| PathBuf::from(format!("/usr/lib/go-{r}/bin/go")))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("go"))
}

fn build(output: &Path) -> Result<()> {
    let source = workspace_root().join("xtask/bench/go_alloc.go");
    let status = Command::new(go_command())
        .args(["build", "-o"])
        .arg(output)
        .arg(&source)
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", workspace_root().join("target/bench/gocache"))
        .env("HOME", workspace_root().join("target/bench"))
        .status()
        .context("running go build (Go is installed by cargo xtask test's setup)")?;
    if !status.success() {
        bail!("go build of {} failed", source.display());
    }
    Ok(())
}

/// One measurement: the loop's ns per allocation, traced with `extra` if
/// given.
fn measure(program: &Path, extra: Option<&[&str]>) -> Result<f64> {
    let mut child = Command::new(program)
        .arg(ALLOCATIONS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the Go loop")?;
    let mut stdout = std::io::BufReader::new(child.stdout.take().context("piped")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line)?;
    if line.trim() != "ready" {
        bail!("the Go loop said {line:?}, not ready");
    }
    let tracer = match extra {
        None => None,
        Some(extra) => {
            let mut tracer = Command::new(leaktrace_binary())
                .args(["trace", "--pid", &child.id().to_string()])
                .args(extra)
                .args(["--format", "json", "--output", "/dev/null"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting leaktrace trace --pid")?;
            wait_for_stderr(&mut tracer, "leaktrace: tracing")?;
            Some(tracer)
        }
    };
    writeln!(child.stdin.as_mut().context("piped")?, "go")?;
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line)?;
    child.wait()?;
    if let Some(mut tracer) = tracer {
        tracer.wait()?;
    }
    line.trim()
        .parse()
        .with_context(|| format!("the Go loop printed {line:?}"))
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) fn run(rounds: usize) -> Result<()> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let program = dir.join("go_alloc");
    build(&program)?;
    let mut samples = vec![Vec::new(); CONFIGS.len()];
    for round in 0..rounds {
        for (i, (label, extra)) in CONFIGS.iter().enumerate() {
            eprintln!("xtask: round {round}, {label}");
            samples[i].push(measure(&program, *extra)?);
        }
    }
    let untraced = median(&samples[0]);
    println!("a Go allocation loop (no pprof), median of {rounds} interleaved rounds:");
    println!("  {:<42} {:>12} {:>7}", "mode", "ns/alloc", "speed");
    for ((label, _), s) in CONFIGS.iter().zip(&samples) {
        let ns = median(s);
        println!("  {label:<42} {ns:>12.1} {:>6.2}x", untraced / ns);
    }
    println!("(speed: relative to untraced, 1.00x = no cost)");
    Ok(())
}
