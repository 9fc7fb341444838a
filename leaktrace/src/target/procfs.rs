//! `/proc`: whether a process exists, the file behind a path, its command
//! line and cgroup, and (from `symbolize`) a process's mappings and root.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Result, bail};

/// Whether process `pid` is there (a zombie still is, until reaped).
pub(crate) fn process_exists(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is a process that has not exited: there, and neither a
/// zombie (exited, not reaped yet) nor dead.
pub(crate) fn is_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_state(&stat))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// The state letter of a `/proc/PID/stat` line: the first field after the
/// command, which is in parentheses and may itself hold ") ".
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Error text for a PID that is not there.
pub(crate) fn check_pid(pid: u32) -> Result<()> {
    if !process_exists(pid) {
        bail!("no such process: {pid}");
    }
    Ok(())
}

/// Writes the 8-byte little-endian `value` at `addr` in process `pid`
/// (through `/proc/PID/mem`). The one write leaktrace makes into a
/// target's data: turning a Go runtime's heap sampling on and off (see
/// `runtime::go::heap_sampling`).
pub(crate) fn write_word(pid: u32, addr: u64, value: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))?
        .write_all_at(&value.to_le_bytes(), addr)
}

/// (device, inode) of a file: what a uprobe is attached to, whatever the
/// path (a container's /proc/PID/root/... or ours).
pub(crate) fn file_identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// One file-backed mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub executable: bool,
    /// Path as the process sees it.
    pub path: Arc<str>,
}

/// The process's anonymous resident memory (`RssAnon` in
/// `/proc/PID/status`), in bytes; None when it cannot be read.
pub(crate) fn rss_anon_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_anon(&status)
}

/// `RssAnon:     62524 kB` in a status file, in bytes.
pub(crate) fn parse_rss_anon(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line
        .trim_start_matches("RssAnon:")
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Parses /proc/PID/maps, keeping file-backed mappings.
pub(crate) fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode path
            let mut fields = line.splitn(6, ' ');
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            let _dev = fields.next()?;
            let _inode = fields.next()?;
            let path = fields.next()?.trim_start();
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            if !path.starts_with('/') {
                return None;
            }
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
                executable: perms.as_bytes().get(2) == Some(&b'x'),
                path: path.into(),
            })
        })
        .collect()
}

/// Where the process's files are from leaktrace's point of view: `/` when
/// it shares our root, `/proc/PID/root` when it lives in a container.
pub(crate) fn process_root(pid: u32) -> PathBuf {
    let theirs = fs::canonicalize(format!("/proc/{pid}/root"));
    let ours = fs::canonicalize("/proc/self/root");
    match (theirs, ours) {
        (Ok(a), Ok(b)) if a == b => PathBuf::from("/"),
        _ => PathBuf::from(format!("/proc/{pid}/root")),
    }
}

/// A process's command line, words joined by spaces ("" when unreadable),
/// on one line (`python3 -c` scripts carry newlines).
pub(crate) fn command_line(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|&b| b == 0)
                .filter(|word| !word.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
                .replace(char::is_control, " ")
        })
        .unwrap_or_default()
}

/// A process's cgroup v2 path (see [`super::cgroup::v2_path`]), or None:
/// no v2 hierarchy, or the process is gone.
pub(crate) fn cgroup_path(pid: u32) -> Option<String> {
    super::cgroup::v2_path(&fs::read(format!("/proc/{pid}/cgroup")).ok()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234                       /usr/bin/prog
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1234                       /usr/bin/prog
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000028000 r--p 00000000 fe:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f000019d000 r-xp 00028000 fe:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f00001a0000-7f00001a1000 r-xp 00000000 fe:01 77                         /tmp/gone.so (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn parses_file_backed_mappings_only() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[1].start, 0x55d0c0a01000);
        assert_eq!(maps[1].file_offset, 0x1000);
        assert!(maps[1].executable);
        assert!(!maps[0].executable);
        assert_eq!(&*maps[4].path, "/tmp/gone.so");
    }

    #[test]
    fn the_state_follows_the_command_whatever_it_holds() {
        assert_eq!(stat_state("42 (python3) S 1 42 42 0"), Some('S'));
        assert_eq!(stat_state("43 (a) Z (b)) Z 1 43"), Some('Z'));
        assert_eq!(stat_state("44 (worker) R 1"), Some('R'));
        assert_eq!(stat_state("garbage"), None);
        assert!(is_running(std::process::id()));
        assert!(!is_running(0));
    }
}
