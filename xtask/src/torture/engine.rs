//! The torture loop shared by `cargo xtask torture` and the suite's short
//! run (`leaktrace/tests/torture.rs` includes this file by path): std only,
//! the few libc calls declared here, so that both crates build it as is.
//!
//! What it checks is that leaktrace never harms what it traces, whatever
//! happens to leaktrace:
//! - fixture programs (C, C++, Python, Go: fork, exec, vfork, longjmp,
//!   signals inside malloc, dlopen/dlclose, exceptions, thread churn) run
//!   round after round, two at a time, while `leaktrace trace --all` runs
//!   and is killed (SIGKILL) at random moments (a third of the time within the
//!   first 100 ms, during attach; otherwise just after it says it traces,
//!   while it loads the unwind tables of the processes that start, or
//!   seconds later) and restarted; each must exit 0 with the output of its
//!   untraced run;
//! - beside that, `leaktrace run --mode allocations -- FIXTURE` runs one
//!   command after another and is killed (SIGKILL) at random moments or where it
//!   holds the command (`LEAKTRACE_TEST_PAUSE=exec|entry`); the command,
//!   orphaned to this process (a child subreaper), must still exit 0 with
//!   its expected output;
//! - long-lived "sentinel" instances of each fixture (`FIXTURE wait`) sit
//!   through every attach and kill, then do their work at the end.
//!
//! "No probe left" is checked in the sentinels' memory. aya attaches
//! uprobes through the perf uprobe PMU, so they never appear in tracefs'
//! `uprobe_events` (that is checked too, for probes made through tracefs),
//! and they are tied to leaktrace's file descriptors, so nothing of them
//! can be listed once it is dead. What a uprobe leaves in a process is
//! the int3 the kernel writes over the probed instruction in every process
//! that maps the object. So after each kill of `trace --all`, once
//! leaktrace is reaped, every executable file mapping of each sentinel is
//! compared byte for byte with its file (through `/proc/PID/mem` and
//! `/proc/PID/map_files`): any difference still there after a grace of 5 s
//! is a probe left. The check is shown to see probes: while a `trace
//! --all --mode allocations` is attached, the same comparison must find
//! int3s in the sentinels (counted as `probes seen while attached`).
//! `[uprobes]` mappings (the out-of-line stepping area) are no evidence:
//! they stay for the life of a process once any probe was hit.
#[path = "probes.rs"]
mod probes;
#[path = "processes.rs"]
mod processes;
#[path = "text_diff.rs"]
mod text_diff;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use probes::{Sentinel, changed_text, check_probes};
use processes::{
    Ended, HANG, PR_SET_CHILD_SUBREAPER, SIGKILL, SIGSTOP, WALL, WNOHANG, children, collect, prctl,
    reap, run_program, signal, wait_child, waitpid, watch_stderr,
};

/// One fixture: what it is (for the counts) and its command line.
#[derive(Clone, Debug)]
pub(crate) struct Program {
    pub(crate) kind: &'static str,
    pub(crate) argv: Vec<OsString>,
}

/// What a torture run needs.
pub(crate) struct Config {
    /// The leaktrace binary under test.
    pub(crate) leaktrace: PathBuf,
    pub(crate) programs: Vec<Program>,
    pub(crate) duration: Duration,
    /// Seed of the random kill moments (printed, to replay a run).
    pub(crate) seed: u64,
    /// Where leaktrace's reports go.
    pub(crate) dir: PathBuf,
}

/// What a torture run saw.
#[derive(Default, Debug)]
pub(crate) struct Tally {
    /// Fixture processes that ran to their end under `trace --all`, by kind.
    pub(crate) runs: BTreeMap<&'static str, u64>,
    /// Commands of `leaktrace run` that ran to their end, by kind.
    pub(crate) run_commands: BTreeMap<&'static str, u64>,
    /// Any non-zero exit, death by a signal, or hang of a fixture.
    pub(crate) crashes: Vec<String>,
    /// A fixture whose output differs from its untraced run.
    pub(crate) mismatches: Vec<String>,
    /// SIGKILLs of `trace --all`, and how many of them within 100 ms.
    pub(crate) trace_kills: u64,
    pub(crate) early_kills: u64,
    /// SIGKILLs of `run`: at random moments, and where it held the command.
    pub(crate) run_kills: u64,
    pub(crate) pause_kills: u64,
    /// Commands whose `run` was killed before their exec (they end unrun,
    /// with status 127, as leaktrace's gate closes).
    pub(crate) unstarted: u64,
    /// Sentinel memory comparisons after a kill, and those that found int3s
    /// (or other changed bytes) still there after the grace.
    pub(crate) probe_checks: u64,
    pub(crate) probes_left: Vec<String>,
    /// Changed bytes found in the sentinels while `--all` was attached in
    /// allocations mode: the probe check's own proof that it sees probes.
    pub(crate) probes_seen_live: u64,
    /// The harness's own failures (leaktrace would not start, ended alone).
    pub(crate) errors: Vec<String>,
}

impl Tally {
    pub(crate) fn failed(&self) -> bool {
        !(self.crashes.is_empty()
            && self.mismatches.is_empty()
            && self.probes_left.is_empty()
            && self.errors.is_empty())
    }

    pub(crate) fn summary(&self) -> String {
        let total = |m: &BTreeMap<&str, u64>| m.values().sum::<u64>();
        let mut text = format!(
            "processes run under trace --all: {} {:?}\n\
             commands run under leaktrace run: {} {:?}\n\
             crashes: {}\noutput mismatches: {}\n\
             leaktrace kills: trace --all {} ({} within 100 ms), run {} at random moments ({} before the command's exec), {} held at exec or entry\n\
             probe checks: {}, probes left: {}, changed bytes seen while attached: {}\n\
             harness errors: {}\n",
            total(&self.runs),
            self.runs,
            total(&self.run_commands),
            self.run_commands,
            self.crashes.len(),
            self.mismatches.len(),
            self.trace_kills,
            self.early_kills,
            self.run_kills,
            self.unstarted,
            self.pause_kills,
            self.probe_checks,
            self.probes_left.len(),
            self.probes_seen_live,
            self.errors.len(),
        );
        for line in self
            .crashes
            .iter()
            .chain(&self.mismatches)
            .chain(&self.probes_left)
            .chain(&self.errors)
            .take(20)
        {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// The tally, even if a thread panicked holding it.
fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// xorshift64*: the kill moments need variety and a replayable seed,
/// nothing more.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to.saturating_sub(from)))
    }
}

/// Records whether a fixture ended well: exit 0, the untraced output.
fn judge(tally: &Mutex<Tally>, what: &str, ended: &Ended, output: &str, expected: &str) -> bool {
    let mut tally = lock(tally);
    if *ended != Ended::Exited(0) {
        tally.crashes.push(format!("{what}: {ended:?}"));
        false
    } else if output != expected {
        tally
            .mismatches
            .push(format!("{what}: printed {output:?}, untraced {expected:?}"));
        false
    } else {
        true
    }
}

/// Rounds of the fixtures under whatever leaktrace is running, until `stop`.
fn fixture_rounds(
    programs: &[(Program, String)],
    offset: usize,
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    let mut round = offset;
    while !stop.load(Ordering::Relaxed) {
        let (program, expected) = &programs[round % programs.len()];
        round += 1;
        match run_program(&program.argv) {
            Ok((ended, output)) => {
                if judge(tally, program.kind, &ended, &output, expected) {
                    let mut tally = lock(tally);
                    *tally.runs.entry(program.kind).or_default() += 1;
                }
            }
            Err(e) => lock(tally).errors.push(e),
        }
    }
}

/// One `leaktrace trace --all`, killed at a random moment; then the probe
/// check.
///
/// The kind of moment cycles with `round` (so that a short run sees each):
/// within 100 ms of the start (attach), within 300 ms of its saying it
/// traces (unwind tables of the processes that start meanwhile), or 0.5 to
/// 8 s later; the moment itself is random. One round in four is in
/// allocations mode (probes on every allocator), the first among them.
fn trace_all_once(
    config: &Config,
    round: u64,
    random: &mut Random,
    sentinels: &[Sentinel],
    tally: &Mutex<Tally>,
) {
    let allocations = round.is_multiple_of(4);
    let mode = if allocations { "allocations" } else { "growth" };
    let spawned = Command::new(&config.leaktrace)
        .args([
            "trace", "--all", "--mode", mode, "--format", "json", "--output",
        ])
        .arg(config.dir.join("all.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut leaktrace = match spawned {
        Ok(child) => child,
        Err(e) => {
            lock(tally).errors.push(format!("starting leaktrace: {e}"));
            thread::sleep(Duration::from_secs(1));
            return;
        }
    };
    let started = Instant::now();
    let ready = watch_stderr(&mut leaktrace, "tracing all processes");
    let plan = (round + 1) % 3;
    if plan == 0 {
        thread::sleep(random.millis(0, 100));
    } else {
        if ready.recv_timeout(Duration::from_mins(2)).is_err() {
            let ended = wait_child(&mut leaktrace, Duration::ZERO);
            lock(tally).errors.push(format!(
                "trace --all --mode {mode} did not say it traced within 2 minutes ({ended:?})"
            ));
            check_probes(sentinels, tally);
            return;
        }
        if allocations {
            let seen: usize = sentinels
                .iter()
                .filter_map(|s| changed_text(s.child.id()).ok())
                .map(|changed| changed.len())
                .sum();
            lock(tally).probes_seen_live += seen as u64;
        }
        thread::sleep(if plan == 1 {
            random.millis(0, 300)
        } else {
            random.millis(500, 8000)
        });
    }
    if let Ok(Some(status)) = leaktrace.try_wait() {
        lock(tally).errors.push(format!(
            "trace --all --mode {mode} ended by itself: {status}"
        ));
    }
    signal(leaktrace.id(), SIGKILL);
    let early = started.elapsed() < Duration::from_millis(100);
    let _: std::io::Result<_> = leaktrace.wait();
    {
        let mut tally = lock(tally);
        tally.trace_kills += 1;
        tally.early_kills += u64::from(early);
    }
    check_probes(sentinels, tally);
}

/// `leaktrace run --mode allocations -- FIXTURE`, left alone, killed at a
/// random moment, or killed where it holds the command; the command must
/// end as it does untraced.
///
/// What happens cycles with `round` (so that a short run sees each, with
/// each fixture): left alone, killed held at exec, at entry, killed at a
/// random moment within 2.5 s of its start (mostly before the command's
/// exec: leaktrace loads its programs first), or within 800 ms of its
/// saying it traces the command (at the entry stop, while the command
/// runs or as it ends).
fn run_once(
    config: &Config,
    round: u64,
    program: &Program,
    expected: &str,
    random: &mut Random,
    tally: &Mutex<Tally>,
) {
    let plan = round % 5;
    let pause = match plan {
        1 => Some("exec"),
        2 => Some("entry"),
        _ => None,
    };
    let mut command = Command::new(&config.leaktrace);
    command
        .args([
            "run",
            "--mode",
            "allocations",
            "--format",
            "json",
            "--output",
        ])
        .arg(config.dir.join("run.json"))
        .arg("--")
        .args(&program.argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(point) = pause {
        command.env("LEAKTRACE_TEST_PAUSE", point);
    }
    let what = format!(
        "{} under run ({})",
        program.kind,
        pause.unwrap_or("random kill")
    );
    let mut leaktrace = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            lock(tally)
                .errors
                .push(format!("starting leaktrace run: {e}"));
            return;
        }
    };
    let paused = watch_stderr(
        &mut leaktrace,
        if plan == 4 {
            "leaktrace: tracing pid"
        } else {
            "test pause at"
        },
    );
    let Some(stdout) = leaktrace.stdout.take() else {
        return;
    };
    let output = collect(stdout);
    let ended = if let Some(point) = pause {
        let Ok(line) = paused.recv_timeout(Duration::from_mins(2)) else {
            let ended = wait_child(&mut leaktrace, Duration::ZERO);
            lock(tally)
                .errors
                .push(format!("{what}: no pause at {point} ({ended:?})"));
            return;
        };
        signal(leaktrace.id(), SIGKILL);
        let _: std::io::Result<_> = leaktrace.wait();
        lock(tally).pause_kills += 1;
        match line
            .rsplit("pid ")
            .next()
            .and_then(|p| p.trim().parse().ok())
        {
            Some(pid) => Some(reap(pid, HANG)),
            None => Some(Ended::Lost),
        }
    } else if plan == 0 {
        Some(wait_child(&mut leaktrace, HANG))
    } else {
        if plan == 4 {
            // Its line may never come (the command may end first): no wait
            // longer than the command's own run.
            let _: Result<String, _> = paused.recv_timeout(Duration::from_secs(20));
            thread::sleep(random.millis(0, 800));
        } else {
            thread::sleep(random.millis(0, 2500));
        }
        if leaktrace.try_wait().ok().flatten().is_some() {
            Some(wait_child(&mut leaktrace, Duration::ZERO))
        } else {
            // Stopped first, so that it cannot reap the command between
            // the reading of its children and its death.
            signal(leaktrace.id(), SIGSTOP);
            let commands = children(leaktrace.id());
            // Not exec'd yet (still a copy of leaktrace, waiting at its
            // gate): when the gate closes it must _exit(127) unstarted, or
            // exec if it was already on its way.
            let unstarted = commands.first().is_some_and(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).ok()
                    == std::fs::read_link(format!("/proc/{}/exe", leaktrace.id())).ok()
            });
            signal(leaktrace.id(), SIGKILL);
            let _: std::io::Result<_> = leaktrace.wait();
            lock(tally).run_kills += 1;
            match commands[..] {
                [pid] if unstarted => {
                    let ended = reap(pid, HANG);
                    if ended == Ended::Exited(127) {
                        let printed = output.join().unwrap_or_default();
                        if printed.is_empty() {
                            lock(tally).unstarted += 1;
                        } else {
                            judge(tally, &what, &ended, &printed, expected);
                        }
                        return;
                    }
                    Some(ended)
                }
                [pid] => Some(reap(pid, HANG)),
                // Not started yet, or already reaped by leaktrace: its
                // output (none, or all of it) is all there is to judge.
                [] => None,
                _ => {
                    lock(tally)
                        .errors
                        .push(format!("{what}: leaktrace had children {commands:?}"));
                    return;
                }
            }
        }
    };
    let output = output.join().unwrap_or_default();
    let ok = match ended {
        Some(ended) => judge(tally, &what, &ended, &output, expected),
        None if output.is_empty() => return,
        None => judge(tally, &what, &Ended::Exited(0), &output, expected),
    };
    if ok {
        *lock(tally).run_commands.entry(program.kind).or_default() += 1;
    }
}

/// The whole torture: expected outputs from untraced runs, sentinels,
/// then `duration` of kills; the sentinels' own work last.
pub(crate) fn torture(config: &Config) -> Result<Tally, String> {
    // SAFETY: prctl with integer arguments: orphaned descendants (commands
    // whose leaktrace run was killed) become this process's children.
    if unsafe { prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err("prctl(PR_SET_CHILD_SUBREAPER) failed".into());
    }
    std::fs::create_dir_all(&config.dir).map_err(|e| format!("{}: {e}", config.dir.display()))?;
    let mut programs = Vec::new();
    for program in &config.programs {
        let (ended, output) = run_program(&program.argv)?;
        if ended != Ended::Exited(0) || !output.starts_with("checksum ") {
            return Err(format!(
                "{} untraced: {ended:?}, printed {output:?}",
                program.kind
            ));
        }
        programs.push((program.clone(), output));
    }
    let mut sentinels = Vec::new();
    for program in &config.programs {
        sentinels.push(Sentinel::start(program)?);
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let programs = Arc::new(programs);
    let mut workers = Vec::new();
    for offset in 0..2 {
        let (programs, stop, tally) = (programs.clone(), stop.clone(), tally.clone());
        workers.push(thread::spawn(move || {
            fixture_rounds(&programs, offset * 2, &stop, &tally);
        }));
    }
    let mut random = Random(config.seed | 1);
    let mut run_random = Random(config.seed.rotate_left(32) | 1);
    let deadline = Instant::now() + config.duration;
    thread::scope(|scope| {
        scope.spawn(|| {
            // Plans cycle by 5 and programs by 4: every pair comes in 20,
            // and the first 8 rounds (run however long they take) give each
            // program a round it must complete (left alone or held).
            let mut round = 0;
            while Instant::now() < deadline || round < 8 {
                let (program, expected) = &programs[round as usize % programs.len()];
                run_once(config, round, program, expected, &mut run_random, &tally);
                round += 1;
            }
        });
        let mut round = 0;
        while Instant::now() < deadline {
            trace_all_once(config, round, &mut random, &sentinels, &tally);
            round += 1;
        }
    });
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _: thread::Result<()> = worker.join();
    }
    for mut sentinel in sentinels {
        drop(sentinel.child.stdin.take());
        let output = sentinel.child.stdout.take().map(collect);
        let ended = wait_child(&mut sentinel.child, HANG);
        let output = output
            .map(|o| o.join().unwrap_or_default())
            .unwrap_or_default();
        let expected = &programs
            .iter()
            .find(|(p, _)| p.kind == sentinel.program.kind)
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
        let what = format!("{} sentinel", sentinel.program.kind);
        judge(&tally, &what, &ended, &output, expected);
    }
    // Orphans nobody waited for (none expected): reaped, not left as zombies.
    let mut status = 0;
    // SAFETY: waitpid with a valid out-pointer.
    while unsafe { waitpid(-1, &raw mut status, WNOHANG | WALL) } > 0 {}
    let tally = std::mem::take(&mut *lock(&tally));
    Ok(tally)
}

/// The fixtures' paths, for callers that build them into one directory:
/// (C, C++, Go executables, the Python script) in `dir`.
pub(crate) fn programs(dir: &Path, python_script: &Path) -> Vec<Program> {
    vec![
        Program {
            kind: "C",
            argv: vec![dir.join("torture").into()],
        },
        Program {
            kind: "C++",
            argv: vec![dir.join("torture_cxx").into()],
        },
        Program {
            kind: "Python",
            argv: vec!["/usr/bin/python3".into(), python_script.into()],
        },
        Program {
            kind: "Go",
            argv: vec![dir.join("torture_go").into()],
        },
    ]
}
