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
    Guarded, TempDir, bytes_by_line_in, fixture_source, leaktrace_bin, prerequisite_missing, pyenv,
    python_frames, read_json, require_root, serial, site_lines_of, sites,
    story_leak_is_at_its_line, trace_fixture,
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

/// The 2.7 DICOM receiver, in exact object mode: its payloads are still
/// found at their line.
#[test]
fn dicom_objects_in_gc_garbage_in_exact_object_mode() {
    story_leak_is_at_its_line(
        "dicom_objects_in_gc_garbage_in_exact_object_mode",
        &pyenv("2.7.18"),
        "python/dicom_receiver.py",
        "__init__",
        80,
        true,
    );
}

/// The 3.6 request handler, in exact object mode.
#[test]
fn request_handler_in_exact_object_mode() {
    story_leak_is_at_its_line(
        "request_handler_in_exact_object_mode",
        &pyenv("3.6.15"),
        "python/request_handler.py",
        "handle_request",
        80,
        true,
    );
}

/// The 2.7 agent in exact object mode: its leak line holds most of what is
/// older than 1 s, every object, small ones included, counted at its own
/// line; the snapshots of `traceback.extract_stack()` it keeps show in the
/// by-type view as `Snapshot` objects and at their line.
#[test]
fn agent_in_exact_object_mode_under_2_7() {
    const TEST: &str = "agent_in_exact_object_mode_under_2_7";
    if !require_root(TEST) {
        return;
    }
    let python = pyenv("2.7.18");
    if !python.exists() {
        return prerequisite_missing(TEST, &format!("{} (pyenv's interpreter)", python.display()));
    }
    let _serial = serial();
    let dir = TempDir::new("python-objects-agent");
    let report = trace_fixture(
        &dir,
        &python,
        "python/agent.py",
        &[],
        &["--python-objects", "--min-age", "1s"],
        "5s",
        None,
    );
    let lines = site_lines_of("python/agent.py");
    let by_line = bytes_by_line_in(&report, "agent.py");
    let total: u64 = by_line.values().sum();
    let leak = by_line
        .get(&("roll_up_instance_metadata".to_string(), lines["leak"]))
        .copied()
        .unwrap_or(0);
    let summary = format!("{by_line:?}");
    eprintln!("agent under 2.7, exact object mode: {summary}");
    assert!(
        leak * 100 >= total * 80,
        "under 80% at the leak line: {summary}"
    );
    // The temporaries' objects are freed, but 2.7 keeps freed tuples on
    // its free lists instead of giving them back to the allocator: a few
    // of them (seen: 5, 272 bytes, the codec's result tuples) stay
    // outstanding at that line. Nothing more.
    let temporaries: u64 = by_line
        .iter()
        .filter(|((_, line), _)| *line == lines["temporary"])
        .map(|(_, bytes)| bytes)
        .sum();
    assert!(temporaries < 1024, "{summary}");
    let snapshots_at_line = sites(&report).iter().any(|site| {
        python_frames(site)
            .iter()
            .any(|(function, _, line)| function == "snapshot" && *line == lines["stack_leak"])
    });
    assert!(snapshots_at_line, "no site at the snapshot line: {summary}");
    let types = report["python_types"].as_array().expect("python_types");
    let snapshots = types
        .iter()
        .find(|t| t["type"] == "Snapshot")
        .unwrap_or_else(|| panic!("no Snapshot objects: {types:?}"));
    assert!(snapshots["objects"].as_u64().unwrap() >= 1, "{snapshots}");
    let dicts = types.iter().find(|t| t["type"] == "dict").expect("dicts");
    assert!(dicts["objects"].as_u64().unwrap() > 1000, "{dicts}");
}
