//! The bytes of a process's executable file mappings that differ from the
//! files they map: where the kernel's uprobes are (a uprobe is an int3
//! written over the first byte of the probed instruction, and the original
//! byte written back when it goes). aya attaches through the perf uprobe
//! PMU, so nothing shows in tracefs' `uprobe_events`: the process's own
//! memory is where probes can be seen. Reading it (/proc/PID/mem) needs
//! root or ptrace rights over the process.
//!
//! One copy for both users: `cargo xtask torture`'s "no probe left" check
//! (`probes.rs`) and the integration tests' `common/probed.rs`, which
//! includes this file by path. Errors are strings (the torture run counts
//! them, a test panics with them).
use std::{fs::File, os::unix::fs::FileExt as _, path::PathBuf};

/// A mapping's bytes compared at most: text segments are megabytes; a
/// gigabyte is no text.
const MAPPING_BYTES: u64 = 1 << 30;

/// One executable mapping of a file in a process.
#[derive(Clone, Debug)]
pub(crate) struct TextMapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of the byte at `start`.
    pub file_offset: u64,
    /// The object's path as the process sees it.
    pub path: String,
}

/// One byte of a mapping that differs from its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Difference {
    /// The object's path as the process sees it.
    pub path: String,
    pub file_offset: u64,
    pub in_memory: u8,
    pub in_file: u8,
}

/// The process's executable mappings (r-x) of files, from /proc/PID/maps.
pub(crate) fn text_mappings(pid: u32) -> Result<Vec<TextMapping>, String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("reading /proc/{pid}/maps: {e}"))?;
    let mut mappings = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, permissions, offset, _, _, path, ..] = fields[..] else {
            continue;
        };
        if !permissions.starts_with("r-x") || !path.starts_with('/') {
            continue;
        }
        let hex = |t: &str| u64::from_str_radix(t, 16).map_err(|_| format!("maps line {line:?}"));
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| format!("maps line {line:?}"))?;
        mappings.push(TextMapping {
            start: hex(start)?,
            end: hex(end)?,
            file_offset: hex(offset)?,
            path: path.to_string(),
        });
    }
    Ok(mappings)
}

/// The file a mapping shows: the very file mapped (/`proc/PID/map_files`,
/// even if its path was replaced since), else the path in the process's
/// root. `map_files` names drop the zero padding maps has (non-PIE
/// executables sit at 0x400000: "00400000-..." in maps).
fn open_mapped(pid: u32, mapping: &TextMapping) -> Result<(File, PathBuf), String> {
    let exact = PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ));
    if let Ok(file) = File::open(&exact) {
        return Ok((file, exact));
    }
    let rooted =
        PathBuf::from(format!("/proc/{pid}/root")).join(mapping.path.trim_start_matches('/'));
    let file = File::open(&rooted)
        .map_err(|e| format!("opening pid {pid}'s mapped {}: {e}", rooted.display()))?;
    Ok((file, rooted))
}

/// The bytes of `pid`'s executable file mappings for which `keep` holds
/// that differ from their files, up to `most` of them.
pub(crate) fn text_differences(
    pid: u32,
    keep: impl Fn(&TextMapping) -> bool,
    most: usize,
) -> Result<Vec<Difference>, String> {
    let memory_path = format!("/proc/{pid}/mem");
    let memory = File::open(&memory_path).map_err(|e| format!("opening {memory_path}: {e}"))?;
    let mut differences = Vec::new();
    for mapping in text_mappings(pid)?.iter().filter(|m| keep(m)) {
        let length = mapping.end.saturating_sub(mapping.start).min(MAPPING_BYTES);
        let length = usize::try_from(length).unwrap_or(0);
        let mut in_memory = vec![0u8; length];
        memory
            .read_exact_at(&mut in_memory, mapping.start)
            .map_err(|e| {
                format!(
                    "reading {memory_path} at {:#x}..{:#x} ({}): {e}",
                    mapping.start, mapping.end, mapping.path
                )
            })?;
        let (file, file_path) = open_mapped(pid, mapping)?;
        // The last page of a mapping may run past the end of the file
        // (memory there reads as zeros): compare what the file has.
        let mut in_file = vec![0u8; length];
        let mut read = 0;
        while read < length {
            match file.read_at(&mut in_file[read..], mapping.file_offset + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) => return Err(format!("reading {}: {e}", file_path.display())),
            }
        }
        let changed = in_memory[..read].iter().zip(&in_file[..read]).enumerate();
        for (i, (&m, &f)) in changed.filter(|(_, (m, f))| m != f) {
            if differences.len() == most {
                return Ok(differences);
            }
            differences.push(Difference {
                path: mapping.path.clone(),
                file_offset: mapping.file_offset + i as u64,
                in_memory: m,
                in_file: f,
            });
        }
    }
    Ok(differences)
}
