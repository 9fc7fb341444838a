//! The kernel walker's instructions for one Python process: where in the
//! process its walk starts, and the offsets on the way, from the version's
//! layout (`layout`) and the interpreter object's own symbols.
//!
//! Why here and not in the kernel loader: everything is read from the
//! target (its interpreter object, its mappings), and the result is a
//! plain `PythonProcess` the loader writes into a map as is.
use std::{collections::HashMap, fs, path::Path};

use anyhow::{Context as _, Result, anyhow};
use leaktrace_common::{
    CHAIN_CFRAME, CHAIN_CURRENT_FRAME, CHAIN_FRAME_OBJECT, ENTRY_IS_ENTRY, ENTRY_NONE, ENTRY_OWNER,
    PythonProcess, TSTATE_DIRECT, TSTATE_GIL_LAST_HOLDER,
};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use super::layout::{EntryMarker, FrameChain, InstrUnit, PythonLayout, ThreadStateSource};
use crate::target::{
    elf::load_bias,
    procfs::{Mapping, file_identity},
};

/// The symbol the walk starts from, for a layout.
fn start_symbol(layout: &PythonLayout) -> &'static str {
    match layout.tstate_source {
        ThreadStateSource::CurrentSymbol => "_PyThreadState_Current",
        ThreadStateSource::RuntimeTstateCurrent | ThreadStateSource::GilLastHolder => "_PyRuntime",
    }
}

/// The walker's instructions, given the address of the start symbol in the
/// process.
pub(crate) fn kernel_plan(layout: &PythonLayout, symbol_address: u64) -> PythonProcess {
    let (tstate_source, tstate_address) = match layout.tstate_source {
        ThreadStateSource::CurrentSymbol => (TSTATE_DIRECT, symbol_address),
        ThreadStateSource::RuntimeTstateCurrent => (
            TSTATE_DIRECT,
            symbol_address + u64::from(layout.runtime_tstate_current),
        ),
        ThreadStateSource::GilLastHolder => (
            TSTATE_GIL_LAST_HOLDER,
            symbol_address + u64::from(layout.runtime_interpreters_main),
        ),
    };
    let (entry_marker, entry_owner) = match layout.entry_marker {
        EntryMarker::None => (ENTRY_NONE, 0),
        EntryMarker::IsEntry => (ENTRY_IS_ENTRY, 0),
        EntryMarker::OwnerCstack(owner) => (ENTRY_OWNER, u32::from(owner)),
    };
    PythonProcess {
        tstate_address,
        tstate_source,
        interp_gil_last_holder: if tstate_source == TSTATE_GIL_LAST_HOLDER {
            layout.interp_gil_last_holder
        } else {
            0
        },
        tstate_thread_id: u32::from(layout.tstate_thread_id),
        tstate_frame: u32::from(layout.tstate_frame),
        frame_chain: match layout.frame_chain {
            FrameChain::FrameObject => CHAIN_FRAME_OBJECT,
            FrameChain::CFrame => CHAIN_CFRAME,
            FrameChain::CurrentFrame => CHAIN_CURRENT_FRAME,
        },
        cframe_current_frame: if layout.frame_chain == FrameChain::CFrame {
            u32::from(layout.cframe_current_frame)
        } else {
            0
        },
        frame_back: u32::from(layout.frame_back),
        frame_code: u32::from(layout.frame_code),
        frame_lasti: u32::from(layout.frame_lasti),
        lasti_is_int: u32::from(layout.instr_unit != InstrUnit::Pointer),
        entry_marker,
        frame_entry: if entry_marker == ENTRY_NONE {
            0
        } else {
            u32::from(layout.frame_entry)
        },
        entry_owner,
        _padding: 0,
    }
}

/// What an interpreter object says about its start symbols: the symbol's
/// virtual address and the file's loadable segments (file offset, file
/// size, virtual address), to place it in a process.
#[derive(Clone, Debug, Default)]
struct ObjectFacts {
    symbols: HashMap<&'static str, u64>,
    segments: Vec<(u64, u64, u64)>,
}

/// Interpreter objects' facts, each file read once (by device and inode).
#[derive(Default)]
pub(crate) struct StartAddresses {
    by_file: HashMap<(u64, u64), Option<ObjectFacts>>,
}

fn read_facts(path: &Path) -> Result<ObjectFacts> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data).context("not an ELF object")?;
    let mut symbols = HashMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        for wanted in ["_PyThreadState_Current", "_PyRuntime", "PyType_Type"] {
            if symbol.name() == Ok(wanted) && symbol.is_definition() {
                symbols.entry(wanted).or_insert(symbol.address());
            }
        }
    }
    let segments = file
        .segments()
        .map(|segment| {
            let (offset, size) = segment.file_range();
            (offset, size, segment.address())
        })
        .collect();
    Ok(ObjectFacts { symbols, segments })
}

impl StartAddresses {
    /// Where `layout`'s start symbol is in the process whose `mappings`
    /// map the interpreter object at `object` (opened through the process's
    /// root) as `display_path`.
    pub(crate) fn address(
        &mut self,
        layout: &PythonLayout,
        object: &Path,
        display_path: &str,
        mappings: &[Mapping],
    ) -> Result<u64> {
        self.symbol_address(start_symbol(layout), object, display_path, mappings)
    }

    /// Where the interpreter object's symbol `name` (one `read_facts`
    /// looks for) is in the process.
    pub(crate) fn symbol_address(
        &mut self,
        name: &str,
        object: &Path,
        display_path: &str,
        mappings: &[Mapping],
    ) -> Result<u64> {
        let identity = file_identity(object)
            .ok_or_else(|| anyhow!("{} cannot be opened", object.display()))?;
        let facts = self
            .by_file
            .entry(identity)
            .or_insert_with(|| read_facts(object).ok())
            .as_ref()
            .ok_or_else(|| anyhow!("{display_path} is not a readable ELF object"))?;
        let symbol = *facts
            .symbols
            .get(name)
            .ok_or_else(|| anyhow!("{display_path} does not define {name}"))?;
        symbol_in_process(symbol, &facts.segments, display_path, mappings)
            .ok_or_else(|| anyhow!("{display_path} is not mapped where {name} lies"))
    }
}

/// The process address of the virtual address `symbol` of the object mapped
/// as `display_path`: the object's load bias (a mapping's address less the
/// virtual address of its file offset, through the segment that holds it,
/// page-aligned as the loader maps it) plus the symbol.
fn symbol_in_process(
    symbol: u64,
    segments: &[(u64, u64, u64)],
    display_path: &str,
    mappings: &[Mapping],
) -> Option<u64> {
    mappings
        .iter()
        .filter(|m| *m.path == *display_path)
        .find_map(|m| Some(load_bias(segments, m)?.wrapping_add(symbol)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::python::version::PythonVersion;

    fn mapping(start: u64, file_offset: u64, path: &str) -> Mapping {
        Mapping {
            start,
            end: start + 0x1000,
            file_offset,
            executable: false,
            path: path.into(),
        }
    }

    #[test]
    fn symbols_are_placed_through_the_mapping_of_their_segment() {
        // A PIE libpython: text at vaddr 0x1000 (offset 0x1000), data at
        // vaddr 0x5000 (offset 0x4000, the usual one-page shift).
        let segments = [
            (0, 0x1000, 0),
            (0x1000, 0x2000, 0x1000),
            (0x4000, 0x800, 0x5000),
        ];
        let maps = [
            mapping(0x7f00_0000_0000, 0, "/lib/libpython3.11.so"),
            mapping(0x7f00_0000_1000, 0x1000, "/lib/libpython3.11.so"),
            mapping(0x7f00_0000_5000, 0x4000, "/lib/libpython3.11.so"),
            mapping(0x7f00_0001_0000, 0, "/lib/other.so"),
        ];
        assert_eq!(
            symbol_in_process(0x5040, &segments, "/lib/libpython3.11.so", &maps),
            Some(0x7f00_0000_5040)
        );
        // Not mapped at all: None, never a guess.
        assert_eq!(
            symbol_in_process(0x5040, &segments, "/lib/absent.so", &maps),
            None
        );
        // A non-PIE executable (Debian's python3.11): bias 0.
        let segments = [(0, 0x1000, 0x40_0000), (0x60_0000, 0x1000, 0xa0_0000)];
        let maps = [
            mapping(0x40_0000, 0, "/usr/bin/python3.11"),
            mapping(0xa0_0000, 0x60_0000, "/usr/bin/python3.11"),
        ];
        assert_eq!(
            symbol_in_process(0xa0_0100, &segments, "/usr/bin/python3.11", &maps),
            Some(0xa0_0100)
        );
    }

    #[test]
    fn plans_follow_the_layout_of_each_version() {
        let plan = |minor| {
            let version = PythonVersion {
                major: 3,
                minor,
                micro: 0,
            };
            kernel_plan(&PythonLayout::for_version(version).unwrap(), 0x1000)
        };
        // 3.11: _PyRuntime + gilstate.tstate_current, cframe, is_entry.
        let p311 = plan(11);
        assert_eq!(p311.tstate_source, TSTATE_DIRECT);
        assert_eq!(p311.tstate_address, 0x1000 + 576);
        assert_eq!(p311.frame_chain, CHAIN_CFRAME);
        assert_eq!(p311.entry_marker, ENTRY_IS_ENTRY);
        assert_eq!(p311.lasti_is_int, 0);
        // 3.12: the GIL's last holder of the main interpreter, owner shims.
        let p312 = plan(12);
        assert_eq!(p312.tstate_source, TSTATE_GIL_LAST_HOLDER);
        assert_eq!(p312.entry_marker, ENTRY_OWNER);
        // 3.10: frame objects and an int f_lasti.
        let p310 = plan(10);
        assert_eq!(p310.frame_chain, CHAIN_FRAME_OBJECT);
        assert_eq!(p310.lasti_is_int, 1);
        assert_eq!(p310.entry_marker, ENTRY_NONE);
        // 3.13: the frame is the thread state's current_frame.
        assert_eq!(plan(13).frame_chain, CHAIN_CURRENT_FRAME);
    }
}
