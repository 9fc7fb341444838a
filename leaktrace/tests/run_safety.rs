//! `leaktrace run` must never harm its command, even when leaktrace itself
//! is killed: a SIGKILL of leaktrace while the command is held at its exec
//! or at its entry point leaves the command to run to its normal end (its
//! own output, exit status 0), not die of a breakpoint left behind.
//!
//! leaktrace pauses at those points when the test-only environment variable
//! `LEAKTRACE_TEST_PAUSE` names one (`exec`, `entry`), and says so on
//! stderr with the command's pid. This test process makes itself a child
//! subreaper, so that the command, orphaned by leaktrace's death, becomes
//! its child and its exit status can be read with waitpid.
//!
//! They need root (eBPF): without it each fails, or is a counted skip when
//! `LEAKTRACE_ALLOW_SKIPS=1` (see `common::prerequisite`). They run one at a
//! time (`common::serial`).
mod common;

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Guarded, TempDir, build_leaky, leaktrace_bin, require_root, serial};

const STEP: Duration = Duration::from_mins(1);

/// How the orphaned command ended, reaped as its subreaper.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Waits (up to `timeout`) for `pid`, a process this one is the subreaper of.
fn reap(pid: i32, timeout: Duration) -> Ended {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waiting for one pid with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG | libc::__WALL) };
        assert!(
            r >= 0,
            "waitpid({pid}): {} (was the command reparented to this test?)",
            std::io::Error::last_os_error()
        );
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ended::Exited(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Ended::Signaled(libc::WTERMSIG(status));
            }
        }
        assert!(
            Instant::now() < deadline,
            "the command (pid {pid}) did not end within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `leaktrace run -- leaky wait` paused at `point`, SIGKILLs
/// leaktrace there, lets the command go on and returns how it ended and
/// what it printed.
fn kill_leaktrace_at(point: &str) -> (Ended, String) {
    // SAFETY: prctl with integer arguments; makes orphans of descendants
    // children of this process.
    let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(set, 0, "PR_SET_CHILD_SUBREAPER");
    let dir = TempDir::new(&format!("run-safety-{point}"));
    let leaky = build_leaky(&dir);
    let report = dir.join("report.json");
    let mut leaktrace = Guarded::spawn(
        "leaktrace run",
        Command::new(leaktrace_bin())
            .args(["run", "--format", "json", "--output"])
            .arg(&report)
            .arg("--")
            .arg(&leaky)
            .arg("wait")
            .env("LEAKTRACE_TEST_PAUSE", point)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = leaktrace.take_stdin();
    let stdout = leaktrace.stdout_lines();
    let stderr = leaktrace.stderr_lines();
    let paused = stderr
        .wait_for(STEP, |line| line.contains("test pause at"))
        .unwrap_or_else(|seen| panic!("leaktrace never paused at {point}: {seen}"));
    assert!(
        paused.contains(&format!("test pause at {point}")),
        "paused elsewhere: {paused}"
    );
    let pid: i32 = paused
        .rsplit("pid ")
        .next()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {paused:?}"));
    leaktrace.kill_and_reap();
    // The command, untraced now, prints "ready" and waits for a line.
    let ready = stdout.wait_for(STEP, |line| line == "ready");
    let mut said = ready.clone().unwrap_or_else(|seen| seen);
    if ready.is_ok() {
        writeln!(stdin, "go").expect("writing to the command's stdin");
    }
    drop(stdin);
    let ended = reap(pid, STEP);
    said.push_str(&stdout.finish(Duration::from_secs(5)).join("\n"));
    (ended, said)
}

/// SIGKILL of leaktrace while its command is stopped at its exec (probes
/// attached, the entry point not reached yet): the command runs untouched.
#[test]
fn sigkill_at_exec_leaves_the_command_running() {
    if !require_root("sigkill_at_exec_leaves_the_command_running") {
        return;
    }
    let _serial = serial();
    let (ended, said) = kill_leaktrace_at("exec");
    assert_eq!(ended, Ended::Exited(0), "the command's output: {said}");
    assert!(said.starts_with("ready"), "the command's output: {said}");
}

/// SIGKILL of leaktrace while its command is stopped at its entry point:
/// the command runs untouched.
#[test]
fn sigkill_at_entry_leaves_the_command_running() {
    if !require_root("sigkill_at_entry_leaves_the_command_running") {
        return;
    }
    let _serial = serial();
    let (ended, said) = kill_leaktrace_at("entry");
    assert_eq!(ended, Ended::Exited(0), "the command's output: {said}");
    assert!(said.starts_with("ready"), "the command's output: {said}");
}

/// `leaktrace run -- leaky ARGS` with `setup` applied to the command line,
/// stdin, stdout and stderr piped.
fn start_run(dir: &TempDir, args: &[&str], setup: impl FnOnce(&mut Command)) -> Guarded {
    let leaky = build_leaky(dir);
    let mut command = Command::new(leaktrace_bin());
    command
        .args(["run", "--format", "json", "--output"])
        .arg(dir.join("report.json"))
        .arg("--")
        .arg(&leaky)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    setup(&mut command);
    Guarded::spawn("leaktrace run", &mut command)
}

/// Ctrl-C reaches the command (through its pidfd): `leaky wait`, killed by
/// SIGINT, makes leaktrace exit with 128 + 2, after its report.
#[test]
fn sigint_is_passed_to_the_command() {
    if !require_root("sigint_is_passed_to_the_command") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("run-safety-sigint");
    // SIGINT at its default disposition in leaktrace and so in its
    // command: a shell's background job starts with it ignored, and a
    // command that ignores SIGINT rightly keeps running.
    let mut leaktrace = start_run(&dir, &["wait"], |command| {
        // SAFETY: only an async-signal-safe call between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            })
        };
    });
    let _stdin = leaktrace.take_stdin();
    let stdout = leaktrace.stdout_lines();
    let stderr = leaktrace.stderr_lines();
    stdout
        .wait_for(STEP, |line| line == "ready")
        .unwrap_or_else(|seen| panic!("the command never got ready: {seen}"));
    // Once leaktrace says it traces: its event loop (which forwards the
    // signal) is about to run.
    stderr
        .wait_for(STEP, |line| line.starts_with("leaktrace: tracing pid"))
        .unwrap_or_else(|seen| panic!("leaktrace never said it traced: {seen}"));
    // SAFETY: signalling the leaktrace process this test started.
    unsafe { libc::kill(leaktrace.pid() as i32, libc::SIGINT) };
    let Some(status) = leaktrace.wait_timeout(STEP) else {
        panic!(
            "leaktrace did not end within {STEP:?} of SIGINT; its stderr:\n{}",
            stderr.text()
        );
    };
    let said = stderr.finish(Duration::from_secs(5)).join("\n");
    assert_eq!(status.code(), Some(130), "stderr:\n{said}");
    assert!(said.contains("passing SIGINT to the command"), "{said}");
    assert!(
        dir.join("report.json").exists(),
        "no report; stderr:\n{said}"
    );
}

/// A command that inherits SIGURG blocked cannot take the entry stop (the
/// signal would stay pending): leaktrace loads the unwind tables at the
/// exec instead (the executable and the dynamic loader: 2 objects), never
/// pauses at the entry, and the command runs to its end with its status.
#[test]
fn a_blocked_entry_signal_does_without_the_entry_stop() {
    if !require_root("a_blocked_entry_signal_does_without_the_entry_stop") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("run-safety-blocked");
    let mut leaktrace = start_run(&dir, &["exit", "3"], |command| {
        command.env("LEAKTRACE_TEST_PAUSE", "entry");
        // SAFETY: only sigprocmask, async-signal-safe, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(command, || {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&raw mut set);
                libc::sigaddset(&raw mut set, libc::SIGURG);
                libc::sigprocmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
                Ok(())
            });
        }
    });
    let stderr = leaktrace.stderr_lines();
    let status = leaktrace
        .wait_timeout(STEP)
        .expect("leaktrace ends with its command");
    let said = stderr.finish(Duration::from_secs(5)).join("\n");
    assert_eq!(status.code(), Some(3), "stderr:\n{said}");
    assert!(!said.contains("test pause"), "{said}");
    assert!(said.contains("unwind tables for 2 objects"), "{said}");
}
