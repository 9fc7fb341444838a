//! ELF reading: the traced functions an object defines, at the file
//! offsets uprobes take, with each entry probe placed on a decoded
//! instruction; and the dynamic linker a program names.
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use leaktrace_common::AllocFn;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use super::{
    FunctionSymbol,
    placement::{self, Placement},
};

/// What an object defines, as far as choosing the allocator goes.
#[derive(Clone, Debug, Default)]
pub(crate) struct ObjectSymbols {
    pub functions: Vec<FunctionSymbol>,
    /// Defines `__libc_start_main`: it is the C library, never an interposer.
    pub is_c_library: bool,
}

impl ObjectSymbols {
    /// The symbol found for `func` itself (aliases aside).
    #[cfg(test)]
    pub(crate) fn function(&self, func: AllocFn) -> Option<&FunctionSymbol> {
        self.functions.iter().find(|f| f.func == func)
    }

    pub(super) fn defines(&self, func: AllocFn) -> bool {
        self.functions
            .iter()
            .any(|f| f.func == func || f.aliases.contains(&func))
    }
}

/// Reads the traced functions an ELF image defines (dynamic symbols first,
/// then the full symbol table for static or unstripped executables).
pub(crate) fn object_symbols(data: &[u8]) -> Result<ObjectSymbols> {
    let file = object::File::parse(data).context("not an ELF object")?;
    let mut found: Vec<(AllocFn, u64, u64)> = Vec::new();
    let mut is_c_library = false;
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() || !symbol.is_global() {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        if name == "__libc_start_main" {
            is_c_library = true;
            continue;
        }
        if symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        // `mmap64` is glibc's other name for `mmap`.
        let name = if name == "mmap64" { "mmap" } else { name };
        let Some(func) = AllocFn::ALL.into_iter().find(|f| f.symbol() == name) else {
            continue;
        };
        if found.iter().any(|(f, _, _)| *f == func) {
            continue;
        }
        let file_offset = virtual_to_file_offset(&file, symbol.address()).ok_or_else(|| {
            anyhow!(
                "{name} at {:#x} is outside every loadable segment",
                symbol.address()
            )
        })?;
        found.push((func, file_offset, symbol.address()));
    }
    found.sort_by_key(|(func, _, _)| *func);
    let mut functions: Vec<FunctionSymbol> = Vec::new();
    let mut addresses = Vec::new();
    for (func, file_offset, address) in found {
        if let Some(existing) = functions.iter_mut().find(|f| f.file_offset == file_offset) {
            existing.aliases.push(func);
        } else {
            functions.push(FunctionSymbol {
                func,
                file_offset,
                placement: Placement::default(),
                aliases: Vec::new(),
            });
            addresses.push(address);
        }
    }
    place_probes(&file, data, &mut functions, &addresses);
    Ok(ObjectSymbols {
        functions,
        is_c_library,
    })
}

/// Decodes each function's first instructions to place its probe, then
/// undoes any placement whose skipped bytes some direct jump or call in the
/// object's code lands in (the probe could then fire without a call, or a
/// call could miss it).
fn place_probes(
    file: &object::File<'_>,
    data: &[u8],
    functions: &mut [FunctionSymbol],
    addresses: &[u64],
) {
    for (function, &address) in functions.iter_mut().zip(addresses) {
        let start = function.file_offset as usize;
        let Some(code) = data.get(start..(start + 64).min(data.len())) else {
            continue;
        };
        let mut protected = placement::argument_registers(function.func).to_vec();
        for alias in &function.aliases {
            protected.extend_from_slice(placement::argument_registers(*alias));
        }
        function.placement = placement::place(code, address, &protected);
    }
    if functions.iter().all(|f| f.placement.offset == 0) {
        return;
    }
    let windows: Vec<(u64, u64)> = functions
        .iter()
        .zip(addresses)
        .map(|(f, &address)| (address + 1, address + f.placement.offset))
        .collect();
    for section in file.sections() {
        if section.kind() != object::SectionKind::Text {
            continue;
        }
        let Ok(code) = section.data() else { continue };
        for target in placement::direct_branch_targets(code, section.address()) {
            for (function, (low, high)) in functions.iter_mut().zip(&windows) {
                if (*low..=*high).contains(&target) && function.placement.offset != 0 {
                    function.placement = Placement {
                        offset: 0,
                        reason: placement::PlacementReason::Blocked(format!(
                            "code jumps to {target:#x}, inside the skipped instructions"
                        )),
                    };
                }
            }
        }
    }
}

fn virtual_to_file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (file_start, file_size) = segment.file_range();
        let start = segment.address();
        (address >= start && address < start + file_size).then(|| address - start + file_start)
    })
}

/// The dynamic linker named by `PT_INTERP`; None for a static executable.
pub(crate) fn program_interpreter(data: &[u8]) -> Result<Option<PathBuf>> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let elf = ElfFile64::<object::Endianness>::parse(data)?;
    let endian = elf.endian();
    for header in elf.elf_program_headers() {
        if header.p_type(endian) == object::elf::PT_INTERP {
            let bytes = header
                .data(endian, data)
                .map_err(|()| anyhow!("PT_INTERP is outside the file"))?;
            let path = String::from_utf8_lossy(bytes)
                .trim_end_matches('\0')
                .to_string();
            return Ok(Some(PathBuf::from(path)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn real_libc_aliases_memalign_and_aligned_alloc() {
        let Ok(data) = fs::read("/lib/x86_64-linux-gnu/libc.so.6") else {
            assert!(std::env::var_os("CI").is_none(), "no glibc in CI");
            eprintln!("SKIPPED: no glibc at /lib/x86_64-linux-gnu/libc.so.6");
            return;
        };
        let symbols = object_symbols(&data).unwrap();
        assert!(symbols.is_c_library);
        for func in [
            AllocFn::Malloc,
            AllocFn::Free,
            AllocFn::Calloc,
            AllocFn::Realloc,
            AllocFn::Mmap,
        ] {
            assert!(symbols.defines(func), "{func:?}");
        }
        let aligned = symbols.function(AllocFn::AlignedAlloc).unwrap();
        assert_eq!(aligned.aliases, [AllocFn::Memalign]);
        // Debian 12's free starts with test %rdi,%rdi; je: probed on the je.
        let offset_of = |func| symbols.function(func).unwrap().placement.offset;
        assert_eq!(offset_of(AllocFn::Free), 3);
        assert_eq!(offset_of(AllocFn::Malloc), 0);
        assert_eq!(offset_of(AllocFn::PosixMemalign), 7);
    }

    #[test]
    fn real_jemalloc_malloc_and_free_move_off_their_single_stepped_first_instruction() {
        let Ok(data) = fs::read("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "libjemalloc2 missing in CI"
            );
            eprintln!("SKIPPED: libjemalloc2 not installed (cargo xtask test installs it)");
            return;
        };
        let symbols = object_symbols(&data).unwrap();
        assert!(!symbols.is_c_library);
        let placement_of = |func| symbols.function(func).unwrap().placement.clone();
        assert_eq!(
            placement_of(AllocFn::Malloc).offset,
            7,
            "{:?}",
            placement_of(AllocFn::Malloc)
        );
        let free = placement_of(AllocFn::Free);
        assert!(free.offset > 0, "{free:?}");
        for func in [
            AllocFn::Mallocx,
            AllocFn::Rallocx,
            AllocFn::Xallocx,
            AllocFn::Dallocx,
            AllocFn::Sdallocx,
        ] {
            assert!(symbols.defines(func), "{func:?}");
        }
    }
}
