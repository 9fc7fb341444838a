//! The target is never harmed, in brief: the torture of
//! `cargo xtask torture` (its loop and checks are
//! `xtask/src/torture/engine.rs`, included here) for 60 s (and at
//! least 8 rounds of `run`, which the debug build makes slow). C, C++, Python
//! and Go fixtures (`tests/fixtures/torture/`: fork, exec, vfork, longjmp,
//! signals inside malloc, dlopen/dlclose, exceptions through allocating
//! frames, thread and goroutine churn) run under `trace --all` and under
//! `run --mode allocations`, both killed (SIGKILL) at random moments (and `run`
//! where it holds the command, `LEAKTRACE_TEST_PAUSE=exec|entry`). Every
//! fixture must exit 0 with its untraced output, no probe may be left in
//! the long-lived fixtures' memory after a kill, and the check must have
//! seen probes there while `--all` was attached in allocations mode.
//!
//! Needs root (eBPF), g++ and Go 1.19: without them it fails, or is a
//! counted skip when `LEAKTRACE_ALLOW_SKIPS=1`. It runs alone
//! (`common::serial`). This process becomes a child subreaper (the
//! commands of a killed `run` are reparented to it), which is why the
//! test has a file of its own.
mod common;
#[path = "../../xtask/src/torture/engine.rs"]
mod engine;

use std::{path::Path, process::Command, time::Duration};

use common::{
    Symbols, TempDir, build_go_source, compile, fixture_source, have_tool, leaktrace_bin,
    prerequisite_missing, require_root, serial,
};

const TEST: &str = "torture_harms_no_target";

/// Builds the four fixtures into `dir` (as `engine::programs` names
/// them); false after reporting a missing prerequisite.
fn build(dir: &TempDir) -> bool {
    let flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-pthread"];
    let mut shared = flags.to_vec();
    shared.extend(["-shared", "-fPIC"]);
    compile(dir, "torture/plugin.c", "libtorture_plugin.so", &shared);
    compile(dir, "torture/torture.c", "torture", &flags);
    if !have_tool("g++") {
        prerequisite_missing(TEST, "g++ (apt-get install g++)");
        return false;
    }
    let built = Command::new("g++")
        .args(flags)
        .arg("-o")
        .arg(dir.join("torture_cxx"))
        .arg(fixture_source("torture/torture.cpp"))
        .output()
        .expect("running g++");
    assert!(
        built.status.success(),
        "g++ torture.cpp: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    build_go_source(
        TEST,
        dir,
        "torture/torture.go",
        "torture_go",
        "1.19",
        Symbols::Kept,
    )
    .is_some()
}

#[test]
fn torture_harms_no_target() {
    if !require_root(TEST) {
        return;
    }
    if !Path::new("/usr/bin/python3").exists() {
        return prerequisite_missing(TEST, "Debian's /usr/bin/python3");
    }
    let _serial = serial();
    let dir = TempDir::new("torture");
    if !build(&dir) {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let config = engine::Config {
        leaktrace: leaktrace_bin(),
        programs: engine::programs(dir.path(), &fixture_source("torture/torture.py")),
        duration: Duration::from_mins(1),
        seed,
        dir: dir.join("reports"),
    };
    let tally = engine::torture(&config).unwrap_or_else(|e| panic!("torture: {e}"));
    let summary = tally.summary();
    eprintln!("seed {seed}\n{summary}");
    assert!(!tally.failed(), "seed {seed}: {summary}");
    for kind in ["C", "C++", "Python", "Go"] {
        assert!(
            tally.runs.get(kind).is_some_and(|&n| n >= 3),
            "{kind}: fewer than 3 runs under trace --all\n{summary}"
        );
        assert!(
            tally.run_commands.get(kind).is_some_and(|&n| n >= 1),
            "{kind}: no command checked under leaktrace run\n{summary}"
        );
    }
    // Every kind of kill happened, each followed by its probe check.
    assert!(tally.trace_kills >= 3, "{summary}");
    assert!(tally.early_kills >= 1, "{summary}");
    assert_eq!(tally.probe_checks, tally.trace_kills, "{summary}");
    assert!(tally.pause_kills >= 2, "{summary}");
    assert!(tally.run_kills >= 1, "{summary}");
    // The probe check can see probes: it found int3s while attached.
    assert!(tally.probes_seen_live > 0, "{summary}");
}
