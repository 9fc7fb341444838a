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
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, IterableMap as _, MapData};
use leaktrace_common::{
    MAX_UNWIND_MAPPINGS, MAX_UNWIND_PROCESSES, ProcessMappings, UnwindMapping, UnwindRow,
};

use super::{
    map_batch,
    unwind_builder::{Builder, BuiltObject, Job, build_object},
};
use crate::target::{elf::load_bias, procfs::Mapping};

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
    /// Whether rows are written in batches (until the kernel refuses).
    batches: bool,
    /// Builds objects off the event loop (`--all`), when started.
    builder: Option<Builder>,
    /// Objects being built, with the pids waiting for them.
    building: StdHashMap<(u64, u64), Vec<u32>>,
    /// The mappings and root of each process waiting for an object.
    requested: StdHashMap<u32, (Vec<Mapping>, PathBuf)>,
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
            batches: true,
            builder: None,
            building: StdHashMap::new(),
            requested: StdHashMap::new(),
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
            let Some(object) = self.object(&mapping.path, root, pid) else {
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
        if self.building.values().any(|waiting| waiting.contains(&pid)) {
            self.requested
                .insert(pid, (mappings.to_vec(), root.to_path_buf()));
        } else {
            self.requested.remove(&pid);
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
        self.requested.remove(&pid);
        for waiting in self.building.values_mut() {
            waiting.retain(|&p| p != pid);
        }
        if self.slot_of.remove(&pid).is_some() {
            // Gone already if the process never had one: nothing to undo.
            let _: Result<_, _> = self.slots.remove(&pid);
        }
    }

    /// The object's rows, loading them on first sight. None when it has no
    /// usable table (unreadable, not ELF, no .`eh_frame`, or no room left),
    /// or, when tables are built in the background, until it is built.
    /// Objects are known by file (device and inode), not by path: two
    /// containers' /usr/lib/.../libc.so.6 are different files.
    fn object(&mut self, path: &str, root: &Path, pid: u32) -> Option<LoadedObject> {
        let file = root.join(path.trim_start_matches('/'));
        // Unreadable (deleted, or the process is gone): no table.
        let identity = crate::target::procfs::file_identity(&file)?;
        if let Some(known) = self.objects.get(&identity) {
            return known.clone();
        }
        if let Some(builder) = &self.builder {
            let waiting = self.building.entry(identity).or_default();
            if waiting.is_empty()
                && !builder.send(Job {
                    identity,
                    file,
                    display: path.to_string(),
                })
            {
                self.building.remove(&identity);
                self.objects.insert(identity, None);
                return None;
            }
            if !waiting.contains(&pid) {
                waiting.push(pid);
            }
            return None;
        }
        let loaded = build_object(&file).and_then(|built| self.commit(built));
        self.remember(identity, path, loaded)
    }

    /// Keeps what loading an object gave (a failure: said once, no table).
    fn remember(
        &mut self,
        identity: (u64, u64),
        path: &str,
        loaded: Result<LoadedObject>,
    ) -> Option<LoadedObject> {
        if let Err(err) = &loaded {
            eprintln!(
                "leaktrace: no unwind table for {path}: {err:#} (its frames fall back to frame pointers)"
            );
        }
        let loaded = loaded.ok();
        self.objects.insert(identity, loaded.clone());
        loaded
    }

    /// From now on objects are built on a worker thread (`--all`): see
    /// `unwind_builder`. [`Self::poll`] then finishes them.
    pub(crate) fn build_in_background(&mut self) -> Result<()> {
        if self.builder.is_none() {
            self.builder = Some(Builder::start()?);
        }
        Ok(())
    }

    /// Writes the objects built since the last poll into the kernel and
    /// republishes the mappings of the processes that waited for them.
    /// Returns how many objects were finished.
    pub(crate) fn poll(&mut self) -> usize {
        let Some(builder) = &self.builder else {
            return 0;
        };
        let finished = builder.finished();
        let count = finished.len();
        let mut republish = Vec::new();
        for done in finished {
            let loaded = done.built.and_then(|built| self.commit(built));
            self.remember(done.identity, &done.display, loaded);
            for pid in self.building.remove(&done.identity).unwrap_or_default() {
                if !republish.contains(&pid) {
                    republish.push(pid);
                }
            }
        }
        for pid in republish {
            if let Some((mappings, root)) = self.requested.get(&pid).cloned() {
                // The process may be gone: its slot is freed at its exit.
                let _: Result<()> = self.load_process(pid, &mappings, &root);
            }
        }
        count
    }

    /// Writes `table` into the row map from `first_row`: in batches where
    /// the kernel has them (one call per 16,384 rows), else row by row.
    fn write_rows(&mut self, first_row: u32, table: &[UnwindRow]) -> Result<()> {
        if self.batches {
            let fd = self.rows.map().fd().as_fd();
            match map_batch::update_array(fd, first_row, table) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    eprintln!(
                        "leaktrace: writing unwind rows in batches failed ({err}); writing them one by one"
                    );
                    self.batches = false;
                }
            }
        }
        for (i, row) in table.iter().enumerate() {
            self.rows.set(first_row + i as u32, row, 0)?;
        }
        Ok(())
    }

    /// Puts a built object's rows into the kernel's row map.
    fn commit(&mut self, built: BuiltObject) -> Result<LoadedObject> {
        let BuiltObject {
            table,
            segments,
            build_time,
        } = built;
        self.stats.build_time += build_time;
        let row_count = u32::try_from(table.len())?;
        let capacity = self.rows.len();
        if self.next_row.saturating_add(row_count) > capacity {
            anyhow::bail!("the unwind row map is full ({capacity} rows; raise --unwind-rows)");
        }
        let first_row = self.next_row;
        let loading = Instant::now();
        self.write_rows(first_row, &table)?;
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
