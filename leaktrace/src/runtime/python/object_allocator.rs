//! Exact object mode (`--python-objects`): where `CPython`'s object
//! allocator can be probed so that every object allocation and release is
//! seen, or why it cannot be in this build.
//!
//! - 2.7: `PyObject_Malloc`/`Realloc`/`Free` are pymalloc itself, exported;
//!   every caller reaches them. There is no `PyObject_Calloc`.
//! - 3.6–3.13: `PyObject_Malloc(size)` is a wrapper that jumps through the
//!   allocator table to the static `_PyObject_Malloc(ctx, size)`, and
//!   `PyMem_Malloc` reaches the same function through its own table. The
//!   probes go on the static functions (local symbols, in the full symbol
//!   table of an unstripped build such as pyenv's), which every object and
//!   `PyMem` allocation runs, their first argument skipped. Probing the
//!   wrapper instead would single-step its first instruction (a load) and
//!   miss `PyMem_Malloc`.
//! - A build whose static functions are gone (stripped) cannot be counted
//!   exactly: Debian's LTO+PGO `python3` also inlines the wrapper and the
//!   pool fast path into its callers (168 inlined copies against 58 calls),
//!   so probes on what is left would see a fraction of the allocations and
//!   of the releases, and objects freed through an inlined path would look
//!   leaked. That build is refused with the reason; its leaks are still
//!   found in the default mode, through the C-library and arena
//!   allocations with Python frames on them.
use anyhow::{Result, bail};
use leaktrace_common::AllocFn;

use super::version::PythonVersion;
use crate::target::{FunctionSymbol, elf::named_functions};

/// The object allocator's functions in an interpreter object (`data`),
/// placed for probing, or why exact object mode is impossible there.
pub(crate) fn object_allocator(
    data: &[u8],
    version: PythonVersion,
    display_path: &str,
) -> Result<Vec<FunctionSymbol>> {
    let (wanted, skips_context): (&[(&str, AllocFn)], bool) = if version.major == 2 {
        (
            &[
                ("PyObject_Malloc", AllocFn::PyObjectMalloc),
                ("PyObject_Realloc", AllocFn::PyObjectRealloc),
                ("PyObject_Free", AllocFn::PyObjectFree),
            ],
            false,
        )
    } else {
        (
            &[
                ("_PyObject_Malloc", AllocFn::PyObjectMalloc),
                ("_PyObject_Calloc", AllocFn::PyObjectCalloc),
                ("_PyObject_Realloc", AllocFn::PyObjectRealloc),
                ("_PyObject_Free", AllocFn::PyObjectFree),
            ],
            true,
        )
    };
    let found = named_functions(data, wanted, skips_context)?;
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(_, func)| !found.iter().any(|f| f.func == *func))
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "{display_path} (Python {}.{}) has no {} in its symbol table: a stripped build, \
             whose object allocator may also be inlined into its callers (Debian's python3 \
             is built so), cannot be counted exactly; its leaks are still found without \
             --python-objects",
            version.major,
            version.minor,
            missing.join(", ")
        );
    }
    Ok(found)
}
