//! Unwind tables in the kernel: which objects' rows are loaded where, and
//! each traced process's executable mappings, for the eBPF unwinder.
//!
//! Rows of every object go back to back into one array map; an object is
//! loaded once (by file) however many processes map it. Rows stay until
//! leaktrace exits (a bump allocator): the objects of the processes a
//! trace follows stay mostly the same (the C library, the interpreter). A
//! process's slot of mappings is freed when it exits.
use std::{
    collections::HashMap as StdHashMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, MapData};
use leaktrace_common::{
    MAX_UNWIND_MAPPINGS, MAX_UNWIND_PROCESSES, ProcessMappings, UnwindMapping, UnwindRow,
};

use crate::{
    target::{elf::load_bias, procfs::Mapping},
    unwind,
};

/// An object whose rows are in the array.
#[derive(Clone, Debug)]
struct LoadedObject {
    first_row: u32,
    row_count: u32,
    /// (file offset, size, virtual address) of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
}

/// What loading cost, for progress messages and the figures.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LoadStats {
    pub objects: usize,
    pub rows: usize,
    /// Parsing .`eh_frame` into rows.
    pub build_time: Duration,
    /// Writing the rows into the kernel's map.
    pub load_time: Duration,
}

pub(crate) struct UnwindTables {
    rows: Array<MapData, UnwindRow>,
    /// pid -> slot in `mappings`.
    slots: HashMap<MapData, u32, u32>,
    mappings: Array<MapData, ProcessMappings>,
    /// Slots in use, by pid.
    slot_of: StdHashMap<u32, u32>,
    /// By (device, inode).
    objects: StdHashMap<(u64, u64), Option<LoadedObject>>,
    next_row: u32,
    pub stats: LoadStats,
}

impl UnwindTables {
    pub(crate) fn new(
        rows: Array<MapData, UnwindRow>,
        slots: HashMap<MapData, u32, u32>,
        mappings: Array<MapData, ProcessMappings>,
    ) -> UnwindTables {
        UnwindTables {
            rows,
            slots,
            mappings,
            slot_of: StdHashMap::new(),
            objects: StdHashMap::new(),
            next_row: 0,
            stats: LoadStats::default(),
        }
    }

    /// Bytes the loaded rows take in the kernel.
    pub(crate) fn row_bytes(&self) -> usize {
        self.next_row as usize * size_of::<UnwindRow>()
    }

    /// One line for progress messages: what the tables cost.
    pub(crate) fn summary(&self) -> String {
        format!(
            "unwind tables for {} objects: {} rows, {} KiB in the kernel, built in {} ms, loaded in {} ms",
            self.stats.objects,
            self.stats.rows,
            self.row_bytes() / 1024,
            self.stats.build_time.as_millis(),
            self.stats.load_time.as_millis()
        )
    }

    /// Loads the tables of `pid`'s executable mappings (objects not loaded
    /// yet are read from `root`) and publishes its mappings.
    pub(crate) fn load_process(
        &mut self,
        pid: u32,
        mappings: &[Mapping],
        root: &Path,
    ) -> Result<()> {
        let mut entries: Vec<UnwindMapping> = Vec::new();
        for mapping in mappings.iter().filter(|m| m.executable) {
            let Some(object) = self.object(&mapping.path, root) else {
                continue;
            };
            let Some(bias) = load_bias(&object.segments, mapping) else {
                continue;
            };
            entries.push(UnwindMapping {
                start: mapping.start,
                end: mapping.end,
                bias,
                first_row: object.first_row,
                row_count: object.row_count,
            });
        }
        entries.sort_by_key(|m| m.start);
        entries.dedup_by_key(|m| m.start);
        entries.truncate(MAX_UNWIND_MAPPINGS);
        let mut value = ProcessMappings {
            count: entries.len() as u32,
            _padding: 0,
            mappings: [UnwindMapping::default(); MAX_UNWIND_MAPPINGS],
        };
        value.mappings[..entries.len()].copy_from_slice(&entries);
        // A fresh slot each time, written before the pid points to it: a
        // walk on another CPU may be reading the process's current slot,
        // and must never see it half rewritten. Only when every slot is
        // taken is the current one rewritten in place.
        let slot = (0..MAX_UNWIND_PROCESSES)
            .find(|s| !self.slot_of.values().any(|used| used == s))
            .or_else(|| self.slot_of.get(&pid).copied())
            .context("the unwinder holds tables for too many processes")?;
        self.mappings
            .set(slot, value, 0)
            .context("publishing the process's mappings to the unwinder")?;
        self.slots.insert(pid, slot, 0)?;
        // The previous slot, if any, is free from now on.
        self.slot_of.insert(pid, slot);
        Ok(())
    }

    /// Frees `pid`'s slot of mappings (it exited): its stacks can no longer
    /// be walked, and the slot can serve another process.
    pub(crate) fn forget_process(&mut self, pid: u32) {
        if self.slot_of.remove(&pid).is_some() {
            // Gone already if the process never had one: nothing to undo.
            let _: Result<_, _> = self.slots.remove(&pid);
        }
    }

    /// The object's rows, loading them on first sight. None when it has no
    /// usable table (unreadable, not ELF, no .`eh_frame`, or no room left).
    /// Objects are known by file (device and inode), not by path: two
    /// containers' /usr/lib/.../libc.so.6 are different files.
    fn object(&mut self, path: &str, root: &Path) -> Option<LoadedObject> {
        let file = root.join(path.trim_start_matches('/'));
        // Unreadable (deleted, or the process is gone): no table.
        let identity = crate::target::procfs::file_identity(&file)?;
        if let Some(known) = self.objects.get(&identity) {
            return known.clone();
        }
        let loaded = self.load_object(&file);
        if let Err(err) = &loaded {
            eprintln!(
                "leaktrace: no unwind table for {path}: {err:#} (its frames fall back to frame pointers)"
            );
        }
        let loaded = loaded.ok();
        self.objects.insert(identity, loaded.clone());
        loaded
    }

    fn load_object(&mut self, path: &Path) -> Result<LoadedObject> {
        let data = crate::target::elf::read_object(path)?;
        let started = Instant::now();
        let table = unwind::build_table(&data)?;
        self.stats.build_time += started.elapsed();
        let segments = crate::target::elf::loadable_segments(&data)
            .context("parsing the ELF object's segments")?;
        let row_count = u32::try_from(table.len())?;
        let capacity = self.rows.len();
        if self.next_row.saturating_add(row_count) > capacity {
            anyhow::bail!("the unwind row map is full ({capacity} rows; raise --unwind-rows)");
        }
        let first_row = self.next_row;
        let loading = Instant::now();
        for (i, row) in table.iter().enumerate() {
            self.rows.set(first_row + i as u32, row, 0)?;
        }
        self.stats.load_time += loading.elapsed();
        self.next_row += row_count;
        self.stats.objects += 1;
        self.stats.rows += table.len();
        Ok(LoadedObject {
            first_row,
            row_count,
            segments,
        })
    }
}
