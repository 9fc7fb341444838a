//! Where the kernel has put uprobes in a process: the offsets in an
//! object's text where the process's memory holds int3 but the file does
//! not. The comparison of a process's text with its files (and why memory
//! is where the probes show) is the torture check's `text_diff.rs`, shared
//! by path; here its errors are panics.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

// tests/torture.rs has it twice: here and through the torture engine.
#[allow(clippy::duplicate_mod)]
#[path = "../../../xtask/src/torture/text_diff.rs"]
mod text_diff;

use text_diff::{TextMapping, text_mappings};

/// x86's breakpoint instruction, what a uprobe writes.
pub(crate) const INT3: u8 = 0xcc;

/// The path (as the process sees it) of the C library process `pid` maps
/// executable: `libc.so.6`, or an older `libc-2.NN.so`.
pub(crate) fn c_library(pid: u32) -> String {
    let mappings: Vec<TextMapping> = text_mappings(pid).unwrap_or_else(|e| panic!("{e}"));
    mappings
        .iter()
        .map(|m| m.path.as_str())
        .find(|path| {
            let name = path.rsplit('/').next().unwrap_or(path);
            name.starts_with("libc.so")
                || (name.starts_with("libc-")
                    && std::path::Path::new(name)
                        .extension()
                        .is_some_and(|extension| extension == "so"))
        })
        .unwrap_or_else(|| {
            let paths: BTreeSet<&str> = mappings.iter().map(|m| m.path.as_str()).collect();
            panic!("pid {pid} maps no C library executable; it maps {paths:?}")
        })
        .to_string()
}

/// Every byte of `object`'s executable mappings in process `pid` that
/// differs from the file: (file offset, byte in memory, byte in the file).
pub(crate) fn text_differences(pid: u32, object: &str) -> Vec<(u64, u8, u8)> {
    let mappings = text_mappings(pid).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        mappings.iter().any(|m| m.path == object),
        "pid {pid} maps no text of {object}"
    );
    text_diff::text_differences(pid, |m| m.path == object, usize::MAX)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|d| (d.file_offset, d.in_memory, d.in_file))
        .collect()
}

/// The offsets in `object`'s text (file offsets) where process `pid`'s
/// memory holds int3 but the file does not. Panics if any other byte of
/// its text differs from the file: a uprobe writes int3 and nothing else.
pub(crate) fn int3_offsets(pid: u32, object: &str) -> BTreeSet<u64> {
    let differences = text_differences(pid, object);
    let other: Vec<String> = differences
        .iter()
        .filter(|&&(_, memory, _)| memory != INT3)
        .map(|(offset, memory, file)| {
            format!("{offset:#x}: {memory:#04x} in memory, {file:#04x} in the file")
        })
        .collect();
    assert!(
        other.is_empty(),
        "pid {pid}'s text of {object} differs from the file by more than int3s: {other:?}"
    );
    differences.iter().map(|&(offset, _, _)| offset).collect()
}

/// Other processes that may put uprobes in the same object (another
/// leaktrace, bpftrace), to explain an int3 a test did not expect: "pid
/// (comm)" of each, leaving out `except`.
pub(crate) fn other_tracers(except: &[u32]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !except.contains(&pid) && ["leaktrace", "bpftrace"].contains(&comm) {
            found.push(format!("{pid} ({comm})"));
        }
    }
    found
}

/// Polls [`int3_offsets`] until `done` holds of them or `timeout` passes;
/// returns the last reading.
pub(crate) fn int3_offsets_when(
    pid: u32,
    object: &str,
    timeout: std::time::Duration,
    done: impl Fn(&BTreeSet<u64>) -> bool,
) -> BTreeSet<u64> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let offsets = int3_offsets(pid, object);
        if done(&offsets) || std::time::Instant::now() >= deadline {
            return offsets;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits up to 30 s for `object`'s text in `pid` to be the file's (another
/// tracer on the machine, such as a `trace --all` of another test run, puts
/// its int3s in every process), then asserts it is: a test that counts
/// its own probes must start from none.
pub(crate) fn assert_no_int3_before_tracing(pid: u32, object: &str) {
    let timeout = std::time::Duration::from_secs(30);
    let before = int3_offsets_when(pid, object, timeout, BTreeSet::is_empty);
    assert!(
        before.is_empty(),
        "pid {pid} has int3 in {object} before leaktrace attached, still after {timeout:?}, at {before:x?}: another tracer is running? {:?}",
        other_tracers(&[])
    );
}

/// Used by tests that read symbols of the same file the process maps.
pub(crate) fn rooted_path(pid: u32, object: &str) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(object.trim_start_matches('/'))
}
