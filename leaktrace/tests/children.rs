//! Process trees: the children a traced process forks after attach are
//! followed (`trace --pid`, `run`), each with its own table, unless
//! `--no-children`.
//!
//! The fixture (`tests/fixtures/python/prefork_master.py`, under pyenv's
//! 3.11) is a pre-forking master driven on stdin: it forks its workers once
//! leaktrace traces it, and they leak only once leaktrace says it follows
//! them (what a child allocates before its probes are attached is not seen,
//! by design). Each worker k keeps (k + 1) * 100 bytearrays of 64 KiB at
//! one line and frees as many 4 KiB temporaries at another: the leak line
//! must hold the worker's bytearrays and at least 80% of its outstanding
//! bytes, the temporaries' line nothing, and the workers must be listed by
//! pid as children of the master. The master keeps 50 bytearrays just
//! before it forks, which each worker frees: they stay the master's, and
//! the workers' frees of them are releases of blocks never seen, not
//! losses.
mod common;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    time::Duration,
};

use common::{
    Guarded, Lines, TempDir, fixture_source, leaktrace_bin, prerequisite_missing, pyenv,
    python_frames, read_json, require_root, serial, site_lines_of, sites,
};
use serde_json::Value;

const FIXTURE: &str = "python/prefork_master.py";

/// Bytearrays the master keeps just before it forks, freed by each worker.
const INHERITED: u64 = 50;

/// The bytes one leaked bytearray asks the C library for: its size and a
/// terminating NUL (`PyObject_Malloc(size + 1)`, past pymalloc's 512).
const BLOCK_BYTES: u64 = 64 * 1024 + 1;

/// What may come on top of the bytearrays at their line: the list that
/// holds them growing, and a pymalloc arena (1 MiB) opened for their
/// object headers.
const LINE_SLACK: u64 = 2 << 20;

/// The interpreter the tests run the fixture under (a failure, not a skip,
/// when missing, unless skips are allowed).
fn python(test: &str) -> Option<PathBuf> {
    let python = pyenv("3.11.7");
    if python.exists() {
        Some(python)
    } else {
        prerequisite_missing(test, &format!("{} (pyenv's 3.11.7)", python.display()));
        None
    }
}

/// The fixture, started with `mode`, its stdin and stdout lines.
struct Master {
    process: Guarded,
    stdin: Option<ChildStdin>,
    stdout: Lines,
}

impl Master {
    fn start(python: &Path, mode: &str) -> Master {
        let mut process = Guarded::spawn(
            "the prefork master",
            Command::new(python)
                .arg(fixture_source(FIXTURE))
                .arg(mode)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdin = Some(process.take_stdin());
        let stdout = process.stdout_lines();
        stdout
            .wait_for(Duration::from_secs(30), |l| l == "ready")
            .unwrap_or_else(|e| panic!("the master never said ready: {e}"));
        Master {
            process,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Forks the workers; their pids.
    fn fork(&mut self) -> Vec<u32> {
        self.say("fork");
        let line = self
            .stdout
            .wait_for(Duration::from_secs(10), |l| l.starts_with("forked "))
            .unwrap_or_else(|e| panic!("the master never forked: {e}"));
        pids_after(&line, "forked ")
    }

    /// Lets the workers leak; each worker's pid and blocks kept.
    fn leak(&mut self, workers: usize) -> BTreeMap<u32, u64> {
        self.say("leak");
        (0..workers)
            .map(|_| {
                let line = self
                    .stdout
                    .wait_for(Duration::from_secs(30), |l| l.starts_with("leaked "))
                    .unwrap_or_else(|e| panic!("a worker never said leaked: {e}"));
                let words = pids_after(&line, "leaked ");
                (words[0], u64::from(words[1]))
            })
            .collect()
    }

    /// Closes its stdin: the master exits at once, its workers a second
    /// later.
    fn finish(&mut self) {
        drop(self.stdin.take());
    }
}

/// The numbers after `prefix` in `line`.
fn pids_after(line: &str, prefix: &str) -> Vec<u32> {
    line.strip_prefix(prefix)
        .unwrap_or_default()
        .split_whitespace()
        .map(|word| word.parse().unwrap_or_else(|_| panic!("{line:?}")))
        .collect()
}

/// `leaktrace ARGS` in the background, its stderr lines; once it says it
/// traces `pid`.
fn start_leaktrace(args: &[&str], pid: u32) -> (Guarded, Lines) {
    let mut tracer = Guarded::spawn(
        "leaktrace",
        Command::new(leaktrace_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let stderr = tracer.stderr_lines();
    stderr
        .wait_for(Duration::from_mins(1), |l| {
            l.starts_with(&format!("leaktrace: tracing pid {pid} ("))
        })
        .unwrap_or_else(|e| panic!("leaktrace never said it traces {pid}: {e}"));
    (tracer, stderr)
}

/// Waits until leaktrace says it follows `child` of `parent`; the gap it
/// gives between the fork and the probes (ms).
fn wait_followed(stderr: &Lines, child: u32, parent: u32) -> f64 {
    let prefix = format!("leaktrace: following child {child} of {parent} (probes live ");
    let line = stderr
        .wait_for(Duration::from_secs(30), |l| l.starts_with(&prefix))
        .unwrap_or_else(|e| panic!("leaktrace never followed {child}: {e}"));
    line[prefix.len()..]
        .split(' ')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no gap in {line:?}"))
}

/// Waits for leaktrace to end by itself and checks it succeeded.
fn wait_exit(tracer: &mut Guarded, stderr: &Lines) {
    let status = tracer
        .wait_timeout(Duration::from_mins(1))
        .unwrap_or_else(|| panic!("leaktrace did not stop\n{}", stderr.text()));
    assert!(status.success(), "{status:?}\n{}", stderr.text());
}

/// Outstanding bytes of `pid` by its innermost frame in the fixture's file
/// (line number; 0 for bytes without such a frame).
fn bytes_by_fixture_line(report: &Value, pid: u32) -> BTreeMap<u64, u64> {
    let mut lines = BTreeMap::new();
    for site in sites(report)
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
    {
        let line = python_frames(site)
            .iter()
            .find(|(_, file, _)| file.ends_with("prefork_master.py"))
            .map_or(0, |(_, _, line)| *line);
        *lines.entry(line).or_default() += site["bytes"].as_u64().unwrap();
    }
    lines
}

/// The process `pid` of `report`.
fn process(report: &Value, pid: u32) -> &Value {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("pid {pid} not in {}", report["processes"]))
}

/// Checks that `child` holds `blocks` bytearrays at the line marked
/// `marker`, at least 80% of its outstanding bytes, and nothing at the
/// temporaries' line.
fn assert_leak_at_its_line(report: &Value, child: u32, blocks: u64, marker: &str) {
    let lines = site_lines_of(FIXTURE);
    let by_line = bytes_by_fixture_line(report, child);
    let total = process(report, child)["bytes"].as_u64().unwrap();
    let at_leak = by_line.get(&lines[marker]).copied().unwrap_or(0);
    let summary = format!("child {child}: {total} bytes, by line {by_line:?}");
    eprintln!("{summary}");
    assert!(
        (blocks * BLOCK_BYTES..=blocks * BLOCK_BYTES + LINE_SLACK).contains(&at_leak),
        "{blocks} blocks of {BLOCK_BYTES} bytes expected at line {}: {summary}",
        lines[marker]
    );
    assert!(
        at_leak * 100 >= total * 80,
        "under 80% at line {}: {summary}",
        lines[marker]
    );
    assert!(
        !by_line.contains_key(&lines["temporary"]),
        "the temporaries' line {} holds memory: {summary}",
        lines["temporary"]
    );
}

/// `trace --pid MASTER`: the three workers it forks after attach are
/// followed, each listed by pid as a child of the master with its own
/// leak at the leak line; the master exits first and tracing goes on
/// until the workers are gone too.
#[test]
fn prefork_workers_are_followed_each_with_its_own_table() {
    const TEST: &str = "prefork_workers_are_followed_each_with_its_own_table";
    if !require_root(TEST) {
        return;
    }
    let Some(python) = python(TEST) else { return };
    let _serial = serial();
    let dir = TempDir::new("children-prefork");
    let report_path = dir.join("report.json");
    let mut master = Master::start(&python, "prefork");
    let pid = master.pid();
    let pid_text = pid.to_string();
    let (mut tracer, stderr) = start_leaktrace(
        &[
            "trace",
            "--pid",
            &pid_text,
            "--format",
            "json",
            "--output",
            report_path.to_str().unwrap(),
        ],
        pid,
    );
    let workers = master.fork();
    assert_eq!(workers.len(), 3, "{workers:?}");
    let gaps: Vec<f64> = workers
        .iter()
        .map(|&worker| wait_followed(&stderr, worker, pid))
        .collect();
    eprintln!("fork to probes, ms: {gaps:?}");
    let leaked = master.leak(workers.len());
    // The records reach the daemon within its 20 ms drain period.
    std::thread::sleep(Duration::from_millis(500));
    master.finish();
    stderr
        .wait_for(Duration::from_secs(10), |l| {
            l == format!("leaktrace: pid {pid} exited; still tracing the others")
        })
        .unwrap_or_else(|e| panic!("leaktrace did not go on after the master exited: {e}"));
    wait_exit(&mut tracer, &stderr);

    let report = read_json(&report_path);
    let mut listed: Vec<u64> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected: Vec<u64> = workers.iter().map(|&w| u64::from(w)).collect();
    expected.push(u64::from(pid));
    expected.sort_unstable();
    assert_eq!(listed, expected, "{}", report["processes"]);
    assert!(process(&report, pid)["parent"].is_null());
    for &worker in &workers {
        let entry = process(&report, worker);
        assert_eq!(entry["parent"], u64::from(pid), "{entry}");
        assert_eq!(entry["exited"], true, "{entry}");
        assert_eq!(entry["runtime"]["version"], "3.11.7", "{entry}");
        assert_leak_at_its_line(&report, worker, leaked[&worker], "leak");
    }
    // Three workers leaking 100, 200 and 300 blocks.
    let mut counts: Vec<u64> = leaked.values().copied().collect();
    counts.sort_unstable();
    assert_eq!(counts, [100, 200, 300]);
    // What the master allocated before the fork stays its own; the
    // workers' frees of their copies are releases of blocks never seen.
    let lines = site_lines_of(FIXTURE);
    let master = bytes_by_fixture_line(&report, pid);
    let inherited = master.get(&lines["inherited"]).copied().unwrap_or(0);
    assert!(
        (INHERITED * BLOCK_BYTES..=INHERITED * BLOCK_BYTES + LINE_SLACK).contains(&inherited),
        "the master's {INHERITED} blocks: {master:?}"
    );
    for &worker in &workers {
        assert!(
            !bytes_by_fixture_line(&report, worker).contains_key(&lines["inherited"]),
            "worker {worker} holds its parent's blocks"
        );
    }
    assert!(
        report["totals"]["unmatched_releases"].as_u64().unwrap() >= 3 * INHERITED,
        "{}",
        report["totals"]
    );
    assert_eq!(report["losses"]["total"], 0, "{}", report["losses"]);
}

/// `--no-children`: the same workers are not followed, and tracing ends
/// with the master although they still live.
#[test]
fn no_children_leaves_the_workers_out() {
    const TEST: &str = "no_children_leaves_the_workers_out";
    if !require_root(TEST) {
        return;
    }
    let Some(python) = python(TEST) else { return };
    let _serial = serial();
    let dir = TempDir::new("children-none");
    let report_path = dir.join("report.json");
    let mut master = Master::start(&python, "prefork");
    let pid = master.pid();
    let pid_text = pid.to_string();
    let (mut tracer, stderr) = start_leaktrace(
        &[
            "trace",
            "--pid",
            &pid_text,
            "--no-children",
            "--format",
            "json",
            "--output",
            report_path.to_str().unwrap(),
        ],
        pid,
    );
    let workers = master.fork();
    let leaked = master.leak(workers.len());
    assert_eq!(leaked.len(), 3);
    std::thread::sleep(Duration::from_millis(500));
    master.finish();
    wait_exit(&mut tracer, &stderr);

    let report = read_json(&report_path);
    let listed: Vec<u64> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [u64::from(pid)], "{}", report["processes"]);
    assert!(
        sites(&report)
            .iter()
            .all(|s| s["pid"].as_u64() == Some(u64::from(pid))),
        "sites of other processes: {}",
        report["sites"]
    );
    assert!(
        !stderr.text().contains("following child"),
        "{}",
        stderr.text()
    );
}

/// `run` of a master that forks a child which execs the fixture again in
/// leaker mode: the child is followed into its new image (its probes on
/// the C library go with it through the exec), and the leak it makes
/// there is at its line, in its own table, under its new command line.
#[test]
fn a_child_that_execs_is_followed_into_its_new_image() {
    const TEST: &str = "a_child_that_execs_is_followed_into_its_new_image";
    if !require_root(TEST) {
        return;
    }
    let Some(python) = python(TEST) else { return };
    let _serial = serial();
    let dir = TempDir::new("children-exec");
    let report_path = dir.join("report.json");
    let fixture = fixture_source(FIXTURE);
    let mut tracer = Guarded::spawn(
        "leaktrace run",
        Command::new(leaktrace_bin())
            .args(["run", "--format", "json", "--output"])
            .arg(&report_path)
            .arg("--")
            .arg(&python)
            .arg(&fixture)
            .arg("fork-exec")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = Some(tracer.take_stdin());
    let stdout = tracer.stdout_lines();
    let stderr = tracer.stderr_lines();
    let say = |stdin: &mut Option<ChildStdin>, line: &str| {
        let pipe = stdin.as_mut().expect("stdin still open");
        pipe.write_all(format!("{line}\n").as_bytes()).unwrap();
        pipe.flush().unwrap();
    };
    stdout
        .wait_for(Duration::from_mins(1), |l| l == "ready")
        .unwrap_or_else(|e| panic!("the master never said ready: {e}\n{}", stderr.text()));
    let master: u32 = stderr
        .wait_for(Duration::from_secs(10), |l| {
            l.starts_with("leaktrace: tracing pid ")
        })
        .unwrap_or_else(|e| panic!("leaktrace never said what it traces: {e}"))
        ["leaktrace: tracing pid ".len()..]
        .split(' ')
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("a pid");
    say(&mut stdin, "fork");
    let child = pids_after(
        &stdout
            .wait_for(Duration::from_secs(10), |l| l.starts_with("forked "))
            .unwrap_or_else(|e| panic!("the master never forked: {e}")),
        "forked ",
    )[0];
    let gap = wait_followed(&stderr, child, master);
    eprintln!("fork to probes, ms: {gap}");
    stdout
        .wait_for(Duration::from_secs(30), |l| l == format!("ready {child}"))
        .unwrap_or_else(|e| panic!("the exec'd child never said ready: {e}"));
    say(&mut stdin, "leak");
    stdout
        .wait_for(Duration::from_secs(30), |l| {
            l == format!("leaked {child} 100")
        })
        .unwrap_or_else(|e| panic!("the exec'd child never leaked: {e}"));
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin.take());
    wait_exit(&mut tracer, &stderr);

    let report = read_json(&report_path);
    let entry = process(&report, child);
    assert_eq!(entry["parent"], u64::from(master), "{entry}");
    assert!(
        entry["command"].as_str().unwrap().ends_with("leaker"),
        "{entry}"
    );
    assert_eq!(entry["runtime"]["version"], "3.11.7", "{entry}");
    assert!(report["totals"]["execs"].as_u64().unwrap() >= 1);
    assert_leak_at_its_line(&report, child, 100, "exec_leak");
}
