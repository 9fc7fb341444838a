//! Symbolize: return addresses to functions, files and lines.
//!
//! Addresses are first placed in the process's mappings (a history of every
//! /proc/PID/maps read, so a process that has exited, or unmapped a library,
//! is still symbolized), then turned into (object, file offset) pairs that
//! blazesym symbolizes from the object files themselves; Go binaries' code
//! is named from their `.gopclntab` first ([`go`]). No live process is
//! needed at report time.
use std::{collections::HashMap, path::Path, sync::Arc};

use serde::Serialize;

mod go;
mod process_maps;
mod resolve;

pub(crate) use process_maps::ProcessMaps;
pub(crate) use resolve::{Resolved, Resolver, Wanted};
pub(crate) mod worker;

/// Where a frame comes from: native code, or Python code named from the
/// interpreter's own frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    #[default]
    Native,
    Python,
}

/// One symbolized frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Demangled function name, or `[module+0xoffset]` when unknown.
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The object (executable or library) holding the code.
    pub module: String,
    /// The return address as captured (an absolute address in the process).
    pub address: u64,
    /// An inlined call inside the next frame (same address).
    pub inlined: bool,
    /// Found by following frame pointers, not unwind tables: the code below
    /// it had no .`eh_frame` rows (JIT, anonymous code), so this frame and the
    /// ones above it may be incomplete.
    pub fallback: bool,
    /// `native`, or `python` for a frame of Python code (its function, file
    /// and line come from the code object; `module` and `address` are those
    /// of the interpreter's eval-loop frame that ran it).
    pub kind: FrameKind,
    /// An interpreter eval-loop frame left native because the Python frames
    /// it ran could not be matched to it (a stack cut short, frames not
    /// read); only written when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub python_unmatched: bool,
}

/// An object as the symbolizer knows it: the process's root and the path
/// in it (two containers' /usr/lib/.../libc.so.6 are different files).
type ObjectKey = (Arc<Path>, Arc<str>);

/// Symbolizes return addresses, caching per (object, offset). What the
/// cache lacks is resolved by a [`Resolver`], here when a stack is asked
/// for, or beforehand on the [`worker`] thread: the event loop asks
/// [`Symbolizer::wanted`] for what a report will need, has it resolved
/// there, [`Symbolizer::insert`]s the answer, and the report then only
/// reads the cache.
#[derive(Default)]
pub struct Symbolizer {
    /// For what the cache lacks when a stack is asked for (tests, replays,
    /// sites that appeared while the worker resolved the others).
    resolver: Resolver,
    cache: HashMap<(ObjectKey, u64), Vec<Frame>>,
}

impl Symbolizer {
    /// Symbolizes a stack of return addresses (innermost first) into frames
    /// (innermost first, inlined calls expanded). Each return address is
    /// looked up at `addr - 1`, inside the call instruction, so a call that
    /// is the last instruction of a function is not blamed on the next one.
    /// `first_is_pc`: stack[0] is the address of the instruction that ran
    /// (a page fault's), not a return address, and is looked up as it is
    /// (one byte back would be the previous instruction, or the padding
    /// before a function that faults on its first one).
    /// Bit i of `fallback_frames` marks stack[i] as found by frame pointers.
    pub fn symbolize_stack(
        &mut self,
        maps: &ProcessMaps,
        stack: &[u64],
        fallback_frames: u64,
        first_is_pc: bool,
    ) -> Vec<Frame> {
        let mut wanted = Wanted::default();
        self.wanted(maps, stack, first_is_pc, &mut wanted);
        if !wanted.is_empty() {
            let resolved = self.resolver.resolve(wanted.batch());
            self.insert(resolved);
        }
        let mut frames = Vec::with_capacity(stack.len());
        for (index, &addr) in stack.iter().enumerate() {
            let fallback = index < 64 && fallback_frames & (1 << index) != 0;
            match maps.locate(lookup_address(index, addr, first_is_pc)) {
                Some((mapping, offset)) => {
                    let key = ((maps.root.clone(), mapping.path.clone()), offset);
                    let cached = &self.cache[&key];
                    frames.extend(cached.iter().map(|f| Frame {
                        address: addr,
                        fallback,
                        ..f.clone()
                    }));
                }
                None => frames.push(Frame {
                    function: format!("[unknown {addr:#x}]"),
                    file: None,
                    line: None,
                    module: "[unknown]".into(),
                    address: addr,
                    inlined: false,
                    fallback,
                    kind: FrameKind::Native,
                    python_unmatched: false,
                }),
            }
        }
        frames
    }

    /// Adds to `wanted` the addresses of `stack` (as
    /// [`Symbolizer::symbolize_stack`] would look them up) that the cache
    /// does not hold.
    pub(crate) fn wanted(
        &self,
        maps: &ProcessMaps,
        stack: &[u64],
        first_is_pc: bool,
        wanted: &mut Wanted,
    ) {
        for (index, &addr) in stack.iter().enumerate() {
            if let Some((mapping, offset)) = maps.locate(lookup_address(index, addr, first_is_pc)) {
                let object = (maps.root.clone(), mapping.path.clone());
                if !self.cache.contains_key(&(object.clone(), offset)) {
                    wanted.add(object, || maps.open_path(&mapping.path), offset);
                }
            }
        }
    }

    /// Merges addresses resolved elsewhere (the worker) into the cache.
    pub(crate) fn insert(&mut self, resolved: Resolved) {
        self.cache.extend(resolved);
    }
}

/// Where stack[index] is looked up: one byte back into the call for a
/// return address, as it is for a first frame that is the PC itself.
fn lookup_address(index: usize, addr: u64, first_is_pc: bool) -> u64 {
    if index == 0 && first_is_pc {
        addr
    } else {
        addr.saturating_sub(1)
    }
}

fn unknown_frame(path: &str, offset: u64) -> Frame {
    let name = Path::new(path)
        .file_name()
        .map_or(path.into(), |n| n.to_string_lossy());
    Frame {
        function: format!("[{name}+{offset:#x}]"),
        file: None,
        line: None,
        module: path.to_string(),
        address: 0,
        inlined: false,
        fallback: false,
        kind: FrameKind::Native,
        python_unmatched: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizes_this_test_binary() {
        // Our own code, through our own mappings, by file offset.
        let mut maps = ProcessMaps::new(std::process::id());
        assert!(maps.refresh());
        let here = symbolizes_this_test_binary as *const () as u64;
        let frames = Symbolizer::default().symbolize_stack(&maps, &[here + 1], 0, false);
        assert!(
            frames
                .iter()
                .any(|f| f.function.contains("symbolizes_this_test_binary")),
            "{frames:#?}"
        );
        // A page fault's first frame is the faulting instruction: a
        // function's very first byte is that function's, not the one
        // before it (as `here - 1` would be).
        let at_entry = Symbolizer::default().symbolize_stack(&maps, &[here, here + 1], 0, true);
        assert!(
            at_entry[0].function.contains("symbolizes_this_test_binary"),
            "{at_entry:#?}"
        );
        let unknown = Symbolizer::default().symbolize_stack(&maps, &[0x10], 1, false);
        assert_eq!(unknown[0].function, "[unknown 0x10]");
        assert!(unknown[0].fallback);
        assert!(!frames[0].fallback);
    }
}
