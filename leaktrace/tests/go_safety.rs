//! The traced Go program is never harmed: the torture fixture (rounds of
//! goroutines recursing deep enough that the runtime copies their stacks,
//! garbage at every level, a collection each round) runs for 60 s under
//! growth mode (`run`: the kernel walks its frame pointers at each page
//! fault, the daemon reads its goroutines every 2 s) and, at the same time,
//! another copy under `trace --pid` (allocations mode: goroutines only).
//! Both exit 0 and print the same checksum as an untraced run.
mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    Guarded, Symbols, TempDir, build_go, describe_sites, frame_functions, leaktrace_bin, read_json,
    require_root, run_with_timeout, serial, sites,
};

const SECONDS: &str = "60";

#[test]
fn a_tortured_go_program_runs_unharmed_under_tracing() {
    const TEST: &str = "a_tortured_go_program_runs_unharmed_under_tracing";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("go-safety");
    let Some(program) = build_go(TEST, &dir, "torture", "1.23", Symbols::Kept) else {
        return;
    };
    let untraced = run_with_timeout(
        "the untraced torture fixture",
        Command::new(&program).arg("0"),
        Duration::from_mins(1),
    )
    .succeeded("the untraced torture fixture");
    let checksum = untraced
        .stdout
        .lines()
        .next()
        .expect("a checksum line")
        .to_owned();
    assert!(checksum.starts_with("checksum "), "{}", untraced.stdout);

    // The copy traced by pid, started first.
    let mut by_pid = Guarded::spawn(
        "the torture fixture traced by pid",
        Command::new(&program)
            .arg(SECONDS)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let by_pid_lines = by_pid.stdout_lines();
    let pid_report = dir.join("by-pid.json");
    let mut tracer = Guarded::spawn(
        "leaktrace trace --pid",
        Command::new(leaktrace_bin())
            .args(["trace", "--interval", "2s", "--format", "json", "--output"])
            .arg(&pid_report)
            .arg("--pid")
            .arg(by_pid.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let tracer_lines = tracer.stderr_lines();

    let run_report = dir.join("run.json");
    let run = run_with_timeout(
        "leaktrace run --mode growth",
        Command::new(leaktrace_bin())
            .args(["run", "--mode", "growth", "--interval", "2s"])
            .args(["--format", "json", "--output"])
            .arg(&run_report)
            .arg("--")
            .arg(&program)
            .arg(SECONDS),
        Duration::from_mins(3),
    )
    .succeeded("leaktrace run --mode growth");
    let run_lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        run_lines,
        [checksum.as_str(), "rounds ok"],
        "the program under run --mode growth printed other output"
    );

    let status = by_pid
        .wait_timeout(Duration::from_mins(2))
        .expect("the fixture traced by pid ends");
    assert!(status.success(), "the fixture traced by pid: {status:?}");
    assert_eq!(
        by_pid_lines.finish(Duration::from_secs(5)),
        [checksum.as_str(), "rounds ok"],
        "the program traced by pid printed other output"
    );
    let traced = tracer
        .wait_timeout(Duration::from_mins(1))
        .expect("trace --pid ends when its process exits");
    assert!(
        traced.success(),
        "trace --pid: {traced:?}\n{}",
        tracer_lines.finish(Duration::from_secs(5)).join("\n")
    );

    // Both read the goroutines many times over the minute.
    for (what, path) in [("run", &run_report), ("trace --pid", &pid_report)] {
        let report = read_json(path);
        let reads = &report["goroutine_reads"][0];
        assert!(
            reads["reads"].as_u64().unwrap_or(0) >= 10,
            "{what}: goroutines read too few times: {reads}"
        );
        assert_eq!(report["processes"][0]["runtime"]["kind"], "go", "{what}");
        if what == "run" {
            // The kernel did walk the program's stacks: its faults are at
            // the fixture's functions.
            assert!(
                sites(&report)
                    .iter()
                    .any(|s| frame_functions(s).iter().any(|f| f.starts_with("main."))),
                "no growth at the fixture's functions:\n{}",
                describe_sites(&report)
            );
        }
    }
}
