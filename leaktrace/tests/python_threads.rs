//! Python frames on threads that do not hold the GIL, end to end: a worker
//! thread leaks from C code it called with the GIL released (the C
//! library's malloc through ctypes) while the main thread keeps the GIL
//! busy (`tests/fixtures/python/released_gil.py`). Under every interpreter
//! on the machine the report must
//! - put at least 80% of the outstanding bytes at the Python line that
//!   called ctypes, with the worker's own Python stack (its thread state,
//!   found in the interpreter's thread list, not the GIL holder's);
//! - count those walks in the process's `runtime.walks`;
//! - give a thread that never ran Python (made by `pthread_create` through
//!   ctypes) native frames only, counted as `no_thread_state`.
mod common;

use std::path::Path;

use common::{
    TempDir, prerequisite_missing,
    python::{
        bytes_by_python_line, native_functions, pyenv, python_frames, site_lines_of, trace_fixture,
    },
    require_root, serial, sites,
};

const FIXTURE: &str = "python/released_gil.py";

/// The share of the worker's leak at its line, under `python`.
fn released_gil_leak_is_named(test: &str, python: &Path) {
    if !require_root(test) {
        return;
    }
    if !python.exists() {
        return prerequisite_missing(test, &python.display().to_string());
    }
    let _serial = serial();
    let dir = TempDir::new("python-released-gil");
    let report = trace_fixture(&dir, python, FIXTURE, &[], &[], "3s", None);
    let lines = site_lines_of(FIXTURE);
    let by_line = bytes_by_python_line(&report);
    let total: u64 = by_line.values().sum();
    let leak = by_line
        .get(&("leak_from_c".to_string(), lines["leak"]))
        .copied()
        .unwrap_or(0);
    let walks = &report["processes"][0]["runtime"]["walks"];
    let summary = format!(
        "{}: {leak} of {total} bytes ({}%) at leak_from_c:{}; by innermost Python line: {by_line:?}; walks: {walks}",
        python.display(),
        leak * 100 / total.max(1),
        lines["leak"]
    );
    eprintln!("{summary}");
    assert!(total > 4 << 20, "the worker leaks MiBs: {summary}");
    assert!(
        leak * 100 >= total * 80,
        "under 80% of the bytes at the ctypes call's line: {summary}"
    );
    // The worker's own stack: its function, then the thread's, on a
    // thread that start_thread runs (not the main thread's).
    let site = sites(&report)
        .iter()
        .filter(|s| {
            python_frames(s)
                .first()
                .is_some_and(|f| f.0 == "leak_from_c")
        })
        .max_by_key(|s| s["bytes"].as_u64())
        .expect("a site of the leak");
    let functions: Vec<String> = python_frames(site).into_iter().map(|f| f.0).collect();
    assert_eq!(
        functions.get(1).map(String::as_str),
        Some("worker"),
        "{functions:?}"
    );
    assert!(!functions.iter().any(|f| f == "busy"), "{functions:?}");
    assert!(
        native_functions(site).iter().any(|f| f == "start_thread"),
        "{:?}",
        native_functions(site)
    );
    assert!(walks["walked"].as_u64().unwrap_or(0) > 0, "{summary}");
}

#[test]
fn released_gil_debian_python3() {
    released_gil_leak_is_named("released_gil_debian_python3", Path::new("/usr/bin/python3"));
}

#[test]
fn released_gil_2_7() {
    released_gil_leak_is_named("released_gil_2_7", &pyenv("2.7.18"));
}

#[test]
fn released_gil_3_6() {
    released_gil_leak_is_named("released_gil_3_6", &pyenv("3.6.15"));
}

#[test]
fn released_gil_3_7() {
    released_gil_leak_is_named("released_gil_3_7", &pyenv("3.7.16"));
}

#[test]
fn released_gil_3_8() {
    released_gil_leak_is_named("released_gil_3_8", &pyenv("3.8.18"));
}

#[test]
fn released_gil_3_9() {
    released_gil_leak_is_named("released_gil_3_9", &pyenv("3.9.18"));
}

#[test]
fn released_gil_3_10() {
    released_gil_leak_is_named("released_gil_3_10", &pyenv("3.10.13"));
}

#[test]
fn released_gil_3_11() {
    released_gil_leak_is_named("released_gil_3_11", &pyenv("3.11.7"));
}

#[test]
fn released_gil_3_12() {
    released_gil_leak_is_named("released_gil_3_12", &pyenv("3.12.1"));
}

#[test]
fn released_gil_3_13() {
    released_gil_leak_is_named("released_gil_3_13", &pyenv("3.13.0"));
}

/// Threads the C library makes, on which no Python ever runs, leak one
/// block each: those blocks carry native frames only (never the main
/// thread's Python stack), and the walks say why. Under the three ways
/// the GIL holder is found (2.7's `_PyThreadState_Current` with
/// `interp_head`, 3.11's `gilstate`, 3.12's last holder).
#[test]
fn pure_c_threads_have_no_python_frames() {
    const TEST: &str = "pure_c_threads_have_no_python_frames";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("python-pure-c");
    for python in [
        Path::new("/usr/bin/python3"),
        &pyenv("2.7.18"),
        &pyenv("3.12.1"),
    ] {
        if !python.exists() {
            return prerequisite_missing(TEST, &python.display().to_string());
        }
        let report = trace_fixture(&dir, python, FIXTURE, &["pure_c"], &[], "3s", None);
        let walks = &report["processes"][0]["runtime"]["walks"];
        let mut c_thread_bytes = 0;
        for site in sites(&report) {
            let native = native_functions(site);
            if native.first().is_some_and(|f| f == "start_thread") {
                // malloc called by start_thread itself: a C thread's block.
                assert!(
                    python_frames(site).is_empty(),
                    "{python:?}: Python frames on a C thread's block: {:?}",
                    python_frames(site)
                );
                c_thread_bytes += site["bytes"].as_u64().unwrap();
            }
        }
        eprintln!("{python:?}: {c_thread_bytes} bytes from C threads; walks: {walks}");
        assert!(c_thread_bytes >= 1 << 20, "{python:?}: {c_thread_bytes}");
        assert!(
            walks["no_thread_state"].as_u64().unwrap_or(0) * 65536 >= c_thread_bytes,
            "{python:?}: every C thread's block counted without a thread state: {walks}"
        );
    }
}
