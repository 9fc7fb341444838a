//! Symbolize: return addresses to functions, files and lines.
//!
//! Addresses are first placed in the process's mappings (a history of every
//! /proc/PID/maps read, so a process that has exited, or unmapped a library,
//! is still symbolized), then turned into (object, file offset) pairs that
//! blazesym symbolizes from the object files themselves; Go binaries' code
//! is named from their `.gopclntab` first ([`go`]). No live process is
//! needed at report time.
use std::{collections::HashMap, path::Path, sync::Arc};

use blazesym::symbolize::{self, Input, Symbolized, source::Source};
use serde::Serialize;

mod go;
mod process_maps;

pub(crate) use process_maps::ProcessMaps;

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

/// Symbolizes return addresses, caching per (object, offset).
pub struct Symbolizer {
    blazesym: symbolize::Symbolizer,
    go: go::GoObjects,
    cache: HashMap<(ObjectKey, u64), Vec<Frame>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer {
            blazesym: symbolize::Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            go: go::GoObjects::default(),
            cache: HashMap::new(),
        }
    }
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
        self.prefetch(maps, stack, first_is_pc);
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

    /// Symbolizes, one blazesym call per object, every not yet cached address.
    fn prefetch(&mut self, maps: &ProcessMaps, stack: &[u64], first_is_pc: bool) {
        let mut wanted: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for (index, &addr) in stack.iter().enumerate() {
            if let Some((mapping, offset)) = maps.locate(lookup_address(index, addr, first_is_pc))
                && !self
                    .cache
                    .contains_key(&((maps.root.clone(), mapping.path.clone()), offset))
            {
                wanted.entry(mapping.path.clone()).or_default().push(offset);
            }
        }
        for (path, mut offsets) in wanted {
            offsets.sort_unstable();
            offsets.dedup();
            let open = maps.open_path(&path);
            let object = (maps.root.clone(), path.clone());
            // Go code from the Go table; the rest (cgo's C code) below.
            if let Some(binary) = self.go.binary(&object, &open) {
                offsets.retain(|&offset| match go::frames(&binary, &path, offset) {
                    Some(frames) => {
                        self.cache.insert((object.clone(), offset), frames);
                        false
                    }
                    None => true,
                });
            }
            let results = self.symbolize_offsets(&open, &path, &offsets);
            for (offset, result) in offsets.into_iter().zip(results) {
                let frames = result.unwrap_or_else(|| vec![unknown_frame(&path, offset)]);
                self.cache.insert((object.clone(), offset), frames);
            }
        }
    }

    /// `object` is the file to open, `module` its path as the process sees it.
    fn symbolize_offsets(
        &self,
        object: &Path,
        module: &str,
        offsets: &[u64],
    ) -> Vec<Option<Vec<Frame>>> {
        let source = Source::Elf(symbolize::source::Elf::new(object));
        let module = module.to_string();
        let Ok(symbols) = self.blazesym.symbolize(&source, Input::FileOffset(offsets)) else {
            return vec![None; offsets.len()];
        };
        symbols
            .into_iter()
            .map(|symbolized| match symbolized {
                Symbolized::Sym(sym) => {
                    let location = |info: Option<&symbolize::CodeInfo<'_>>| match info {
                        Some(info) => (
                            Some(info.to_path().to_string_lossy().into_owned()),
                            info.line,
                        ),
                        None => (None, None),
                    };
                    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
                    for inlined in sym.inlined.iter().rev() {
                        let (file, line) = location(inlined.code_info.as_ref());
                        frames.push(Frame {
                            function: inlined.name.to_string(),
                            file,
                            line,
                            module: module.clone(),
                            address: 0,
                            inlined: true,
                            fallback: false,
                            kind: FrameKind::Native,
                            python_unmatched: false,
                        });
                    }
                    let (file, line) = location(sym.code_info.as_deref());
                    frames.push(Frame {
                        function: sym.name.to_string(),
                        file,
                        line,
                        module: module.clone(),
                        address: 0,
                        inlined: false,
                        fallback: false,
                        kind: FrameKind::Native,
                        python_unmatched: false,
                    });
                    Some(frames)
                }
                Symbolized::Unknown(_) => None,
            })
            .collect()
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
