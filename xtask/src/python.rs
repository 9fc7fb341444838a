//! `cargo xtask bench-python`: what tracing costs a Python program. The
//! loop of `xtask/bench/dict_loop.py` (a dict holding a str and a 3-item
//! list per iteration) under Debian's python3 and pyenv's 3.11 and 2.7,
//! untraced, under `leaktrace trace --pid` (the default mode: the C
//! library's allocator probed, Python frames walked on each recorded
//! call) and under `--python-objects` (exact object mode: every object
//! allocation and release probed too; refused on Debian's LTO build),
//! interleaved over rounds: ns per iteration, medians, ratios.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{redis::kill, workspace_root};

const ITERATIONS: &str = "2000000";
/// Exact object mode costs microseconds an iteration: fewer of them.
const EXACT_ITERATIONS: &str = "100000";

/// How a run is traced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Untraced,
    Default,
    Exact,
}

/// The interpreters measured: (label, path, whether exact object mode
/// can run there).
fn interpreters() -> Vec<(&'static str, PathBuf, bool)> {
    let pyenv = std::env::var_os("PYENV_ROOT").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv"),
        PathBuf::from,
    );
    vec![
        (
            "Debian python3 (3.11, static)",
            PathBuf::from("/usr/bin/python3"),
            false,
        ),
        (
            "pyenv 3.11.7 (libpython)",
            pyenv.join("versions/3.11.7/bin/python3.11"),
            true,
        ),
        (
            "pyenv 2.7.18 (libpython)",
            pyenv.join("versions/2.7.18/bin/python2.7"),
            true,
        ),
    ]
}

/// Runs the loop under `python`, traced as `mode` says; ns per iteration.
fn measure(python: &PathBuf, mode: Mode) -> Result<f64> {
    let script = workspace_root().join("xtask/bench/dict_loop.py");
    let mut child = Command::new(python)
        .arg(&script)
        .arg(if mode == Mode::Exact {
            EXACT_ITERATIONS
        } else {
            ITERATIONS
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("piped")?).lines();
    match lines.next() {
        Some(Ok(line)) if line == "ready" => {}
        other => bail!("{}: expected ready, got {other:?}", python.display()),
    }
    let tracer = match mode {
        Mode::Untraced => None,
        Mode::Default => Some(attach(child.id(), &[])?),
        Mode::Exact => Some(attach(child.id(), &["--python-objects"])?),
    };
    writeln!(child.stdin.as_mut().context("piped")?, "go")?;
    let result = lines
        .next()
        .context("the loop printed nothing")??
        .trim()
        .parse::<f64>()
        .context("ns per iteration");
    child.wait()?;
    if let Some(mut tracer) = tracer {
        // SAFETY: signalling our own child.
        unsafe { kill(tracer.id() as i32, 15) };
        tracer.wait()?;
    }
    result
}

fn attach(pid: u32, extra: &[&str]) -> Result<Child> {
    crate::trace_pid(pid, extra, std::path::Path::new("/dev/null"))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) fn run(rounds: usize) -> Result<()> {
    let interpreters = interpreters();
    for (label, python, _) in &interpreters {
        if !python.exists() {
            bail!("{label}: {} is missing", python.display());
        }
    }
    // Per interpreter: untraced, default and exact ns per iteration, per
    // round.
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; interpreters.len()];
    for round in 0..rounds {
        for (i, (label, python, exact)) in interpreters.iter().enumerate() {
            eprintln!("xtask: round {round}, {label}");
            samples[i][0].push(measure(python, Mode::Untraced)?);
            samples[i][1].push(measure(python, Mode::Default)?);
            if *exact {
                samples[i][2].push(measure(python, Mode::Exact)?);
            }
        }
    }
    println!(
        "dict loop, ns per iteration ({ITERATIONS} iterations; {EXACT_ITERATIONS} in exact object mode), median of {rounds} interleaved rounds:"
    );
    println!(
        "{:<32} {:>10} {:>10} {:>7} {:>10} {:>8}",
        "interpreter", "untraced", "default", "ratio", "objects", "ratio"
    );
    for ((label, _, _), [untraced, traced, exact]) in interpreters.iter().zip(&mut samples) {
        let (untraced, traced) = (median(untraced), median(traced));
        let exact = if exact.is_empty() {
            format!("{:>10} {:>8}", "refused", "-")
        } else {
            let exact = median(exact);
            format!("{exact:>10.1} {:>7.1}x", exact / untraced)
        };
        println!(
            "{label:<32} {untraced:>10.1} {traced:>10.1} {:>6.2}x {exact}",
            traced / untraced
        );
    }
    println!(
        "(objects: --python-objects; refused where the allocator is inlined, as in Debian's LTO python3)"
    );
    Ok(())
}
