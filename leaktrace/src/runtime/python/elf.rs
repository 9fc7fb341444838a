//! The few symbols of an object that say whether it holds a `CPython`
//! interpreter, and bounds-checked reads of the bytes behind them.
//!
//! The file is the target's: hostile. Every address is mapped to a file
//! offset through the loadable segments with checked arithmetic, every read
//! is a `get` on the file's bytes, and a symbol that points outside the file
//! is an error value, never a panic.
use object::{Object as _, ObjectSegment as _};

/// Symbols read from an object, by the names this module cares about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Symbol {
    pub address: u64,
    pub size: u64,
}

/// What an object defines that marks or versions an interpreter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct InterpreterSymbols {
    /// `Py_Initialize`: every `CPython` from 2.0 on exports it.
    pub py_initialize: bool,
    /// An evaluation loop or its entry: `PyEval_EvalFrameEx` (2.7, and a
    /// wrapper up to 3.13), `_PyEval_EvalFrameDefault` (3.6+) or
    /// `PyEval_EvalCode` (all).
    pub eval: bool,
    /// `Py_Version` (3.11+): `const unsigned long` = `PY_VERSION_HEX`.
    pub py_version: Option<Symbol>,
    /// `Py_GetVersion`: formats `PY_VERSION` into `sys.version`.
    pub py_get_version: Option<Symbol>,
    /// `_PyRuntime`: starts with `_Py_DebugOffsets` in 3.13+.
    pub py_runtime: Option<Symbol>,
}

impl InterpreterSymbols {
    /// Defines the interpreter itself (not merely imports it, as the
    /// `python` executable of a shared build does, nor forwards to it, as
    /// `libpython3.so` does).
    pub(super) fn is_interpreter(&self) -> bool {
        self.py_initialize && self.eval
    }
}

/// The symbols an ELF image defines, dynamic table first (Debian's
/// stripped `python3` still exports the C API there), then the full table
/// (static, unstripped embedders).
pub(super) fn interpreter_symbols(file: &object::File<'_>) -> InterpreterSymbols {
    symbols_among(file.dynamic_symbols().chain(file.symbols()))
}

/// [`interpreter_symbols`] of the dynamic table alone.
pub(super) fn exported_interpreter_symbols<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
) -> InterpreterSymbols {
    symbols_among(file.dynamic_symbols())
}

fn symbols_among<'data>(
    symbols: impl Iterator<Item = impl object::ObjectSymbol<'data>>,
) -> InterpreterSymbols {
    let mut found = InterpreterSymbols::default();
    for symbol in symbols {
        if !symbol.is_definition() || !symbol.is_global() {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        let value = Symbol {
            address: symbol.address(),
            size: symbol.size(),
        };
        match name {
            "Py_Initialize" => found.py_initialize = true,
            "PyEval_EvalFrameEx" | "_PyEval_EvalFrameDefault" | "PyEval_EvalCode" => {
                found.eval = true;
            }
            "Py_Version" => {
                found.py_version.get_or_insert(value);
            }
            "Py_GetVersion" => {
                found.py_get_version.get_or_insert(value);
            }
            "_PyRuntime" => {
                found.py_runtime.get_or_insert(value);
            }
            _ => {}
        }
    }
    found
}

/// Why bytes at an address could not be read from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// No loadable segment holds the address.
    OutsideSegments { address: u64 },
    /// A segment holds it, but not its bytes in the file (`.bss`, or a
    /// segment that claims more file than there is).
    NotInFile { address: u64 },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::OutsideSegments { address } => {
                write!(f, "{address:#x} is outside every loadable segment")
            }
            ReadError::NotInFile { address } => {
                write!(f, "the bytes at {address:#x} are not in the file")
            }
        }
    }
}

/// Up to `len` bytes at virtual `address`, as far as the file holds them
/// within the segment (fewer near the end of the segment's file bytes).
pub(super) fn bytes_at<'d>(
    file: &object::File<'_>,
    data: &'d [u8],
    address: u64,
    len: u64,
) -> Result<&'d [u8], ReadError> {
    let mut in_segment = false;
    for segment in file.segments() {
        let start = segment.address();
        let Some(offset_in) = address.checked_sub(start) else {
            continue;
        };
        if offset_in >= segment.size() {
            continue;
        }
        in_segment = true;
        let (file_start, file_size) = segment.file_range();
        if offset_in >= file_size {
            continue;
        }
        let available = file_size - offset_in;
        let Some(begin) = file_start.checked_add(offset_in) else {
            continue;
        };
        let Some(end) = begin.checked_add(len.min(available)) else {
            continue;
        };
        let (Ok(begin), Ok(end)) = (usize::try_from(begin), usize::try_from(end)) else {
            continue;
        };
        if let Some(bytes) = data.get(begin..end) {
            return Ok(bytes);
        }
    }
    Err(if in_segment {
        ReadError::NotInFile { address }
    } else {
        ReadError::OutsideSegments { address }
    })
}

/// The NUL-terminated string at `address`, at most `max` bytes long
/// before its NUL; None when there is no NUL within reach.
pub(super) fn c_string_at<'d>(
    file: &object::File<'_>,
    data: &'d [u8],
    address: u64,
    max: u64,
) -> Option<&'d [u8]> {
    let bytes = bytes_at(file, data, address, max.saturating_add(1)).ok()?;
    let nul = bytes.iter().position(|&b| b == 0)?;
    bytes.get(..nul)
}

/// An unsigned integer of `size` bytes (1 to 8) at `address`, in the
/// file's byte order.
pub(super) fn unsigned_at(
    file: &object::File<'_>,
    data: &[u8],
    address: u64,
    size: u64,
) -> Result<u64, ReadError> {
    let bytes = bytes_at(file, data, address, size)?;
    if bytes.len() as u64 != size || size == 0 || size > 8 {
        return Err(ReadError::NotInFile { address });
    }
    let mut value = 0u64;
    if file.is_little_endian() {
        for &b in bytes.iter().rev() {
            value = (value << 8) | u64::from(b);
        }
    } else {
        for &b in bytes {
            value = (value << 8) | u64::from(b);
        }
    }
    Ok(value)
}
