//! Go frames named from `.gopclntab`: growth mode traces the STRIPPED Go
//! growth fixture (`-ldflags=-s -w`: no `.symtab`, no DWARF) built with
//! each Go release, and names its frames: `main.growKeep` in `growth.go`
//! at its marked line, the runtime's frames below it, none left as
//! `[module+0x...]`; the report says which Go release the process runs,
//! as `go version` prints it.
mod common;

use std::{
    collections::HashMap,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    GO_RELEASES, Guarded, Symbols, TempDir, build_go, go_command, leaktrace_bin, read_json,
    require_root, serial, site_lines, sites,
};
use serde_json::Value;

/// Runs the growth fixture `program` for 2 seconds under `trace --mode
/// growth --pid` and returns the JSON report.
fn trace_growth(dir: &TempDir, program: &Path) -> Value {
    let mut fixture = Guarded::spawn(
        "the Go growth fixture",
        Command::new(program)
            .arg("2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let lines = fixture.stdout_lines();
    lines
        .wait_for(Duration::from_secs(30), |line| line == "ready")
        .expect("the fixture gets ready");
    let report = dir.join("go-growth.json");
    let mut tracer = Guarded::spawn(
        "leaktrace",
        Command::new(leaktrace_bin())
            .args(["trace", "--mode", "growth", "--duration", "4s"])
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
    lines
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
    read_json(&report)
}

/// `go version BINARY`'s release: "go1.22.12".
fn go_version(release: &str, binary: &Path) -> String {
    let output = Command::new(go_command(release))
        .arg("version")
        .arg(binary)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("running go version");
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Bytes by (function, file name, line) of the `main.growKeep` frames.
fn bytes_by_keep_line(report: &Value) -> HashMap<(String, u64), u64> {
    let mut by_line = HashMap::new();
    for site in sites(report) {
        let frames = site["frames"].as_array().unwrap();
        if let Some(keep) = frames.iter().find(|f| f["function"] == "main.growKeep") {
            let file = keep["file"].as_str().unwrap_or("?");
            let file = file.rsplit('/').next().unwrap().to_string();
            *by_line
                .entry((file, keep["line"].as_u64().unwrap_or(0)))
                .or_default() += site["bytes"].as_u64().unwrap();
        }
    }
    by_line
}

#[test]
fn stripped_go_programs_frames_are_named_for_each_release() {
    const TEST: &str = "stripped_go_programs_frames_are_named_for_each_release";
    if !require_root(TEST) {
        return;
    }
    let _serial = serial();
    let lines = site_lines("go/growth.go");
    let keep_write = u64::from(lines["keep_write"]);
    for release in GO_RELEASES {
        let dir = TempDir::new("go-symbols");
        let Some(program) = build_go(TEST, &dir, "growth", release, Symbols::Stripped) else {
            return;
        };
        let report = trace_growth(&dir, &program);
        let total = report["totals"]["outstanding_bytes"].as_u64().unwrap();
        let by_line = bytes_by_keep_line(&report);
        let summary = format!("go{release}: total {total}, main.growKeep by line {by_line:?}");
        eprintln!("{summary}");
        let at_write = by_line
            .get(&("growth.go".to_string(), keep_write))
            .copied()
            .unwrap_or(0);
        // 160 slices of 256 KiB, each page first touched by the loop that
        // writes it (fresh spans from the kernel are not cleared).
        assert!(at_write >= 36 << 20, "{summary}");
        assert!(at_write * 10 >= total * 9, "{summary}");
        // Every frame in the Go binary is named, none left an address.
        let module = program.to_string_lossy().into_owned();
        for site in sites(&report) {
            for frame in site["frames"].as_array().unwrap() {
                if frame["module"] == module.as_str() {
                    let function = frame["function"].as_str().unwrap();
                    assert!(!function.starts_with('['), "go{release}: {frame}");
                    assert!(frame["line"].as_u64().is_some(), "go{release}: {frame}");
                }
            }
        }
        let runtime = &report["processes"][0]["runtime"];
        assert_eq!(runtime["kind"], "go", "{runtime}");
        assert_eq!(
            runtime["version"],
            go_version(release, &program).as_str(),
            "{runtime}"
        );
    }
}
