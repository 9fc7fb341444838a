//! Exact object mode (`--python-objects`), end to end: a fixture keeps
//! 1,000 instances of a class (`tests/fixtures/python/kept_objects.py`) while
//! dropping a temporary dict per instance, and the report must count
//! exactly 1,000 object allocations at the line that keeps them, list
//! exactly 1,000 objects of that class in the by-type view, and hold next
//! to nothing at the temporaries' line. Under pyenv's 2.7 (pymalloc
//! exported), 3.6 (32-byte GC header), 3.11 (managed dicts) and 3.13; and
//! Debian's LTO python3, whose inlined allocator is refused with a warning
//! while its frames still work.
mod common;

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    Guarded, TempDir, fixture_source, leaktrace_bin, prerequisite_missing, pyenv, python_frames,
    read_json, require_root, serial, site_lines_of, sites,
};
use serde_json::Value;

const FIXTURE: &str = "python/kept_objects.py";

/// Runs the fixture under `python` traced with `--python-objects`: tells
/// it to go once the probes are on, lets it finish, and returns the JSON
/// report and leaktrace's stderr.
fn trace_kept_objects(dir: &TempDir, python: &Path) -> (Value, String) {
    let mut fixture = Guarded::spawn(
        "the python fixture",
        Command::new(python)
            .arg(fixture_source(FIXTURE))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let fixture_lines = fixture.stdout_lines();
    fixture_lines
        .wait_for(Duration::from_secs(30), |line| line == "ready")
        .unwrap_or_else(|e| panic!("{}: never ready: {e}", python.display()));
    let report = dir.join("objects.json");
    let mut tracer = Guarded::spawn(
        "leaktrace",
        Command::new(leaktrace_bin())
            .args(["trace", "--python-objects", "--duration", "6s"])
            .args(["--format", "json", "--output"])
            .arg(&report)
            .arg("--pid")
            .arg(fixture.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let tracer_lines = tracer.stderr_lines();
    // The object allocator is probed (or refused) when the interpreter is
    // found, before tracing starts.
    let started = tracer_lines.wait_for(Duration::from_mins(1), |line| {
        line.contains("leaktrace: tracing pid")
    });
    if let Err(e) = started {
        panic!("{}: leaktrace never started: {e}", python.display());
    }
    let mut stdin = fixture.take_stdin();
    stdin.write_all(b"go\n").expect("telling the fixture to go");
    stdin.flush().expect("flushing");
    fixture_lines
        .wait_for(Duration::from_mins(1), |line| line == "done")
        .unwrap_or_else(|e| panic!("{}: never done: {e}", python.display()));
    let status = tracer
        .wait_timeout(Duration::from_mins(1))
        .expect("leaktrace ends after its duration");
    let stderr = tracer_lines.finish(Duration::from_secs(5)).join("\n");
    assert!(status.success(), "leaktrace failed: {stderr}");
    (read_json(&report), stderr)
}

/// Object allocations and bytes per (allocator, innermost line in the
/// fixture).
fn objects_by_line(report: &Value) -> Vec<(String, u64, u64, u64)> {
    sites(report)
        .iter()
        .filter(|s| {
            s["allocator"]
                .as_str()
                .is_some_and(|a| a.starts_with("PyObject_"))
        })
        .map(|s| {
            let line = python_frames(s)
                .iter()
                .find(|(_, file, _)| file.ends_with("kept_objects.py"))
                .map_or(0, |f| f.2);
            (
                s["allocator"].as_str().unwrap().to_string(),
                line,
                s["count"].as_u64().unwrap(),
                s["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn exact_counts_under(test: &str, python: &Path) {
    if !require_root(test) {
        return;
    }
    if !python.exists() {
        return prerequisite_missing(test, &format!("{} (pyenv's interpreter)", python.display()));
    }
    let _serial = serial();
    let dir = TempDir::new("python-objects");
    let (report, stderr) = trace_kept_objects(&dir, python);
    let lines = site_lines_of(FIXTURE);
    let by_line = objects_by_line(&report);
    let summary = format!("{}: {by_line:?}\n{stderr}", python.display());
    eprintln!("{summary}");
    let at = |line: u64, allocators: &[&str]| -> u64 {
        by_line
            .iter()
            .filter(|(allocator, l, _, _)| *l == line && allocators.contains(&allocator.as_str()))
            .map(|s| s.2)
            .sum()
    };
    assert_eq!(
        at(lines["leak"], &["PyObject_Malloc", "PyObject_Calloc"]),
        1000,
        "object allocations at the leak line: {summary}"
    );
    // A dict free list keeps a few dicts (and their keys) for reuse, never
    // more than its capacity (80): the temporaries leave at most that.
    let temporaries = at(
        lines["temporary"],
        &["PyObject_Malloc", "PyObject_Calloc", "PyObject_Realloc"],
    );
    assert!(
        temporaries <= 80,
        "{temporaries} objects at the temporaries' line: {summary}"
    );
    let types = report["python_types"].as_array().expect("python_types");
    let kept: Vec<&Value> = types.iter().filter(|t| t["type"] == "Kept").collect();
    assert_eq!(kept.len(), 1, "one row for Kept: {types:?}");
    assert_eq!(kept[0]["objects"], 1000, "{types:?}");
    let kept_bytes = kept[0]["bytes"].as_u64().unwrap();
    assert!(
        (1000 * 24..=1000 * 80).contains(&kept_bytes),
        "1,000 small objects: {kept_bytes} bytes"
    );
}

#[test]
fn exact_object_counts_under_2_7() {
    exact_counts_under("exact_object_counts_under_2_7", &pyenv("2.7.18"));
}

#[test]
fn exact_object_counts_under_3_6() {
    exact_counts_under("exact_object_counts_under_3_6", &pyenv("3.6.15"));
}

#[test]
fn exact_object_counts_under_3_11() {
    exact_counts_under("exact_object_counts_under_3_11", &pyenv("3.11.7"));
}

#[test]
fn exact_object_counts_under_3_13() {
    exact_counts_under("exact_object_counts_under_3_13", &pyenv("3.13.0"));
}

/// Debian's python3 inlines its object allocator (LTO): exact counts are
/// refused with one warning naming why, and the trace goes on with Python
/// frames and no by-type view.
#[test]
fn debian_python3_is_refused_exact_object_mode_with_the_reason() {
    const TEST: &str = "debian_python3_is_refused_exact_object_mode_with_the_reason";
    if !require_root(TEST) {
        return;
    }
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        return prerequisite_missing(TEST, "/usr/bin/python3 (Debian's python3)");
    }
    let _serial = serial();
    let dir = TempDir::new("python-objects-debian");
    let (report, stderr) = trace_kept_objects(&dir, python);
    assert!(
        stderr.contains("no exact object counts") && stderr.contains("symbol table"),
        "{stderr}"
    );
    assert_eq!(report["python_types"], serde_json::json!([]), "{stderr}");
    assert!(objects_by_line(&report).is_empty());
    assert!(
        sites(&report).iter().any(|s| !python_frames(s).is_empty()),
        "Python frames still named: {stderr}"
    );
}
