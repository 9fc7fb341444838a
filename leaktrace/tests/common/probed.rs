//! Where the kernel has put uprobes in a process: the offsets in an
//! object's text where the process's memory holds int3 but the file does
//! not.
//!
//! A uprobe is installed by writing int3 (0xCC) over the first byte of the
//! probed instruction, in every process that maps the object and that the
//! probe is for, and removed by writing the original byte back. aya attaches
//! through the perf uprobe PMU, so nothing shows up in tracefs'
//! `uprobe_events`: a process's own memory is where the probes can be seen.
//! Reading another process's memory through /proc/PID/mem needs root (or
//! ptrace rights over it).

use std::{
    collections::BTreeSet,
    fs::File,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

/// x86's breakpoint instruction, what a uprobe writes.
pub(crate) const INT3: u8 = 0xcc;

/// One executable mapping of an object in a process.
#[derive(Clone, Debug)]
pub(crate) struct TextMapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of the byte at `start`.
    pub file_offset: u64,
    /// The object's path as the process sees it.
    pub path: String,
}

/// The process's executable mappings (r-x) of files, from /proc/PID/maps.
pub(crate) fn text_mappings(pid: u32) -> Vec<TextMapping> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/maps: {e}"));
    let mut mappings = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, permissions, offset, _, _, path, ..] = fields[..] else {
            continue;
        };
        if !permissions.starts_with("r-x") || !path.starts_with('/') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let hex = |text: &str| {
            u64::from_str_radix(text, 16).unwrap_or_else(|_| panic!("maps line {line:?}"))
        };
        mappings.push(TextMapping {
            start: hex(start),
            end: hex(end),
            file_offset: hex(offset),
            path: path.to_string(),
        });
    }
    mappings
}

/// The path (as the process sees it) of the C library process `pid` maps
/// executable: `libc.so.6`, or an older `libc-2.NN.so`.
pub(crate) fn c_library(pid: u32) -> String {
    let mappings = text_mappings(pid);
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

/// The file a mapping shows: the very file mapped (/`proc/PID/map_files`,
/// even if its path was replaced since), else the path in the process's
/// root.
fn open_mapped(pid: u32, mapping: &TextMapping) -> (File, PathBuf) {
    let exact = PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ));
    if let Ok(file) = File::open(&exact) {
        return (file, exact);
    }
    let rooted =
        PathBuf::from(format!("/proc/{pid}/root")).join(mapping.path.trim_start_matches('/'));
    let file = File::open(&rooted).unwrap_or_else(|e| panic!("opening {}: {e}", rooted.display()));
    (file, rooted)
}

/// Every byte of `object`'s executable mappings in process `pid` that
/// differs from the file: (file offset, byte in memory, byte in the file).
pub(crate) fn text_differences(pid: u32, object: &str) -> Vec<(u64, u8, u8)> {
    let mappings: Vec<TextMapping> = text_mappings(pid)
        .into_iter()
        .filter(|m| m.path == object)
        .collect();
    assert!(!mappings.is_empty(), "pid {pid} maps no text of {object}");
    let memory_path = format!("/proc/{pid}/mem");
    let memory = File::open(&memory_path).unwrap_or_else(|e| panic!("opening {memory_path}: {e}"));
    let mut differences = Vec::new();
    for mapping in &mappings {
        let length = usize::try_from(mapping.end - mapping.start).expect("mapping size");
        let mut in_memory = vec![0u8; length];
        memory
            .read_exact_at(&mut in_memory, mapping.start)
            .unwrap_or_else(|e| {
                panic!(
                    "reading {memory_path} at {:#x}..{:#x} ({object}): {e}",
                    mapping.start, mapping.end
                )
            });
        let (file, file_path) = open_mapped(pid, mapping);
        // The last page of a mapping may run past the end of the file
        // (memory there reads as zeros): compare what the file has.
        let mut in_file = vec![0u8; length];
        let mut read = 0;
        while read < length {
            match file.read_at(&mut in_file[read..], mapping.file_offset + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) => panic!("reading {}: {e}", file_path.display()),
            }
        }
        for (i, (&m, &f)) in in_memory[..read].iter().zip(&in_file[..read]).enumerate() {
            if m != f {
                differences.push((mapping.file_offset + i as u64, m, f));
            }
        }
    }
    differences
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
