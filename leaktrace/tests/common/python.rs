//! Helpers of the Python integration tests: pyenv's interpreters, a
//! Python fixture started and traced with `trace --pid`, and reading its
//! report by Python frame.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::{Guarded, TempDir, fixture_source, leaktrace, read_json, sites};

/// The `# SITE name` markers of a Python fixture: name -> line.
pub(crate) fn site_lines_of(fixture: &str) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(fixture_source(fixture)).expect("reading the fixture");
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let name = line.split("# SITE ").nth(1)?.trim();
            Some((name.to_string(), index as u64 + 1))
        })
        .collect()
}

/// pyenv's interpreter of `version` (e.g. "3.11.7"), by its binary name.
pub(crate) fn pyenv(version: &str) -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv"),
        PathBuf::from,
    );
    let minor: Vec<&str> = version.split('.').take(2).collect();
    root.join("versions")
        .join(version)
        .join("bin")
        .join(format!("python{}", minor.join(".")))
}

/// What the interpreter says its version is (the oracle).
pub(crate) fn own_version(python: &Path) -> String {
    let output = Command::new(python)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(output.status.success(), "{}: {output:?}", python.display());
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The Python frames of a site, innermost first: (function, file, line).
pub(crate) fn python_frames(site: &Value) -> Vec<(String, String, u64)> {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "python")
        .map(|f| {
            (
                f["function"].as_str().unwrap_or_default().to_string(),
                f["file"].as_str().unwrap_or_default().to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

pub(crate) fn native_functions(site: &Value) -> Vec<String> {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "native")
        .map(|f| f["function"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Outstanding bytes by the innermost Python frame (function, line); the
/// bytes without Python frames under `("", 0)`.
pub(crate) fn bytes_by_python_line(report: &Value) -> BTreeMap<(String, u64), u64> {
    bytes_by_line_in(report, "")
}

/// Outstanding bytes by the innermost Python frame whose file ends with
/// `file` (the program's own line, below the standard library's frames);
/// the bytes without such a frame under `("", 0)`.
pub(crate) fn bytes_by_line_in(report: &Value, file: &str) -> BTreeMap<(String, u64), u64> {
    let mut lines = BTreeMap::new();
    for site in sites(report) {
        let key = python_frames(site)
            .iter()
            .find(|(_, path, _)| path.ends_with(file))
            .map_or((String::new(), 0), |(function, _, line)| {
                (function.clone(), *line)
            });
        *lines.entry(key).or_default() += site["bytes"].as_u64().unwrap();
    }
    lines
}

/// Starts `fixture` under `python`, traces it with `extra` options for
/// `duration` (or until it is killed after `kill_after`) and returns the
/// JSON report.
pub(crate) fn trace_fixture(
    dir: &TempDir,
    python: &Path,
    fixture: &str,
    args: &[&str],
    extra: &[&str],
    duration: &str,
    kill_after: Option<Duration>,
) -> Value {
    let mut agent = Guarded::spawn(
        "the python fixture",
        Command::new(python)
            .arg(fixture_source(fixture))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    agent
        .stdout_lines()
        .wait_for(Duration::from_secs(30), |line| line == "ready")
        .unwrap_or_else(|e| panic!("{}: the agent never got ready: {e}", python.display()));
    let pid = agent.pid().to_string();
    let report = dir.join("report.json");
    let output = report.to_str().unwrap();
    let traced = std::thread::scope(|scope| {
        let tracer = scope.spawn(|| {
            let mut args = vec![
                "trace",
                "--pid",
                &pid,
                "--duration",
                duration,
                "--format",
                "json",
                "--output",
                output,
            ];
            args.extend_from_slice(extra);
            leaktrace(&args, Duration::from_mins(2))
        });
        if let Some(after) = kill_after {
            std::thread::sleep(after);
            agent.kill_and_reap();
        }
        tracer.join().expect("the tracer thread")
    });
    traced.succeeded(&format!("leaktrace trace --pid {pid}"));
    read_json(&report)
}
