//! The launcher thread's wait for `run`'s command: its exec, entry and exit
//! stops, and every signal passed through.
//!
//! The entry stop writes nothing into the command. At the exec stop
//! (`PTRACE_EVENT_EXEC`, the new image mapped, the dynamic loader not run
//! yet) the main thread attaches a uprobe at `AT_ENTRY`, scoped to the
//! command, whose program sends it [`ENTRY_SIGNAL`] once
//! (`bpf_send_signal_thread`). What this relies on, from ptrace(2) and the
//! kernel's signal code:
//! - "When a process receives any signal except SIGKILL ... if the selected
//!   thread is traced, it enters signal-delivery-stop. At this point, the
//!   signal is not yet delivered to the process, and can be suppressed by
//!   the tracer": even a signal whose disposition is to ignore it (the
//!   kernel's `sig_ignored` keeps ignored signals for traced tasks, "tracers
//!   may want to know"). We see the stop in waitpid, run `at_entry`, and
//!   restart with signal 0: the command never receives it.
//! - A blocked signal stays pending and causes no stop: the exec stop
//!   checks `SigBlk` and, if the signal is blocked, runs `at_entry` there.
//! - "If the tracer dies, all tracees are automatically detached and
//!   restarted, unless they were in group-stop." A tracee detached in its
//!   signal-delivery-stop gets the signal it stopped with: ignored by
//!   default (exec reset the handlers; an inherited "ignore" is as
//!   harmless).
//! - A uprobe is a perf event: when its fd closes (leaktrace exiting, even
//!   by SIGKILL) the kernel unregisters it and puts the original
//!   instruction back in every process. A dead leaktrace leaves nothing.
//!
//! The one-shot int3 this replaces stayed in the command's text if
//! leaktrace died between planting and restoring it, and the command then
//! died of SIGTRAP (or ran a torn instruction).
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::{
    launch::{ENTRY_SIGNAL, EntryPoint, ExitStatus, test_pause},
    procfs::parse_maps,
};

/// The hooks run at the command's stops, each once.
pub(super) struct Hooks {
    pub at_entry: Option<Box<dyn FnOnce() + Send>>,
    pub at_exit: Option<Box<dyn FnOnce() + Send>>,
}

/// The exec stop's exchange with `HeldChild::start`: the entry point goes
/// out, whether its uprobe was armed comes back.
pub(super) struct Handshake {
    pub exec_stop: std::sync::mpsc::Sender<EntryPoint>,
    pub armed: std::sync::mpsc::Receiver<bool>,
}

/// Runs a hook; a panic in it is reported and goes no further: the
/// command is resumed all the same and its status still reported.
fn run_hook(hook: Option<Box<dyn FnOnce() + Send>>, name: &str) {
    if let Some(hook) = hook
        && catch_unwind(AssertUnwindSafe(hook)).is_err()
    {
        eprintln!("leaktrace: warning: the {name} hook panicked; the command goes on");
    }
}

/// Where the entry point `entry` lies in `maps_text` (`/proc/PID/maps`):
/// the executable mapping that holds it, named by its
/// `/proc/PID/map_files` link, and its offset in that file.
pub(super) fn locate_entry(pid: u32, maps_text: &str, entry: u64) -> Option<EntryPoint> {
    let mapping = parse_maps(maps_text)
        .into_iter()
        .find(|m| m.executable && m.start <= entry && entry < m.end)?;
    let file_offset = (entry - mapping.start).checked_add(mapping.file_offset)?;
    Some(EntryPoint {
        address: entry,
        object: format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            mapping.start, mapping.end
        )
        .into(),
        file_offset,
    })
}

/// `AT_ENTRY` in an auxiliary vector (/proc/PID/auxv).
pub(super) fn auxv_entry(auxv: &[u8]) -> Option<u64> {
    auxv.chunks_exact(16).find_map(|pair| {
        let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
        let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
        (key == libc::AT_ENTRY).then_some(value)
    })
}

/// Whether `signal` is blocked, from /proc/PID/status's text (`SigBlk`);
/// None when it cannot be told.
pub(super) fn signal_blocked(status_text: &str, signal: i32) -> Option<bool> {
    let mask = status_text
        .lines()
        .find_map(|line| line.strip_prefix("SigBlk:"))?;
    let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
    let bit = u32::try_from(signal.checked_sub(1)?).ok()?;
    Some(mask.checked_shr(bit)? & 1 == 1)
}

/// The command's entry point, if its stop can be armed: the signal must
/// not be blocked (a blocked signal would stop it later, or never).
fn entry_point(pid: u32) -> Option<EntryPoint> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if signal_blocked(&status, ENTRY_SIGNAL) != Some(false) {
        return None;
    }
    let entry = auxv_entry(&std::fs::read(format!("/proc/{pid}/auxv")).ok()?)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    locate_entry(pid, &maps, entry)
}

/// At the exec stop: hands the entry point to `start`, which arms the
/// uprobe; true once armed.
fn arm_entry_stop(pid: u32, handshake: &Handshake) -> bool {
    let Some(entry) = entry_point(pid) else {
        return false;
    };
    handshake.exec_stop.send(entry).is_ok() && handshake.armed.recv().unwrap_or(false)
}

/// Whether the tracee's pending signal came from the kernel (`SI_KERNEL`,
/// as `bpf_send_signal_thread` sends it), not from another process.
fn sent_by_kernel(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is valid; ptrace fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: our stopped tracee, a valid out-pointer.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETSIGINFO, pid as i32, 0, &raw mut info) };
    r == 0 && info.si_code == libc::SI_KERNEL
}

/// Restarts the stopped tracee with `request` (`PTRACE_CONT`,
/// `PTRACE_LISTEN`) and `signal` to deliver (0: none). A tracee that is
/// gone (ESRCH: killed meanwhile) needs nothing: waitpid tells. Any other
/// failure detaches it, so that it is not left stopped; Err(errno) when
/// even that failed (the thread then returns, and its exit detaches it).
fn resume(pid: u32, request: libc::c_uint, signal: i32) -> Result<(), i32> {
    // SAFETY: a ptrace restart of our stopped tracee.
    if unsafe { libc::ptrace(request, pid as i32, 0, libc::c_long::from(signal)) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    // SAFETY: detaching our tracee, delivering the signal it stopped with.
    let detached = unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            pid as i32,
            0,
            libc::c_long::from(signal),
        )
    };
    if detached == 0 {
        eprintln!("leaktrace: error: cannot resume the command ({err}); detached from it");
        return Ok(());
    }
    eprintln!("leaktrace: error: cannot resume or detach the command ({err})");
    Err(err.raw_os_error().unwrap_or(libc::EIO))
}

/// Waits for the seized child, passing every signal through; runs
/// `at_entry` at its entry stop (or at its exec when none could be armed)
/// and `at_exit` at its exit stop. `handshake`: None when the child is not
/// traced.
pub(super) fn wait_traced(
    pid: u32,
    mut hooks: Hooks,
    mut handshake: Option<Handshake>,
) -> ExitStatus {
    let mut entry_armed = false;
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid as i32, &raw mut status, libc::__WALL) };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return ExitStatus::Lost(err.raw_os_error().unwrap_or(libc::EIO));
        }
        if libc::WIFEXITED(status) {
            return ExitStatus::Code(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            return ExitStatus::Signal(libc::WTERMSIG(status));
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let event = (status >> 16) & 0xff;
        let signal = libc::WSTOPSIG(status);
        let resumed = if event == libc::PTRACE_EVENT_EXEC {
            if let Some(handshake) = handshake.take() {
                entry_armed = arm_entry_stop(pid, &handshake);
                if entry_armed {
                    test_pause("exec", pid);
                } else {
                    // No entry stop: load what can be loaded now.
                    run_hook(hooks.at_entry.take(), "entry");
                }
            }
            resume(pid, libc::PTRACE_CONT, 0)
        } else if event == 0 && signal == ENTRY_SIGNAL && entry_armed && sent_by_kernel(pid) {
            entry_armed = false;
            test_pause("entry", pid);
            run_hook(hooks.at_entry.take(), "entry");
            // Suppressed: the command never sees it.
            resume(pid, libc::PTRACE_CONT, 0)
        } else if event == libc::PTRACE_EVENT_EXIT {
            run_hook(hooks.at_exit.take(), "exit");
            resume(pid, libc::PTRACE_CONT, 0)
        } else if event == libc::PTRACE_EVENT_STOP {
            if matches!(
                signal,
                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
            ) {
                // Group stop: stay stopped like an untraced process would.
                resume(pid, libc::PTRACE_LISTEN, 0)
            } else {
                resume(pid, libc::PTRACE_CONT, 0)
            }
        } else {
            // Signal-delivery stop: deliver the signal unchanged.
            resume(pid, libc::PTRACE_CONT, signal)
        };
        if let Err(errno) = resumed {
            return ExitStatus::Lost(errno);
        }
    }
}
