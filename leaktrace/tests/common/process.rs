//! Child processes: guards that kill a child (and its process group) even
//! when a test fails, pipe readers with timeouts, running a command (or
//! leaktrace itself) to completion under a deadline, and checks of what a
//! failed leaktrace printed.

use std::{
    io::{BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{environment::leaktrace_bin, fixtures::TempDir, report::read_json};

/// A child process killed (with its whole process group) when dropped, so
/// that a failing test leaves nothing running.
pub(crate) struct Guarded {
    pub child: Child,
    pub name: String,
    /// The child leads its own process group (what it starts dies with it).
    group: bool,
    reaped: Option<ExitStatus>,
}

impl Guarded {
    /// Spawns `command` in a new process group.
    pub(crate) fn spawn(name: &str, command: &mut Command) -> Guarded {
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout`; None if still running.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
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
    pub(crate) fn kill_and_reap(&mut self) -> ExitStatus {
        if let Some(status) = self.reaped {
            return status;
        }
        let _: Result<_, _> = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {}: {e}", self.name));
        self.reaped = Some(status);
        status
    }

    pub(crate) fn take_stdin(&mut self) -> std::process::ChildStdin {
        self.child.stdin.take().expect("stdin was piped")
    }

    pub(crate) fn stdout_lines(&mut self) -> Lines {
        Lines::spawn(self.child.stdout.take().expect("stdout was piped"))
    }

    pub(crate) fn stderr_lines(&mut self) -> Lines {
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
            let _: Result<_, _> = self.child.kill();
            let _: Result<_, _> = self.child.wait();
        }
    }
}

/// Lines read from a pipe by a background thread, available with timeouts;
/// every line seen is kept for failure messages.
pub(crate) struct Lines {
    rx: Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    pub(crate) fn spawn(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                keep.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen }
    }

    /// The next line; None at timeout or end of file.
    pub(crate) fn next(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Reads lines until one satisfies `matches`; Err with what was seen on
    /// timeout or end of file.
    pub(crate) fn wait_for(
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
    pub(crate) fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Waits up to `timeout` for end of file, then returns every line seen.
    pub(crate) fn finish(&self, timeout: Duration) -> Vec<String> {
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

    pub(crate) fn all(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn text(&self) -> String {
        self.all().join("\n")
    }
}

/// What a finished command printed.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Asserts that it exited 0 (showing its output when not), and passes
    /// it on.
    pub(crate) fn succeeded(self, what: &str) -> Finished {
        assert!(
            self.status.success(),
            "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The non-empty lines of stderr.
    pub(crate) fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs `command` to completion with piped output; kills it and panics
/// after `timeout`.
pub(crate) fn run_with_timeout(name: &str, command: &mut Command, timeout: Duration) -> Finished {
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
pub(crate) fn leaktrace(args: &[&str], timeout: Duration) -> Finished {
    let mut command = Command::new(leaktrace_bin());
    command.args(args);
    run_with_timeout("leaktrace", &mut command, timeout)
}

/// `leaktrace run [extra...] --format json --output DIR/NAME.json -- COMMAND...`:
/// asserts it succeeded and returns the parsed report.
pub(crate) fn run_json(dir: &TempDir, name: &str, extra: &[&str], command: &[&str]) -> Value {
    let report = dir.join(&format!("{name}.json"));
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--format",
        "json",
        "--output",
        report.to_str().unwrap(),
        "--",
    ]);
    args.extend_from_slice(command);
    leaktrace(&args, Duration::from_mins(2)).succeeded(&format!("leaktrace {}", args.join(" ")));
    read_json(&report)
}

/// Asserts that a failed leaktrace printed exactly one non-empty stderr line,
/// starting with `leaktrace: error: `, and exited non-zero. Returns the line.
pub(crate) fn assert_one_error_line<'a>(what: &str, finished: &'a Finished) -> &'a str {
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

/// Output of a command, for messages.
pub(crate) fn output_text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `leaktrace ARGS --format json --output REPORT`, started, once it says
/// it is tracing (its stderr lines returned, to read and show later).
pub(crate) fn start_tracing(args: &[&str], report: &Path) -> (Guarded, Lines) {
    start_tracing_with(args, report, &[])
}

/// [`start_tracing`] with environment variables (the test-only ones).
pub(crate) fn start_tracing_with(
    args: &[&str],
    report: &Path,
    env: &[(&str, &str)],
) -> (Guarded, Lines) {
    let mut tracer = Guarded::spawn(
        &format!("leaktrace {}", args.join(" ")),
        Command::new(leaktrace_bin())
            .args(args)
            .args(["--format", "json", "--output"])
            .arg(report)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let stderr = tracer.stderr_lines();
    stderr
        .wait_for(Duration::from_mins(2), |l| {
            l.starts_with("leaktrace: tracing")
        })
        .unwrap_or_else(|e| panic!("leaktrace {} never started tracing: {e}", args.join(" ")));
    (tracer, stderr)
}
