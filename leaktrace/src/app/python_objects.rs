//! Exact object mode's tracer side (`--python-objects`): probes each Python
//! process's object allocator once its interpreter is known, and reads the
//! Python type of every outstanding object block for the by-type view.
//!
//! Types are read from the live process when a report is made (and at
//! `run`'s exit stop, while the command's memory is still there): a
//! process that exited keeps the view read last.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};

use super::python_frames::PythonFrames;
use crate::{
    daemon::{heap::HeapTable, sites::CallSites},
    kernel::{KernelProbes, Scope, attach},
    report::PythonTypeReport,
    runtime::python::{
        PythonCache, PythonFound,
        code_object::ProcessMemory,
        object_allocator::object_allocator,
        object_types::{ObjectLayout, TypeReader},
        process::PythonInterpreter,
    },
    target::{
        FunctionSymbol, ProbedObject,
        allocator::Candidate,
        procfs::{Mapping, file_identity},
    },
};

/// What blocks that hold no object header are listed as: the allocator's
/// buffers (a list's items, a dict's keys, a bytearray's bytes in 3.x).
pub(crate) const NOT_AN_OBJECT: &str = "(buffer, no object header)";

/// A process whose object allocator is probed.
struct ProbedProcess {
    layout: ObjectLayout,
    /// Its address of `PyType_Type`.
    type_type: u64,
    /// Objects and bytes per type, read last (kept once it exits).
    last: TypeCounts,
    /// The view before `last`, for growth.
    previous: TypeCounts,
}

#[derive(Default)]
pub(super) struct PythonObjects {
    /// Each interpreter file's functions to probe, or why there are none.
    functions: HashMap<(u64, u64), Result<Vec<FunctionSymbol>, String>>,
    /// Interpreter files probed per process: probes stay attached through
    /// an exec, so the same file mapped again is not probed twice.
    attached: HashSet<(u32, (u64, u64))>,
    /// Interpreter files that could not be probed in a process (warned
    /// about once).
    refused: HashSet<(u32, (u64, u64))>,
    probed: HashMap<u32, ProbedProcess>,
}

impl PythonObjects {
    /// Probes `pid`'s object allocator (once per interpreter file) and
    /// keeps what reading its objects' types needs; returns a progress
    /// line when it probed.
    pub(super) fn attach(
        &mut self,
        kernel: &mut KernelProbes,
        frames: &mut PythonFrames,
        pid: u32,
        interpreter: &PythonInterpreter,
        mappings: &[Mapping],
        placed: bool,
    ) -> Result<Option<String>> {
        let identity = file_identity(&interpreter.object)
            .ok_or_else(|| anyhow!("{} cannot be opened", interpreter.object.display()))?;
        if self.refused.contains(&(pid, identity)) {
            // Said once already.
            return Ok(None);
        }
        let probed = match self.probe(kernel, pid, interpreter, placed) {
            Ok(probed) => probed,
            Err(err) => {
                self.refused.insert((pid, identity));
                return Err(err);
            }
        };
        let layout = ObjectLayout::for_version(interpreter.version).ok_or_else(|| {
            anyhow!(
                "no object layout for Python {}.{}",
                interpreter.version.major,
                interpreter.version.minor
            )
        })?;
        let type_type = frames.symbol_address("PyType_Type", interpreter, mappings)?;
        let previous = self.probed.remove(&pid);
        self.probed.insert(
            pid,
            ProbedProcess {
                layout,
                type_type,
                last: previous.map(|p| p.last).unwrap_or_default(),
                previous: BTreeMap::new(),
            },
        );
        Ok(probed)
    }

    /// Attaches the probes on `pid`'s object allocator in `interpreter`,
    /// unless they are there already; returns a progress line when it did.
    /// `run` calls it before the command starts, so that no arena is
    /// mapped, and counted as a mapping of its own, before its objects are
    /// traced.
    pub(super) fn probe(
        &mut self,
        kernel: &mut KernelProbes,
        pid: u32,
        interpreter: &PythonInterpreter,
        placed: bool,
    ) -> Result<Option<String>> {
        let identity = file_identity(&interpreter.object)
            .ok_or_else(|| anyhow!("{} cannot be opened", interpreter.object.display()))?;
        if self.attached.contains(&(pid, identity)) {
            return Ok(None);
        }
        let functions = self
            .functions
            .entry(identity)
            .or_insert_with(|| {
                fs::read(&interpreter.object)
                    .with_context(|| format!("reading {}", interpreter.display_path))
                    .and_then(|data| {
                        object_allocator(&data, interpreter.version, &interpreter.display_path)
                    })
                    .map_err(|err| format!("{err:#}"))
            })
            .clone()
            .map_err(|why| anyhow!(why))?;
        let names: Vec<&str> = functions.iter().map(|f| f.func.symbol()).collect();
        let plan = attach::plan(
            &[ProbedObject {
                path: interpreter.object.clone(),
                display_path: interpreter.display_path.clone(),
                functions: functions.clone(),
            }],
            placed,
        );
        kernel.attach(&plan, Scope::Process(pid))?;
        self.attached.insert((pid, identity));
        Ok(Some(format!(
            "pid {pid}: exact object mode: probing {} in {}",
            names.join(", "),
            interpreter.display_path
        )))
    }

    /// `run`: probes the object allocator of the command about to start
    /// (held at its entry point), whose objects are `candidates`, if one of
    /// them is a Python interpreter.
    pub(super) fn probe_command(
        &mut self,
        kernel: &mut KernelProbes,
        pid: u32,
        candidates: &[Candidate],
        placed: bool,
    ) -> Result<Option<String>> {
        let files: Vec<Mapping> = candidates
            .iter()
            .map(|c| Mapping {
                start: 0,
                end: 0,
                file_offset: 0,
                executable: true,
                path: c.path.to_string_lossy().into(),
            })
            .collect();
        match PythonCache::default().detect(Path::new("/"), &files) {
            PythonFound::Python(interpreter) => self.probe(kernel, pid, &interpreter, placed),
            _ => Ok(None),
        }
    }

    /// Reads the type of each of `pid`'s outstanding object blocks at
    /// least `min_age_ms` old (`now_ms` on the table's clock) while the
    /// process is there; does nothing for a process not probed or gone.
    pub(super) fn read_types(
        &mut self,
        pid: u32,
        table: &HeapTable,
        sites: &CallSites,
        now_ms: u64,
        min_age_ms: u64,
    ) {
        let Some(process) = self.probed.get_mut(&pid) else {
            return;
        };
        let Ok(memory) = ProcessMemory::open(pid) else {
            return;
        };
        let mut reader = TypeReader::new(&memory, process.layout, process.type_type);
        let mut by_type = TypeCounts::new();
        for (addr, block) in table.blocks_of(pid) {
            if now_ms.saturating_sub(u64::from(block.time_ms)) < min_age_ms
                || !sites.get(block.site).func.is_python_object()
            {
                continue;
            }
            let name = reader
                .type_of(addr, block.size)
                .unwrap_or_else(|| NOT_AN_OBJECT.to_owned());
            let entry = by_type.entry(name).or_default();
            entry.0 += 1;
            entry.1 += block.size;
        }
        process.previous = std::mem::replace(&mut process.last, by_type);
    }

    /// The by-type view of every probed process, as read last: most bytes
    /// first, with the change since the read before.
    pub(super) fn rows(&self) -> Vec<PythonTypeReport> {
        let mut rows: Vec<PythonTypeReport> = self
            .probed
            .iter()
            .flat_map(|(&pid, process)| type_rows(pid, &process.last, &process.previous))
            .collect();
        rows.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(b.objects.cmp(&a.objects))
                .then(a.type_name.cmp(&b.type_name))
                .then(a.pid.cmp(&b.pid))
        });
        rows
    }

    /// Processes probed.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.probed.keys().copied().collect()
    }

    /// `pid` is gone for good (`--all`): its view goes too.
    pub(super) fn forget(&mut self, pid: u32) {
        self.probed.remove(&pid);
        self.attached.retain(|(p, _)| *p != pid);
    }
}

/// Objects and bytes per type name.
type TypeCounts = BTreeMap<String, (u64, u64)>;

/// One process's rows: each type read `last`, with its change since
/// `previous` (a type gone since then is left out: nothing outstanding).
fn type_rows(pid: u32, last: &TypeCounts, previous: &TypeCounts) -> Vec<PythonTypeReport> {
    last.iter()
        .map(|(name, &(objects, bytes))| {
            let (before_objects, before_bytes) = previous.get(name).copied().unwrap_or_default();
            PythonTypeReport {
                pid,
                type_name: name.clone(),
                objects,
                bytes,
                objects_change: objects.cast_signed() - before_objects.cast_signed(),
                bytes_change: bytes.cast_signed() - before_bytes.cast_signed(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_carries_its_change_since_the_view_before() {
        let previous = TypeCounts::from([
            ("dict".to_owned(), (100, 24_000)),
            ("Gone".to_owned(), (5, 160)),
            ("str".to_owned(), (10, 600)),
        ]);
        let last = TypeCounts::from([
            ("dict".to_owned(), (160, 38_400)),
            ("str".to_owned(), (4, 240)),
            ("New".to_owned(), (3, 96)),
        ]);
        let rows = type_rows(7, &last, &previous);
        let summary: Vec<(&str, u64, i64, i64)> = rows
            .iter()
            .map(|r| (&*r.type_name, r.objects, r.objects_change, r.bytes_change))
            .collect();
        assert_eq!(
            summary,
            [
                ("New", 3, 3, 96),
                ("dict", 160, 60, 14_400),
                ("str", 4, -6, -360)
            ]
        );
        assert!(rows.iter().all(|r| r.pid == 7));
    }
}
