//! Allocator choice: which of a process's objects to probe for the malloc
//! family and which for mmap, in the dynamic linker's symbol-resolution
//! order. Pure, so the choice is tested on made-up objects.
use std::path::PathBuf;

use anyhow::{Result, bail};
use leaktrace_common::AllocFn;

use super::{FunctionSymbol, ProbedObject, elf::ObjectSymbols};

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

/// An object mapped in (or to be loaded by) the target, in the dynamic
/// linker's search order, with what it defines.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub path: PathBuf,
    pub display_path: String,
    pub symbols: ObjectSymbols,
}

/// Chooses what to probe among objects in symbol-resolution order (the
/// executable first). Pure, so the choice is tested on made-up objects.
pub(crate) fn choose_objects(candidates: &[Candidate]) -> Result<Vec<ProbedObject>> {
    let defines_malloc: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.symbols.defines(AllocFn::Malloc))
        .collect();
    let allocator = match defines_malloc.first() {
        // A pure Go program: nothing to probe, its heap is read from its
        // runtime's profile.
        None if candidates.iter().any(|c| c.symbols.is_go) => return Ok(Vec::new()),
        None => bail!(
            "no allocator found: none of the target's {} objects defines malloc",
            candidates.len()
        ),
        Some(first) if std::ptr::eq(*first, &raw const candidates[0]) => *first,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::placement::Placement;

    fn symbols(funcs: &[(AllocFn, u64)], is_c_library: bool) -> ObjectSymbols {
        ObjectSymbols {
            functions: funcs
                .iter()
                .map(|&(func, file_offset)| FunctionSymbol {
                    func,
                    file_offset,
                    placement: Placement::default(),
                    aliases: vec![],
                    skips_context: false,
                })
                .collect(),
            is_c_library,
            is_go: false,
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

    #[test]
    fn a_pure_go_program_probes_nothing_and_is_traced() {
        let go = ObjectSymbols {
            is_go: true,
            ..symbols(&[], false)
        };
        assert!(choose_objects(&[cand("/app", go)]).unwrap().is_empty());
    }
}
