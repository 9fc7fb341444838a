//! `cargo xtask bench`: the cost leaktrace adds to a malloc+free loop, and
//! the daemon's own throughput and memory.
//!
//! The loop runs untraced and under `leaktrace run`, interleaved in one
//! invocation (these machines are noisy: only ratios within one run mean
//! anything), several times; min and median are printed. The traced runs
//! also check that no event was lost, so the live event rate they reach
//! is a rate the daemon drained without loss.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{compile_c, leaktrace_binary, workspace_root};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

/// ns per pair printed by the loop program.
fn parse_ns(stdout: &[u8]) -> Result<f64> {
    String::from_utf8_lossy(stdout)
        .trim()
        .parse()
        .context("the loop printed no ns/pair figure")
}

fn untraced(program: &Path, pairs: u64) -> Result<f64> {
    let output = Command::new(program).arg(pairs.to_string()).output()?;
    parse_ns(&output.stdout)
}

/// Returns ns/pair, events and lost events of one traced run.
fn traced(program: &Path, pairs: u64, report: &Path) -> Result<(f64, u64, u64)> {
    let output = Command::new(leaktrace_binary())
        .args(["run", "--quiet", "--format", "json", "--output"])
        .arg(report)
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
    let ns = parse_ns(&output.stdout)?;
    let json = std::fs::read_to_string(report)?;
    let field = |name: &str| -> u64 {
        json.split(&format!("\"{name}\": "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok((ns, field("events"), field("total")))
}

pub fn run(pairs: u64, runs: usize) -> Result<()> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let program = dir.join("pairs");
    compile_c(&workspace_root().join("xtask/bench/pairs.c"), &program)?;
    let report = dir.join("report.json");

    let mut plain = Vec::new();
    let mut exact = Vec::new();
    let mut lost = 0;
    let mut events = 0;
    eprintln!("xtask: {runs} interleaved runs of {pairs} malloc+free pairs");
    for _ in 0..runs {
        plain.push(untraced(&program, pairs)?);
        let (ns, n, l) = traced(&program, pairs, &report)?;
        exact.push(ns);
        events += n;
        lost += l;
    }
    let (plain_median, exact_median) = (median(&mut plain), median(&mut exact));
    println!("malloc+free pair, ns (min / median over {runs} runs):");
    println!(
        "  untraced              {:>10.1} / {:>10.1}",
        min(&plain),
        plain_median
    );
    println!(
        "  leaktrace exact       {:>10.1} / {:>10.1}   ({:.0}x untraced)",
        min(&exact),
        exact_median,
        exact_median / plain_median
    );
    let events_per_second = 2.0 * 1e9 / exact_median;
    println!(
        "live drain: {events} events over the traced runs, {lost} lost; the traced loop produced {:.0} events/s on one thread",
        events_per_second
    );
    if lost > 0 {
        println!(
            "  WARNING: events were lost: the drain rate above was NOT sustained without loss"
        );
    }
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "bench",
                "--quiet",
                "--package",
                "leaktrace",
                "--bench",
                "ingest",
            ]),
    )
}
