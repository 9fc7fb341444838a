//! `cargo xtask <command>`: everything a fresh machine needs, idempotently.
//!
//! - `setup`: the pinned nightly with rust-src, LLVM 22 dev packages,
//!   bpf-linker built against them, tracefs, and the page's charting
//!   library (`npm ci` in leaktrace/web). Skips what is already there.
//! - `build`: setup, then build leaktrace (release) with its eBPF object.
//! - `demo`: build, compile the bundled leaking program, trace it, print
//!   the report and write folded stacks beside it.
//! - `test`: setup, then the whole test suite (unit and, as root,
//!   integration tests that trace real processes).
//! - `bench`: the malloc+free loop untraced and traced, and the daemon's
//!   drain rate; `bench-redis`, `bench-python`, `bench-all`,
//!   `bench-growth`, `bench-go`: the workloads their modules describe.
//! - `fuzz`: the long fuzzing campaign over the parsers of untrusted
//!   input (cargo-fuzz; the suite replays its corpora briefly).
//! - `soak`: `bench-all` for a given time, failing unless every exit is
//!   counted and the daemon's memory stays flat.
mod bench;
mod churn;
mod fuzz;
mod go_bench;
mod growth;
mod python;
mod redis;
mod setup;
mod torture;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "leaktrace's set-up, build, demo, test and bench commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building leaktrace needs (idempotent).
    Setup,
    /// Set up and build leaktrace in release mode.
    Build,
    /// Build, then trace the bundled leaking program and print its report.
    Demo,
    /// Set up, then run every test (integration tests need root).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Debian's redis-server under redis-benchmark: throughput untraced,
    /// traced exact and sampled, and the daemon's CPU and memory.
    BenchRedis {
        /// Rounds of each mode (medians are printed).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// `serve --all` in growth mode: redis-benchmark, the Python dict loop,
    /// a malloc+free loop and a process that only grows, each untraced and
    /// traced, interleaved; the daemon's CPU and memory.
    BenchGrowth {
        /// Rounds of each workload (medians are printed).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A Go allocation loop (no pprof) untraced and under `trace --pid`
    /// in each Go heap mode (the runtime's sampler turned on, off, every
    /// allocation; growth mode), interleaved: ns per allocation.
    BenchGo {
        /// Rounds of each mode (medians are printed).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A Python loop (a dict with a str and a list per iteration) under
    /// Debian's python3 and pyenv's 3.11 and 2.7: ns per iteration
    /// untraced and traced, interleaved.
    BenchPython {
        /// Rounds of each interpreter and mode (medians are printed).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// `trace --all` while rounds of short-lived processes come and go:
    /// their cost untraced and traced, and the daemon's memory, dropped
    /// processes and call sites after each round.
    BenchAll {
        /// Rounds of processes.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Processes per round.
        #[arg(long, default_value_t = 200)]
        processes: usize,
        /// `growth` (the default of `--all`) or `allocations`.
        #[arg(long, default_value = "growth")]
        mode: String,
        /// Long-lived growing processes beside the short ones.
        #[arg(long, default_value_t = 2)]
        growers: usize,
    },
    /// A week of a host's process churn, compressed: `bench-all` for a
    /// given time with 1,000 short processes per round and long-lived
    /// growing ones; fails unless every exit is counted and the daemon's
    /// memory stays flat.
    Soak {
        /// How long the churn goes on.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Processes per round.
        #[arg(long, default_value_t = 1000)]
        processes: usize,
        /// `growth` (the default of `--all`) or `allocations`.
        #[arg(long, default_value = "growth")]
        mode: String,
        /// Long-lived growing processes beside the short ones.
        #[arg(long, default_value_t = 4)]
        growers: usize,
    },
    /// Fuzz the parsers of untrusted input (ELF, `.eh_frame`, placement,
    /// diff's importers, serve's routing) with cargo-fuzz on the pinned
    /// nightly; prints the inputs each target ran.
    Fuzz {
        /// One target (`elf`, `eh_frame`, `placement`, `diff_json`,
        /// `diff_pprof`, `http`); all of them, one after the other, if not given.
        #[arg(long)]
        target: Option<String>,
        /// Inputs per target.
        #[arg(long, conflicts_with = "seconds", default_value_t = 1_000_000)]
        runs: u64,
        /// Seconds per target, instead of a number of inputs.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// The target is never harmed: C, C++, Python and Go fixtures under
    /// `trace --all` and `run`, both killed (SIGKILL) at random moments; fails on
    /// any crash, output unlike the untraced run's, or probe left.
    Torture {
        /// How long the torture goes on.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// How long, in seconds (instead of --minutes).
        #[arg(long)]
        seconds: Option<u64>,
        /// Seed of the random kill moments (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Measure the cost per malloc+free pair untraced and traced, and the
    /// daemon's drain rate.
    Bench {
        /// Iterations of the malloc+free loop per measurement.
        #[arg(long, default_value_t = 200_000)]
        pairs: u64,
        /// Repetitions of each measurement (min and median are printed).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::all(),
        Task::Build => {
            setup::all()?;
            build_release()
        }
        Task::Demo => demo(),
        Task::Test { args } => test(&args),
        Task::BenchAll {
            rounds,
            processes,
            mode,
            growers,
        } => {
            setup::all()?;
            build_release()?;
            churn::run(churn::Until::Rounds(rounds), processes, &mode, growers)
        }
        Task::Soak {
            minutes,
            processes,
            mode,
            growers,
        } => {
            setup::all()?;
            build_release()?;
            churn::run(churn::Until::Minutes(minutes), processes, &mode, growers)
        }
        Task::BenchGrowth { rounds } => {
            setup::all()?;
            build_release()?;
            growth::run(rounds)
        }
        Task::BenchGo { rounds } => {
            setup::all()?;
            build_release()?;
            go_bench::run(rounds)
        }
        Task::BenchPython { rounds } => {
            setup::all()?;
            build_release()?;
            python::run(rounds)
        }
        Task::BenchRedis { rounds } => {
            setup::all()?;
            build_release()?;
            redis::run(rounds)
        }
        Task::Fuzz {
            target,
            runs,
            seconds,
        } => {
            setup::all()?;
            let budget = seconds.map_or(fuzz::Budget::Runs(runs), fuzz::Budget::Seconds);
            fuzz::run_campaign(target.as_deref(), budget)
        }
        Task::Torture {
            minutes,
            seconds,
            seed,
        } => {
            setup::all()?;
            build_release()?;
            let duration = seconds.map_or(std::time::Duration::from_mins(minutes), |s| {
                std::time::Duration::from_secs(s)
            });
            torture::run_for(duration, seed)
        }
        Task::Bench { pairs, runs } => {
            setup::all()?;
            build_release()?;
            bench::run(pairs, runs)
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs a command, failing with its name if it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    setup::add_tool_paths(&mut command);
    command
}

fn build_release() -> Result<()> {
    eprintln!("xtask: building leaktrace (release)");
    run(cargo().args(["build", "--release", "--package", "leaktrace"]))
}

/// Path of the release binary, in the target directory cargo built it in
/// (`CARGO_TARGET_DIR`, relative to the workspace when relative, else
/// `target`).
pub fn leaktrace_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| "target".into());
    workspace_root().join(target).join("release/leaktrace")
}

/// Starts `leaktrace trace --pid PID` with `extra` options, its JSON report
/// going to `report`, and returns once its probes are attached.
pub(crate) fn trace_pid(
    pid: u32,
    extra: &[&str],
    report: &std::path::Path,
) -> Result<std::process::Child> {
    let mut child = Command::new(leaktrace_binary())
        .args(["trace", "--pid", &pid.to_string()])
        .args(extra)
        .args(["--format", "json", "--output"])
        .arg(report)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting leaktrace")?;
    wait_for_stderr(&mut child, "leaktrace: tracing pid")?;
    Ok(child)
}

/// Waits until leaktrace (`child`, its stderr piped) writes a line starting
/// with `prefix`, then keeps draining its stderr so it never blocks on a
/// full pipe.
pub fn wait_for_stderr(child: &mut std::process::Child, prefix: &str) -> Result<()> {
    use std::io::BufRead as _;
    let stderr = child
        .stderr
        .take()
        .context("leaktrace's stderr is not piped")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with(prefix) => break,
            Some(Ok(_)) => {}
            _ => anyhow::bail!("leaktrace ended before saying {prefix:?}"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(())
}

/// Compiles a C program with frame pointers (stacks are frame-pointer
/// unwound for now) and debug info (for <file:line>).
pub fn compile_c(source: &std::path::Path, output: &std::path::Path) -> Result<()> {
    run(Command::new("cc")
        .args([
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-inline",
            "-pthread",
            "-o",
        ])
        .arg(output)
        .arg(source))
}

fn demo() -> Result<()> {
    setup::all()?;
    build_release()?;
    let out_dir = workspace_root().join("demo-out");
    std::fs::create_dir_all(&out_dir)?;
    let program = out_dir.join("leaky_cache");
    compile_c(&workspace_root().join("xtask/demo/leaky_cache.c"), &program)?;
    let folded = out_dir.join("leaky_cache.folded");
    eprintln!("xtask: tracing {} with leaktrace run", program.display());
    let status = Command::new(leaktrace_binary())
        .args(["run", "--top", "5", "--folded"])
        .arg(&folded)
        .arg("--")
        .arg(&program)
        .status()
        .context("running leaktrace")?;
    if !status.success() {
        bail!("leaktrace run failed: {status}");
    }
    eprintln!("xtask: folded stacks written to {}", folded.display());
    Ok(())
}

/// What the tests append a line to when they skip (see
/// leaktrace/tests/common/prerequisite.rs): `test name<TAB>what is missing`.
const SKIP_LOG: &str = "LEAKTRACE_SKIP_LOG";

fn test(args: &[String]) -> Result<()> {
    setup::all()?;
    setup::test_dependencies()?;
    let skips_allowed = std::env::var_os("LEAKTRACE_ALLOW_SKIPS").is_some_and(|v| v == "1")
        && std::env::var_os("CI").is_none();
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        if skips_allowed {
            eprintln!(
                "xtask: WARNING: not root: the integration tests that load eBPF programs will be SKIPPED (counted below)"
            );
        } else {
            eprintln!(
                "xtask: WARNING: not root: the integration tests that load eBPF programs will FAIL (run as root, or set LEAKTRACE_ALLOW_SKIPS=1 to skip them)"
            );
        }
    }
    // A fresh file for this run's skips.
    let skip_log = std::env::temp_dir().join(format!("leaktrace-skips-{}.log", std::process::id()));
    std::fs::write(&skip_log, "").with_context(|| format!("creating {}", skip_log.display()))?;
    // Default members (the eBPF crate is built by leaktrace's build
    // script); no doc tests (there are none, and their empty runs would
    // end the log on "0 passed").
    let mut command = cargo();
    command
        .args(["test", "--no-fail-fast", "--lib", "--bins", "--tests"])
        .args(args)
        .env(SKIP_LOG, &skip_log)
        // An empty stdin even when ours is closed (see .ci/run).
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    let mut totals = [0u64; 3];
    let mut ignored = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(counts) = line.strip_prefix("test result: ") {
            for (total, word) in totals.iter_mut().zip(["passed", "failed", "ignored"]) {
                *total += counts
                    .split([';', '.'])
                    .find_map(|part| part.trim().strip_suffix(word)?.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        } else if let Some(name) = ignored_test(&line) {
            ignored.push(name.to_string());
        }
    }
    let status = child.wait()?;
    let log = std::fs::read_to_string(&skip_log)
        .with_context(|| format!("reading {}", skip_log.display()))?;
    let _: std::io::Result<()> = std::fs::remove_file(&skip_log);
    let skipped = skipped_tests(&log);
    for name in &ignored {
        println!("skipped (ignored): {name}");
    }
    for (name, missing) in &skipped {
        println!("skipped: {name}: missing {missing}");
    }
    // A test that skipped returned normally: cargo counted it as passed.
    let skips = skipped.len() as u64;
    println!(
        "total: {} passed, {} failed, {} skipped",
        totals[0].saturating_sub(skips),
        totals[1],
        totals[2] + skips
    );
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// The name of the test a libtest line reports ignored
/// (`test NAME ... ignored`, perhaps with `, reason`).
fn ignored_test(line: &str) -> Option<&str> {
    let (name, result) = line.strip_prefix("test ")?.split_once(" ... ")?;
    (result == "ignored" || result.starts_with("ignored, ")).then_some(name)
}

/// The skips in a skip log, one per test (the first reason given), in the
/// order they happened.
fn skipped_tests(log: &str) -> Vec<(String, String)> {
    let mut skipped: Vec<(String, String)> = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let (name, missing) = line.split_once('\t').unwrap_or((line, "?"));
        if !skipped.iter().any(|(n, _)| n == name) {
            skipped.push((name.to_string(), missing.to_string()));
        }
    }
    skipped
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_read_once_per_test_in_order() {
        let log = "b_test\tvalgrind\na_test\troot\nb_test\tgo\n\n";
        assert_eq!(
            skipped_tests(log),
            [
                ("b_test".to_string(), "valgrind".to_string()),
                ("a_test".to_string(), "root".to_string())
            ]
        );
        assert!(skipped_tests("").is_empty());
    }

    #[test]
    fn ignored_tests_are_recognised() {
        assert_eq!(ignored_test("test slow ... ignored"), Some("slow"));
        assert_eq!(
            ignored_test("test m::slow ... ignored, needs a GPU"),
            Some("m::slow")
        );
        assert_eq!(ignored_test("test fast ... ok"), None);
        assert_eq!(ignored_test("running 3 tests"), None);
    }
}
