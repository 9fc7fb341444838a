//! Cgroups made by a test, to place processes where a container runtime
//! would: a tree under the cgroup v2 mount, removed when dropped (even when
//! the test fails), and children started in one of its cgroups from their
//! first instruction.
use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::prerequisite_missing;

/// The top of every tree, followed by the pid of the test process that
/// made it.
const TOP_PREFIX: &str = "leaktrace-test-";

/// Where cgroup v2 is mounted, from `/proc/self/mountinfo`: (the mount
/// point, the cgroup its root is, as `/proc/PID/cgroup` names cgroups).
/// A hybrid host has it at `/sys/fs/cgroup/unified`, a unified one at
/// `/sys/fs/cgroup`; a v1-only host has none.
pub(crate) fn cgroup2_mount() -> Option<(PathBuf, String)> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point options... - type source options
        let (before, after) = line.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = before.split(' ').collect();
        Some((
            PathBuf::from(unescape(fields.get(4)?)),
            unescape(fields.get(3)?),
        ))
    })
}

/// mountinfo writes a space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A tree of cgroups, `<mount>/leaktrace-test-<pid>/...`, removed when
/// dropped: its processes are moved to the root cgroup, then its cgroups
/// are removed, leaves first.
pub(crate) struct CgroupTree {
    mount: PathBuf,
    /// The mount's root cgroup, as `/proc/PID/cgroup` names it.
    mount_root: String,
    top: PathBuf,
}

/// One cgroup of a tree.
pub(crate) struct Cgroup {
    pub dir: PathBuf,
    /// Its path as `/proc/PID/cgroup` (and so leaktrace) gives it.
    pub path: String,
}

impl CgroupTree {
    /// A new tree for this test process, after removing the trees of test
    /// processes that are gone (killed before they could clean up). None
    /// after [`prerequisite_missing`] when there is no cgroup v2 mount or
    /// it cannot be written (when skipping is allowed; otherwise the test
    /// fails there).
    pub(crate) fn create(test: &str) -> Option<CgroupTree> {
        let Some((mount, mount_root)) = cgroup2_mount() else {
            prerequisite_missing(
                test,
                "a cgroup v2 hierarchy (no cgroup2 mount in /proc/self/mountinfo; e.g. mount -t cgroup2 none /sys/fs/cgroup/unified)",
            );
            return None;
        };
        remove_stale_trees(&mount);
        let top = mount.join(format!("{TOP_PREFIX}{}", std::process::id()));
        if let Err(e) = fs::create_dir_all(&top) {
            prerequisite_missing(
                test,
                &format!(
                    "a writable cgroup v2 hierarchy (mkdir {}: {e})",
                    top.display()
                ),
            );
            return None;
        }
        Some(CgroupTree {
            mount,
            mount_root,
            top,
        })
    }

    /// Makes the cgroup `relative` (`a.slice/b.scope`) below the top.
    pub(crate) fn cgroup(&self, relative: &str) -> Cgroup {
        let dir = self.top.join(relative);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let below_mount = dir.strip_prefix(&self.mount).expect("below the mount");
        let path = Path::new(&self.mount_root).join(below_mount);
        Cgroup {
            dir,
            path: path.to_str().expect("a UTF-8 path").to_string(),
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        remove_tree(&self.mount, &self.top);
    }
}

/// Trees left by test processes that no longer exist.
fn remove_stale_trees(mount: &Path) {
    let Ok(entries) = fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TOP_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_tree(mount, &entry.path());
        }
    }
}

/// Moves every process in the tree at `top` to the root cgroup, then
/// removes its cgroups, deepest first. Says what it could not remove (a
/// cgroup with a process in it cannot be), and never panics: it runs in
/// Drop, maybe while a failed test unwinds.
fn remove_tree(mount: &Path, top: &Path) {
    let mut dirs = Vec::new();
    let mut pending = vec![top.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        dirs.push(dir);
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    let root_procs = mount.join("cgroup.procs");
    for dir in dirs {
        let mut result = fs::remove_dir(&dir);
        // A process just killed may take a moment to leave.
        for _ in 0..50 {
            if result.is_ok() {
                break;
            }
            for pid in fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                let _: io::Result<()> = fs::write(&root_procs, pid);
            }
            std::thread::sleep(Duration::from_millis(20));
            result = fs::remove_dir(&dir);
        }
        if let Err(e) = result {
            eprintln!("warning: cgroup {} left behind: {e}", dir.display());
        }
    }
}

/// Makes `command`'s child join `cgroup` before it execs, so that the
/// program runs there from its first instruction (and anything that looks
/// at it, at any time, finds it there).
pub(crate) fn start_in(command: &mut Command, cgroup: &Cgroup) {
    let procs = CString::new(cgroup.dir.join("cgroup.procs").as_os_str().as_bytes())
        .expect("no NUL in a cgroup path");
    // SAFETY: between fork and exec the closure only calls open, write and
    // close, which are async-signal-safe, on memory made before the fork;
    // `last_os_error` reads errno without allocating.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = io::Error::last_os_error();
            libc::close(fd);
            if written == 1 { Ok(()) } else { Err(error) }
        });
    }
}

/// The cgroup v2 path of process `pid`, read as leaktrace reads it.
pub(crate) fn cgroup_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}
