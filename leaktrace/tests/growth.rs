//! Growth mode (`--mode growth`), end to end: resident growth per call
//! site from page faults, with no allocator probed.
//!
//! - a C program keeps 60 MiB it writes at one site while another site
//!   writes and frees as much: at least 90% of the reported growth at the
//!   keeping site, none at the churning one, and the total within 10% of
//!   the process's `RssAnon` growth;
//! - the same for a Python program (Debian's python3): the keeping line,
//!   named by the Python frames;
//! - the same for a Go program (no malloc at all: frame-pointer stacks
//!   through the Go runtime to the allocating function);
//! - the mode each command uses by default, and what the reports say.
mod common;

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    Guarded, Symbols, TempDir, build_go, compile, fixture_source, frame_functions, leaktrace,
    leaktrace_bin, prerequisite_missing, python_frames, read_json, require_root, serial,
    site_lines_of, sites,
};
use serde_json::Value;

/// Starts `command` (a fixture that prints "ready", waits for a line on
/// stdin, grows, prints "done"), traces it in growth mode for `duration`
/// (telling it to go once tracing started) and returns the JSON report.
fn trace_growth(dir: &TempDir, command: &mut Command, duration: &str, extra: &[&str]) -> Value {
    trace_growth_until_done(dir, command, duration, extra).0
}

/// [`trace_growth`], also returning the fixture's "done" line.
fn trace_growth_until_done(
    dir: &TempDir,
    command: &mut Command,
    duration: &str,
    extra: &[&str],
) -> (Value, String) {
    let mut fixture = Guarded::spawn(
        "the growth fixture",
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let lines = fixture.stdout_lines();
    lines
        .wait_for(Duration::from_secs(30), |line| line == "ready")
        .expect("the fixture gets ready");
    let report = dir.join("growth.json");
    let mut tracer = Guarded::spawn(
        "leaktrace",
        Command::new(leaktrace_bin())
            .args(["trace", "--mode", "growth", "--duration", duration])
            .args(extra)
            .args(["--format", "json", "--output"])
            .arg(&report)
            .arg("--pid")
            .arg(fixture.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let tracer_lines = tracer.stderr_lines();
    tracer_lines
        .wait_for(Duration::from_mins(1), |line| {
            line.contains("leaktrace: tracing pid")
        })
        .expect("leaktrace starts tracing");
    let mut stdin = fixture.take_stdin();
    stdin.write_all(b"go\n").expect("telling the fixture to go");
    stdin.flush().expect("flushing");
    let done = lines
        .wait_for(Duration::from_mins(1), |line| line.starts_with("done"))
        .expect("the fixture finishes");
    let status = tracer
        .wait_timeout(Duration::from_mins(1))
        .expect("leaktrace ends after its duration");
    assert!(
        status.success(),
        "leaktrace failed: {}",
        tracer_lines.finish(Duration::from_secs(5)).join("\n")
    );
    (read_json(&report), done)
}

/// Bytes at the sites whose stack contains `function`.
fn bytes_at(report: &Value, function: &str) -> u64 {
    sites(report)
        .iter()
        .filter(|s| frame_functions(s).contains(&function))
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum()
}

/// (bytes at sites whose stack satisfies `at`, total bytes, /proc's growth).
fn shares(report: &Value, at: impl Fn(&Value) -> bool) -> (u64, u64, i64) {
    let total = report["totals"]["outstanding_bytes"].as_u64().unwrap();
    let matching = sites(report)
        .iter()
        .filter(|site| at(site))
        .map(|site| site["bytes"].as_u64().unwrap())
        .sum();
    let rss = report["processes"][0]["rss_growth_bytes"]
        .as_i64()
        .expect("growth mode reports /proc's resident growth");
    (matching, total, rss)
}

#[test]
fn growth_of_a_c_program_is_at_the_site_that_keeps_memory() {
    const TEST: &str = "growth_of_a_c_program_is_at_the_site_that_keeps_memory";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("growth-c");
    let program = compile(
        &dir,
        "growth.c",
        "growth",
        &["-O1", "-g", "-fno-omit-frame-pointer"],
    );
    let report = trace_growth(&dir, Command::new(&program).arg("3"), "6s", &[]);
    assert_eq!(report["mode"], "growth");
    let (kept, total, rss) = shares(&report, |s| frame_functions(s).contains(&"grow_keep"));
    let churn: u64 = sites(&report)
        .iter()
        .filter(|s| frame_functions(s).contains(&"churn"))
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    let summary = format!("kept {kept}, churn {churn}, total {total}, /proc {rss}");
    eprintln!("{summary}");
    // 240 blocks of 256 KiB, every page written.
    assert!(kept >= 60 << 20, "{summary}");
    assert!(kept * 10 >= total * 9, "under 90% at grow_keep: {summary}");
    assert_eq!(churn, 0, "{summary}");
    assert!(
        total.abs_diff(rss.unsigned_abs()) * 10 <= rss.unsigned_abs(),
        "not within 10% of /proc's growth: {summary}"
    );
}

/// A write fault answered with a transparent huge page counts 2 MiB: the
/// fixture writes one byte per 2 MiB over 64 MiB it asked huge pages for,
/// and over 8 MiB it refused them for.
#[test]
fn a_huge_page_counts_at_its_size() {
    const TEST: &str = "a_huge_page_counts_at_its_size";
    if !require_root(TEST) {
        return;
    }
    let setting =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if setting.contains("[never]") || setting.is_empty() {
        return prerequisite_missing(
            TEST,
            "transparent huge pages (echo madvise > /sys/kernel/mm/transparent_hugepage/enabled)",
        );
    }
    let _serial = serial();
    let dir = TempDir::new("growth-huge");
    let program = compile(&dir, "growth_huge.c", "growth_huge", &["-O1", "-g"]);
    let (report, done) = trace_growth_until_done(&dir, &mut Command::new(&program), "3s", &[]);
    let huge_kib: u64 = done
        .strip_prefix("done ")
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line from the fixture: {done}"));
    assert!(
        huge_kib >= 64 << 10,
        "the kernel gave the fixture {huge_kib} KiB of huge pages, not the 64 MiB asked for (memory too fragmented?)"
    );
    let at = |function: &str| bytes_at(&report, function);
    let (huge, small) = (at("grow_huge"), at("grow_small"));
    let (_, total, rss) = shares(&report, |_| true);
    let summary = format!("huge {huge}, small {small}, total {total}, /proc {rss}");
    eprintln!("{summary}");
    assert_eq!(huge, 64 << 20, "32 huge pages: {summary}");
    assert_eq!(small, 4 * 4096, "4 base pages: {summary}");
    assert!(
        total.abs_diff(rss.unsigned_abs()) * 10 <= rss.unsigned_abs(),
        "not within 10% of /proc's growth: {summary}"
    );
}

/// Pages given back are found absent from the page map (no syscall is
/// watched), and a region mremap moves keeps the site that grew it: 32 MiB
/// written at one site, moved by realloc, 32 MiB more written at another;
/// 80 MiB mapped, written and unmapped at a third.
#[test]
fn moved_regions_keep_their_site_and_unmapped_pages_leave() {
    const TEST: &str = "moved_regions_keep_their_site_and_unmapped_pages_leave";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("growth-remap");
    let program = compile(&dir, "growth_remap.c", "growth_remap", &["-O1", "-g"]);
    let (report, done) = trace_growth_until_done(&dir, &mut Command::new(&program), "3s", &[]);
    assert_eq!(done, "done 1", "realloc did not move the block");
    let at = |function: &str| bytes_at(&report, function);
    let (first, second, churn) = (at("first_half"), at("second_half"), at("churn"));
    let summary = format!("first {first}, second {second}, churn {churn}");
    eprintln!("{summary}");
    // glibc's chunk header shifts the block by 16 bytes into its mapping:
    // the page holding both halves' boundary is written by first_half.
    assert!(
        first.abs_diff(32 << 20) <= 4096,
        "the moved half left its site: {summary}"
    );
    assert!(second.abs_diff(32 << 20) <= 4096, "{summary}");
    assert_eq!(churn, 0, "unmapped pages are still counted: {summary}");
}

#[test]
fn growth_of_a_python_program_is_at_the_line_that_keeps_memory() {
    const TEST: &str = "growth_of_a_python_program_is_at_the_line_that_keeps_memory";
    if !require_root(TEST) {
        return;
    }
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        return prerequisite_missing(TEST, "/usr/bin/python3 (Debian's python3)");
    }
    let _serial = serial();
    let dir = TempDir::new("growth-python");
    let fixture = "python/growth_leak.py";
    let report = trace_growth(
        &dir,
        Command::new(python).arg(fixture_source(fixture)).arg("3"),
        "6s",
        &[],
    );
    let lines = site_lines_of(fixture);
    let at_line = |site: &Value, marker: &str| {
        python_frames(site)
            .iter()
            .any(|(_, file, line)| file.ends_with("growth_leak.py") && *line == lines[marker])
    };
    let (kept, total, rss) = shares(&report, |s| at_line(s, "leak"));
    let churn: u64 = sites(&report)
        .iter()
        .filter(|s| at_line(s, "temporary"))
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    let summary = format!("kept {kept}, churn {churn}, total {total}, /proc {rss}");
    eprintln!("{summary}");
    assert!(kept >= 60 << 20, "{summary}");
    assert!(
        kept * 10 >= total * 9,
        "under 90% at the leak line: {summary}"
    );
    assert_eq!(churn, 0, "{summary}");
    assert!(
        total.abs_diff(rss.unsigned_abs()) * 10 <= rss.unsigned_abs(),
        "not within 10% of /proc's growth: {summary}"
    );
}

#[test]
fn growth_of_a_go_program_is_at_the_function_that_keeps_memory() {
    const TEST: &str = "growth_of_a_go_program_is_at_the_function_that_keeps_memory";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("growth-go");
    let Some(program) = build_go(TEST, &dir, "growth", "1.19", Symbols::Kept) else {
        return;
    };
    let report = trace_growth(&dir, Command::new(&program).arg("3"), "6s", &[]);
    let (kept, total, rss) = shares(&report, |s| frame_functions(s).contains(&"main.growKeep"));
    let churn: u64 = sites(&report)
        .iter()
        .filter(|s| frame_functions(s).contains(&"main.churn"))
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    let summary = format!("kept {kept}, churn {churn}, total {total}, /proc {rss}");
    eprintln!("{summary}");
    assert!(kept >= 60 << 20, "{summary}");
    assert!(
        kept * 10 >= total * 9,
        "under 90% in main.growKeep: {summary}"
    );
    // The runtime reuses what the collector reclaims: only the first
    // churned slice's pages (64 KiB) ever grow at churn.
    assert!(churn * 100 <= total, "over 1% in main.churn: {summary}");
    assert!(
        total.abs_diff(rss.unsigned_abs()) * 10 <= rss.unsigned_abs(),
        "not within 10% of /proc's growth: {summary}"
    );
}

/// `--sample-pages 8` keeps one page in 8, by address: the C program's
/// growth is still estimated within 10% of /proc's, and its keeping site
/// still holds 90%.
#[test]
fn sampled_pages_estimate_the_growth() {
    const TEST: &str = "sampled_pages_estimate_the_growth";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("growth-sampled");
    let program = compile(
        &dir,
        "growth.c",
        "growth",
        &["-O1", "-g", "-fno-omit-frame-pointer"],
    );
    let report = trace_growth(
        &dir,
        Command::new(&program).arg("3"),
        "6s",
        &["--sample-pages", "8"],
    );
    assert_eq!(report["page_sample"], 8);
    let (kept, total, rss) = shares(&report, |s| frame_functions(s).contains(&"grow_keep"));
    let events = report["totals"]["events"].as_u64().unwrap();
    let summary = format!("kept {kept}, total {total}, /proc {rss}, {events} records");
    eprintln!("{summary}");
    // 60 MiB is 15,360 pages: about 1,920 kept.
    assert!(events < 15_360 / 4, "pages were not sampled: {summary}");
    assert!(kept * 10 >= total * 9, "{summary}");
    assert!(
        total.abs_diff(rss.unsigned_abs()) * 10 <= rss.unsigned_abs(),
        "not within 10% of /proc's growth: {summary}"
    );
}

/// `trace --pid` and `run` count allocations unless told otherwise; `trace
/// --all` (and `serve`) measure growth; options that count allocations
/// cannot go with growth mode.
#[test]
fn each_command_has_its_default_mode() {
    const TEST: &str = "each_command_has_its_default_mode";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("growth-defaults");
    let all = dir.join("all.json");
    leaktrace(
        &[
            "trace",
            "--all",
            "--duration",
            "1s",
            "--format",
            "json",
            "--output",
            all.to_str().unwrap(),
        ],
        Duration::from_mins(1),
    )
    .succeeded("trace --all");
    let all = read_json(&all);
    assert_eq!(all["mode"], "growth");
    assert_eq!(all["sample_bytes"], 0);
    let run = dir.join("run.json");
    leaktrace(
        &[
            "run",
            "--format",
            "json",
            "--output",
            run.to_str().unwrap(),
            "--",
            "/bin/true",
        ],
        Duration::from_mins(1),
    )
    .succeeded("run");
    assert_eq!(read_json(&run)["mode"], "allocations");
    let refused = leaktrace(
        &[
            "trace",
            "--all",
            "--mode",
            "growth",
            "--sample-bytes",
            "512k",
        ],
        Duration::from_mins(1),
    );
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("needs --mode allocations"),
        "{}",
        refused.stderr
    );
}
