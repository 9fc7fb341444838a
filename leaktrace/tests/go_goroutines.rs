//! Goroutines by creation site, end to end, on Go programs built by each
//! release on the machine (unstripped, and stripped for the story):
//!
//! - the seed story: a daemon leaks 8 checker goroutines every 20 ms on a
//!   full channel, 2,000 in all; traced with `trace --pid` (allocations
//!   mode: a pure Go program has no malloc, its goroutines are read all
//!   the same), the `go` statement's line holds exactly 2,000 goroutines,
//!   all in `chan send`, flagged as only growing, started in the checker's
//!   function; the program's own counts (`runtime.NumGoroutine`, its
//!   `runtime.Stack` dump's "created by" lines) are the oracle;
//! - goroutines that come and go (`run`, growth mode): flat, none flagged;
//! - `serve --pid` on the story: `/metrics` has the site's series.
mod common;

use std::{
    collections::HashMap,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    GO_RELEASES, Guarded, Lines, Symbols, TempDir, build_go, fixture_source, get, leaktrace_bin,
    read_json, require_root, run_json, serial, sites, start_serve, start_tracing, wait_for_report,
};
use serde_json::Value;

/// The line of `fixtures/go/NAME.go` that carries `marker` in a comment.
fn marked_line(name: &str, marker: &str) -> u64 {
    let source = std::fs::read_to_string(fixture_source(&format!("go/{name}.go")))
        .expect("reading the fixture");
    let index = source
        .lines()
        .position(|l| l.contains(&format!("// {marker}")))
        .unwrap_or_else(|| panic!("no `// {marker}` in {name}.go"));
    index as u64 + 1
}

/// The story fixture, started and ready for its "go".
fn start_story(program: &Path, rounds: &str) -> (Guarded, Lines) {
    let mut fixture = Guarded::spawn(
        "the goroutine leak fixture",
        Command::new(program)
            .arg(rounds)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let lines = fixture.stdout_lines();
    lines
        .wait_for(Duration::from_secs(30), |line| line == "ready")
        .expect("the fixture gets ready");
    (fixture, lines)
}

/// Tells the story fixture to go, waits for its end, and returns its own
/// counts: `runtime.NumGoroutine()` and goroutines per "created by"
/// location (`FILE:LINE`).
fn run_story(fixture: &mut Guarded, lines: &Lines) -> (u64, HashMap<String, u64>) {
    let mut stdin = fixture.take_stdin();
    stdin.write_all(b"go\n").expect("telling the fixture to go");
    stdin.flush().expect("flushing");
    lines
        .wait_for(Duration::from_mins(1), |line| line == "end")
        .expect("the fixture finishes");
    let mut total = 0;
    let mut sites = HashMap::new();
    for line in lines.all() {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["goroutines", n] => total = n.parse().unwrap(),
            ["created", site, n] => {
                sites.insert(site.to_owned(), n.parse().unwrap());
            }
            _ => {}
        }
    }
    (total, sites)
}

/// The report's group whose `go` statement is at `file`:`line`.
fn group_at<'a>(report: &'a Value, file: &str, line: u64) -> &'a Value {
    let groups = report["goroutines"].as_array().expect("a goroutines array");
    groups
        .iter()
        .find(|g| {
            g["created_at"]["line"] == line
                && g["created_at"]["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(file))
        })
        .unwrap_or_else(|| panic!("no group created at {file}:{line} in {groups:#?}"))
}

#[test]
fn the_leaking_go_statement_holds_every_blocked_checker() {
    const TEST: &str = "the_leaking_go_statement_holds_every_blocked_checker";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("go-goroutines");
    for release in GO_RELEASES {
        if !trace_story(TEST, &dir, release, Symbols::Kept) {
            return;
        }
    }
}

/// The same story built stripped (`-ldflags=-s -w`: no `.symtab`, no
/// DWARF): `runtime.allgs` found from the runtime's code, `runtime.g`'s
/// layout and the wait reasons from the release's tables, names from
/// `.gopclntab`; the same report as the unstripped build's.
#[test]
fn a_stripped_build_tells_the_same_story() {
    const TEST: &str = "a_stripped_build_tells_the_same_story";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("go-goroutines-stripped");
    for release in GO_RELEASES {
        if !trace_story(TEST, &dir, release, Symbols::Stripped) {
            return;
        }
    }
}

/// Builds the story with `release`, traces it with `trace --pid` and
/// checks the report against the program's own counts; false when a
/// prerequisite is missing (the test then returns).
fn trace_story(test: &str, dir: &TempDir, release: &str, symbols: Symbols) -> bool {
    let go_line = marked_line("goroutine_leak", "leak: checker");
    let start_line = marked_line("goroutine_leak", "start: checker");
    let Some(program) = build_go(test, dir, "goroutine_leak", release, symbols) else {
        return false;
    };
    let label = match symbols {
        Symbols::Kept => release.to_owned(),
        Symbols::Stripped => format!("{release} stripped"),
    };
    let (mut fixture, lines) = start_story(&program, "250");
    let report_path = dir.join(&format!("story-{}.json", label.replace(' ', "-")));
    let mut tracer = Guarded::spawn(
        "leaktrace",
        Command::new(leaktrace_bin())
            .args(["trace", "--duration", "9s", "--interval", "1s"])
            .args(["--format", "json", "--output"])
            .arg(&report_path)
            .arg("--pid")
            .arg(fixture.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let tracer_lines = tracer.stderr_lines();
    tracer_lines
        .wait_for(Duration::from_mins(1), |l| {
            l.contains("leaktrace: tracing pid")
        })
        .expect("leaktrace starts tracing");
    let (own_total, own_sites) = run_story(&mut fixture, &lines);
    let status = tracer
        .wait_timeout(Duration::from_mins(1))
        .expect("leaktrace ends after its duration");
    let stderr = tracer_lines.finish(Duration::from_secs(5)).join("\n");
    assert!(status.success(), "Go {label}: leaktrace failed: {stderr}");
    let report = read_json(&report_path);
    let own_at_line = own_sites
        .iter()
        .find(|(site, _)| site.ends_with(&format!("goroutine_leak.go:{go_line}")))
        .map_or_else(
            || panic!("Go {label}: the program names no site: {own_sites:?}"),
            |(_, n)| *n,
        );
    assert_eq!(own_at_line, 2000, "Go {label}: the program's own count");
    let leak = group_at(&report, "goroutine_leak.go", go_line);
    let summary = format!("Go {label}: {leak:#}");
    assert_eq!(leak["count"], own_at_line, "{summary}");
    assert_eq!(
        leak["wait_reasons"],
        serde_json::json!({"chan send": 2000}),
        "{summary}"
    );
    assert_eq!(leak["created_at"]["function"], "main.round", "{summary}");
    assert_eq!(leak["start"]["function"], "main.check", "{summary}");
    assert_eq!(leak["start"]["line"], start_line, "{summary}");
    assert_eq!(leak["growth"]["only_grows"], true, "{summary}");
    assert_eq!(leak["growth"]["since_attach"], 2000, "{summary}");
    assert_eq!(leak["runtime_internal"], false, "{summary}");
    // Each on a stack of 2 KiB at least (the runtime's smallest; its
    // buffer is on the heap, below).
    assert!(
        leak["stack_bytes"].as_u64().unwrap() >= 2000 * 2048,
        "{summary}"
    );
    // The heap view: the checkers' buffers (2000 of 4 KiB, 8 MiB) at
    // their `make` line, from the runtime's own sampler (turned on by
    // leaktrace: the fixture does not import pprof), one sample per 512
    // KiB: about 16 samples, so a wide range.
    let buffer_line = marked_line("goroutine_leak", "buffer: checker");
    let buffers: u64 = sites(&report)
        .iter()
        .filter(|s| s["allocator"] == "go-heap")
        .filter(|s| {
            s["frames"][0]["function"] == "main.check"
                && s["frames"][0]["line"].as_u64() == Some(buffer_line)
        })
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    assert!(
        (2 << 20..=24 << 20).contains(&buffers),
        "Go {label}: {buffers} bytes at the buffer's make line (line {buffer_line}); Go heap: {}",
        report["processes"][0]["runtime"]["go_heap"]
    );
    // NumGoroutine counts what the runtime does not run for itself.
    let program_goroutines: u64 = report["goroutines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["runtime_internal"] == false)
        .map(|g| g["count"].as_u64().unwrap())
        .sum();
    assert_eq!(program_goroutines, own_total, "Go {label}");
    // Nothing else only grew.
    let flagged: Vec<&Value> = report["goroutines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["growth"]["only_grows"] == true)
        .collect();
    assert_eq!(flagged.len(), 1, "Go {label}: {flagged:#?}");
    let read = &report["goroutine_reads"][0];
    let layout = match symbols {
        Symbols::Kept => "dwarf",
        Symbols::Stripped => "release table",
    };
    assert_eq!(read["layout"], layout, "Go {label}: {read}");
    assert_eq!(read["failed_reads"], 0, "Go {label}: {read}");
    assert!(read["reads"].as_u64().unwrap() >= 5, "Go {label}: {read}");
    assert!(
        read["note"]
            .as_str()
            .is_some_and(|n| n.contains("read from the Go runtime's own profile")),
        "Go {label}: {read}"
    );
    assert_eq!(report["processes"][0]["runtime"]["kind"], "go");
    assert!(
        report["processes"][0]["runtime"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("go{release}"))),
        "Go {label}: {}",
        report["processes"][0]["runtime"]
    );
    true
}

#[test]
fn goroutines_that_come_and_go_are_flat_and_not_flagged() {
    const TEST: &str = "goroutines_that_come_and_go_are_flat_and_not_flagged";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("go-churn");
    let pool_line = marked_line("goroutine_churn", "site: pool");
    for release in ["1.19", "1.23"] {
        let Some(program) = build_go(TEST, &dir, "goroutine_churn", release, Symbols::Kept) else {
            return;
        };
        let report = run_json(
            &dir,
            &format!("churn-{release}"),
            &["--mode", "growth", "--interval", "500ms"],
            &[program.to_str().unwrap(), "3"],
        );
        let pool = group_at(&report, "goroutine_churn.go", pool_line);
        let summary = format!("Go {release}: {:#}", report["goroutines"]);
        assert_eq!(pool["count"], 4, "{summary}");
        assert_eq!(pool["wait_reasons"]["chan receive"], 4, "{summary}");
        assert_eq!(pool["start"]["function"], "main.worker", "{summary}");
        // Flat since the read before, never flagged. Since attach: 4 when
        // the first read (when the process is first seen to be Go) came
        // before the pool started, 0 when after.
        assert_eq!(pool["growth"]["since_previous"], 0, "{summary}");
        assert_eq!(pool["growth"]["only_grows"], false, "{summary}");
        assert!(
            [0, 4].contains(&pool["growth"]["since_attach"].as_u64().unwrap()),
            "{summary}"
        );
        assert!(
            report["goroutines"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["growth"]["only_grows"] == false),
            "{summary}"
        );
        let read = &report["goroutine_reads"][0];
        assert!(read["reads"].as_u64().unwrap() >= 4, "Go {release}: {read}");
        // Growth mode traces the heap: no note about it.
        assert!(read["note"].is_null(), "Go {release}: {read}");
    }
}

#[test]
fn serve_exposes_the_leaking_sites_series() {
    const TEST: &str = "serve_exposes_the_leaking_sites_series";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("go-serve");
    let Some(program) = build_go(TEST, &dir, "goroutine_leak", "1.23", Symbols::Kept) else {
        return;
    };
    let go_line = marked_line("goroutine_leak", "leak: checker");
    let (mut fixture, lines) = start_story(&program, "100");
    let server = start_serve(&["--pid", &fixture.pid().to_string()]);
    let (_, own_sites) = run_story(&mut fixture, &lines);
    let expected: u64 = own_sites.values().sum();
    assert_eq!(expected, 800);
    let (status, body) = get(&server.address, "/metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&body);
    let series = metrics
        .lines()
        .find(|l| {
            l.starts_with("leaktrace_goroutines{")
                && l.contains(&format!("created_line=\"{go_line}\""))
        })
        .unwrap_or_else(|| panic!("no series for line {go_line}:\n{metrics}"));
    assert!(
        series.contains("created_function=\"main.round\"")
            && series.contains("start_function=\"main.check\"")
            && series.contains(&format!("pid=\"{}\"", fixture.pid())),
        "{series}"
    );
    assert!(series.ends_with(&format!(" {expected}")), "{series}");
}

/// `trace --all` (growth mode, its default): the goroutines of every Go
/// process on the host are read, each group with its pid. Two stories
/// started after leaktrace (the oldest release unstripped, the newest
/// stripped) are both found with their 2000 checkers blocked in `chan
/// send` at the `go` statement, growing.
#[test]
fn trace_all_reads_the_goroutines_of_every_go_process() {
    const TEST: &str = "trace_all_reads_the_goroutines_of_every_go_process";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("go-goroutines-all");
    let go_line = marked_line("goroutine_leak", "leak: checker");
    let mut programs = Vec::new();
    for (release, symbols) in [("1.19", Symbols::Kept), ("1.23", Symbols::Stripped)] {
        let Some(program) = build_go(TEST, &dir, "goroutine_leak", release, symbols) else {
            return;
        };
        programs.push((format!("{release} {symbols:?}"), program));
    }
    let report_path = dir.join("all.json");
    let (mut tracer, stderr) = start_tracing(&["trace", "--all", "--interval", "1s"], &report_path);
    let mut stories = Vec::new();
    for (label, program) in &programs {
        let (mut fixture, lines) = start_story(program, "250");
        // Found and read once before it leaks (--all inspects a new
        // process at its own pace), so that the growth is seen.
        wait_for_report(&report_path, Duration::from_mins(2), |r| {
            r["goroutines"]
                .as_array()
                .is_some_and(|groups| groups.iter().any(|g| g["pid"] == fixture.pid()))
        });
        run_story(&mut fixture, &lines);
        stories.push((label, fixture));
    }
    let leak_of = |report: &Value, pid: u32| -> Option<Value> {
        report["goroutines"].as_array()?.iter().find_map(|g| {
            (g["pid"] == pid
                && g["created_at"]["line"] == go_line
                && g["created_at"]["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("goroutine_leak.go")))
            .then(|| g.clone())
        })
    };
    let report = wait_for_report(&report_path, Duration::from_mins(1), |report| {
        stories
            .iter()
            .all(|(_, f)| leak_of(report, f.pid()).is_some_and(|g| g["count"] == 2000))
    });
    for (label, fixture) in &mut stories {
        let leak = leak_of(&report, fixture.pid()).unwrap();
        assert_eq!(
            leak["wait_reasons"],
            serde_json::json!({"chan send": 2000}),
            "Go {label}: {leak:#}"
        );
        assert_eq!(leak["start"]["function"], "main.check", "Go {label}");
        assert_eq!(leak["growth"]["only_grows"], true, "Go {label}: {leak:#}");
        fixture.kill_and_reap();
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.pid().cast_signed(), libc::SIGINT) };
    let status = tracer
        .wait_timeout(Duration::from_mins(2))
        .expect("trace --all stops on SIGINT");
    assert!(status.success(), "{status:?}\n{}", stderr.text());
}
