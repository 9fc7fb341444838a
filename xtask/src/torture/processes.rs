//! The torture's processes: starting, waiting and reaping them (orphans
//! included, as a child subreaper), killing them, reading their output.
//! The few libc calls are declared here (xtask does not depend on libc).
use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

pub(super) const SIGKILL: i32 = 9;
pub(super) const SIGSTOP: i32 = 19;
pub(super) const WNOHANG: i32 = 1;
pub(super) const WALL: i32 = 0x4000_0000;
pub(super) const PR_SET_CHILD_SUBREAPER: i32 = 36;
/// How long a fixture may take before it counts as hung.
pub(super) const HANG: Duration = Duration::from_secs(90);

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
    pub(super) fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    pub(super) fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

pub(super) fn signal(pid: u32, number: i32) {
    // SAFETY: kill has no memory preconditions; pid is our own child.
    unsafe { kill(pid as i32, number) };
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ended {
    Exited(i32),
    Signaled(i32),
    /// Still running after [`HANG`]: what it (and its children) were
    /// doing, then killed.
    Hung(String),
    /// waitpid failed: not a child of this process (not reparented here).
    Lost,
}

pub(super) fn decode(status: i32) -> Ended {
    if status.trailing_zeros() >= 7 {
        Ended::Exited((status >> 8) & 0xff)
    } else {
        Ended::Signaled(status & 0x7f)
    }
}

/// Waits for `pid` (a child, or an orphan reparented to this subreaper).
pub(super) fn reap(pid: u32, timeout: Duration) -> Ended {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waiting for one pid with a valid out-pointer.
        let r = unsafe { waitpid(pid as i32, &raw mut status, WNOHANG | WALL) };
        if r == pid as i32 {
            return decode(status);
        }
        if r < 0 {
            return Ended::Lost;
        }
        if Instant::now() >= deadline {
            let state = describe(pid);
            signal(pid, SIGKILL);
            return Ended::Hung(state);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub(super) fn wait_child(child: &mut Child, timeout: Duration) -> Ended {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt as _;
                return status.code().map_or_else(
                    || Ended::Signaled(status.signal().unwrap_or(0)),
                    Ended::Exited,
                );
            }
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let state = describe(child.id());
                let _: std::io::Result<()> = child.kill();
                let _: std::io::Result<_> = child.wait();
                return Ended::Hung(state);
            }
        }
    }
}

/// Reads a pipe to its end on a thread (the output of the fixture and of
/// every process that inherited the pipe).
pub(super) fn collect(stdout: ChildStdout) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _: std::io::Result<usize> = BufReader::new(stdout).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs a program to its end: how it ended and what it printed.
pub(super) fn run_program(argv: &[OsString]) -> Result<(Ended, String), String> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", Path::new(&argv[0]).display()))?;
    let output = collect(child.stdout.take().ok_or("stdout not piped")?);
    let ended = wait_child(&mut child, HANG);
    Ok((ended, output.join().unwrap_or_default()))
}

/// The children of process `pid` (all its threads').
pub(super) fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// leaktrace's stderr, read on a thread: the lines matching `wanted` are
/// sent on, the others dropped (the pipe never fills).
pub(super) fn watch_stderr(child: &mut Child, wanted: &'static str) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(wanted) {
                    let _: Result<(), _> = send.send(line);
                }
            }
        });
    }
    receive
}

/// What a hung process and its descendants are doing: for each, its
/// command name, scheduler state, tracer, pending and blocked signals.
pub(super) fn describe(pid: u32) -> String {
    let mut described = Vec::new();
    let mut queue = vec![pid];
    while let Some(pid) = queue.pop() {
        if described.len() >= 16 {
            break;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or("?")
                .trim()
                .to_string()
        };
        described.push(format!(
            "{pid} {} state {} tracer {} pending {}/{} blocked {}",
            field("Name:"),
            field("State:"),
            field("TracerPid:"),
            field("SigPnd:"),
            field("ShdPnd:"),
            field("SigBlk:")
        ));
        queue.extend(children(pid));
    }
    described.join("; ")
}
