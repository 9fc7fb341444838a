//! `cargo xtask bench-growth`: what `serve --all` costs a host in its
//! default mode, growth (page faults and memory syscalls, no allocator
//! probe). Interleaved over rounds, each workload untraced and then while
//! `leaktrace serve --all` runs:
//! - redis-server under redis-benchmark (SET/GET, loopback): requests/s;
//! - the Python dict loop (`bench/dict_loop.py`) under Debian's python3;
//! - the malloc+free loop (`bench/pairs.c`): no new pages at steady state;
//! - a process that only grows (`bench/grow.c`, 1 MiB blocks written):
//!   the worst case, every page a traced fault.
//!
//! Printed: medians, the traced/untraced speed ratio (1.0 = no cost), and
//! the daemon's CPU (share of one core while the workload ran) and
//! resident memory.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    compile_c, leaktrace_binary,
    redis::{self, cpu_ticks, kill, rss_mib},
    wait_for_stderr, workspace_root,
};

const PYTHON_ITERATIONS: &str = "2000000";
const PAIRS: &str = "2000000";
const GROW_MIB: &str = "400";

/// One workload: its name, its unit, and whether more is better.
#[derive(Clone, Copy)]
enum Workload {
    Redis,
    Python,
    Pairs,
    Grow,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::Redis,
        Workload::Python,
        Workload::Pairs,
        Workload::Grow,
    ];

    fn label(self) -> &'static str {
        match self {
            Workload::Redis => "redis SET+GET (req/s)",
            Workload::Python => "python3 dict loop (ns/iter)",
            Workload::Pairs => "malloc+free (ns/pair)",
            Workload::Grow => "growing only (ns/MiB)",
        }
    }

    /// Throughput (more is better) or time (less is better).
    fn is_rate(self) -> bool {
        matches!(self, Workload::Redis)
    }
}

/// The last number a program printed.
fn last_number(stdout: &[u8]) -> Result<f64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .next_back()
        .context("no figure printed")
}

fn python_loop() -> Result<f64> {
    let script = workspace_root().join("xtask/bench/dict_loop.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(PYTHON_ITERATIONS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting /usr/bin/python3")?;
    writeln!(child.stdin.as_mut().context("piped")?, "go")?;
    last_number(&child.wait_with_output()?.stdout)
}

fn program(path: &Path, arg: &str) -> Result<f64> {
    let output = Command::new(path).arg(arg).output()?;
    if !output.status.success() {
        bail!("{} failed", path.display());
    }
    last_number(&output.stdout)
}

/// `leaktrace serve --all` (growth mode by default), once it traces.
fn start_serve() -> Result<Child> {
    let mut child = Command::new(leaktrace_binary())
        .args(["serve", "--all", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting leaktrace serve --all")?;
    wait_for_stderr(&mut child, "leaktrace: tracing all processes")?;
    Ok(child)
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[derive(Default, Clone)]
struct Samples {
    untraced: Vec<f64>,
    traced: Vec<f64>,
    cpu: Vec<f64>,
    rss_mib: Vec<f64>,
}

pub(crate) fn run(rounds: usize) -> Result<()> {
    if !Path::new("/usr/bin/python3").exists() {
        bail!("/usr/bin/python3 (Debian's python3) is missing");
    }
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let pairs: PathBuf = dir.join("pairs");
    compile_c(&workspace_root().join("xtask/bench/pairs.c"), &pairs)?;
    let grow: PathBuf = dir.join("grow");
    compile_c(&workspace_root().join("xtask/bench/grow.c"), &grow)?;
    let mut redis_server = redis::start_server()?;
    let measure = |workload: Workload| -> Result<f64> {
        match workload {
            Workload::Redis => redis::benchmark().map(|(set, get)| set + get),
            Workload::Python => python_loop(),
            Workload::Pairs => program(&pairs, PAIRS),
            Workload::Grow => program(&grow, GROW_MIB),
        }
    };
    let mut samples = vec![Samples::default(); Workload::ALL.len()];
    let outcome = (|| -> Result<()> {
        for round in 0..rounds {
            for (i, &workload) in Workload::ALL.iter().enumerate() {
                eprintln!("xtask: round {round}, {}", workload.label());
                samples[i].untraced.push(measure(workload)?);
                let mut serve = start_serve()?;
                let before = cpu_ticks(serve.id());
                let clock = Instant::now();
                samples[i].traced.push(measure(workload)?);
                let seconds = clock.elapsed().as_secs_f64();
                let ticks = cpu_ticks(serve.id()) - before;
                // USER_HZ is 100 on Linux.
                samples[i].cpu.push(ticks as f64 / seconds);
                samples[i].rss_mib.push(rss_mib(serve.id()));
                // SAFETY: signalling our own child.
                unsafe { kill(serve.id() as i32, 15) };
                serve.wait()?;
            }
        }
        Ok(())
    })();
    let _: Result<_, _> = redis_server.kill();
    let _: Result<_, _> = redis_server.wait();
    outcome?;
    println!("serve --all in growth mode, median of {rounds} interleaved rounds:");
    println!(
        "  {:<30} {:>12} {:>12} {:>7} {:>10} {:>10}",
        "workload", "untraced", "traced", "speed", "daemon CPU", "daemon RSS"
    );
    for (workload, s) in Workload::ALL.iter().zip(&samples) {
        let (untraced, traced) = (median(&s.untraced), median(&s.traced));
        let speed = if workload.is_rate() {
            traced / untraced
        } else {
            untraced / traced
        };
        println!(
            "  {:<30} {untraced:>12.1} {traced:>12.1} {speed:>6.2}x {:>9.1}% {:>7.1} MiB",
            workload.label(),
            median(&s.cpu),
            median(&s.rss_mib)
        );
    }
    println!("(speed: traced relative to untraced, 1.00x = no cost)");
    Ok(())
}
