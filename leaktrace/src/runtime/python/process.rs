//! A process: which of the objects it maps holds the interpreter, each file
//! read once (by device and inode, like `target::SymbolCache`): under
//! `--all` most Python processes map the same `libpython` or `python3`,
//! and Debian's static `python3` is 7 MB of symbols to read.
use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    fs,
    path::{Path, PathBuf},
};

use super::detect::{self, ObjectVerdict, ReadVersion, Unreadable, VersionSource};
use super::version::PythonVersion;
use crate::target::procfs::{Mapping, file_identity};

/// The interpreter a process runs, with its version read from its object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PythonInterpreter {
    /// Path to open, as seen from leaktrace (through /proc/PID/root).
    pub object: PathBuf,
    /// Path as the target sees it, for reports.
    pub display_path: String,
    pub version: PythonVersion,
    /// Where the version was read.
    pub how: VersionSource,
    /// Other sources that agree with it.
    pub confirmed_by: Vec<VersionSource>,
}

/// What a process was found to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PythonFound {
    /// No object it maps defines an interpreter.
    NotPython,
    /// Python, its version read from its object.
    Python(PythonInterpreter),
    /// Python, its version unreadable: its frames stay native.
    VersionUnreadable {
        object: PathBuf,
        display_path: String,
        /// The file (device, inode), to warn once per object.
        file: (u64, u64),
        why: Unreadable,
    },
}

/// Each file's verdict, read once.
#[derive(Default)]
pub(crate) struct PythonCache {
    by_file: HashMap<(u64, u64), ObjectVerdict>,
    warned: HashSet<(u64, u64)>,
}

impl PythonCache {
    /// The verdict on the file at `path` (None: it cannot be opened, e.g.
    /// deleted, or the process and its root are gone).
    fn verdict(&mut self, path: &Path) -> Option<((u64, u64), &ObjectVerdict)> {
        let identity = file_identity(path)?;
        let verdict = match self.by_file.entry(identity) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => new.insert(match detect::exports_interpreter(path) {
                Some(false) => ObjectVerdict::NotPython,
                _ => detect::inspect(&fs::read(path).ok()?),
            }),
        };
        Some((identity, verdict))
    }

    /// The interpreter among a process's `mappings` (its files under
    /// `root`): the first executable object that defines one, in mapping
    /// order (the program itself comes first).
    pub(crate) fn detect(&mut self, root: &Path, mappings: &[Mapping]) -> PythonFound {
        let mut seen: Vec<&str> = Vec::new();
        for mapping in mappings.iter().filter(|m| m.executable) {
            if seen.contains(&&*mapping.path) {
                continue;
            }
            seen.push(&mapping.path);
            let path = root.join(mapping.path.trim_start_matches('/'));
            let Some((file, verdict)) = self.verdict(&path) else {
                continue;
            };
            let display_path = mapping.path.to_string();
            match verdict {
                ObjectVerdict::NotAnObject(_) | ObjectVerdict::NotPython => {}
                ObjectVerdict::Python(Ok(ReadVersion {
                    version,
                    how,
                    confirmed_by,
                })) => {
                    return PythonFound::Python(PythonInterpreter {
                        object: path,
                        display_path,
                        version: *version,
                        how: *how,
                        confirmed_by: confirmed_by.clone(),
                    });
                }
                ObjectVerdict::Python(Err(why)) => {
                    return PythonFound::VersionUnreadable {
                        object: path,
                        display_path,
                        file,
                        why: why.clone(),
                    };
                }
            }
        }
        PythonFound::NotPython
    }

    /// The warning to print for `found`, the first time its object is seen
    /// unreadable; None after that, and for anything else.
    pub(crate) fn first_warning(&mut self, found: &PythonFound) -> Option<String> {
        let PythonFound::VersionUnreadable {
            display_path,
            file,
            why,
            ..
        } = found
        else {
            return None;
        };
        self.warned.insert(*file).then(|| {
            format!(
                "{display_path} holds a Python interpreter whose version cannot be read ({why}): its frames stay native"
            )
        })
    }
}
