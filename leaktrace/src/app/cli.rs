//! Command line: what each subcommand and option does, with examples.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::report::Format;

/// Find memory leaks in a running process, from the outside.
///
/// leaktrace attaches eBPF uprobes to the allocator a process uses (glibc,
/// jemalloc, tcmalloc, mimalloc, or one linked into the program), records
/// every allocation and release, and reports, per call site, the bytes and
/// allocations that are still outstanding, with symbolized stacks. The
/// target is not modified, restarted or slowed once leaktrace exits.
/// Needs root.
#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    after_help = "Examples:\n  sudo leaktrace trace --pid 1234 --duration 60s --interval 10s\n  sudo leaktrace run --format folded --output leaks.folded -- ./server --port 8080"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to running processes (all their threads) and report what
    /// they allocated since attach and have not freed: the processes named
    /// by --pid, or with --all every process on the host, including those
    /// started later (--all samples every 512 KiB by default).
    #[command(
        after_help = "Examples:\n  sudo leaktrace trace --pid 1234 --duration 5m --interval 30s --min-age 10s --top 5\n  sudo leaktrace trace --pid 1234,5678 --format json --output leaks.json\n  sudo leaktrace trace --all --duration 10m --top 20"
    )]
    Trace {
        #[command(flatten)]
        targets: Targets,
        #[command(flatten)]
        options: ReportOptions,
    },
    /// Trace running processes (--pid, or --all) until stopped, serving
    /// what they hold over HTTP: /debug/pprof/heap (gzipped pprof of the
    /// outstanding allocations, for go tool pprof, Pyroscope, Parca),
    /// /metrics (Prometheus text, per process) and a page at / with the top
    /// call sites and a flamegraph. Samples every 512 KiB on average by
    /// default. With --pid it stops when every process named has exited.
    #[command(
        after_help = "Examples:\n  sudo leaktrace serve --pid 1234 --listen 127.0.0.1:6060\n  go tool pprof -top http://127.0.0.1:6060/debug/pprof/heap\n  sudo leaktrace serve --all --listen 127.0.0.1:6060"
    )]
    Serve {
        #[command(flatten)]
        targets: Targets,
        /// Address to serve on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:6060")]
        listen: std::net::SocketAddr,
        /// Allow a non-loopback --listen address (the pages show code paths
        /// of the traced process: think before exposing them).
        #[arg(long)]
        allow_remote: bool,
        /// How often the page at / fetches new data and redraws (e.g. 2s).
        #[arg(long, value_parser = parse_interval, default_value = "5s")]
        refresh: Duration,
        #[command(flatten)]
        options: ReportOptions,
    },
    /// Start a command traced from its first allocation, wait for it, and
    /// report what it had not freed when it exited. Exits with its status.
    #[command(
        after_help = "Example:\n  sudo leaktrace run --format json --output leaks.json -- python3 script.py"
    )]
    Run {
        #[command(flatten)]
        options: ReportOptions,
        /// The command and its arguments (after `--`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<OsString>,
    },
    /// Compare two saved reports (JSON from --format json, or pprof from
    /// --format pprof; either kind on either side): per call site, the
    /// change in outstanding bytes and allocations from OLD to NEW, largest
    /// growth first, sites found in only one of them included. Sites are
    /// matched by their function names, root to leaf, and allocator.
    #[command(
        after_help = "Examples:\n  leaktrace diff before.json after.json\n  leaktrace diff --format folded before.pb.gz after.json > growth.folded"
    )]
    Diff {
        /// The earlier report.
        old: PathBuf,
        /// The later report.
        new: PathBuf,
        /// Output: text, or folded for flamegraph tools (only the call
        /// sites that grew: sites that shrank or did not change are left
        /// out).
        #[arg(long, short, value_enum, default_value_t = crate::diff::DiffFormat::Text)]
        format: crate::diff::DiffFormat,
    },
}

/// Which running processes to trace.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = false)]
pub struct Targets {
    /// The processes to trace: --pid 12, or several as --pid 12 34,
    /// --pid 12,34 or --pid 12 --pid 34, and the children they fork from
    /// now on (unless --no-children). Stops when all of them, and the
    /// children followed, have exited.
    #[arg(long, short, num_args = 1.., value_delimiter = ',', value_name = "PID")]
    pub pid: Vec<u32>,
    /// Trace every process on the host whose allocator can be found,
    /// including processes started later. Each process has its own table,
    /// dropped when it exits; reports list the processes and say whose each
    /// call site is.
    #[arg(long)]
    pub all: bool,
}

impl ReportOptions {
    /// Mean bytes between samples; 0 records everything.
    pub fn sample_mean(&self) -> u32 {
        self.sample_bytes.unwrap_or(0)
    }

    /// Growth mode (`--mode growth`, or its default).
    pub fn growth(&self) -> bool {
        self.mode == Some(TraceMode::Growth)
    }

    /// Growth mode keeps one page in this many (1: every page).
    pub fn page_sample(&self) -> u64 {
        if self.growth() {
            u64::from(self.sample_pages.unwrap_or(1))
        } else {
            1
        }
    }
}

/// `serve`'s sampling rate unless --sample-bytes says otherwise.
pub const SERVE_SAMPLE_BYTES: u32 = 512 * 1024;

/// `--mode`: what is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceMode {
    /// Every allocator call (malloc and its family, mmap), exact or
    /// sampled: outstanding allocations per call site. Each traced call
    /// traps into the kernel.
    Allocations,
    /// Resident memory growth per call site, from page faults (pages given
    /// back are found missing from the process's page map): no allocator
    /// and no syscall is probed, so allocations cost nothing; what is
    /// counted is memory that became resident and was not given back to
    /// the kernel (memory a program frees to its allocator but the
    /// allocator keeps still counts).
    Growth,
}

/// Options shared by `trace`, `run` and `serve`.
#[derive(Debug, Args, Clone)]
pub struct ReportOptions {
    /// What to measure: `allocations` (every allocator call, exact or
    /// sampled; for a targeted investigation) or `growth` (resident memory
    /// growth per call site from page faults: near-zero cost, for leaving
    /// on). Default: allocations for `trace --pid` and `run`, growth for
    /// `serve` and `trace --all`.
    #[arg(long, value_enum)]
    pub mode: Option<TraceMode>,
    /// Stop after this long (e.g. 30s, 5m, 1h); default: until the traced
    /// processes exit or leaktrace is interrupted (Ctrl-C, SIGTERM).
    #[arg(long, short, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Also report every INTERVAL while tracing (e.g. 5s).
    #[arg(long, short, value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Call sites shown in the text report, largest first (folded and JSON
    /// always carry every site).
    #[arg(long, short = 'T', default_value_t = 10)]
    pub top: usize,
    /// Only count allocations at least this old when a report is made
    /// (e.g. 500ms): hides short-lived memory from a live process.
    #[arg(long, short = 'o', value_parser = parse_duration, default_value = "0s")]
    pub min_age: Duration,
    /// Report format: text (for people), folded (flamegraph.pl, inferno,
    /// speedscope), json (fields in README.md), pprof (gzipped, for `go tool
    /// pprof`; needs --output), svg (interactive flamegraph).
    #[arg(long, short, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report to PATH instead of stdout (rewritten at each
    /// interval, so it always holds the latest report).
    #[arg(long, short = 'O', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Also write the final report as folded stacks to PATH.
    #[arg(long, value_name = "PATH")]
    pub folded: Option<PathBuf>,
    /// Kernel-to-daemon ring buffer size in MiB (a power of two). Raise it
    /// if reports show "ring buffer full" losses.
    /// 16 MiB holds about 150,000 records, far more than arrive between two
    /// drains (every 20 ms); the kernel maps it twice, so it costs twice that
    /// in resident memory.
    #[arg(long, default_value_t = 16, value_parser = parse_ring_buffer_mib)]
    pub ring_buffer_mib: u32,
    /// Sample instead of recording every allocation: on average one sample
    /// per N allocated bytes (suffixes k, m: KiB, MiB), decided in the
    /// kernel, as jemalloc and tcmalloc sample. Unsampled calls cost no
    /// record, no stack and no table entry; reported bytes and counts are
    /// unbiased estimates. 0 records everything. For long runs on busy
    /// services, 512k is a good start.
    /// Default: 0 for trace --pid and run, 512k for serve and --all.
    #[arg(long, value_parser = parse_bytes, value_name = "N")]
    pub sample_bytes: Option<u32>,
    /// Growth mode: keep one page in N (a power of two), chosen by address,
    /// so that the daemon's memory stays small on hosts that grow by many
    /// GiB; bytes and pages are then unbiased estimates. Default: every
    /// page.
    #[arg(long, value_parser = parse_page_sample, value_name = "N")]
    pub sample_pages: Option<u32>,
    /// Seed of the random gaps between samples (default: from the clock).
    /// The same seed, on a process pinned to one CPU, samples the same
    /// blocks: for reproducible sampled reports in tests and benchmarks.
    #[arg(long, value_name = "N")]
    pub sample_seed: Option<u64>,
    /// Exact object mode, in Python processes: also probe `CPython`'s
    /// object allocator (pymalloc), so that every object allocation and
    /// release is counted at its Python line, and reports add a by-type
    /// view (outstanding objects and bytes per Python type, with their
    /// growth between reports). Costs far more than the default on code
    /// that allocates objects in a loop (see README for measured figures):
    /// a staging tool. Needs an unstripped, non-LTO interpreter (pyenv's,
    /// python.org's); Debian's python3 inlines its allocator and is
    /// refused with a warning (its leaks are still found in the default
    /// mode). Records every allocation: not with --sample-bytes.
    #[arg(long, conflicts_with = "sample_bytes")]
    pub python_objects: bool,
    /// Go programs, allocations mode: the runtime samples its own heap
    /// (what `/debug/pprof/heap` shows) only where the program uses
    /// runtime/pprof; elsewhere the linker turned it off
    /// (`runtime.MemProfileRate` is 0). leaktrace then sets
    /// `MemProfileRate` to N bytes (one sample per N bytes allocated, as Go
    /// does by default) while it traces, so that the Go heap in use is
    /// reported per allocation site, and puts 0 back when it stops. This
    /// is the one word of a target's memory leaktrace writes; the runtime's
    /// own sampler costs the program nothing measurable (README). 1
    /// records every allocation (exact, slower); `off` never writes, and
    /// such programs then show no Go heap sites. Default: 512k.
    #[arg(long, value_parser = parse_go_heap_sampling, value_name = "N|off", default_value = "512k")]
    pub go_heap_sampling: GoHeapSampling,
    /// Most outstanding allocations the daemon keeps (about 50 bytes each);
    /// beyond it new ones are dropped and counted as lost. 0: no limit.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_allocations: usize,
    /// Let go of a call site that held nothing for this long (checked at
    /// each growth sample: every --interval, or every 10 s): a process
    /// traced for days allocates at ever more stacks, most of them freed
    /// at once, and the daemon must not keep them all. The same stack
    /// seen again later is a new site.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub forget_idle_sites: Duration,
    /// Room in the kernel for outstanding sampled blocks (when sampling).
    #[arg(long, default_value_t = 1 << 20)]
    pub sampled_blocks: u32,
    /// Where entry probes go: `auto` puts each on the first instruction the
    /// kernel emulates when everything before it is provably harmless to
    /// skip (about 5x cheaper on glibc's free); `entry` on each function's
    /// first instruction, as other tools do.
    #[arg(long, value_enum, default_value_t = ProbePlacement::Auto)]
    pub probe_placement: ProbePlacement,
    /// How stacks are unwound: `dwarf` follows each object's .`eh_frame`
    /// tables (complete stacks through code built without frame pointers,
    /// like Debian's libc and python3), falling back to frame pointers for
    /// code without tables; `fp` follows frame pointers only (cheaper).
    #[arg(long, value_enum, default_value_t = StackMode::Dwarf)]
    pub stack_mode: StackMode,
    /// Room for unwind table rows in the kernel (12 bytes each; python3 and
    /// its libraries take about N rows).
    #[arg(long, default_value_t = 1 << 20)]
    pub unwind_rows: u32,
    /// Do not follow child processes. By default the processes that a
    /// traced process forks after attach (pre-forked workers of gunicorn,
    /// uwsgi, celery, multiprocessing; a child that then execs another
    /// program) are traced too, and theirs in turn, each with its own table
    /// and listed by pid in reports, from tens of milliseconds after their
    /// fork (what a child allocates before that is not seen). With --pid,
    /// tracing then goes on until the processes named and every child
    /// followed have exited (or --duration, Ctrl-C); `run` still stops when
    /// its command exits, children still running or not. --all traces every
    /// process anyway.
    #[arg(long)]
    pub no_children: bool,
    /// Benchmark floor: attach the same probes to programs that do nothing
    /// (the report stays empty). For `cargo xtask bench`.
    #[arg(long, hide = true)]
    pub empty_programs: bool,
    /// No progress messages on stderr (errors are still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// `serve`'s `--refresh`: how often its page asks for new data (not
    /// an option of its own here: only `serve` has a page).
    #[arg(skip = std::time::Duration::from_secs(5))]
    pub page_refresh: Duration,
}

/// `--stack-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StackMode {
    Fp,
    Dwarf,
}

/// `--probe-placement`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbePlacement {
    Auto,
    Entry,
}

/// `--sample-pages`: a power of two from 1 to 2^20.
fn parse_page_sample(text: &str) -> Result<u32, String> {
    let value: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of pages"))?;
    if value.is_power_of_two() && value <= 1 << 20 {
        Ok(value)
    } else {
        Err(format!("'{text}' is not a power of two from 1 to 1048576"))
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (examples: 500ms, 30s, 5m, 1h)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{text}' (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is too long a duration"))
}

/// `--interval`: a duration of at least 1 ms (a zero period has no next
/// tick).
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(1) {
        return Err(format!("'{text}': the interval must be at least 1ms"));
    }
    Ok(interval)
}

/// Parses `524288`, `512k` or `1m` (KiB, MiB) into bytes.
pub fn parse_bytes(text: &str) -> Result<u32, String> {
    let text = text.trim().to_ascii_lowercase();
    let (number, multiplier) = match text.strip_suffix('k') {
        Some(n) => (n, 1024),
        None => match text.strip_suffix('m') {
            Some(n) => (n, 1024 * 1024),
            None => (text.as_str(), 1),
        },
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a byte count (examples: 0, 4096, 512k, 1m)"))?;
    value
        .checked_mul(multiplier)
        .and_then(|bytes| u32::try_from(bytes).ok())
        .ok_or_else(|| format!("'{text}' is too large (at most 4095m)"))
}

/// Whether leaktrace turns a Go program's heap sampling on, and at what
/// rate (`--go-heap-sampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoHeapSampling {
    /// Never write the target's memory.
    Off,
    /// One sample per this many bytes (non-zero).
    Rate(u32),
}

fn parse_go_heap_sampling(text: &str) -> Result<GoHeapSampling, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(GoHeapSampling::Off);
    }
    match parse_bytes(text)? {
        0 => Err(format!(
            "'{text}': the sampling rate must be at least 1 byte (or off)"
        )),
        rate => Ok(GoHeapSampling::Rate(rate)),
    }
}

fn parse_ring_buffer_mib(text: &str) -> Result<u32, String> {
    let mib: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of MiB"))?;
    if !mib.is_power_of_two() || mib > 1024 {
        return Err(format!(
            "{mib} MiB: the ring buffer size must be a power of two up to 1024"
        ));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512k"), Ok(512 * 1024));
        assert_eq!(parse_bytes("2M"), Ok(2 * 1024 * 1024));
        // 2^44 + 1 MiB: the multiplication overflows 64 bits.
        assert!(parse_bytes("17592186044417m").is_err());
        assert!(parse_bytes("4096m").is_err());
        assert!(parse_bytes("5g").is_err());
        assert!(parse_bytes("9999m").is_err());
    }

    #[test]
    fn go_heap_sampling_rates() {
        assert_eq!(
            parse_go_heap_sampling("512k"),
            Ok(GoHeapSampling::Rate(512 * 1024))
        );
        assert_eq!(parse_go_heap_sampling("1"), Ok(GoHeapSampling::Rate(1)));
        assert_eq!(parse_go_heap_sampling("OFF"), Ok(GoHeapSampling::Off));
        assert!(parse_go_heap_sampling("0").is_err());
        assert!(parse_go_heap_sampling("lots").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_mins(5)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_mins(90)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("x").is_err());
        assert_eq!(
            parse_duration("99999999999999999999999h"),
            Err("'99999999999999999999999h' is too long a duration".into())
        );
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("0.0001s").is_err());
        assert_eq!(parse_interval("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn cli_is_consistent_and_run_takes_the_command_after_dashes() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["leaktrace", "run", "--format", "json", "--", "ls", "-l"])
            .unwrap();
        match cli.command {
            Command::Run { options, command } => {
                assert_eq!(options.format, Format::Json);
                assert_eq!(command, ["ls", "-l"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["leaktrace", "trace", "--pid", "1", "--format", "xml"]).is_err()
        );
        // --pid repeats or takes a list; --all excludes it; one is needed.
        let pids = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Trace { targets, .. } | Command::Serve { targets, .. }) => {
                Ok((targets.pid, targets.all))
            }
            other => Err(format!("{other:?}")),
        };
        assert_eq!(
            pids(&["leaktrace", "trace", "--pid", "1", "--pid", "2"]),
            Ok((vec![1, 2], false))
        );
        assert_eq!(
            pids(&["leaktrace", "serve", "--pid", "3,4"]),
            Ok((vec![3, 4], false))
        );
        assert_eq!(
            pids(&["leaktrace", "serve", "--pid", "5", "6", "--top", "3"]),
            Ok((vec![5, 6], false))
        );
        assert_eq!(pids(&["leaktrace", "trace", "--all"]), Ok((vec![], true)));
        // Children are followed unless --no-children.
        let follows = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Trace { options, .. } | Command::Run { options, .. }) => {
                !options.no_children
            }
            other => panic!("{other:?}"),
        };
        assert!(follows(&["leaktrace", "trace", "--pid", "1"]));
        assert!(!follows(&[
            "leaktrace",
            "trace",
            "--pid",
            "1",
            "--no-children"
        ]));
        assert!(!follows(&["leaktrace", "run", "--no-children", "--", "ls"]));
        assert!(pids(&["leaktrace", "trace", "--all", "--pid", "1"]).is_err());
        assert!(pids(&["leaktrace", "serve"]).is_err());
        assert!(
            Cli::try_parse_from(["leaktrace", "trace", "--pid", "1", "--ring-buffer-mib", "3"])
                .is_err()
        );
    }
}
