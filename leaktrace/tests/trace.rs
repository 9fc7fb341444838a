//! End-to-end tests of `leaktrace run` and `leaktrace trace --pid` against
//! the `leaky` fixture (tests/fixtures/leaky.c), whose outstanding memory
//! per call site is known exactly (`common::EXPECTED_LEAKS`), and against the
//! `spin` fixture for probe cleanup after SIGKILL.
//!
//! They need root (eBPF): without it each fails, or is a counted skip when
//! `LEAKTRACE_ALLOW_SKIPS=1` (see `common::prerequisite`). They run one at a
//! time (`common::serial`).
mod common;

use std::{
    fs,
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    EXPECTED_LEAKS, Guarded, Lines, TempDir, build_leaky, check_report_against_table, leaktrace,
    leaktrace_bin, probed, read_json, require_root, run_json, serial, sites, start_spin,
    start_tracing_with,
};

const RUN_TIMEOUT: Duration = Duration::from_mins(2);

/// `leaktrace run` reports, for every leaking call site of `leaky`, exactly
/// the bytes and allocations it left (one site per function, attributed to
/// the function that called the allocator, with the right allocator name,
/// caller, file and line), and nothing for the temporary allocations, the
/// failing calls, realloc(p, 0) or free(NULL). The fixture's sites add up to
/// the table exactly, and no event was lost.
#[test]
fn run_reports_exact_leaks_per_call_site() {
    if !require_root("run_reports_exact_leaks_per_call_site") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("run");
    let leaky = build_leaky(&dir);
    let leaky_str = leaky.to_str().expect("utf-8 temp path");
    let report = run_json(&dir, "report", &[], &[leaky_str]);
    assert_eq!(
        report["command"],
        serde_json::json!([leaky_str]),
        "command in the report"
    );
    let objects = report["allocator_objects"]
        .as_array()
        .expect("allocator_objects array");
    assert!(
        objects
            .iter()
            .any(|o| o.as_str().is_some_and(|p| p.ends_with("libc.so.6"))),
        "leaky uses glibc's allocator, allocator_objects is {objects:?}"
    );
    assert_eq!(report["min_age_ms"], 0);
    check_report_against_table(&report, EXPECTED_LEAKS, None);
    let pids = report["pids"].as_array().expect("pids array");
    assert_eq!(pids.len(), 1, "one process: {pids:?}");
    for site in sites(&report) {
        assert_eq!(
            site["pid"], pids[0],
            "every site belongs to the one process"
        );
    }
}

/// `leaktrace trace --pid` attached to a running `leaky` (which waits for a
/// line on stdin before allocating anything) reports the same exact table,
/// ends by itself when the process exits, and still writes its final report.
#[test]
fn trace_pid_reports_exact_leaks() {
    if !require_root("trace_pid_reports_exact_leaks") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("trace");
    let leaky = build_leaky(&dir);
    let report_path = dir.join("report.json");

    let mut fixture = Guarded::spawn(
        "leaky wait",
        Command::new(&leaky)
            .arg("wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let fixture_pid = fixture.pid();
    let fixture_out = fixture.stdout_lines();
    let fixture_err = fixture.stderr_lines();
    fixture_out
        .wait_for(Duration::from_secs(10), |l| l == "ready")
        .unwrap_or_else(|e| panic!("leaky wait never said ready: {e}"));

    let mut tracer = Guarded::spawn(
        "leaktrace trace",
        Command::new(leaktrace_bin())
            .args([
                "trace",
                "--pid",
                &fixture_pid.to_string(),
                "--format",
                "json",
                "--output",
            ])
            .arg(&report_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let tracer_out = tracer.stdout_lines();
    let tracer_err = tracer.stderr_lines();
    let tracing_line = tracer_err.wait_for(Duration::from_mins(1), |l| {
        l.starts_with("leaktrace: tracing pid ")
    });
    if let Err(e) = tracing_line {
        let status = tracer.wait_timeout(Duration::from_millis(100));
        panic!("leaktrace never said 'leaktrace: tracing pid ' (status {status:?}): {e}");
    }

    // Go: the fixture allocates, frees, leaks, says done and exits.
    let mut stdin = fixture.take_stdin();
    stdin.write_all(b"go\n").expect("writing to leaky's stdin");
    stdin.flush().expect("flushing leaky's stdin");
    drop(stdin);
    let fixture_status = fixture
        .wait_timeout(Duration::from_mins(1))
        .unwrap_or_else(|| {
            panic!(
                "leaky did not exit within 60 s; stderr:\n{}",
                fixture_err.text()
            )
        });
    assert!(
        fixture_status.success(),
        "leaky wait: {fixture_status:?}\nstderr:\n{}",
        fixture_err.text()
    );
    assert!(
        fixture_out.all().iter().any(|l| l == "done"),
        "leaky never said done: {:?}",
        fixture_out.all()
    );

    // The traced process is gone: leaktrace must notice, report and exit.
    let Some(status) = tracer.wait_timeout(Duration::from_mins(1)) else {
        tracer.kill_and_reap();
        panic!(
            "leaktrace trace did not exit within 60 s of the traced process exiting\nstderr:\n{}",
            tracer_err.finish(Duration::from_secs(1)).join("\n")
        );
    };
    let stderr = tracer_err.finish(Duration::from_secs(5)).join("\n");
    assert!(
        status.success(),
        "leaktrace trace: {status:?}\nstderr:\n{stderr}"
    );
    let stdout = tracer_out.finish(Duration::from_secs(5));
    assert!(
        stdout.iter().all(|l| l.trim().is_empty()),
        "the report went to --output, stdout has: {stdout:?}"
    );

    let report = read_json(&report_path);
    check_report_against_table(&report, EXPECTED_LEAKS, Some(fixture_pid));
}

/// `leaktrace run` exits with the command's exit status (7 here), and the
/// folded report has one `frame;frame;...;allocator BYTES` line per site,
/// root first, with `leak_malloc`'s site as `...;main;leak_malloc;malloc 4444`
/// and the thread site as `...;thread_main;leak_in_thread;malloc 6660`.
#[test]
fn run_passes_exit_status_and_writes_folded_stacks() {
    if !require_root("run_passes_exit_status_and_writes_folded_stacks") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("folded");
    let leaky = build_leaky(&dir);
    let folded_path = dir.join("report.folded");
    let finished = leaktrace(
        &[
            "run",
            "--format",
            "folded",
            "--output",
            folded_path.to_str().unwrap(),
            "--",
            leaky.to_str().unwrap(),
            "exit",
            "7",
        ],
        RUN_TIMEOUT,
    );
    assert_eq!(
        finished.status.code(),
        Some(7),
        "leaktrace run must exit with the command's status\nstderr:\n{}",
        finished.stderr
    );
    let text = fs::read_to_string(&folded_path).expect("reading the folded report");
    let mut stacks: Vec<(Vec<&str>, u64)> = Vec::new();
    for line in text.lines() {
        let (stack, bytes) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("folded line without ' BYTES': {line:?}"));
        let bytes: u64 = bytes
            .parse()
            .unwrap_or_else(|_| panic!("folded line ends with a non-number: {line:?}"));
        let frames: Vec<&str> = stack.split(';').collect();
        assert!(
            frames.len() >= 2 && frames.iter().all(|f| !f.is_empty()),
            "folded stack needs frames and an allocator, none empty: {line:?}"
        );
        assert!(bytes > 0, "a reported site holds bytes: {line:?}");
        stacks.push((frames, bytes));
    }
    let find = |tail: &[&str], bytes: u64| {
        stacks
            .iter()
            .any(|(frames, b)| *b == bytes && frames.ends_with(tail))
    };
    assert!(
        find(&["main", "leak_malloc", "malloc"], 4444),
        "no folded line ending 'main;leak_malloc;malloc 4444' in:\n{text}"
    );
    assert!(
        find(&["thread_main", "leak_in_thread", "malloc"], 6660),
        "no folded line ending 'thread_main;leak_in_thread;malloc 6660' in:\n{text}"
    );
    assert!(
        find(&["main", "leak_mmap_partial", "mmap"], 12 * 4096),
        "no folded line ending 'main;leak_mmap_partial;mmap 49152' in:\n{text}"
    );
    // Root first: main comes before the leaking function, the allocator last.
    let (frames, _) = stacks
        .iter()
        .find(|(frames, _)| frames.ends_with(&["leak_malloc", "malloc"]))
        .expect("leak_malloc's line");
    assert!(
        frames.contains(&"main"),
        "main is on leak_malloc's stack: {frames:?}"
    );
}

/// `--min-age` hides what is younger than the age: with `--min-age 1h`
/// nothing `leaky` left is old enough, so the report has no site, and says
/// which age it applied.
#[test]
fn run_min_age_hides_young_allocations() {
    if !require_root("run_min_age_hides_young_allocations") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("minage");
    let leaky = build_leaky(&dir);
    let report = run_json(
        &dir,
        "report",
        &["--min-age", "1h"],
        &[leaky.to_str().unwrap()],
    );
    assert_eq!(report["min_age_ms"], 3_600_000);
    assert_eq!(
        sites(&report).len(),
        0,
        "nothing is an hour old:\n{}",
        common::describe_sites(&report)
    );
    assert_eq!(report["totals"]["outstanding_bytes"], 0);
    assert_eq!(report["totals"]["outstanding_allocations"], 0);
    // It still saw everything: only the report is filtered.
    assert!(
        report["totals"]["allocations"].as_u64().unwrap_or(0) >= 10_000,
        "{}",
        report["totals"]
    );
}

// ---------------------------------------------------------------------------
// SIGKILL cleanup
// ---------------------------------------------------------------------------

/// The median of the next `samples` per-200-ms counts from `spin`, after
/// discarding everything already received and `skip` more (an interval that
/// straddles a change of state).
fn spin_rate(lines: &Lines, skip: usize, samples: usize) -> u64 {
    lines.drain();
    let next = || {
        let line = lines
            .next(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("spin stopped reporting; output so far:\n{}", lines.text()));
        line.trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("spin printed {line:?}"))
    };
    for _ in 0..skip {
        next();
    }
    let mut values: Vec<u64> = (0..samples).map(|_| next()).collect();
    values.sort_unstable();
    values[values.len() / 2]
}

/// SIGKILL gives leaktrace no chance to clean up, yet the kernel must remove
/// its probes. Seen in the traced process's memory: while leaktrace traces,
/// the text of its C library differs from the file at some bytes, each of
/// them int3 (the probes); after leaktrace is `SIGKILLed`, at none. And seen
/// in its speed: a process doing malloc+free in a loop runs much slower
/// while traced (the probes fire) and at least half its untraced speed again
/// once leaktrace is killed. Rates are compared within one run, never to
/// absolute numbers.
#[test]
fn sigkill_leaves_no_probe_behind() {
    if !require_root("sigkill_leaves_no_probe_behind") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("sigkill");
    let (mut spinner, counts) = start_spin(&dir);
    let spin_pid = spinner.pid();
    let untraced = spin_rate(&counts, 2, 5);
    assert!(untraced > 0, "spin does nothing untraced");
    let libc = probed::c_library(spin_pid);
    probed::assert_no_int3_before_tracing(spin_pid, &libc);

    let mut tracer = Guarded::spawn(
        "leaktrace trace (spin)",
        Command::new(leaktrace_bin())
            .args([
                "trace",
                "--pid",
                &spin_pid.to_string(),
                "--format",
                "json",
                "--output",
            ])
            .arg(dir.join("report.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let tracer_err = tracer.stderr_lines();
    if let Err(e) = tracer_err.wait_for(Duration::from_mins(1), |l| {
        l.starts_with("leaktrace: tracing pid ")
    }) {
        panic!("leaktrace never said 'leaktrace: tracing pid ': {e}");
    }
    let traced = spin_rate(&counts, 1, 5);
    eprintln!("spin: {untraced} malloc+free per 200 ms untraced, {traced} traced");
    assert!(
        traced * 3 < untraced,
        "tracing should slow malloc+free down a lot (the probes fire on every call): untraced {untraced}, traced {traced} per 200 ms"
    );
    let probes = probed::int3_offsets(spin_pid, &libc);
    eprintln!(
        "spin: int3 at {} offsets of {libc} while traced: {probes:x?}",
        probes.len()
    );
    assert!(
        !probes.is_empty(),
        "leaktrace traces spin, yet its {libc} text in memory is the file's: no probe installed?"
    );

    let status = tracer.kill_and_reap();
    assert!(!status.success(), "leaktrace was killed: {status:?}");

    // The kernel removes the probes as the killed process's files close;
    // give a loaded machine up to ten seconds to show it.
    let left = probed::int3_offsets_when(
        spin_pid,
        &libc,
        Duration::from_secs(10),
        std::collections::BTreeSet::is_empty,
    );
    assert!(
        left.is_empty(),
        "int3 still in spin's {libc} 10 s after SIGKILL of leaktrace, at {left:x?} (of {probes:x?} while traced); other tracers running: {:?}",
        probed::other_tracers(&[])
    );
    let mut after = 0;
    for _ in 0..3 {
        after = after.max(spin_rate(&counts, 1, 5));
        if after * 2 >= untraced {
            break;
        }
    }
    eprintln!("spin: {after} malloc+free per 200 ms after SIGKILL of leaktrace");
    assert!(
        after * 2 >= untraced,
        "after SIGKILL of leaktrace, spin runs at {after} per 200 ms, under half its untraced {untraced}: probes are still firing"
    );
    assert!(
        spinner.wait_timeout(Duration::ZERO).is_none(),
        "spin died while traced"
    );
}

/// --max-allocations bounds the daemon's table: beyond the cap, new
/// allocations are dropped and counted as lost (`losses.table_full`), and the
/// report says so instead of silently showing less.
#[test]
fn the_table_cap_is_honoured_and_counted() {
    if !require_root("the_table_cap_is_honoured_and_counted") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("cap");
    let leaky = build_leaky(&dir);
    let report = run_json(
        &dir,
        "report",
        &["--max-allocations", "10"],
        &[leaky.to_str().unwrap()],
    );
    let outstanding = report["totals"]["outstanding_allocations"]
        .as_u64()
        .unwrap();
    assert!(
        outstanding <= 10,
        "{outstanding} outstanding with a cap of 10"
    );
    let dropped = report["losses"]["table_full"].as_u64().unwrap();
    assert!(dropped > 0, "{}", report["losses"]);
    assert!(report["losses"]["total"].as_u64().unwrap() >= dropped);
}

/// SIGINT: leaktrace writes its report, then removes its probes, and none
/// is left in the traced process's text once it has exited (no polling:
/// closing a link removes its int3s before `close` returns). While it
/// traces, every probe it announced is held in a multi link (read from its
/// fdinfo: the links' `uprobe_cnt`s add up to the count it printed, each
/// scoped to the traced pid). That is what makes the stop fast: a
/// perf-event uprobe's removal waits ~100 ms, one probe after the other,
/// where a multi link waits once for all of its probes (spin's 22 probes:
/// 2.6 s from SIGINT to exit as perf links, 0.16 s in multi links).
#[test]
fn sigint_removes_every_probe_held_in_multi_links() {
    sigint_removes_every_probe("sigint_removes_every_probe_held_in_multi_links", true);
}

/// The path of kernels without multi-uprobe links (before 6.6), or of a
/// pid's probes before 6.10: one perf link a probe.
#[test]
fn sigint_removes_every_probe_held_in_perf_links() {
    sigint_removes_every_probe("sigint_removes_every_probe_held_in_perf_links", false);
}

/// Traces spin, checks how its probes are held (all in multi links scoped
/// to it, or none there with `multi` false), then SIGINTs leaktrace and
/// checks no int3 is left at once.
fn sigint_removes_every_probe(test: &str, multi: bool) {
    if !require_root(test) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("sigint-probes");
    let (mut spinner, counts) = start_spin(&dir);
    let spin_pid = spinner.pid();
    // Its first count: it runs, its C library mapped.
    counts
        .next(Duration::from_secs(10))
        .expect("spin prints its counts");
    let libc = probed::c_library(spin_pid);
    probed::assert_no_int3_before_tracing(spin_pid, &libc);
    let hide: &[(&str, &str)] = if multi {
        &[]
    } else {
        &[("LEAKTRACE_TEST_HIDE_FEATURE", "uprobe_multi")]
    };
    let (mut tracer, stderr) = start_tracing_with(
        &["trace", "--pid", &spin_pid.to_string()],
        &dir.join("report.json"),
        hide,
    );
    let announced: usize = stderr
        .all()
        .iter()
        .find_map(|line| {
            let rest = line.strip_prefix("leaktrace: tracing pid ")?;
            rest.split(": ").nth(1)?.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no probe count announced:\n{}", stderr.text()));
    let links = multi_links(tracer.pid());
    let in_links: u64 = links.iter().map(|(count, _)| count).sum();
    let expected = if multi { announced as u64 } else { 0 };
    assert_eq!(
        in_links, expected,
        "leaktrace announced {announced} probes; its multi links hold {links:?}"
    );
    assert!(
        links.iter().all(|(_, pid)| *pid == spin_pid),
        "a multi link is not scoped to spin (pid {spin_pid}): {links:?}"
    );
    let probes = probed::int3_offsets(spin_pid, &libc);
    assert!(
        !probes.is_empty(),
        "leaktrace traces spin, yet its {libc} text in memory is the file's"
    );

    let stopping = std::time::Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGINT) };
    let status = tracer
        .wait_timeout(Duration::from_mins(1))
        .expect("leaktrace stops on SIGINT");
    eprintln!(
        "{announced} probes in {} multi links; SIGINT to exit: {:?}",
        links.len(),
        stopping.elapsed()
    );
    assert!(status.success(), "{status:?}\n{}", stderr.text());
    let left = probed::int3_offsets(spin_pid, &libc);
    assert!(
        left.is_empty(),
        "int3 still in spin's {libc} after leaktrace exited, at {left:x?} (of {probes:x?} while traced)"
    );
    assert!(
        spinner.wait_timeout(Duration::ZERO).is_none(),
        "spin died while traced"
    );
}

/// The multi-uprobe links `pid` holds: each one's probe count and the pid
/// it is scoped to, from `/proc/PID/fdinfo`.
fn multi_links(pid: u32) -> Vec<(u64, u32)> {
    let mut links = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("reading fdinfo") {
        let Ok(info) = fs::read_to_string(entry.expect("fdinfo entry").path()) else {
            continue; // closed meanwhile
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(":\t"))
                .map(str::to_string)
        };
        if matches!(
            field("link_type").as_deref(),
            Some("uprobe_multi" | "uretprobe_multi")
        ) {
            let count = field("uprobe_cnt").and_then(|c| c.parse().ok());
            let scope = field("pid").and_then(|p| p.parse().ok());
            links.push((
                count.expect("uprobe_cnt in a multi link's fdinfo"),
                scope.expect("pid in a multi link's fdinfo"),
            ));
        }
    }
    links
}
