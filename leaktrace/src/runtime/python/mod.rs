//! CPython: which object of a process holds the interpreter (the
//! executable or a libpython, at any path, in any root), and its version,
//! read from that object and never from a file name.
//!
//! - [`detect`]: one object file: interpreter or not, and its version;
//! - [`version`]: the version encodings an interpreter carries;
//! - [`elf`]: the symbols that mark an interpreter, read with bounds checks;
//! - [`process`]: a process's mappings, each file read once.
//!
//! A version that cannot be read is reported as such (its frames stay
//! native, with one warning): a wrong version would name wrong frames.
pub(crate) mod detect;
pub(crate) mod elf;
pub(crate) mod process;
pub(crate) mod version;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_live;

use anyhow::{Context as _, Result};

pub(crate) use self::{
    detect::VersionSource,
    process::{PythonCache, PythonFound, PythonInterpreter},
    version::PythonVersion,
};
use crate::target::procfs::{check_pid, parse_maps, process_root};

/// The interpreter running in process `pid`, from /proc/PID/maps and the
/// files under /proc/PID/root (a container's).
pub(crate) fn detect_pid(pid: u32, cache: &mut PythonCache) -> Result<PythonFound> {
    check_pid(pid)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    Ok(cache.detect(&process_root(pid), &parse_maps(&maps)))
}
