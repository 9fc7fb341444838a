//! One object file: does it hold a `CPython` interpreter, and which version.
//!
//! An object holds the interpreter when it defines it (`Py_Initialize` and
//! an evaluation entry), whatever its name or path: a pyenv or conda
//! `libpython3.11.so.1.0`, Debian's static `/usr/bin/python3.11`, or a
//! program that embeds `CPython`. The version comes from the object itself,
//! from every source it carries:
//!
//! - `Py_Version` (3.11+), `PY_VERSION_HEX` as an exported constant;
//! - `_Py_DebugOffsets` at the start of `_PyRuntime` (3.13+), when the file
//!   initialises it (it does, in `.data`);
//! - `PY_VERSION`, the string `Py_GetVersion` formats (every version).
//!
//! They must agree. A source the object declares but that cannot be read
//! (`Py_Version` pointing outside the file, a debug-offsets cookie followed
//! by no version) makes the version unreadable rather than falling back:
//! the file is not what it claims, and a wrong version would name wrong
//! frames later. The string is a heuristic (it reads code); when it finds
//! nothing, the declared sources stand alone.
use std::fmt;

use object::Object as _;

use super::{
    elf::{self, InterpreterSymbols, ReadError},
    version::{self, DebugOffsets, PythonVersion},
};

/// Where a version was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum VersionSource {
    /// The `Py_Version` constant (3.11+).
    PyVersionSymbol,
    /// `_Py_DebugOffsets.version` at the start of `_PyRuntime` (3.13+).
    DebugOffsets,
    /// The `PY_VERSION` string `Py_GetVersion` formats.
    VersionString,
}

impl fmt::Display for VersionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionSource::PyVersionSymbol => "the Py_Version symbol",
            VersionSource::DebugOffsets => "_Py_DebugOffsets",
            VersionSource::VersionString => "the version string of Py_GetVersion",
        })
    }
}

/// A version and every source that gave it (the first is the one trusted
/// most: `Py_Version`, then the debug offsets, then the string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReadVersion {
    pub version: PythonVersion,
    pub how: VersionSource,
    /// The other sources, which agree.
    pub confirmed_by: Vec<VersionSource>,
}

/// Why an interpreter's version could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// A declared source is in the symbol table but not in the file.
    SourceOutsideFile {
        symbol: &'static str,
        error: ReadError,
    },
    /// A declared source holds no `PY_VERSION_HEX`.
    NotAVersion { symbol: &'static str, value: u64 },
    /// Two sources disagree.
    Conflict {
        a: (VersionSource, PythonVersion),
        b: (VersionSource, PythonVersion),
    },
    /// No source at all (the string heuristic said why).
    NoSource { string: String },
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::SourceOutsideFile { symbol, error } => write!(f, "{symbol}: {error}"),
            Unreadable::NotAVersion { symbol, value } => {
                write!(f, "{symbol} holds {value:#x}, which is no Python version")
            }
            Unreadable::Conflict { a, b } => {
                write!(f, "{} says {} but {} says {}", a.0, a.1, b.0, b.1)
            }
            Unreadable::NoSource { string } => {
                write!(f, "no Py_Version, no _Py_DebugOffsets, and {string}")
            }
        }
    }
}

/// What one object file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ObjectVerdict {
    /// Not an ELF object this reader understands (truncated, garbage).
    NotAnObject(String),
    /// An object, without an interpreter in it.
    NotPython,
    /// It holds the interpreter; its version, or why not.
    Python(Result<ReadVersion, Unreadable>),
}

/// Inspects an object's bytes. Never panics, whatever they are.
/// Whether the ELF file at `path` exports an interpreter, reading its
/// headers and dynamic symbol table alone: under `--all` every new program
/// on the host is looked at, and reading each whole (a debug build is
/// hundreds of MiB, its full symbol table a million names) only to find
/// it is not Python stalled the event loop. An interpreter exports its C
/// API for extension modules (libpython, Debian's stripped python3). None
/// (read it whole): not an object `object` reads, or one without a
/// dynamic symbol table (a static embedder names it in `.symtab` only).
pub(crate) fn exports_interpreter(path: &std::path::Path) -> Option<bool> {
    use object::Object as _;
    let file = std::fs::File::open(path).ok()?;
    let cache = object::read::ReadCache::new(file);
    let parsed = object::File::parse(&cache).ok()?;
    parsed.dynamic_symbol_table()?;
    Some(elf::exported_interpreter_symbols(&parsed).is_interpreter())
}

pub(crate) fn inspect(data: &[u8]) -> ObjectVerdict {
    let file = match object::File::parse(data) {
        Ok(file) => file,
        Err(err) => return ObjectVerdict::NotAnObject(err.to_string()),
    };
    let symbols = elf::interpreter_symbols(&file);
    if !symbols.is_interpreter() {
        return ObjectVerdict::NotPython;
    }
    ObjectVerdict::Python(read_version(&file, data, &symbols))
}

fn read_version(
    file: &object::File<'_>,
    data: &[u8],
    symbols: &InterpreterSymbols,
) -> Result<ReadVersion, Unreadable> {
    let mut read: Vec<(VersionSource, PythonVersion)> = Vec::new();
    if let Some(symbol) = symbols.py_version {
        // `unsigned long`: 8 bytes on LP64, 4 on 32-bit targets.
        let size = match symbol.size {
            4 | 8 => symbol.size,
            _ if file.is_64() => 8,
            _ => 4,
        };
        let value = elf::unsigned_at(file, data, symbol.address, size).map_err(|error| {
            Unreadable::SourceOutsideFile {
                symbol: "Py_Version",
                error,
            }
        })?;
        let version = PythonVersion::from_hex(value).ok_or(Unreadable::NotAVersion {
            symbol: "Py_Version",
            value,
        })?;
        read.push((VersionSource::PyVersionSymbol, version));
    }
    if let Some(symbol) = symbols.py_runtime {
        // `_PyRuntime` may sit in `.bss` (zero-initialised builds): then
        // there is nothing in the file to read, and nothing declared.
        if let Ok(head) = elf::bytes_at(file, data, symbol.address, 16) {
            match version::debug_offsets(head, file.is_little_endian()) {
                DebugOffsets::Absent => {}
                DebugOffsets::Version(version) => {
                    read.push((VersionSource::DebugOffsets, version));
                }
                DebugOffsets::Malformed(value) => {
                    return Err(Unreadable::NotAVersion {
                        symbol: "_Py_DebugOffsets.version",
                        value,
                    });
                }
            }
        }
    }
    let string = match symbols.py_get_version {
        Some(symbol) => version_string(file, data, symbol),
        None => Err("there is no Py_GetVersion".to_string()),
    };
    if let Ok(version) = string {
        read.push((VersionSource::VersionString, version));
    }
    let Some(&(how, version)) = read.first() else {
        return Err(Unreadable::NoSource {
            string: string.err().unwrap_or_default(),
        });
    };
    if let Some(&other) = read.iter().find(|(_, v)| *v != version) {
        return Err(Unreadable::Conflict {
            a: (how, version),
            b: other,
        });
    }
    Ok(ReadVersion {
        version,
        how,
        confirmed_by: read.iter().skip(1).map(|(source, _)| *source).collect(),
    })
}

/// Longest `Py_GetVersion` decoded: a few dozen instructions in every
/// build seen; the bound keeps a lying symbol size from costing much.
const MAX_GET_VERSION_BYTES: u64 = 512;
/// Longest string read at an address the code takes (the format is 19).
const MAX_STRING: u64 = 64;

/// `PY_VERSION`, from the strings `Py_GetVersion`'s code takes (see
/// `version::addresses_taken` for why).
fn version_string(
    file: &object::File<'_>,
    data: &[u8],
    symbol: elf::Symbol,
) -> Result<PythonVersion, String> {
    if file.architecture() != object::Architecture::X86_64 {
        return Err(format!(
            "Py_GetVersion is not decoded on {:?}",
            file.architecture()
        ));
    }
    let len = match symbol.size {
        0 => MAX_GET_VERSION_BYTES,
        size => size.min(MAX_GET_VERSION_BYTES),
    };
    let code = elf::bytes_at(file, data, symbol.address, len)
        .map_err(|err| format!("Py_GetVersion: {err}"))?;
    let strings: Vec<&[u8]> = version::addresses_taken(code, symbol.address, 64)
        .into_iter()
        .filter_map(|address| elf::c_string_at(file, data, address, MAX_STRING))
        .collect();
    version::version_among(&strings).map_err(str::to_string)
}
