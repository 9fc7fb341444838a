//! Target: which ELF objects of a process provide its allocator.
//!
//! Nothing is assumed about paths. The malloc family is probed in the object
//! whose `malloc` the dynamic linker binds to: the executable itself when it
//! defines one (static binaries, Go with cgo, programs that link jemalloc
//! in), otherwise an interposer such as a preloaded jemalloc, tcmalloc or
//! mimalloc (any object that defines `malloc` but is not the C library),
//! otherwise the C library. mmap/munmap/mremap are probed where they are
//! defined, which is the C library even when the allocator is jemalloc.
//!
//! - [`elf`]: what an object defines; [`placement`]: where each probe goes;
//! - [`allocator`]: which objects to probe;
//! - [`procfs`]: `/proc` (mappings, roots, command lines, cgroups);
//! - [`cgroup`]: the cgroup v2 path and the container and pod it names;
//! - [`command`]: a command not started yet; [`launch`]: starting it held
//!   at its entry point.
pub(crate) mod allocator;
pub(crate) mod cgroup;
pub(crate) mod command;
pub(crate) mod elf;
pub(crate) mod huge_pages;
pub(crate) mod launch;
mod launch_wait;
pub(crate) mod page_map;
pub(crate) mod placement;
pub(crate) mod procfs;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use leaktrace_common::AllocFn;

use self::{
    allocator::{Candidate, choose_objects},
    elf::{ObjectSymbols, object_symbols},
    placement::Placement,
    procfs::{check_pid, file_identity},
};

/// A traced function found in an object, at the file offset uprobes take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FunctionSymbol {
    pub func: AllocFn,
    /// File offset of the function's first instruction.
    pub file_offset: u64,
    /// Where its entry probe goes, from the first instruction (see
    /// `placement`): 0, or the first instruction the kernel emulates.
    pub placement: Placement,
    /// Other traced names at the same address (glibc's `aligned_alloc` is
    /// `memalign`): probed once, reported under `func`.
    pub aliases: Vec<AllocFn>,
    /// Its first argument is a context pointer, not one of `func`'s
    /// (`_PyObject_Malloc(ctx, size)` in 3.6+).
    pub skips_context: bool,
}

/// One ELF object to probe and the functions to probe in it.
#[derive(Clone, Debug)]
pub(crate) struct ProbedObject {
    /// Path to open and attach to, as seen from leaktrace's mount namespace.
    pub path: PathBuf,
    /// Path as the target sees it, for messages and reports.
    pub display_path: String,
    pub functions: Vec<FunctionSymbol>,
}

fn candidate(path: PathBuf, display_path: String) -> Result<Candidate> {
    test_slow_read(&path);
    let data = elf::read_object(&path)?;
    let symbols =
        object_symbols(&data).with_context(|| format!("reading symbols of {display_path}"))?;
    Ok(Candidate {
        path,
        display_path,
        symbols,
    })
}

/// Test-only: `LEAKTRACE_TEST_SLOW_OBJECT=NAME:SECONDS` makes reading the
/// symbols of an object whose file is named NAME take SECONDS longer, and
/// says so, so that `tests/processes.rs` can show the event loop draining
/// while a big new binary is read under `--all`.
fn test_slow_read(path: &Path) {
    let Some(setting) = std::env::var_os("LEAKTRACE_TEST_SLOW_OBJECT") else {
        return;
    };
    let setting = setting.to_string_lossy();
    let Some((name, seconds)) = setting.rsplit_once(':') else {
        return;
    };
    if path.file_name().is_some_and(|f| *f == *name)
        && let Ok(seconds) = seconds.parse::<u64>()
    {
        eprintln!("leaktrace: test: reading {name} for {seconds} s");
        std::thread::sleep(std::time::Duration::from_secs(seconds.min(600)));
    }
}

/// What objects define, by file (device and inode): `--all` looks for the
/// allocator of every process that starts, and most of them map the same
/// C library, whose symbols take milliseconds to read.
#[derive(Default)]
pub(crate) struct SymbolCache {
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

/// The objects to probe in a running process, from /proc/PID/maps,
/// reading each object's symbols once per `cache`.
pub(crate) fn objects_for_pid_cached(
    pid: u32,
    cache: &mut SymbolCache,
) -> Result<Vec<ProbedObject>> {
    check_pid(pid)?;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|_| anyhow!("pid {pid} has no user-space program to trace (a kernel thread?)"))?;
    let mut paths: Vec<String> = vec![exe.to_string_lossy().into_owned()];
    for mapping in procfs::parse_maps(&maps) {
        if mapping.executable && !paths.iter().any(|p| **p == *mapping.path) {
            paths.push(mapping.path.to_string());
        }
    }
    let root = procfs::process_root(pid);
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
