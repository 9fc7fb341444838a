//! Which object of a process is a Go binary, each file read once (by
//! device and inode, like the Python cache): the report names the Go
//! release a process runs.
use std::{
    collections::{HashMap, hash_map::Entry},
    fs,
    path::Path,
};

use super::{
    buildinfo::{self, GoBuild},
    image::Image,
};
use crate::target::procfs::{Mapping, file_identity};

/// Larger files are not read (no Go binary is that large).
const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// The Go binary a process maps, and its build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GoFound {
    /// Its path as the process sees it, for reports.
    pub display_path: String,
    pub build: GoBuild,
}

/// Each file's build, or that it is not Go, read once.
#[derive(Default)]
pub(crate) struct GoCache {
    by_file: HashMap<(u64, u64), Option<GoBuild>>,
}

impl GoCache {
    /// The first executable object among `mappings` (files under `root`)
    /// that is a Go binary: the program itself, or a Go shared library.
    pub(crate) fn detect(&mut self, root: &Path, mappings: &[Mapping]) -> Option<GoFound> {
        let mut seen: Vec<&str> = Vec::new();
        for mapping in mappings.iter().filter(|m| m.executable) {
            if seen.contains(&&*mapping.path) {
                continue;
            }
            seen.push(&mapping.path);
            let path = root.join(mapping.path.trim_start_matches('/'));
            let Some(identity) = file_identity(&path) else {
                continue;
            };
            let build = match self.by_file.entry(identity) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => new.insert(inspect(&path)),
            };
            if let Some(build) = build {
                return Some(GoFound {
                    display_path: mapping.path.to_string(),
                    build: build.clone(),
                });
            }
        }
        None
    }
}

fn inspect(path: &Path) -> Option<GoBuild> {
    if fs::metadata(path).ok()?.len() > MAX_OBJECT_BYTES || !has_go_sections(path) {
        return None;
    }
    buildinfo::inspect(&Image::parse(fs::read(path).ok()?)?)
}

/// Whether the ELF file at `path` has a section only Go's linker writes
/// (`.go.buildinfo`, `.gopclntab`, `.note.go.buildid`: all kept by `-s
/// -w`), reading its headers alone: under `--all` every new program on the
/// host is looked at, and reading each whole (a debug build is hundreds of
/// MiB) to find it is not Go stalled the event loop.
pub(crate) fn has_go_sections(path: &Path) -> bool {
    use object::{Object as _, ObjectSection as _, read::ReadCache};
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return false;
    };
    elf.sections().any(|section| {
        matches!(
            section.name(),
            Ok(".go.buildinfo" | ".gopclntab" | ".note.go.buildid")
        )
    })
}
