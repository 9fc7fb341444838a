//! ELF reading: the traced functions an object defines, at the file
//! offsets uprobes take, with each entry probe placed on a decoded
//! instruction; and the dynamic linker a program names.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use leaktrace_common::AllocFn;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use super::{
    FunctionSymbol,
    placement::{self, Placement},
    procfs::Mapping,
};

/// The largest object read (symbols, unwind tables): objects are read
/// whole into memory, and a traced process may map anything. Debian's
/// largest libraries (libLLVM, Chromium) are a few hundred MiB; an object
/// beyond this is skipped with an error, its allocator unprobed and its
/// frames unwound by frame pointers.
pub(crate) const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// Reads an object file, at most [`MAX_OBJECT_BYTES`] (the size is
/// checked before and while reading: a file may grow, and some report
/// no size).
pub(crate) fn read_object(path: &Path) -> Result<Vec<u8>> {
    read_capped(path, MAX_OBJECT_BYTES)
}

/// Reads a file of at most `cap` bytes, failing on a larger one.
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let size = file.metadata().map_or(0, |m| m.len());
    if size > cap {
        bail!(
            "{} is {size} bytes, more than the {cap} leaktrace reads",
            path.display()
        );
    }
    let mut data = Vec::with_capacity(size as usize);
    file.take(cap.saturating_add(1))
        .read_to_end(&mut data)
        .with_context(|| format!("reading {}", path.display()))?;
    if data.len() as u64 > cap {
        bail!(
            "{} is more than the {cap} bytes leaktrace reads",
            path.display()
        );
    }
    Ok(data)
}

/// What an object defines, as far as choosing the allocator goes.
#[derive(Clone, Debug, Default)]
pub(crate) struct ObjectSymbols {
    pub functions: Vec<FunctionSymbol>,
    /// Defines `__libc_start_main`: it is the C library, never an interposer.
    pub is_c_library: bool,
    /// Has a `.gopclntab`: a Go binary, whose heap is read from its
    /// runtime's profile when nothing defines malloc.
    pub is_go: bool,
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
        // CPython's object allocator is found apart, only in exact object
        // mode (`runtime::python::object_allocator`); brk and madvise are
        // growth mode's tracepoints, never probed.
        let Some(func) = AllocFn::ALL
            .into_iter()
            .find(|f| !f.is_python_object() && !f.is_kernel_event() && f.symbol() == name)
        else {
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
                skips_context: false,
            });
            addresses.push(address);
        }
    }
    place_probes(&file, data, &mut functions, &addresses);
    Ok(ObjectSymbols {
        functions,
        is_c_library,
        is_go: file.section_by_name(".gopclntab").is_some(),
    })
}

/// The functions named in `wanted` that `data` defines, local symbols
/// included (3.6+'s `_PyObject_Malloc` is static, found only in the full
/// symbol table), each placed like the allocator's. A name defined twice
/// keeps its first definition.
pub(crate) fn named_functions(
    data: &[u8],
    wanted: &[(&str, AllocFn)],
    skips_context: bool,
) -> Result<Vec<FunctionSymbol>> {
    let file = object::File::parse(data).context("not an ELF object")?;
    let mut functions: Vec<FunctionSymbol> = Vec::new();
    let mut addresses = Vec::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        let Some(&(_, func)) = wanted.iter().find(|(wanted, _)| *wanted == name) else {
            continue;
        };
        if functions.iter().any(|f| f.func == func) {
            continue;
        }
        let file_offset = virtual_to_file_offset(&file, symbol.address()).ok_or_else(|| {
            anyhow!(
                "{name} at {:#x} is outside every loadable segment",
                symbol.address()
            )
        })?;
        functions.push(FunctionSymbol {
            func,
            file_offset,
            placement: Placement::default(),
            aliases: Vec::new(),
            skips_context,
        });
        addresses.push(symbol.address());
    }
    place_probes(&file, data, &mut functions, &addresses);
    Ok(functions)
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
        let Ok(start) = usize::try_from(function.file_offset) else {
            continue;
        };
        let Some(code) = data.get(start..start.saturating_add(64).min(data.len())) else {
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
        .map(|(f, &address)| {
            (
                address.saturating_add(1),
                address.saturating_add(f.placement.offset),
            )
        })
        .collect();
    let mut refuse = |address: u64, what: &str| {
        for (function, (low, high)) in functions.iter_mut().zip(&windows) {
            if (*low..=*high).contains(&address) && function.placement.offset != 0 {
                function.placement = Placement {
                    offset: 0,
                    reason: placement::PlacementReason::Blocked(format!(
                        "{what} {address:#x}, inside the skipped instructions"
                    )),
                };
            }
        }
    };
    for section in file.sections() {
        if section.kind() != object::SectionKind::Text {
            continue;
        }
        let Ok(code) = section.data() else { continue };
        for target in placement::direct_branch_targets(code, section.address()) {
            refuse(target, "code jumps to");
        }
    }
    // Nor where a symbol or an unwind entry (FDE) begins: code may enter
    // there (a second entry point, a label called through a pointer, a
    // split-off fragment) without passing the probe.
    for symbol in file.symbols().chain(file.dynamic_symbols()) {
        if symbol.address() != 0 {
            refuse(symbol.address(), "a symbol starts at");
        }
    }
    for start in crate::unwind::fde_starts(data) {
        refuse(start, "an unwind entry (FDE) starts at");
    }
}

/// (file offset, file size, virtual address) of each of the object's
/// segments, as [`load_bias`] takes them; None when it is not an object.
pub(crate) fn loadable_segments(data: &[u8]) -> Option<Vec<(u64, u64, u64)>> {
    let file = object::File::parse(data).ok()?;
    Some(
        file.segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, size, s.address())
            })
            .collect(),
    )
}

/// The file offset of a virtual address, through the loadable segment
/// that holds it. Segment numbers come from the file: checked arithmetic
/// (a segment may claim to reach past the end of the address space, or
/// to start at a file offset near `u64::MAX`).
fn virtual_to_file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (file_start, file_size) = segment.file_range();
        let into = address.checked_sub(segment.address())?;
        if into >= file_size {
            return None;
        }
        file_start.checked_add(into)
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

/// An object's load bias, from one of its mappings: the mapping's address
/// less the virtual address of its file offset, through the loadable
/// segment (file offset, file size, virtual address) that holds it,
/// page-aligned as the loader maps it. Any address of the object is its
/// virtual address plus the bias (wrapping: a bias may be "negative").
pub(crate) fn load_bias(segments: &[(u64, u64, u64)], mapping: &Mapping) -> Option<u64> {
    const PAGE: u64 = 0xfff;
    let &(offset, _, vaddr) = segments.iter().find(|&&(offset, size, _)| {
        mapping.file_offset >= offset & !PAGE
            && mapping.file_offset < offset.saturating_add(size.max(1))
    })?;
    let mapped_vaddr = (vaddr & !PAGE).checked_add(mapping.file_offset - (offset & !PAGE))?;
    Some(mapping.start.wrapping_sub(mapped_vaddr))
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::*;

    /// Each probed function's placement in the object at `path` is where
    /// the binutils oracle (tests/common/objdump.rs: readelf and objdump,
    /// not iced-x86) says it must be. Returns the functions compared, with
    /// their offsets; functions whose first instructions the oracle's
    /// rules do not cover are left out (and printed).
    fn placements_match_the_oracle(path: &str, symbols: &ObjectSymbols) -> Vec<(AllocFn, u64)> {
        let library = crate::test_support::objdump::Library::read(Path::new(path));
        let mut compared = Vec::new();
        for function in &symbols.functions {
            let arguments = std::iter::once(function.func)
                .chain(function.aliases.iter().copied())
                .map(|func| placement::argument_registers(func).len())
                .max()
                .unwrap_or(0);
            match library.expected_probe_offset(function.func.symbol(), arguments) {
                Ok(expected) => {
                    assert_eq!(
                        function.placement.offset, expected,
                        "{path}: {:?}: leaktrace placed it at +{}, the oracle says +{expected} ({:?})",
                        function.func, function.placement.offset, function.placement.reason
                    );
                    compared.push((function.func, expected));
                }
                Err(why) => eprintln!("{path}: {:?} not compared: {why}", function.func),
            }
        }
        compared
    }

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
    const LIBJEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

    #[test]
    fn real_libc_aliases_memalign_and_aligned_alloc() {
        const TEST: &str = "real_libc_aliases_memalign_and_aligned_alloc";
        let Some(data) = crate::test_support::read_or_missing(TEST, LIBC) else {
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
    }

    /// Where each function of this machine's C library is probed, derived
    /// from the library itself (glibc 2.36's free is probed on its `je` at
    /// +3, `posix_memalign` at +7, malloc at +0; another build may differ).
    #[test]
    fn real_libc_placements_match_objdump() {
        const TEST: &str = "real_libc_placements_match_objdump";
        if !crate::test_support::require_binutils(TEST) {
            return;
        }
        let Some(data) = crate::test_support::read_or_missing(TEST, LIBC) else {
            return;
        };
        let symbols = object_symbols(&data).unwrap();
        let compared = placements_match_the_oracle(LIBC, &symbols);
        eprintln!("{LIBC}: placements agree with objdump: {compared:?}");
        if !compared.iter().any(|(func, _)| *func == AllocFn::Free) {
            crate::test_support::prerequisite_missing(
                TEST,
                "a C library whose free the objdump oracle can judge",
            );
        }
    }

    #[test]
    fn real_jemalloc_placements_match_objdump() {
        const TEST: &str = "real_jemalloc_placements_match_objdump";
        if !crate::test_support::require_binutils(TEST) {
            return;
        }
        let Ok(data) = fs::read(LIBJEMALLOC) else {
            return crate::test_support::prerequisite_missing(
                TEST,
                &format!(
                    "{LIBJEMALLOC} (apt-get install libjemalloc2; cargo xtask test installs it)"
                ),
            );
        };
        let symbols = object_symbols(&data).unwrap();
        assert!(!symbols.is_c_library);
        for func in [
            AllocFn::Mallocx,
            AllocFn::Rallocx,
            AllocFn::Xallocx,
            AllocFn::Dallocx,
            AllocFn::Sdallocx,
        ] {
            assert!(symbols.defines(func), "{func:?}");
        }
        let compared = placements_match_the_oracle(LIBJEMALLOC, &symbols);
        eprintln!("{LIBJEMALLOC}: placements agree with objdump: {compared:?}");
        if !compared.iter().any(|(func, _)| *func == AllocFn::Malloc) {
            crate::test_support::prerequisite_missing(
                TEST,
                "a libjemalloc whose malloc the objdump oracle can judge",
            );
        }
    }

    /// A `free` that starts `test %rdi,%rdi; je`: its probe moves to the
    /// `je` (offset 3), unless a symbol (or an FDE) starts inside those 3
    /// bytes: code entering there would hit the probe without a call.
    #[test]
    fn a_symbol_inside_the_skipped_bytes_keeps_the_probe_at_offset_zero() {
        const TEST: &str = "a_symbol_inside_the_skipped_bytes_keeps_the_probe_at_offset_zero";
        let build = |name: &str, inner_label: &str| -> Option<Vec<u8>> {
            let dir = std::env::temp_dir()
                .join(format!("leaktrace-placement-{}-{name}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            let source = dir.join("free.c");
            fs::write(
                &source,
                format!(
                    "__asm__(\".text\\n.globl free\\n.type free,@function\\nfree:\\n\"\n\
                     \"  test %rdi,%rdi\\n{inner_label}\"\n\
                     \"  je 1f\\n  ret\\n1: ret\\n.size free, .-free\\n\");\n"
                ),
            )
            .unwrap();
            let library = dir.join("libfree.so");
            let built = std::process::Command::new("cc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(&library)
                .arg(&source)
                .output();
            let data = match built {
                Ok(out) if out.status.success() => fs::read(&library).ok(),
                Ok(out) => panic!("{TEST}: cc: {}", String::from_utf8_lossy(&out.stderr)),
                Err(_) => {
                    crate::test_support::prerequisite_missing(TEST, "cc (apt-get install gcc)");
                    None
                }
            };
            fs::remove_dir_all(&dir).unwrap();
            data
        };
        let Some(plain) = build("plain", "") else {
            return;
        };
        let placement = |data: &[u8]| {
            object_symbols(data)
                .unwrap()
                .function(AllocFn::Free)
                .expect("free is defined")
                .placement
                .clone()
        };
        assert_eq!(placement(&plain).offset, 3, "{:?}", placement(&plain));
        let labelled = build(
            "labelled",
            ".globl free_inner\\n.type free_inner,@function\\nfree_inner:\\n",
        )
        .expect("cc worked a moment ago");
        let refused = placement(&labelled);
        assert_eq!(refused.offset, 0, "{refused:?}");
        assert!(
            matches!(&refused.reason, placement::PlacementReason::Blocked(why) if why.contains("a symbol starts at")),
            "{refused:?}"
        );
    }

    /// Found by the elf fuzz target: a loadable segment at file offset
    /// `u64::MAX` overflowed `address - start + file_start` (a panic in
    /// debug builds, a wrong offset in release). Its symbols are now
    /// outside every segment: a one-line error.
    #[test]
    fn segment_at_the_last_file_offset_does_not_overflow() {
        // In a Vec: ELF headers are read in place, 8-byte aligned.
        let data =
            include_bytes!("../../tests/fuzz_corpus/elf/crash_segment_end_overflow").to_vec();
        let err = object_symbols(&data).unwrap_err().to_string();
        assert!(err.contains("is outside every loadable segment"), "{err}");
    }

    /// Objects are read whole: a file past the cap is refused, by its
    /// size or, for a file that reports none (procfs), while reading.
    #[test]
    fn reads_stop_at_the_cap() {
        let path = std::env::temp_dir().join(format!("leaktrace-cap-{}", std::process::id()));
        fs::write(&path, [7u8; 10]).unwrap();
        assert_eq!(read_capped(&path, 10).unwrap(), [7u8; 10]);
        let err = read_capped(&path, 9).unwrap_err().to_string();
        assert!(err.contains("is 10 bytes, more than the 9"), "{err}");
        fs::remove_file(&path).unwrap();
        let maps = Path::new("/proc/self/maps");
        assert_eq!(fs::metadata(maps).unwrap().len(), 0);
        let err = read_capped(maps, 16).unwrap_err().to_string();
        assert!(err.contains("is more than the 16 bytes"), "{err}");
    }

    #[test]
    fn bias_maps_addresses_back_to_virtual_addresses() {
        // A PIE's text: file offset 0x1000, vaddr 0x1000, mapped at 0x5555_0000_1000.
        let segments = [(0, 0x800, 0), (0x1000, 0x2000, 0x1000)];
        let mapping = Mapping {
            start: 0x5555_0000_1000,
            end: 0x5555_0000_3000,
            file_offset: 0x1000,
            executable: true,
            path: "/bin/x".into(),
        };
        let pie_bias = load_bias(&segments, &mapping).unwrap();
        assert_eq!(0x5555_0000_1234 - pie_bias, 0x1234);
        // A non-PIE: vaddr 0x401000 at offset 0x1000, mapped at 0x401000.
        let segments = [(0x1000, 0x2000, 0x401000)];
        let mapping = Mapping {
            start: 0x401000,
            ..mapping
        };
        assert_eq!(load_bias(&segments, &mapping), Some(0));
    }
}
