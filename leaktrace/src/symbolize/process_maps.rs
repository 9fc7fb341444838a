//! A process's mappings over time: every /proc/PID/maps read, so that a
//! process that has exited, or unmapped a library, is still symbolized.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::target::procfs::{Mapping, parse_maps, process_root};

/// Every mapping a process was seen with, newest last.
#[derive(Clone, Debug)]
pub struct ProcessMaps {
    pub pid: u32,
    /// Shared with the symbolizer's cache keys.
    pub(super) root: Arc<Path>,
    history: Vec<Mapping>,
    /// The mappings of the last successful read.
    current: Vec<Mapping>,
    /// Counts the reads that changed `current`: whoever derives something
    /// from the mappings (the runtime a process runs) redoes it when this
    /// moves.
    generation: u64,
}

impl ProcessMaps {
    pub fn new(pid: u32) -> ProcessMaps {
        ProcessMaps {
            pid,
            root: process_root(pid).into(),
            history: Vec::new(),
            current: Vec::new(),
            generation: 0,
        }
    }

    /// Built from known mappings (tests, replays).
    pub fn from_mappings(pid: u32, mappings: Vec<Mapping>) -> ProcessMaps {
        ProcessMaps {
            pid,
            root: Path::new("/").into(),
            current: mappings.clone(),
            history: mappings,
            generation: 1,
        }
    }

    /// Reads the process's current mappings into the history. True when
    /// they changed since the last read (worth handing to the unwinder);
    /// false when they did not, or the process is gone (its last mappings
    /// stay known).
    pub fn refresh(&mut self) -> bool {
        let Ok(text) = fs::read_to_string(format!("/proc/{}/maps", self.pid)) else {
            return false;
        };
        let current = parse_maps(&text);
        if current.is_empty() || current == self.current {
            // A zombie has no mappings left; keep what we knew.
            return false;
        }
        for mapping in &current {
            if !self.history.contains(mapping) {
                self.history.push(mapping.clone());
            }
        }
        self.current = current;
        self.generation += 1;
        true
    }

    /// How many reads changed the mappings (0: none was read yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The mappings of the last successful read.
    pub fn current(&self) -> &[Mapping] {
        &self.current
    }

    /// Where the process's files are from here (`/` or /proc/PID/root).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The newest mapping holding `addr`, and `addr`'s offset in its file.
    pub fn locate(&self, addr: u64) -> Option<(&Mapping, u64)> {
        self.history
            .iter()
            .rev()
            .find(|m| addr >= m.start && addr < m.end)
            .map(|m| (m, addr - m.start + m.file_offset))
    }

    pub fn covers(&self, addr: u64) -> bool {
        self.locate(addr).is_some()
    }

    /// The path to open for a mapping's object.
    pub(super) fn open_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::procfs::tests::MAPS;

    #[test]
    fn locate_gives_file_offsets_and_prefers_newest_mapping() {
        let mut mappings = parse_maps(MAPS);
        let pm = ProcessMaps::from_mappings(1, mappings.clone());
        let (m, offset) = pm.locate(0x7f0000028010).unwrap();
        assert_eq!(&*m.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(offset, 0x28010);
        assert!(pm.locate(0x55d0c1000100).is_none());
        // The same range mapped again later, from another object, wins.
        mappings.push(Mapping {
            start: 0x7f0000028000,
            end: 0x7f0000029000,
            file_offset: 0x5000,
            executable: true,
            path: "/opt/new.so".into(),
        });
        let pm = ProcessMaps::from_mappings(1, mappings);
        let (m, offset) = pm.locate(0x7f0000028010).unwrap();
        assert_eq!((&*m.path, offset), ("/opt/new.so", 0x5010));
    }
}
