//! Target: which ELF objects of a process provide its allocator.
//!
//! Nothing is assumed about paths. The malloc family is probed in the object
//! whose `malloc` the dynamic linker binds to: the executable itself when it
//! defines one (static binaries, Go with cgo, programs that link jemalloc
//! in), otherwise an interposer such as a preloaded jemalloc, tcmalloc or
//! mimalloc (any object that defines `malloc` but is not the C library),
//! otherwise the C library. mmap/munmap/mremap are probed where they are
//! defined, which is the C library even when the allocator is jemalloc.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};
use leaktrace_common::AllocFn;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use crate::placement::{self, Placement};

/// A traced function found in an object, at the file offset uprobes take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionSymbol {
    pub func: AllocFn,
    /// File offset of the function's first instruction.
    pub file_offset: u64,
    /// Where its entry probe goes, from the first instruction (see
    /// `placement`): 0, or the first instruction the kernel emulates.
    pub placement: Placement,
    /// Other traced names at the same address (glibc's `aligned_alloc` is
    /// `memalign`): probed once, reported under `func`.
    pub aliases: Vec<AllocFn>,
}

/// One ELF object to probe and the functions to probe in it.
#[derive(Clone, Debug)]
pub struct ProbedObject {
    /// Path to open and attach to, as seen from leaktrace's mount namespace.
    pub path: PathBuf,
    /// Path as the target sees it, for messages and reports.
    pub display_path: String,
    pub functions: Vec<FunctionSymbol>,
}

/// What an object defines, as far as choosing the allocator goes.
#[derive(Clone, Debug, Default)]
pub struct ObjectSymbols {
    pub functions: Vec<FunctionSymbol>,
    /// Defines `__libc_start_main`: it is the C library, never an interposer.
    pub is_c_library: bool,
}

impl ObjectSymbols {
    /// The symbol found for `func` itself (aliases aside).
    pub fn function(&self, func: AllocFn) -> Option<&FunctionSymbol> {
        self.functions.iter().find(|f| f.func == func)
    }

    fn defines(&self, func: AllocFn) -> bool {
        self.functions
            .iter()
            .any(|f| f.func == func || f.aliases.contains(&func))
    }
}

const MALLOC_FAMILY: [AllocFn; 15] = [
    AllocFn::Malloc,
    AllocFn::Calloc,
    AllocFn::Realloc,
    AllocFn::Reallocarray,
    AllocFn::PosixMemalign,
    AllocFn::AlignedAlloc,
    AllocFn::Memalign,
    AllocFn::Valloc,
    AllocFn::Pvalloc,
    AllocFn::Free,
    AllocFn::Mallocx,
    AllocFn::Rallocx,
    AllocFn::Xallocx,
    AllocFn::Dallocx,
    AllocFn::Sdallocx,
];
const MAPPING_FAMILY: [AllocFn; 3] = [AllocFn::Mmap, AllocFn::Munmap, AllocFn::Mremap];

/// Reads the traced functions an ELF image defines (dynamic symbols first,
/// then the full symbol table for static or unstripped executables).
pub fn object_symbols(data: &[u8]) -> Result<ObjectSymbols> {
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
        match functions.iter_mut().find(|f| f.file_offset == file_offset) {
            Some(existing) => existing.aliases.push(func),
            None => {
                functions.push(FunctionSymbol {
                    func,
                    file_offset,
                    placement: Placement::default(),
                    aliases: Vec::new(),
                });
                addresses.push(address);
            }
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

/// An object mapped in (or to be loaded by) the target, in the dynamic
/// linker's search order, with what it defines.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub path: PathBuf,
    pub display_path: String,
    pub symbols: ObjectSymbols,
}

/// Chooses what to probe among objects in symbol-resolution order (the
/// executable first). Pure, so the choice is tested on made-up objects.
pub fn choose_objects(candidates: &[Candidate]) -> Result<Vec<ProbedObject>> {
    let defines_malloc: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.symbols.defines(AllocFn::Malloc))
        .collect();
    let allocator = match defines_malloc.first() {
        None => bail!(
            "no allocator found: none of the target's {} objects defines malloc",
            candidates.len()
        ),
        Some(first) if std::ptr::eq(*first, &candidates[0]) => *first,
        Some(_) => defines_malloc
            .iter()
            .find(|c| !c.symbols.is_c_library)
            .or(defines_malloc.first())
            .copied()
            .expect("non-empty"),
    };
    let mut objects = vec![ProbedObject {
        path: allocator.path.clone(),
        display_path: allocator.display_path.clone(),
        functions: pick(&allocator.symbols, &MALLOC_FAMILY),
    }];
    if let Some(mapper) = candidates.iter().find(|c| c.symbols.defines(AllocFn::Mmap)) {
        let functions = pick(&mapper.symbols, &MAPPING_FAMILY);
        match objects.iter_mut().find(|o| o.path == mapper.path) {
            Some(same) => same.functions.extend(functions),
            None => objects.push(ProbedObject {
                path: mapper.path.clone(),
                display_path: mapper.display_path.clone(),
                functions,
            }),
        }
    }
    Ok(objects)
}

fn pick(symbols: &ObjectSymbols, family: &[AllocFn]) -> Vec<FunctionSymbol> {
    symbols
        .functions
        .iter()
        .filter(|f| family.contains(&f.func))
        .cloned()
        .collect()
}

fn candidate(path: PathBuf, display_path: String) -> Result<Candidate> {
    let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let symbols =
        object_symbols(&data).with_context(|| format!("reading symbols of {display_path}"))?;
    Ok(Candidate {
        path,
        display_path,
        symbols,
    })
}

/// Whether process `pid` is there (a zombie still is, until reaped).
pub fn process_exists(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Error text for a PID that is not there.
pub fn check_pid(pid: u32) -> Result<()> {
    if !process_exists(pid) {
        bail!("no such process: {pid}");
    }
    Ok(())
}

/// The objects to probe in a running process, from /proc/PID/maps.
pub fn objects_for_pid(pid: u32) -> Result<Vec<ProbedObject>> {
    objects_for_pid_cached(pid, &mut SymbolCache::default())
}

/// What objects define, by file (device and inode): `--all` looks for the
/// allocator of every process that starts, and most of them map the same
/// C library, whose symbols take milliseconds to read.
#[derive(Default)]
pub struct SymbolCache {
    by_file: HashMap<(u64, u64), Option<ObjectSymbols>>,
}

impl SymbolCache {
    fn candidate(&mut self, path: PathBuf, display_path: String) -> Option<Candidate> {
        let identity = file_identity(&path)?;
        let symbols = self
            .by_file
            .entry(identity)
            .or_insert_with(|| {
                candidate(path.clone(), display_path.clone())
                    .ok()
                    .map(|c| c.symbols)
            })
            .clone()?;
        Some(Candidate {
            path,
            display_path,
            symbols,
        })
    }
}

/// (device, inode) of a file: what a uprobe is attached to, whatever the
/// path (a container's /proc/PID/root/... or ours).
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// [`objects_for_pid`], reading each object's symbols once per `cache`.
pub fn objects_for_pid_cached(pid: u32, cache: &mut SymbolCache) -> Result<Vec<ProbedObject>> {
    check_pid(pid)?;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|_| anyhow!("pid {pid} has no user-space program to trace (a kernel thread?)"))?;
    let mut paths: Vec<String> = vec![exe.to_string_lossy().into_owned()];
    for mapping in crate::symbolize::parse_maps(&maps) {
        if mapping.executable && !paths.iter().any(|p| **p == *mapping.path) {
            paths.push(mapping.path.to_string());
        }
    }
    let root = crate::symbolize::process_root(pid);
    let mut candidates = Vec::new();
    for display_path in paths {
        let path = root.join(display_path.trim_start_matches('/'));
        // Deleted or unreadable objects cannot be probed; skip, not fail.
        if let Some(c) = cache.candidate(path, display_path) {
            candidates.push(c);
        }
    }
    choose_objects(&candidates)
}

/// Finds `program` the way execvp would.
pub fn resolve_program(program: &Path) -> Result<PathBuf> {
    if program.components().count() > 1 {
        if !program.exists() {
            bail!("command not found: {}", program.display());
        }
        return Ok(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("command not found: {}", program.display()))
}

/// The objects to probe for a command not started yet: the executable,
/// then what its dynamic linker would load (`ld.so --list`, which honours
/// LD_PRELOAD and LD_LIBRARY_PATH exactly as the launch will).
pub fn objects_for_command(program: &Path) -> Result<Vec<ProbedObject>> {
    let data = fs::read(program).with_context(|| format!("reading {}", program.display()))?;
    let interpreter = program_interpreter(&data)
        .with_context(|| format!("{} is not an ELF executable", program.display()))?;
    let display = program.to_string_lossy().into_owned();
    let mut candidates = vec![Candidate {
        path: program.to_path_buf(),
        display_path: display,
        symbols: object_symbols(&data)?,
    }];
    if let Some(interpreter) = interpreter {
        let listing = Command::new(&interpreter)
            .arg("--list")
            .arg(program)
            .output()
            .with_context(|| format!("running {} --list", interpreter.display()))?;
        if !listing.status.success() {
            bail!(
                "{} --list {} failed: {}",
                interpreter.display(),
                program.display(),
                String::from_utf8_lossy(&listing.stderr).trim()
            );
        }
        for path in parse_ld_list(&String::from_utf8_lossy(&listing.stdout)) {
            if let Ok(c) = candidate(PathBuf::from(&path), path) {
                candidates.push(c);
            }
        }
    }
    choose_objects(&candidates)
}

/// The dynamic linker named by PT_INTERP; None for a static executable.
pub fn program_interpreter(data: &[u8]) -> Result<Option<PathBuf>> {
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

/// Paths from `ld.so --list` output, in load order.
pub fn parse_ld_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once(" => ") {
                Some((_, rest)) => rest.split(" (").next()?,
                None => line.split(" (").next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols(funcs: &[(AllocFn, u64)], is_c_library: bool) -> ObjectSymbols {
        ObjectSymbols {
            functions: funcs
                .iter()
                .map(|&(func, file_offset)| FunctionSymbol {
                    func,
                    file_offset,
                    placement: Placement::default(),
                    aliases: vec![],
                })
                .collect(),
            is_c_library,
        }
    }

    fn cand(name: &str, symbols: ObjectSymbols) -> Candidate {
        Candidate {
            path: PathBuf::from(name),
            display_path: name.into(),
            symbols,
        }
    }

    #[test]
    fn glibc_program_probes_libc_for_both_families() {
        let objects = choose_objects(&[
            cand("/usr/bin/prog", symbols(&[], false)),
            cand(
                "/lib/libc.so.6",
                symbols(
                    &[
                        (AllocFn::Malloc, 0x100),
                        (AllocFn::Free, 0x200),
                        (AllocFn::Mmap, 0x300),
                    ],
                    true,
                ),
            ),
        ])
        .unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].display_path, "/lib/libc.so.6");
        let funcs: Vec<_> = objects[0].functions.iter().map(|f| f.func).collect();
        assert_eq!(funcs, [AllocFn::Malloc, AllocFn::Free, AllocFn::Mmap]);
    }

    #[test]
    fn preloaded_jemalloc_wins_over_libc_and_mmap_stays_in_libc() {
        let objects = choose_objects(&[
            cand("/usr/bin/redis-server", symbols(&[], false)),
            cand(
                "/lib/libc.so.6",
                symbols(&[(AllocFn::Malloc, 0x100), (AllocFn::Mmap, 0x300)], true),
            ),
            cand(
                "/lib/libjemalloc.so.2",
                symbols(&[(AllocFn::Malloc, 0x10), (AllocFn::Mallocx, 0x20)], false),
            ),
        ])
        .unwrap();
        assert_eq!(objects[0].display_path, "/lib/libjemalloc.so.2");
        assert_eq!(objects[0].functions.len(), 2);
        assert_eq!(objects[1].display_path, "/lib/libc.so.6");
        assert_eq!(objects[1].functions[0].func, AllocFn::Mmap);
    }

    #[test]
    fn static_executable_is_its_own_allocator() {
        let objects = choose_objects(&[cand(
            "/app",
            symbols(&[(AllocFn::Malloc, 0x100), (AllocFn::Mmap, 0x500)], true),
        )])
        .unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].functions.len(), 2);
    }

    #[test]
    fn no_malloc_anywhere_is_an_error() {
        let err = choose_objects(&[cand("/app", symbols(&[], false))]).unwrap_err();
        assert!(err.to_string().contains("no allocator found"), "{err}");
    }

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
    /// +3, posix_memalign at +7, malloc at +0; another build may differ).
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

    #[test]
    fn ld_list_output_is_parsed_in_order() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibjemalloc.so.2 => /lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007e)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ld_list(text),
            [
                "/lib/x86_64-linux-gnu/libjemalloc.so.2",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
