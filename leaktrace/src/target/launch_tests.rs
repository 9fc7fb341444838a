//! Tests of the launcher: fds closed on every path, hooks that panic, exit
//! statuses, and where the entry stop goes (pure parts on made-up input).
use std::{
    ffi::{CString, OsString},
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
};

use super::{ExitStatus, fork_held, spawn_held};
use crate::target::launch_wait::{auxv_entry, locate_entry, signal_blocked};

/// (device, inode) of an open fd.
fn identity(fd: &OwnedFd) -> (u64, u64) {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an open fd and a valid out-pointer.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) }, 0);
    (st.st_dev, st.st_ino)
}

/// Whether any fd of this process is open on `file` (other tests' threads
/// open and close fds meanwhile: identities, not counts, tell ours).
fn still_open(file: (u64, u64)) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .expect("listing /proc/self/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .any(|fd| {
            // SAFETY: as above; a closed fd just fails.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat on any number is safe; it may fail with EBADF.
            let open = unsafe { libc::fstat(fd, &raw mut st) } == 0;
            open && (st.st_dev, st.st_ino) == file
        })
}

fn held_true() -> super::Forked {
    let path = CString::new("/bin/true").expect("no NUL");
    fork_held(&path, std::slice::from_ref(&path)).expect("forking a held child")
}

/// Giving up on a held child closes its pipes and pidfd.
#[test]
fn giving_up_closes_every_fd() {
    let forked = held_true();
    let files = [
        identity(&forked.gate_write),
        identity(&forked.error_read),
        identity(&forked.pidfd),
    ];
    forked.give_up();
    for file in files {
        assert!(!still_open(file), "fd on {file:?} left open");
    }
}

/// A command that cannot be executed: the error says so, and the pipes
/// and pidfd are closed.
#[test]
fn a_failed_exec_closes_every_fd() {
    let path = CString::new("/nonexistent/leaktrace-test").expect("no NUL");
    let forked = fork_held(&path, std::slice::from_ref(&path)).expect("forking");
    let files = [
        identity(&forked.gate_write),
        identity(&forked.error_read),
        identity(&forked.pidfd),
    ];
    let pid = forked.pid;
    let err = forked.release().expect_err("exec of a missing file fails");
    assert!(
        format!("{err:#}").contains("No such file"),
        "error: {err:#}"
    );
    let mut status = 0;
    // SAFETY: reaping our own child.
    let reaped = unsafe { libc::waitpid(pid as i32, &raw mut status, libc::__WALL) };
    assert_eq!(reaped, pid as i32);
    for file in files {
        assert!(!still_open(file), "fd on {file:?} left open");
    }
}

/// A hook that panics neither kills the launcher nor loses the command's
/// status: the command goes on, and its status still arrives.
#[test]
fn a_panicking_hook_does_not_lose_the_command() {
    let (child, exit) = spawn_held(
        Path::new("/bin/sh"),
        &[
            OsString::from("sh"),
            OsString::from("-c"),
            OsString::from("exit 3"),
        ],
        || panic!("a hook's bug"),
        || {},
    )
    .expect("spawning");
    // No kernel here: the entry stop cannot be armed, so the entry hook
    // runs at the exec stop.
    child
        .start(|_| anyhow::bail!("no uprobes in this test"))
        .expect("starting");
    assert_eq!(
        exit.blocking_recv().expect("an exit status"),
        ExitStatus::Code(3)
    );
}

#[test]
fn exit_codes_follow_the_shell_and_a_lost_status_is_an_error() {
    assert_eq!(ExitStatus::Code(7).as_exit_code().unwrap(), 7);
    assert_eq!(
        ExitStatus::Signal(libc::SIGKILL).as_exit_code().unwrap(),
        137
    );
    let err = ExitStatus::Lost(libc::ECHILD).as_exit_code().unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("lost track of the command") && !message.contains('\n'),
        "{message}"
    );
}

const MAPS: &str = "\
00400000-00401000 r--p 00000000 fe:01 1234                               /usr/bin/prog
00401000-00402000 r-xp 00001000 fe:01 1234                               /usr/bin/prog
7f0000000000-7f0000001000 r-xp 00002000 fe:01 99                         /lib/ld.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

#[test]
fn the_entry_point_is_found_in_its_executable_mapping() {
    let entry = locate_entry(42, MAPS, 0x401230).expect("found");
    assert_eq!(entry.object, Path::new("/proc/42/map_files/401000-402000"));
    assert_eq!(entry.file_offset, 0x1230);
    assert_eq!(entry.address, 0x401230);
    let entry = locate_entry(42, MAPS, 0x7f0000000010).expect("found");
    assert_eq!(entry.file_offset, 0x2010);
    // Not executable, or not mapped: no entry stop.
    assert_eq!(locate_entry(42, MAPS, 0x400010), None);
    assert_eq!(locate_entry(42, MAPS, 0x7ffd00000010), None);
    assert_eq!(locate_entry(42, "", 0x401230), None);
}

#[test]
fn at_entry_is_read_from_the_auxiliary_vector() {
    let mut auxv = Vec::new();
    for (key, value) in [
        (libc::AT_PHDR, 0x400040u64),
        (libc::AT_ENTRY, 0x401230),
        (0, 0),
    ] {
        auxv.extend_from_slice(&key.to_ne_bytes());
        auxv.extend_from_slice(&value.to_ne_bytes());
    }
    assert_eq!(auxv_entry(&auxv), Some(0x401230));
    assert_eq!(auxv_entry(&auxv[..16]), None);
    assert_eq!(auxv_entry(&auxv[..20]), None);
}

#[test]
fn a_blocked_entry_signal_is_seen() {
    let status = |mask: &str| format!("Name:\tprog\nSigBlk:\t{mask}\nSigIgn:\t0000000000000000\n");
    // SIGURG is 23: bit 22.
    assert_eq!(
        signal_blocked(&status("0000000000400000"), libc::SIGURG),
        Some(true)
    );
    assert_eq!(
        signal_blocked(&status("0000000000000000"), libc::SIGURG),
        Some(false)
    );
    assert_eq!(
        signal_blocked(&status("fffffffffffbffff"), libc::SIGURG),
        Some(true)
    );
    assert_eq!(signal_blocked(&status("zz"), libc::SIGURG), None);
    assert_eq!(signal_blocked("Name:\tprog\n", libc::SIGURG), None);
    assert_eq!(signal_blocked(&status("0"), 0), None);
    assert_eq!(signal_blocked(&status("0"), 65), None);
}
