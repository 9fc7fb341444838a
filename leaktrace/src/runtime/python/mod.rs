//! `CPython`: which object of a process holds the interpreter (the
//! executable or a libpython, at any path, in any root), and its version,
//! read from that object and never from a file name.
//!
//! - [`detect`]: one object file: interpreter or not, and its version;
//! - [`version`]: the version encodings an interpreter carries;
//! - [`elf`]: the symbols that mark an interpreter, read with bounds checks;
//! - [`process`]: a process's mappings, each file read once.
//!
//! Then its frames (the userspace half; the kernel walker reads the chain):
//!
//! - [`layout`]: per-version offsets of thread state, frames, code objects;
//! - [`line_table`]: instruction offset to line, in the three encodings;
//! - [`code_object`]: a code object read from `/proc/PID/mem`, capped;
//! - [`frames`]: Python frames spliced in place of the eval-loop frames;
//! - [`walker`]: the kernel walker's instructions for one process.
//!
//! Exact object mode (`--python-objects`):
//!
//! - [`object_allocator`]: where pymalloc can be probed in a build, or why not;
//! - [`object_types`]: the Python type of an outstanding block, read live.
//!
//! A version that cannot be read is reported as such (its frames stay
//! native, with one warning): a wrong version would name wrong frames.
pub(crate) mod code_object;
pub(crate) mod detect;
pub(crate) mod elf;
pub(crate) mod frames;
pub(crate) mod layout;
pub(crate) mod line_table;
pub(crate) mod object_allocator;
pub(crate) mod object_types;
pub(crate) mod process;
pub(crate) mod version;
pub(crate) mod walker;

#[cfg(test)]
mod code_object_tests;
#[cfg(test)]
mod frames_tests;
#[cfg(test)]
mod layout_tests;
#[cfg(test)]
mod line_table_tests;
#[cfg(test)]
mod object_types_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_live;
#[cfg(test)]
mod walk_tests;

pub(crate) use self::process::{PythonCache, PythonFound};
