//! The kernel walker's instructions for one Python process: where in the
//! process its walk starts, and the offsets on the way, from the version's
//! layout (`layout`) and the interpreter object's own symbols.
//!
//! Why here and not in the kernel loader: everything is read from the
//! target (its interpreter object, its mappings), and the result is a
//! plain `PythonProcess` the loader writes into a map as is.
use std::{collections::HashMap, fs, path::Path};

use anyhow::{Context as _, Result, anyhow};
use iced_x86::{Code, Decoder, DecoderOptions, Register};
use leaktrace_common::{
    CHAIN_CFRAME, CHAIN_CURRENT_FRAME, CHAIN_FRAME_OBJECT, ENTRY_IS_ENTRY, ENTRY_NONE, ENTRY_OWNER,
    PythonProcess, TSTATE_DIRECT, TSTATE_GIL_LAST_HOLDER,
};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use super::{
    elf::bytes_at,
    layout::{ABSENT32, EntryMarker, FrameChain, InstrUnit, PythonLayout, ThreadStateSource},
};
use crate::target::{
    elf::load_bias,
    procfs::{Mapping, file_identity},
};

/// The symbol the GIL holder is found from, for a layout.
fn start_symbol(layout: &PythonLayout) -> &'static str {
    match layout.tstate_source {
        ThreadStateSource::CurrentSymbol => "_PyThreadState_Current",
        ThreadStateSource::RuntimeTstateCurrent | ThreadStateSource::GilLastHolder => "_PyRuntime",
    }
}

/// 2.7/3.6: the static that heads the interpreter list (pystate.c).
const INTERP_HEAD: &str = "interp_head";
/// 2.7/3.6: the exported function that returns `interp_head`.
const INTERP_HEAD_ACCESSOR: &str = "PyInterpreterState_Head";

/// Where, in one process, the walk starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Starts {
    /// The start symbol's address (`start_symbol`).
    pub symbol: u64,
    /// The word that points to the first interpreter; None when it could
    /// not be found (2.7/3.6 without `interp_head` nor its accessor).
    pub interpreters: Option<u64>,
}

/// The walker's instructions, given where the walk starts in the process.
pub(crate) fn kernel_plan(layout: &PythonLayout, starts: Starts) -> PythonProcess {
    let symbol_address = starts.symbol;
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
        interp_address: starts.interpreters.unwrap_or(0),
        tstate_source,
        interp_gil_last_holder: if tstate_source == TSTATE_GIL_LAST_HOLDER {
            layout.interp_gil_last_holder
        } else {
            0
        },
        interp_next: layout.interp_next,
        interp_tstate_head: layout.interp_tstate_head,
        tstate_next: u32::from(layout.tstate_next),
        tstate_interp: u32::from(layout.tstate_interp),
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

/// What an interpreter object says about where walks start: its symbols'
/// virtual addresses (`interp_head` included when it is known) and the
/// file's loadable segments (file offset, file size, virtual address), to
/// place them in a process.
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

/// The address `PyInterpreterState_Head`'s code (at `address`) returns the
/// word at: the function is `mov <interp_head>(%rip),%rax; ret` in every
/// 2.7 and 3.6 build, so this finds the LOCAL static where `.symtab` is
/// stripped. None when the code is anything else.
pub(crate) fn accessor_target(code: &[u8], address: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let load = decoder.decode();
    let ret = decoder.decode();
    if load.code() != Code::Mov_r64_rm64
        || load.op0_register() != Register::RAX
        || ret.code() != Code::Retnq
    {
        return None;
    }
    if load.is_ip_rel_memory_operand() {
        Some(load.ip_rel_memory_address())
    } else if load.memory_base() == Register::None && load.memory_index() == Register::None {
        Some(load.memory_displacement64())
    } else {
        None
    }
}

fn read_facts(path: &Path) -> Result<ObjectFacts> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data).context("not an ELF object")?;
    let mut symbols = HashMap::new();
    let mut interp_heads = Vec::new();
    let mut accessor = None;
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        for wanted in ["_PyThreadState_Current", "_PyRuntime", "PyType_Type"] {
            if name == wanted {
                symbols.entry(wanted).or_insert(symbol.address());
            }
        }
        if name == INTERP_HEAD && symbol.kind() == object::SymbolKind::Data {
            interp_heads.push(symbol.address());
        }
        if name == INTERP_HEAD_ACCESSOR {
            accessor = Some(symbol.address());
        }
    }
    interp_heads.sort_unstable();
    interp_heads.dedup();
    // A LOCAL name may be reused by another file of a static build: only
    // one definition is trusted, else the accessor's code says which.
    let interp_head = match interp_heads[..] {
        [address] => Some(address),
        _ => accessor.and_then(|address| {
            accessor_target(bytes_at(&file, &data, address, 16).ok()?, address)
        }),
    };
    if let Some(address) = interp_head {
        symbols.insert(INTERP_HEAD, address);
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
    /// Where `layout`'s walk starts in the process whose `mappings` map the
    /// interpreter object at `object` (opened through the process's root)
    /// as `display_path`.
    pub(crate) fn starts(
        &mut self,
        layout: &PythonLayout,
        object: &Path,
        display_path: &str,
        mappings: &[Mapping],
    ) -> Result<Starts> {
        let facts = self.facts(object, display_path)?;
        let place = |name: &str| place(facts, name, display_path, mappings);
        let symbol = place(start_symbol(layout))?;
        let interpreters = if layout.runtime_interpreters_head == ABSENT32 {
            place(INTERP_HEAD).ok()
        } else {
            Some(symbol + u64::from(layout.runtime_interpreters_head))
        };
        Ok(Starts {
            symbol,
            interpreters,
        })
    }

    /// Where the interpreter object's symbol `name` (one `read_facts`
    /// looks for: `PyType_Type` for exact object mode's types) is in the
    /// process.
    pub(crate) fn symbol_address(
        &mut self,
        name: &str,
        object: &Path,
        display_path: &str,
        mappings: &[Mapping],
    ) -> Result<u64> {
        let facts = self.facts(object, display_path)?;
        place(facts, name, display_path, mappings)
    }

    /// The facts of the interpreter file at `object`, read once per file.
    fn facts(&mut self, object: &Path, display_path: &str) -> Result<&ObjectFacts> {
        let identity = file_identity(object)
            .ok_or_else(|| anyhow!("{} cannot be opened", object.display()))?;
        self.by_file
            .entry(identity)
            .or_insert_with(|| read_facts(object).ok())
            .as_ref()
            .ok_or_else(|| anyhow!("{display_path} is not a readable ELF object"))
    }
}

/// Where the object's symbol `name` is in the process.
fn place(facts: &ObjectFacts, name: &str, display_path: &str, mappings: &[Mapping]) -> Result<u64> {
    let symbol = *facts
        .symbols
        .get(name)
        .ok_or_else(|| anyhow!("{display_path} does not define {name}"))?;
    symbol_in_process(symbol, &facts.segments, display_path, mappings)
        .ok_or_else(|| anyhow!("{display_path} is not mapped where {name} lies"))
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
            kernel_plan(
                &PythonLayout::for_version(version).unwrap(),
                Starts {
                    symbol: 0x1000,
                    interpreters: Some(0x1000 + 40),
                },
            )
        };
        // 3.11: _PyRuntime + gilstate.tstate_current, cframe, is_entry.
        let p311 = plan(11);
        assert_eq!(p311.tstate_source, TSTATE_DIRECT);
        assert_eq!(p311.tstate_address, 0x1000 + 576);
        assert_eq!(p311.frame_chain, CHAIN_CFRAME);
        assert_eq!(p311.entry_marker, ENTRY_IS_ENTRY);
        assert_eq!(p311.lasti_is_int, 0);
        // Its thread list: threads.head, each thread state's next.
        assert_eq!(p311.interp_address, 0x1000 + 40);
        assert_eq!((p311.interp_tstate_head, p311.tstate_next), (16, 8));
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

    #[test]
    fn interp_head_is_read_from_its_accessor_code() {
        // pyenv's 2.7.18: mov 0xe08c9(%rip),%rax; ret.
        let code = [0x48, 0x8b, 0x05, 0xc9, 0x08, 0x0e, 0x00, 0xc3];
        assert_eq!(accessor_target(&code, 0x116e00), Some(0x1f76d0));
        // A non-PIE build's absolute load: mov 0x6d2a40,%rax; ret.
        let code = [0x48, 0x8b, 0x04, 0x25, 0x40, 0x2a, 0x6d, 0x00, 0xc3];
        assert_eq!(accessor_target(&code, 0x40_1000), Some(0x6d2a40));
        // Anything else is not trusted: a load into another register, a
        // load not followed by ret, a load through a register.
        let other_register = [0x48, 0x8b, 0x15, 0xc9, 0x08, 0x0e, 0x00, 0xc3];
        assert_eq!(accessor_target(&other_register, 0x116e00), None);
        let no_ret = [0x48, 0x8b, 0x05, 0xc9, 0x08, 0x0e, 0x00, 0x90, 0xc3];
        assert_eq!(accessor_target(&no_ret, 0x116e00), None);
        let through_register = [0x48, 0x8b, 0x07, 0xc3];
        assert_eq!(accessor_target(&through_register, 0x1000), None);
        assert_eq!(accessor_target(&[], 0x1000), None);
    }

    #[test]
    fn plans_without_a_known_interpreter_list_fall_back_to_the_gil_holder() {
        let version = PythonVersion {
            major: 2,
            minor: 7,
            micro: 18,
        };
        let layout = PythonLayout::for_version(version).unwrap();
        let plan = kernel_plan(
            &layout,
            Starts {
                symbol: 0x2000,
                interpreters: None,
            },
        );
        assert_eq!(plan.tstate_address, 0x2000);
        assert_eq!(plan.interp_address, 0);
        assert_eq!(plan.tstate_interp, 8);
        assert_eq!((plan.interp_tstate_head, plan.tstate_next), (8, 0));
    }

    /// pyenv's 2.7 and 3.6 libraries: `interp_head` from `.symtab`, and
    /// the same address from the accessor's code once the copy is stripped
    /// (as distributions ship them). A missing library fails the test.
    #[test]
    fn interp_head_is_found_with_and_without_symtab() {
        let root = crate::runtime::python::tests::pyenv_root();
        for (build, library) in [
            ("2.7.18", "libpython2.7.so.1.0"),
            ("3.6.15", "libpython3.6m.so.1.0"),
        ] {
            let path = root.join("versions").join(build).join("lib").join(library);
            assert!(path.exists(), "{} is missing", path.display());
            let data = fs::read(&path).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let local = file
                .symbols()
                .find(|s| s.name() == Ok(INTERP_HEAD))
                .expect("pyenv's libpython keeps .symtab")
                .address();
            let facts = read_facts(&path).unwrap();
            assert_eq!(facts.symbols.get(INTERP_HEAD), Some(&local), "{build}");
            let stripped = std::env::temp_dir().join(format!(
                "leaktrace-stripped-{build}-{}.so",
                std::process::id()
            ));
            let status = std::process::Command::new("objcopy")
                .arg("--strip-all")
                .arg(&path)
                .arg(&stripped)
                .status()
                .expect("objcopy runs");
            assert!(status.success());
            let facts = read_facts(&stripped).unwrap();
            let _: std::io::Result<()> = fs::remove_file(&stripped);
            assert_eq!(
                facts.symbols.get(INTERP_HEAD),
                Some(&local),
                "{build}, stripped"
            );
        }
    }
}
