//! The tracer's Python side: tells the kernel how to walk each traced
//! Python process's frames once its interpreter and version are known, reads
//! the code objects of new call sites while the process is alive (a
//! process that exits must still get Python lines in its final report), and
//! puts the named Python frames into each site's native stack.
use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};
use leaktrace_common::PYTHON_ENTRY_BIT;

use crate::{
    kernel::KernelProbes,
    runtime::python::{
        code_object::{CodeCache, Memory, ProcessMemory},
        frames::{EvalStyle, RawPythonFrame, name_frames, splice},
        layout::PythonLayout,
        process::PythonInterpreter,
        walker::{StartAddresses, kernel_plan},
    },
    symbolize::Frame,
    target::procfs::Mapping,
};

/// A traced Python process whose frames the kernel walks.
struct PythonTarget {
    layout: PythonLayout,
    style: EvalStyle,
    /// Its memory, while it lives (None once it is gone).
    memory: Option<ProcessMemory>,
}

/// Memory of a process that is gone: every read fails, so only code
/// objects read while it lived are named.
struct Gone;

impl Memory for Gone {
    fn read(&self, addr: u64, _buf: &mut [u8]) -> Result<()> {
        bail!("the process is gone (reading {addr:#x})")
    }
}

/// The Python processes traced and what was read of them.
#[derive(Default)]
pub(super) struct PythonFrames {
    starts: StartAddresses,
    codes: CodeCache,
    targets: HashMap<u32, PythonTarget>,
}

/// The kernel's word pairs as frames.
fn raw_frames(words: &[u64]) -> Vec<RawPythonFrame> {
    words
        .chunks_exact(2)
        .map(|pair| RawPythonFrame {
            code: pair[0],
            instr: pair[1] & !PYTHON_ENTRY_BIT,
            entry: pair[1] & PYTHON_ENTRY_BIT != 0,
        })
        .collect()
}

impl PythonFrames {
    /// `pid` runs `interpreter`: from now on the kernel walks its frames.
    /// An error leaves its frames native (the caller warns once).
    pub(super) fn start(
        &mut self,
        kernel: &mut KernelProbes,
        pid: u32,
        interpreter: &PythonInterpreter,
        mappings: &[Mapping],
    ) -> Result<()> {
        let layout = PythonLayout::for_version(interpreter.version).ok_or_else(|| {
            anyhow!(
                "no frame layout for Python {}.{}",
                interpreter.version.major,
                interpreter.version.minor
            )
        })?;
        let starts = self.starts.starts(
            &layout,
            &interpreter.object,
            &interpreter.display_path,
            mappings,
        )?;
        kernel.walk_python(pid, &kernel_plan(&layout, starts))?;
        self.targets.insert(
            pid,
            PythonTarget {
                layout,
                style: EvalStyle::of(&layout),
                memory: ProcessMemory::open(pid).ok(),
            },
        );
        Ok(())
    }

    /// Where the interpreter's symbol `name` lies in a process that maps
    /// it as `mappings` say (the interpreter file is read once for both).
    pub(super) fn symbol_address(
        &mut self,
        name: &str,
        interpreter: &PythonInterpreter,
        mappings: &[Mapping],
    ) -> Result<u64> {
        self.starts.symbol_address(
            name,
            &interpreter.object,
            &interpreter.display_path,
            mappings,
        )
    }

    /// `pid` exited: the kernel stops walking it; what was read of it
    /// stays for its report.
    pub(super) fn stop(&mut self, kernel: &mut KernelProbes, pid: u32) {
        kernel.forget_python(pid);
        if let Some(target) = self.targets.get_mut(&pid) {
            target.memory = None;
        }
    }

    /// `pid` exec'd: its old image's code objects and sites are gone, and
    /// its new image may not be Python at all (`start` again if it is).
    /// The kernel stopped walking it at the exec itself; what it walks
    /// now, if anything, was registered for the new image since (a child
    /// followed after its exec), and stays.
    pub(super) fn exec(&mut self, pid: u32) {
        self.targets.remove(&pid);
        self.codes.forget(pid);
    }

    /// `pid` is gone for good (`--all`): everything about it goes.
    pub(super) fn forget(&mut self, kernel: &mut KernelProbes, pid: u32) {
        kernel.forget_python(pid);
        self.targets.remove(&pid);
        self.codes.forget(pid);
    }

    /// Reads the code objects of a new site's Python frames now, while the
    /// process is there to read them from.
    pub(super) fn prefetch(&mut self, pid: u32, words: &[u64]) {
        let Some(target) = self.targets.get(&pid) else {
            return;
        };
        let Some(memory) = target.memory.as_ref() else {
            return;
        };
        name_frames(
            &mut self.codes,
            memory,
            &target.layout,
            pid,
            &raw_frames(words),
        );
    }

    /// `native` (a site's symbolized stack) with its eval-loop frames
    /// replaced by the Python frames in `words`.
    pub(super) fn splice(&mut self, pid: u32, native: Vec<Frame>, words: &[u64]) -> Vec<Frame> {
        if words.is_empty() {
            return native;
        }
        let Some(target) = self.targets.get(&pid) else {
            return native;
        };
        let memory: &dyn Memory = match target.memory.as_ref() {
            Some(memory) => memory,
            None => &Gone,
        };
        let named = name_frames(
            &mut self.codes,
            memory,
            &target.layout,
            pid,
            &raw_frames(words),
        );
        splice(&native, &named, target.style)
    }
}
