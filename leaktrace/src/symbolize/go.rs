//! Go code named from the binary's own `.gopclntab`, which blazesym does
//! not read: a binary built with `-ldflags=-s -w` has no `.symtab` and no
//! DWARF, and its Go frames would otherwise stay `[module+0x...]`. The
//! table is the runtime's own, so frames read the way Go's tracebacks do,
//! inlined calls expanded (marked `inlined`, innermost first, as blazesym
//! gives them). Addresses outside the Go function table (cgo's C code, a
//! libc linked in) are left to blazesym.
use std::{collections::HashMap, fs, path::Path, sync::Arc};

use super::{Frame, FrameKind, ObjectKey};
use crate::runtime::go::binary::GoBinary;

/// Larger files are not read for a Go table (none is that large; a
/// hostile file could be).
const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// Each object's Go table, or that it has none, read once.
#[derive(Default)]
pub(super) struct GoObjects {
    by_object: HashMap<ObjectKey, Option<Arc<GoBinary>>>,
}

impl GoObjects {
    /// The Go table of the object `key`, opened at `open`; None when it is
    /// not a Go binary, or its table cannot be read (then blazesym names
    /// what it can).
    pub(super) fn binary(&mut self, key: &ObjectKey, open: &Path) -> Option<Arc<GoBinary>> {
        self.by_object
            .entry(key.clone())
            .or_insert_with(|| read(open))
            .clone()
    }
}

fn read(path: &Path) -> Option<Arc<GoBinary>> {
    if fs::metadata(path).ok()?.len() > MAX_OBJECT_BYTES {
        return None;
    }
    GoBinary::parse(fs::read(path).ok()?)
        .ok()
        .flatten()
        .map(Arc::new)
}

/// The frames of the code at file `offset` of the Go binary `binary`
/// (innermost first), or None when no Go function holds it.
pub(super) fn frames(binary: &GoBinary, module: &str, offset: u64) -> Option<Vec<Frame>> {
    let pc = binary.address_of_offset(offset)?;
    let frames = binary.frames(pc).ok()??;
    Some(
        frames
            .into_iter()
            .map(|frame| Frame {
                function: frame.function,
                file: frame.file,
                line: frame.line,
                module: module.to_string(),
                address: 0,
                inlined: frame.inlined,
                fallback: false,
                kind: FrameKind::Native,
                python_unmatched: false,
            })
            .collect(),
    )
}
