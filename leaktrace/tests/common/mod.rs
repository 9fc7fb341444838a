//! Shared helpers for leaktrace's integration tests: the expected-leak table
//! of the `leaky` fixture, building fixtures with gcc into a temporary
//! directory, root checks, child processes that are killed even when a test
//! fails, line readers with timeouts, and the checks of a JSON report
//! against the table.
//!
//! Each test file includes this with `mod common;` and uses part of it.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{BufRead as _, BufReader, Read},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

// ---------------------------------------------------------------------------
// The expected leaks of tests/fixtures/leaky.c
// ---------------------------------------------------------------------------

/// Heap block (malloc family, valgrind sees it) or mapped region (mmap,
/// valgrind does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    Heap,
    Mapped,
}

/// One leaking call site of `leaky`: the function that calls the allocator
/// (`frames[0]`), the allocator names accepted for the site, the bytes and
/// allocations outstanding at exit, and the function that calls it
/// (`frames[1]`).
#[derive(Clone, Copy, Debug)]
pub struct Leak {
    pub function: &'static str,
    pub allocators: &'static [&'static str],
    pub bytes: u64,
    pub count: u64,
    pub caller: &'static str,
    pub memory: Memory,
}

const fn leak(
    function: &'static str,
    allocators: &'static [&'static str],
    bytes: u64,
    count: u64,
    caller: &'static str,
    memory: Memory,
) -> Leak {
    Leak {
        function,
        allocators,
        bytes,
        count,
        caller,
        memory,
    }
}

pub const PAGE: u64 = 4096;

/// What `leaky` leaves outstanding, per call site, derived from
/// tests/fixtures/leaky.c (whose header carries the same table) and
/// confirmed for every heap row by valgrind memcheck 3.19
/// (`valgrind_confirms_expected_table` redoes that check on every run).
/// The mmap rows are checked by reasoning: valgrind does not track mmap.
pub const EXPECTED_LEAKS: &[Leak] = &[
    // 4 x malloc(1111)
    leak(
        "leak_malloc",
        &["malloc"],
        4 * 1111,
        4,
        "main",
        Memory::Heap,
    ),
    // 3 x calloc(7, 111)
    leak(
        "leak_calloc",
        &["calloc"],
        3 * 7 * 111,
        3,
        "main",
        Memory::Heap,
    ),
    // malloc(200) moved by realloc(p, 50000): the realloc site, new size
    leak(
        "leak_realloc_move",
        &["realloc"],
        50000,
        1,
        "main",
        Memory::Heap,
    ),
    // malloc(3333), then realloc(p, SIZE_MAX/2) fails: p stays at the malloc site
    leak(
        "leak_realloc_fail",
        &["malloc"],
        3333,
        1,
        "main",
        Memory::Heap,
    ),
    // 2 x realloc(NULL, 1234): a malloc, through realloc
    leak(
        "leak_realloc_null",
        &["realloc"],
        2 * 1234,
        2,
        "main",
        Memory::Heap,
    ),
    // 2 x reallocarray(NULL, 9, 123)
    leak(
        "leak_reallocarray",
        &["reallocarray"],
        2 * 9 * 123,
        2,
        "main",
        Memory::Heap,
    ),
    // 2 x posix_memalign(&p, 64, 1600)
    leak(
        "leak_posix_memalign",
        &["posix_memalign"],
        2 * 1600,
        2,
        "main",
        Memory::Heap,
    ),
    // aligned_alloc(128, 1280)
    leak(
        "leak_aligned_alloc",
        &["aligned_alloc", "memalign"],
        1280,
        1,
        "main",
        Memory::Heap,
    ),
    // memalign(256, 2560): glibc's memalign and aligned_alloc share an address
    leak(
        "leak_memalign",
        &["memalign", "aligned_alloc"],
        2560,
        1,
        "main",
        Memory::Heap,
    ),
    // valloc(4000)
    leak("leak_valloc", &["valloc"], 4000, 1, "main", Memory::Heap),
    // pvalloc(5000): glibc hands out 8192, the request (5000) is reported
    leak("leak_pvalloc", &["pvalloc"], 5000, 1, "main", Memory::Heap),
    // mmap of 16 pages, munmap of pages 6..9: 12 pages in two pieces, one allocation
    leak(
        "leak_mmap_partial",
        &["mmap"],
        12 * PAGE,
        1,
        "main",
        Memory::Mapped,
    ),
    // mmap(3 pages + 100 bytes): rounded up to 4 pages
    leak(
        "leak_mmap_round",
        &["mmap"],
        4 * PAGE,
        1,
        "main",
        Memory::Mapped,
    ),
    // 4 threads x 5 x malloc(333): one site (same stack in every thread)
    leak(
        "leak_in_thread",
        &["malloc"],
        4 * 5 * 333,
        20,
        "thread_main",
        Memory::Heap,
    ),
];

/// Functions of `leaky` whose allocations are all freed (or failed): they
/// must not appear in any frame of any reported site.
pub const TEMPORARY_FUNCTIONS: &[&str] = &[
    "churn_temporaries",
    "realloc_to_zero",
    "free_null",
    "overflowing_calls",
    "thread_temporary",
];

/// Environment variable that makes `leaky` skip every pvalloc call
/// (valgrind 3.19 aborts the program at the first pvalloc).
pub const SKIP_PVALLOC: &str = "LEAKY_SKIP_PVALLOC";

/// The table without the rows `leaky` does not produce when run with
/// `LEAKY_SKIP_PVALLOC=1`.
pub fn expected_without_pvalloc() -> Vec<Leak> {
    EXPECTED_LEAKS
        .iter()
        .copied()
        .filter(|l| l.function != "leak_pvalloc")
        .collect()
}

// ---------------------------------------------------------------------------
// Environment: root, tools, serialization
// ---------------------------------------------------------------------------

/// The leaktrace binary under test.
pub fn leaktrace_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_leaktrace"))
}

pub fn fixture_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Effective uid, from /proc/self/status.
pub fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("/proc/self/status has a Uid: line");
    line.split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("effective uid")
}

pub fn is_root() -> bool {
    effective_uid() == 0
}

/// True when the test may proceed. Not root: prints a loud SKIPPED line and
/// returns false, unless `CI` is set, where a skipped tracer test would hide
/// a broken build: then it panics.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root, and CI is set: refusing to skip (run the tests as root)");
    }
    eprintln!();
    eprintln!("=================================================================");
    eprintln!("SKIPPED (needs root): {test}: leaktrace loads eBPF programs");
    eprintln!("=================================================================");
    eprintln!();
    false
}

/// Whether `tool` is on PATH.
pub fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(tool))))
        .unwrap_or(false)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Tests that trace run one at a time: two tracers at once would disturb
/// each other's timing (and the machine may have two cores).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// Temporary directories and fixtures
// ---------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop unless the
/// test is failing (then it is kept, and its path printed, for a look).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "leaktrace-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        // Readable and searchable by anyone: the non-root test runs from here.
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o755));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "(test failed: keeping {} for inspection)",
                self.path.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Compiles `tests/fixtures/<source>` with gcc into `dir/<output>`.
pub fn compile(dir: &TempDir, source: &str, output: &str, flags: &[&str]) -> PathBuf {
    let src = fixture_source(source);
    let out = dir.join(output);
    let result = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running gcc (is it installed?): {e}"));
    assert!(
        result.status.success(),
        "gcc {flags:?} {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// The leaky fixture, with exact frames: no optimization, no inlining,
/// frame pointers, debug info.
pub fn build_leaky(dir: &TempDir) -> PathBuf {
    compile(
        dir,
        "leaky.c",
        "leaky",
        &[
            "-O0",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-inline",
            "-pthread",
        ],
    )
}

pub fn build_spin(dir: &TempDir) -> PathBuf {
    compile(
        dir,
        "spin.c",
        "spin",
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    )
}

/// A static program with no libc, hence no malloc anywhere.
pub fn build_nomalloc(dir: &TempDir) -> PathBuf {
    compile(dir, "nomalloc.c", "nomalloc", &["-static", "-nostdlib"])
}

/// Line number of each `/* SITE name */` marker in a fixture source.
pub fn site_lines(source: &str) -> HashMap<String, u32> {
    let text = fs::read_to_string(fixture_source(source)).expect("reading fixture source");
    let mut lines = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(rest) = line.split("/* SITE ").nth(1) {
            let name = rest.split_whitespace().next().unwrap_or_default();
            lines.insert(name.to_string(), index as u32 + 1);
        }
    }
    lines
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child process killed (with its whole process group) when dropped, so
/// that a failing test leaves nothing running.
pub struct Guarded {
    pub child: Child,
    pub name: String,
    /// The child leads its own process group (what it starts dies with it).
    group: bool,
    reaped: Option<ExitStatus>,
}

impl Guarded {
    /// Spawns `command` in a new process group.
    pub fn spawn(name: &str, command: &mut Command) -> Guarded {
        command.process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Guarded {
            child,
            name: name.to_string(),
            group: true,
            reaped: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout`; None if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.reaped {
            return Some(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = Some(status);
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => return None,
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }

    /// SIGKILL to the child (only the child), then reap it.
    pub fn kill_and_reap(&mut self) -> ExitStatus {
        if let Some(status) = self.reaped {
            return status;
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {}: {e}", self.name));
        self.reaped = Some(status);
        status
    }

    pub fn take_stdin(&mut self) -> std::process::ChildStdin {
        self.child.stdin.take().expect("stdin was piped")
    }

    pub fn stdout_lines(&mut self) -> Lines {
        Lines::spawn(self.child.stdout.take().expect("stdout was piped"))
    }

    pub fn stderr_lines(&mut self) -> Lines {
        Lines::spawn(self.child.stderr.take().expect("stderr was piped"))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.group {
            // Everything in its group (e.g. the command `leaktrace run` started).
            // SAFETY: kill(2) with a negative pid signals that process group only.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        }
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines read from a pipe by a background thread, available with timeouts;
/// every line seen is kept for failure messages.
pub struct Lines {
    rx: Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    pub fn spawn(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                keep.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen }
    }

    /// The next line; None at timeout or end of file.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Reads lines until one satisfies `matches`; Err with what was seen on
    /// timeout or end of file.
    pub fn wait_for(
        &self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if matches(&line) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "timed out after {timeout:?}; lines so far:\n{}",
                        self.text()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("end of output; lines so far:\n{}", self.text()));
                }
            }
        }
    }

    /// Discards the lines already received.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Waits up to `timeout` for end of file, then returns every line seen.
    pub fn finish(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.all()
    }

    pub fn all(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn text(&self) -> String {
        self.all().join("\n")
    }
}

/// What a finished command printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs `command` to completion with piped output; kills it and panics
/// after `timeout`.
pub fn run_with_timeout(name: &str, command: &mut Command, timeout: Duration) -> Finished {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guarded::spawn(name, command);
    let out = child.stdout_lines();
    let err = child.stderr_lines();
    let Some(status) = child.wait_timeout(timeout) else {
        child.kill_and_reap();
        panic!(
            "{name} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            out.finish(Duration::from_secs(1)).join("\n"),
            err.finish(Duration::from_secs(1)).join("\n")
        );
    };
    let stdout = out.finish(Duration::from_secs(5)).join("\n");
    let stderr = err.finish(Duration::from_secs(5)).join("\n");
    Finished {
        status,
        stdout,
        stderr,
    }
}

/// `leaktrace ARGS...`, to completion.
pub fn leaktrace(args: &[&str], timeout: Duration) -> Finished {
    let mut command = Command::new(leaktrace_bin());
    command.args(args);
    run_with_timeout("leaktrace", &mut command, timeout)
}

/// Asserts that a failed leaktrace printed exactly one non-empty stderr line,
/// starting with `leaktrace: error: `, and exited non-zero. Returns the line.
pub fn assert_one_error_line<'a>(what: &str, finished: &'a Finished) -> &'a str {
    let lines = finished.stderr_lines();
    assert!(
        !finished.status.success(),
        "{what}: expected a non-zero exit, got {:?}\nstderr:\n{}",
        finished.status,
        finished.stderr
    );
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one non-empty stderr line, got {}:\n{}",
        lines.len(),
        finished.stderr
    );
    assert!(
        lines[0].starts_with("leaktrace: error: "),
        "{what}: the stderr line must start with 'leaktrace: error: ', got: {}",
        lines[0]
    );
    lines[0]
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading report {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "report {} is not one JSON document: {e}\n{text}",
            path.display()
        )
    })
}

pub fn sites(report: &Value) -> &Vec<Value> {
    report["sites"]
        .as_array()
        .expect("report has a sites array")
}

/// Function names of a site's frames, innermost first.
pub fn frame_functions(site: &Value) -> Vec<&str> {
    site["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| f["function"].as_str().unwrap_or(""))
                .collect()
        })
        .unwrap_or_default()
}

pub fn innermost_function(site: &Value) -> &str {
    site["frames"][0]["function"].as_str().unwrap_or("")
}

/// One line per site, for failure messages.
pub fn describe_sites(report: &Value) -> String {
    sites(report)
        .iter()
        .map(|s| {
            let frames: Vec<String> = s["frames"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .take(6)
                        .map(|f| {
                            format!(
                                "{}@{}:{}",
                                f["function"].as_str().unwrap_or("?"),
                                f["file"]
                                    .as_str()
                                    .map(|p| p.rsplit('/').next().unwrap_or(p))
                                    .unwrap_or("?"),
                                f["line"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "  {} {} bytes / {} allocs: {}",
                s["allocator"],
                s["bytes"],
                s["count"],
                frames.join(" <- ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks a final JSON report of a `leaky` run against `expected`:
///
/// - each row: exactly one site whose `frames[0]` is the function, with an
///   accepted allocator name, the exact bytes and count, the right pid,
///   `frames[1]` the expected caller, `frames[0]` symbolized to leaky.c at
///   the marked line, in the fixture's module;
/// - no site mentions a temporary function in any frame, and the table's
///   functions appear only as `frames[0]` (nothing is double-counted, e.g.
///   an arena mmap made inside malloc);
/// - the sites whose `frames[0]` is a fixture function add up to exactly the
///   table (what the C runtime itself leaves, e.g. thread stacks, is not the
///   fixture's and is not counted);
/// - totals are consistent with the sites; nothing was lost; the report is final.
///
/// Collects every failure and panics once with all of them and the sites.
pub fn check_report_against_table(report: &Value, expected: &[Leak], pid: Option<u32>) {
    let mut failures: Vec<String> = Vec::new();
    let lines = site_lines("leaky.c");
    let all_sites = sites(report);

    for row in expected {
        let matching: Vec<&Value> = all_sites
            .iter()
            .filter(|s| innermost_function(s) == row.function)
            .collect();
        if matching.len() != 1 {
            failures.push(format!(
                "{}: expected exactly one site with frames[0] = {}, found {}",
                row.function,
                row.function,
                matching.len()
            ));
            continue;
        }
        let site = matching[0];
        let allocator = site["allocator"].as_str().unwrap_or("");
        if !row.allocators.contains(&allocator) {
            failures.push(format!(
                "{}: allocator {allocator:?}, expected one of {:?}",
                row.function, row.allocators
            ));
        }
        if site["bytes"].as_u64() != Some(row.bytes) {
            failures.push(format!(
                "{}: {} bytes, expected {}",
                row.function, site["bytes"], row.bytes
            ));
        }
        if site["count"].as_u64() != Some(row.count) {
            failures.push(format!(
                "{}: count {}, expected {}",
                row.function, site["count"], row.count
            ));
        }
        if let Some(pid) = pid
            && site["pid"].as_u64() != Some(u64::from(pid))
        {
            failures.push(format!(
                "{}: pid {}, expected {pid}",
                row.function, site["pid"]
            ));
        }
        let functions = frame_functions(site);
        if functions.get(1).copied() != Some(row.caller) {
            failures.push(format!(
                "{}: frames[1] should be its caller {}, frames are {functions:?}",
                row.function, row.caller
            ));
        }
        if row.caller == "main" && !functions.contains(&"main") {
            failures.push(format!(
                "{}: main is not in the frames {functions:?}",
                row.function
            ));
        }
        let frame = &site["frames"][0];
        let file = frame["file"].as_str().unwrap_or("");
        if !file.ends_with("leaky.c") {
            failures.push(format!(
                "{}: frames[0].file is {:?}, expected .../leaky.c",
                row.function, frame["file"]
            ));
        }
        if let Some(&line) = lines.get(row.function)
            && frame["line"].as_u64() != Some(u64::from(line))
        {
            failures.push(format!(
                "{}: frames[0].line is {}, the allocator call is on leaky.c:{line}",
                row.function, frame["line"]
            ));
        }
        let module = frame["module"].as_str().unwrap_or("");
        if !module.ends_with("/leaky") {
            failures.push(format!(
                "{}: frames[0].module is {:?}, expected the fixture binary",
                row.function, frame["module"]
            ));
        }
        if frame["inlined"].as_bool() != Some(false) {
            failures.push(format!(
                "{}: frames[0].inlined is {}, built with -fno-inline",
                row.function, frame["inlined"]
            ));
        }
    }

    // Rows the fixture did not produce must not be reported either.
    for row in EXPECTED_LEAKS {
        if !expected.iter().any(|e| e.function == row.function)
            && all_sites
                .iter()
                .any(|s| frame_functions(s).contains(&row.function))
        {
            failures.push(format!(
                "{}: reported, but the fixture was told not to leak there",
                row.function
            ));
        }
    }

    for site in all_sites {
        let functions = frame_functions(site);
        for temp in TEMPORARY_FUNCTIONS {
            if functions.contains(temp) {
                failures.push(format!(
                    "{temp} frees everything it allocates, yet a site mentions it: {} {} bytes / {} allocs, frames {functions:?}",
                    site["allocator"], site["bytes"], site["count"]
                ));
            }
        }
        for (index, function) in functions.iter().enumerate().skip(1) {
            if EXPECTED_LEAKS.iter().any(|row| row.function == *function) {
                failures.push(format!(
                    "{function} calls the allocator directly, yet it is frames[{index}] of a site ({} {} bytes): an allocator-internal call was reported (double counting)",
                    site["allocator"], site["bytes"]
                ));
            }
        }
    }

    let fixture_sites: Vec<&Value> = all_sites
        .iter()
        .filter(|s| {
            expected
                .iter()
                .any(|row| row.function == innermost_function(s))
        })
        .collect();
    let fixture_bytes: u64 = fixture_sites
        .iter()
        .filter_map(|s| s["bytes"].as_u64())
        .sum();
    let fixture_count: u64 = fixture_sites
        .iter()
        .filter_map(|s| s["count"].as_u64())
        .sum();
    let table_bytes: u64 = expected.iter().map(|r| r.bytes).sum();
    let table_count: u64 = expected.iter().map(|r| r.count).sum();
    if fixture_bytes != table_bytes || fixture_count != table_count {
        failures.push(format!(
            "fixture sites hold {fixture_bytes} bytes in {fixture_count} allocations, the table says {table_bytes} in {table_count}"
        ));
    }

    let site_bytes: u64 = all_sites.iter().filter_map(|s| s["bytes"].as_u64()).sum();
    let site_count: u64 = all_sites.iter().filter_map(|s| s["count"].as_u64()).sum();
    let totals = &report["totals"];
    if totals["outstanding_bytes"].as_u64() != Some(site_bytes) {
        failures.push(format!(
            "totals.outstanding_bytes {} != sum of sites {site_bytes}",
            totals["outstanding_bytes"]
        ));
    }
    if totals["outstanding_allocations"].as_u64() != Some(site_count) {
        failures.push(format!(
            "totals.outstanding_allocations {} != sum of sites {site_count}",
            totals["outstanding_allocations"]
        ));
    }
    if totals["call_sites"].as_u64() != Some(all_sites.len() as u64) {
        failures.push(format!(
            "totals.call_sites {} != {} sites",
            totals["call_sites"],
            all_sites.len()
        ));
    }
    if totals["outstanding_bytes"].as_u64().unwrap_or(0) < table_bytes {
        failures.push(format!(
            "totals.outstanding_bytes {} < the table's {table_bytes}",
            totals["outstanding_bytes"]
        ));
    }
    // leaky's temporaries alone make thousands of allocations and releases.
    if totals["allocations"].as_u64().unwrap_or(0) < 10_000
        || totals["releases"].as_u64().unwrap_or(0) < 10_000
    {
        failures.push(format!(
            "totals.allocations {} / releases {}: leaky makes more than 10000 of each",
            totals["allocations"], totals["releases"]
        ));
    }
    // realloc(p, SIZE_MAX/2), calloc and reallocarray overflows (at least).
    if totals["failed_calls"].as_u64().unwrap_or(0) < 3 {
        failures.push(format!(
            "totals.failed_calls {}: leaky makes at least 3 failing calls",
            totals["failed_calls"]
        ));
    }
    if report["losses"]["total"].as_u64() != Some(0) {
        failures.push(format!("events were lost: {}", report["losses"]));
    }
    if report["final"].as_bool() != Some(true) {
        failures.push(format!("final is {}, expected true", report["final"]));
    }
    if let Some(pid) = pid
        && report["pids"] != serde_json::json!([pid])
    {
        failures.push(format!("pids is {}, expected [{pid}]", report["pids"]));
    }

    if !failures.is_empty() {
        panic!(
            "the report does not match leaky's expected leaks:\n- {}\n\nsites reported:\n{}\ntotals: {}\nlosses: {}",
            failures.join("\n- "),
            describe_sites(report),
            report["totals"],
            report["losses"]
        );
    }
}

/// Per function of the table: (bytes, count) of the site whose `frames[0]`
/// is that function, for reports compared against another oracle.
pub fn bytes_by_fixture_function(report: &Value) -> BTreeMap<String, (u64, u64)> {
    let mut by_function = BTreeMap::new();
    for site in sites(report) {
        let function = innermost_function(site);
        if EXPECTED_LEAKS.iter().any(|r| r.function == function) {
            let entry = by_function.entry(function.to_string()).or_insert((0, 0));
            entry.0 += site["bytes"].as_u64().unwrap_or(0);
            entry.1 += site["count"].as_u64().unwrap_or(0);
        }
    }
    by_function
}

/// Output of a command, for messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
