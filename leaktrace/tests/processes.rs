//! Several processes at once: `serve --pid A --pid B` and `trace --all`.
//!
//! Both use the `leaky` fixture, whose leaks are known exactly (table in
//! tests/common/table.rs), in `hold` mode: it leaks on a first line on
//! stdin, says "done", and keeps its leaks until a second line. Every
//! process's sites must carry exactly the table's bytes and counts, and
//! each site must be attributed to the right pid.
mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    EXPECTED_LEAKS, Guarded, Holder, Server, TempDir, build_leaky, bytes_by_fixture_function,
    compile, describe_sites, frame_functions, get, process_sample, read_json, require_root, serial,
    sites, start_serve, start_tracing, start_tracing_with, wait_for_report,
};
use serde_json::Value;

/// The table as (function -> (bytes, count)).
fn expected() -> BTreeMap<String, (u64, u64)> {
    EXPECTED_LEAKS
        .iter()
        .map(|row| (row.function.to_string(), (row.bytes, row.count)))
        .collect()
}

/// Checks that `pid`'s sites in `report` are exactly the table, each with a
/// stack through main (or `thread_main` for the thread site).
fn assert_exact_leaks_of(report: &Value, pid: u32) {
    assert_eq!(
        bytes_by_fixture_function(report, Some(pid)),
        expected(),
        "pid {pid}: sites differ from the table\nsites:\n{}",
        describe_sites(report)
    );
    for site in sites(report)
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
    {
        let functions = frame_functions(site);
        if let Some(row) = EXPECTED_LEAKS.iter().find(|r| r.function == functions[0]) {
            assert!(
                functions.contains(&row.caller),
                "pid {pid}: {} has no {} in its stack {functions:?}",
                row.function,
                row.caller
            );
        }
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc_kill(pid as i32, signal) };
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// GET `path` from `address`: the body, after checking for a 200.
fn get_ok(address: &str, path: &str) -> Vec<u8> {
    let (status, body) = get(address, path);
    assert_eq!(status, 200, "GET {path}");
    body
}

/// `serve --pid A --pid B`: /metrics has a series per process with its
/// exact outstanding bytes, the pprof profile labels samples of both pids,
/// serve keeps going when A exits and stops with a final report (both
/// processes' exact tables, A marked exited) when B exits too.
#[test]
fn serve_traces_several_pids_and_stops_when_all_exited() {
    if !require_root("serve_traces_several_pids_and_stops_when_all_exited") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("serve-pids");
    let leaky = build_leaky(&dir);
    let mut first = Holder::start(&leaky);
    let mut second = Holder::start(&leaky);
    let (a, b) = (first.pid(), second.pid());
    let pids = format!("{a},{b}");
    let Server {
        process: mut server,
        stdout,
        stderr,
        address,
    } = start_serve(&["--pid", &pids, "--sample-bytes", "0", "--format", "json"]);
    stderr
        .wait_for(Duration::from_mins(1), |l| {
            l.starts_with(&format!("leaktrace: tracing pid {a} ("))
                && l.contains(&format!(", {b} ("))
        })
        .unwrap_or_else(|e| panic!("never said it traces both pids: {e}"));
    first.leak();
    second.leak();
    // The records reach the daemon within its 20 ms drain period.
    std::thread::sleep(Duration::from_millis(500));

    let metrics = String::from_utf8(get_ok(&address, "/metrics")).unwrap();
    let table_bytes: u64 = EXPECTED_LEAKS.iter().map(|r| r.bytes).sum();
    for pid in [a, b] {
        let (labels, bytes) = process_sample(&metrics, "leaktrace_outstanding_bytes", pid)
            .unwrap_or_else(|| panic!("no series for pid {pid}:\n{metrics}"));
        assert!(
            labels.starts_with(&format!("{{pid=\"{pid}\",comm=\"leaky\",")),
            "{labels}"
        );
        // leaky's own start-up blocks may come on top of the table.
        assert!(bytes >= table_bytes, "pid {pid}: {bytes}\n{metrics}");
    }
    let profile = leaktrace::report::pprof::decode(&get_ok(&address, "/debug/pprof/heap"))
        .expect("a pprof profile");
    let pid_key = profile
        .string_table
        .iter()
        .position(|s| s == "pid")
        .expect("a pid label") as i64;
    let mut labelled: Vec<i64> = profile
        .sample
        .iter()
        .flat_map(|s| s.label.iter())
        .filter(|l| l.key == pid_key)
        .map(|l| l.num)
        .collect();
    labelled.sort_unstable();
    labelled.dedup();
    assert_eq!(labelled, [i64::from(a.min(b)), i64::from(a.max(b))]);

    first.finish();
    stderr
        .wait_for(Duration::from_secs(10), |l| {
            l == format!("leaktrace: pid {a} exited; still tracing the others")
        })
        .unwrap_or_else(|e| panic!("serve did not notice pid {a} exit: {e}"));
    assert!(String::from_utf8(get_ok(&address, "/metrics")).is_ok());
    second.finish();
    let status = server
        .wait_timeout(Duration::from_secs(30))
        .expect("serve stops once every pid has exited");
    assert!(status.success(), "{status:?}\n{}", stderr.text());
    let report: Value = serde_json::from_str(&stdout.text()).expect("a final JSON report");
    assert_eq!(report["final"], true);
    for pid in [a, b] {
        assert_exact_leaks_of(&report, pid);
        let process = report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
            .unwrap_or_else(|| panic!("pid {pid} not in {}", report["processes"]));
        assert_eq!(process["exited"], true, "{process}");
        assert!(process["command"].as_str().unwrap().ends_with("leaky hold"));
    }
}

/// How long `--all` reports may take to show what a test waits for.
const REPORT_WAIT: Duration = Duration::from_mins(2);

/// What the `--all` test reads of a report: its sites (only those of the
/// pids it asks for are kept), pids, exit count and ring-buffer losses.
/// Streamed, never built as a tree: this test process is traced too, and
/// parsing a whole host's report (gigabytes with `--sample-bytes 0` while
/// builds run beside it) at each poll allocated millions of blocks, which
/// leaktrace then recorded, growing the report it parsed.
#[derive(serde::Deserialize)]
struct Slim {
    sites: Vec<SlimSite>,
    pids: Vec<u32>,
    totals: ExitTotals,
    losses: SlimLosses,
    all_processes: bool,
    #[serde(rename = "final")]
    is_final: bool,
}

#[derive(serde::Deserialize)]
struct SlimSite {
    pid: Option<u32>,
    bytes: Option<serde_json::Number>,
    count: Option<serde_json::Number>,
    #[serde(default)]
    frames: Vec<SlimFrame>,
}

#[derive(serde::Deserialize)]
struct SlimFrame {
    function: Option<String>,
}

#[derive(serde::Deserialize)]
struct SlimLosses {
    ring_buffer_full: u64,
}

impl Slim {
    fn read(path: &Path) -> Option<Slim> {
        let file = std::fs::File::open(path).ok()?;
        serde_json::from_reader(std::io::BufReader::new(file)).ok()
    }

    /// The sites of `pids` as a report the table helpers read.
    fn report_of(&self, pids: &[u32]) -> Value {
        let sites: Vec<Value> = self
            .sites
            .iter()
            .filter(|s| s.pid.is_some_and(|pid| pids.contains(&pid)))
            .map(|s| {
                let frames: Vec<Value> = s
                    .frames
                    .iter()
                    .map(|f| serde_json::json!({ "function": f.function }))
                    .collect();
                serde_json::json!({ "pid": s.pid, "bytes": s.bytes, "count": s.count, "frames": frames })
            })
            .collect();
        serde_json::json!({ "sites": sites })
    }
}

/// Polls the report until `ready` holds of it; None after `timeout`.
fn poll_slim(path: &Path, timeout: Duration, ready: impl Fn(&Slim) -> bool) -> Option<Slim> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(slim) = Slim::read(path)
            && ready(&slim)
        {
            return Some(slim);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `trace --all`, started before the fixtures: both are traced from their
/// first call although they did not exist at attach; each has exactly the
/// table's leaks; a process that exits is dropped (its sites leave the
/// report, `exited_processes` counts it) while the other stays.
///
/// With `--sample-bytes 0` every allocation on the host is a record: builds
/// running beside the test can fill the ring buffer, and a fixture whose
/// records were dropped cannot show exact leaks. Those rounds are not
/// failures of leaktrace (the report counts the loss): a new pair of
/// fixtures is started, up to `ATTEMPTS` times. A round that loses nothing
/// and still is not exact fails at once.
#[test]
fn trace_all_follows_processes_started_later_and_drops_them_at_exit() {
    const ATTEMPTS: usize = 4;
    if !require_root("trace_all_follows_processes_started_later_and_drops_them_at_exit") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("trace-all");
    let leaky = build_leaky(&dir);
    let report_path = dir.join("report.json");
    let (mut tracer, stderr) = start_tracing(
        &[
            "trace",
            "--all",
            "--sample-bytes",
            "0",
            "--interval",
            "500ms",
        ],
        &report_path,
    );
    let exact = |slim: &Slim, pid: u32| {
        bytes_by_fixture_function(&slim.report_of(&[pid]), Some(pid)) == expected()
    };
    let mut rounds = Vec::new();
    let (mut staying, mut leaving, both) = loop {
        let lost_before = poll_slim(&report_path, REPORT_WAIT, |_| true)
            .map_or(0, |slim| slim.losses.ring_buffer_full);
        let mut staying = Holder::start(&leaky);
        let mut leaving = Holder::start(&leaky);
        let (stays, leaves) = (staying.pid(), leaving.pid());
        staying.leak();
        leaving.leak();
        if let Some(both) = poll_slim(&report_path, REPORT_WAIT, |slim| {
            exact(slim, stays) && exact(slim, leaves)
        }) {
            break (staying, leaving, both);
        }
        let last = Slim::read(&report_path).expect("a report");
        let lost = last.losses.ring_buffer_full.saturating_sub(lost_before);
        let report = last.report_of(&[stays, leaves]);
        assert!(
            lost > 0,
            "no exact leaks for pids {stays} and {leaves} within {REPORT_WAIT:?}, and no record was lost:\n{}",
            describe_sites(&report)
        );
        rounds.push(lost);
        eprintln!(
            "round {}: {lost} records lost to a full ring buffer (other processes' allocations): again with new fixtures",
            rounds.len()
        );
        assert!(
            rounds.len() < ATTEMPTS,
            "records were lost in each of {ATTEMPTS} rounds ({rounds:?}): the host allocates faster than trace --all --sample-bytes 0 can record"
        );
        staying.finish();
        leaving.finish();
    };
    let (stays, leaves) = (staying.pid(), leaving.pid());
    assert!(both.all_processes);
    assert_exact_leaks_of(&both.report_of(&[stays]), stays);
    assert_exact_leaks_of(&both.report_of(&[leaves]), leaves);
    let exited_before = both.totals.exited_processes;

    leaving.finish();
    let after = poll_slim(&report_path, REPORT_WAIT, |slim| {
        slim.sites.iter().all(|s| s.pid != Some(leaves)) && !slim.pids.contains(&leaves)
    })
    .unwrap_or_else(|| panic!("pid {leaves} exited but is still in the report"));
    assert_exact_leaks_of(&after.report_of(&[stays]), stays);
    assert!(after.totals.exited_processes > exited_before);

    signal(tracer.pid(), 2); // SIGINT
    // Generous: the debug build's final drain and report of every process
    // on the host. The probes' removal no longer adds seconds (multi links,
    // see kernel/multi_uprobe.rs), but the final report's symbolization
    // still grows with the host's load.
    let status = tracer
        .wait_timeout(Duration::from_mins(5))
        .unwrap_or_else(|| {
            panic!(
                "trace --all did not stop within 5 min of SIGINT (its last report: {} bytes):\n{}",
                std::fs::metadata(&report_path).map_or(0, |m| m.len()),
                stderr.text()
            )
        });
    assert!(status.success(), "{status:?}\n{}", stderr.text());
    let last = Slim::read(&report_path).expect("the final report");
    assert!(last.is_final);
    assert_exact_leaks_of(&last.report_of(&[stays]), stays);
    staying.finish();
}

/// The daemon's anonymous resident memory (`RssAnon`), in KiB: what it
/// allocated, not the pages of the files it reads, which the kernel can
/// take back.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// What the soak's rounds read of a report: only its exit count and pids.
#[derive(serde::Deserialize)]
struct Exits {
    totals: ExitTotals,
    processes: Vec<ExitPid>,
}

#[derive(serde::Deserialize)]
struct ExitTotals {
    exited_processes: u64,
}

#[derive(serde::Deserialize)]
struct ExitPid {
    pid: u32,
}

/// Waits until the report in `path` has counted `counted` exits and lists
/// none of `ran`. It streams the report and keeps only what it needs:
/// this test process is traced too (`--all`), so building the whole
/// report as a tree at each poll would grow it by the report's size,
/// which grows the report and the daemon with it (the memory measured).
fn wait_for_exits_counted(path: &Path, counted: u64, ran: &[u32]) {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let exits = std::fs::File::open(path).ok().and_then(|file| {
            serde_json::from_reader::<_, Exits>(std::io::BufReader::new(file)).ok()
        });
        if let Some(exits) = &exits
            && exits.totals.exited_processes >= counted
            && exits.processes.iter().all(|p| !ran.contains(&p.pid))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the report never counted {counted} exits without listing them: {:?}",
            exits.map(|e| (
                e.totals.exited_processes,
                e.processes.iter().map(|p| p.pid).collect::<Vec<_>>()
            ))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The short run of `cargo xtask soak`: `trace --all` in growth mode (its
/// default) while rounds of short `leaky` processes come and go beside a
/// long-lived growing one: every exit is counted and no exited process is
/// left in the report, the long-lived one's growth is at its growing site,
/// and the daemon's anonymous memory stays flat from the second round to
/// the last.
#[test]
fn a_short_soak_counts_every_exit_and_keeps_the_daemon_flat() {
    const TEST: &str = "a_short_soak_counts_every_exit_and_keeps_the_daemon_flat";
    const ROUNDS: usize = 4;
    const PROCESSES: usize = 40;
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("soak");
    let leaky = build_leaky(&dir);
    let grower = compile(&dir, "soak_grower.c", "soak_grower", &["-O1", "-g"]);
    let report_path = dir.join("report.json");
    let (mut tracer, stderr) =
        start_tracing(&["trace", "--all", "--interval", "500ms"], &report_path);
    let mut growing = Guarded::spawn(
        "soak_grower",
        Command::new(&grower)
            .args(["256", "64"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    growing
        .stdout_lines()
        .wait_for(Duration::from_secs(10), |l| l == "ready")
        .expect("the grower starts");
    let exited_at_start = wait_for_report(&report_path, Duration::from_secs(30), |_| true)
        ["totals"]["exited_processes"]
        .as_u64()
        .unwrap();
    let mut ran = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..ROUNDS {
        for _ in 0..PROCESSES {
            let child = Command::new(&leaky)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("leaky starts");
            ran.push(child.id());
            let output = child.wait_with_output().expect("leaky runs");
            assert!(output.status.success(), "leaky: {:?}", output.status);
        }
        let counted = exited_at_start + ran.len() as u64;
        wait_for_exits_counted(&report_path, counted, &ran);
        rss.push(rss_kib(tracer.pid()));
    }
    let last = read_json(&report_path);
    let grown: u64 = sites(&last)
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(growing.pid())))
        .filter(|s| frame_functions(s).contains(&"grow_slowly"))
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    eprintln!(
        "{} processes ran; daemon RSS by round (KiB): {rss:?}; the grower's growth at grow_slowly: {grown} bytes",
        ran.len()
    );
    assert!(
        grown >= 256 << 10,
        "the long-lived process's growth is not at grow_slowly ({grown} bytes)\n{}",
        describe_sites(&last)
    );
    // Flat: as `cargo xtask soak` asks, the last round within 10% or
    // 8 MiB of the second (the first may still be loading tables).
    assert!(
        rss[ROUNDS - 1] <= rss[1] + (rss[1] / 10).max(8 << 10),
        "the daemon's memory grew: {rss:?} KiB"
    );
    signal(tracer.pid(), 2); // SIGINT
    let status = tracer
        .wait_timeout(Duration::from_mins(5))
        .expect("trace --all stops on SIGINT");
    assert!(status.success(), "{status:?}\n{}", stderr.text());
}

/// How long the test hook makes reading the new binary take, in seconds.
const SLOW_READ_SECONDS: u64 = 10;

/// The bytes `pid` holds at `grow_cache` (the `slow_leak` fixture), with
/// `main` as its caller, in `report`.
fn grown_at_grow_cache(report: &Value, pid: u32) -> u64 {
    sites(report)
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
        .filter(|s| frame_functions(s).starts_with(&["grow_cache", "main"]))
        .map(|s| s["bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// The report in `path`, if one is there whole.
fn try_read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// `trace --all --mode allocations`: a new binary whose allocator is not
/// probed yet (a static `slow_leak`) is read off the event loop. Its read
/// is made to take 10 s (`LEAKTRACE_TEST_SLOW_OBJECT`): meanwhile interval
/// reports keep being made, each with more events drained and with
/// another process's leaking site (a dynamic `slow_leak`, traced through
/// the C library); once read, the static process's allocator is probed
/// and its leak is reported at its site. With the read on the event loop,
/// no report was made during it.
///
/// At least two reports in 9 s, not one per interval: every process on
/// the host is traced, and a report of the compilers running beside the
/// tests can take seconds to make (sampled, as `--all`'s default, to keep
/// that down).
#[test]
fn trace_all_keeps_draining_while_a_new_binary_is_read() {
    const TEST: &str = "trace_all_keeps_draining_while_a_new_binary_is_read";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("slow-object");
    let flags = ["-O0", "-g", "-fno-omit-frame-pointer", "-fno-inline"];
    let slow_leak = compile(&dir, "slow_leak.c", "slow_leak", &flags);
    let static_flags = [&flags[..], &["-static"]].concat();
    let static_leak = compile(&dir, "slow_leak.c", "slow_leak_static", &static_flags);
    let report_path = dir.join("report.json");
    let slow = format!("slow_leak_static:{SLOW_READ_SECONDS}");
    let (mut tracer, stderr) = start_tracing_with(
        &[
            "trace",
            "--all",
            "--mode",
            "allocations",
            "--interval",
            "500ms",
        ],
        &report_path,
        &[("LEAKTRACE_TEST_SLOW_OBJECT", &slow)],
    );
    let quiet = |path: &Path, name: &str| {
        Guarded::spawn(
            name,
            Command::new(path)
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        )
    };
    let grower = quiet(&slow_leak, "slow_leak");
    wait_for_report(&report_path, Duration::from_secs(30), |r| {
        grown_at_grow_cache(r, grower.pid()) > 0
    });

    let new = quiet(&static_leak, "slow_leak_static");
    stderr
        .wait_for(Duration::from_mins(1), |l| {
            l.starts_with("leaktrace: test: reading slow_leak_static")
        })
        .unwrap_or_else(|e| panic!("the new binary was never read: {e}"));
    // While it is read: each report made (one is rewritten whole at each
    // interval, and says when it was made), after the one already there.
    let read_started = Instant::now();
    let before = try_read_json(&report_path).map(|r| r["elapsed_ms"].clone());
    let mut reports: Vec<(u64, u64, u64)> = Vec::new();
    while read_started.elapsed() < Duration::from_secs(SLOW_READ_SECONDS - 1) {
        if let Some(report) = try_read_json(&report_path)
            && Some(&report["elapsed_ms"]) != before.as_ref()
        {
            let made = report["elapsed_ms"].as_u64().expect("elapsed_ms");
            if reports.last().is_none_or(|&(last, _, _)| last != made) {
                let events = report["totals"]["events"].as_u64().expect("events");
                reports.push((made, events, grown_at_grow_cache(&report, grower.pid())));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "(elapsed_ms, events, bytes at grow_cache) of the reports made while it was read: {reports:?}"
    );
    assert!(
        // Some 500 ms pass with no sampled allocation: events never go
        // back, and grow over the whole read.
        reports.len() >= 2
            && reports.is_sorted_by(|a, b| a.1 <= b.1)
            && reports.first().map(|r| r.1) < reports.last().map(|r| r.1)
            && reports.iter().all(|r| r.2 > 0),
        "the event loop stalled while a new binary was read: (elapsed_ms, events, bytes at grow_cache) of the reports made in those {} s: {reports:?}\n{}",
        SLOW_READ_SECONDS - 1,
        stderr.text()
    );

    let probed = stderr
        .wait_for(Duration::from_secs(30), |l| {
            l.starts_with("leaktrace: now also probing") && l.contains("slow_leak_static")
        })
        .unwrap_or_else(|e| panic!("the static binary was never probed: {e}"));
    assert!(
        read_started.elapsed() >= Duration::from_secs(SLOW_READ_SECONDS - 1),
        "probed before its read could end: {probed}"
    );
    wait_for_report(&report_path, Duration::from_secs(30), |r| {
        grown_at_grow_cache(r, new.pid()) > 0
    });

    signal(tracer.pid(), 2); // SIGINT
    let status = tracer
        .wait_timeout(Duration::from_mins(5))
        .expect("trace --all stops on SIGINT");
    assert!(status.success(), "{status:?}\n{}", stderr.text());
    drop((grower, new));
}
