//! Reading a code object out of a live process: its name, file, first line
//! and line table, and naming a Python frame from it.
//!
//! Why a reader of its own: the kernel sends only (code object address,
//! instruction); everything a report prints about a Python frame is in the
//! code object, in the target's memory, laid out as [`PythonLayout`] says.
//! That memory is not ours to trust: the object may have been freed and
//! reused, or never have been a code object. So every size read from it is
//! capped before anything is allocated (names 1 KiB, paths 4 KiB, line
//! tables 64 KiB) and every failure is an error, never a panic. Each code
//! object is read once per process ([`CodeCache`]).
use std::{collections::HashMap, fs::File, os::unix::fs::FileExt as _, sync::Arc};

use anyhow::{Context as _, Result, ensure};

use super::{
    layout::{InstrUnit, LineTableFormat, PythonLayout},
    line_table::line_at,
};

/// The longest function name read.
const MAX_NAME: usize = 1024;
/// The longest file name read.
const MAX_PATH: usize = 4096;
/// The longest line table read.
const MAX_LINE_TABLE: usize = 64 * 1024;
/// Code objects cached before the cache starts over.
const MAX_CACHED: usize = 1 << 16;

/// Memory of a traced process.
pub(crate) trait Memory {
    /// Fills `buf` from `addr`, or fails (unmapped, process gone).
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()>;
}

/// `/proc/PID/mem`, read with `pread` (needs the same rights as ptrace).
pub(crate) struct ProcessMemory {
    pid: u32,
    file: File,
}

impl ProcessMemory {
    pub(crate) fn open(pid: u32) -> Result<ProcessMemory> {
        let file = File::open(format!("/proc/{pid}/mem"))
            .with_context(|| format!("opening /proc/{pid}/mem"))?;
        Ok(ProcessMemory { pid, file })
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, addr).with_context(|| {
            format!(
                "reading {} bytes at {addr:#x} of process {}",
                buf.len(),
                self.pid
            )
        })
    }
}

fn read_u64(mem: &dyn Memory, addr: u64) -> Result<u64> {
    let mut bytes = [0; 8];
    mem.read(addr, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn read_i32(mem: &dyn Memory, addr: u64) -> Result<i32> {
    let mut bytes = [0; 4];
    mem.read(addr, &mut bytes)?;
    Ok(i32::from_le_bytes(bytes))
}

/// `base + offset`, failing instead of wrapping.
fn field(base: u64, offset: u16) -> Result<u64> {
    base.checked_add(u64::from(offset))
        .with_context(|| format!("{base:#x} + {offset} overflows"))
}

/// A length field (`ob_size`, `length`): non-negative and at most `cap`.
fn read_length(mem: &dyn Memory, addr: u64, cap: usize) -> Result<usize> {
    let length = read_u64(mem, addr)? as i64;
    ensure!(
        (0..=cap as i64).contains(&length),
        "length {length} at {addr:#x} is not within 0..={cap}"
    );
    Ok(length as usize)
}

fn read_bytes(mem: &dyn Memory, addr: u64, length: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0; length];
    mem.read(addr, &mut bytes)?;
    Ok(bytes)
}

/// A bytes object's contents (`PyBytesObject`, `PyStringObject` in 2.7).
fn read_bytes_object(
    mem: &dyn Memory,
    layout: &PythonLayout,
    addr: u64,
    cap: usize,
) -> Result<Vec<u8>> {
    let length = read_length(mem, field(addr, layout.bytes_size)?, cap)?;
    read_bytes(mem, field(addr, layout.bytes_data)?, length)
}

/// A `str` (2.7: a byte string, decoded as UTF-8 where it is) of at most
/// `cap` bytes of data.
pub(crate) fn read_string(
    mem: &dyn Memory,
    layout: &PythonLayout,
    addr: u64,
    cap: usize,
) -> Result<String> {
    ensure!(addr != 0, "a NULL string");
    if layout.byte_strings() {
        let bytes = read_bytes_object(mem, layout, addr, cap)?;
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    let mut state = [0; 1];
    mem.read(field(addr, layout.unicode_state)?, &mut state)?;
    let kind = usize::from((state[0] >> 2) & 7);
    let compact = state[0] & 0x20 != 0;
    let ascii = state[0] & 0x40 != 0;
    ensure!(
        compact,
        "string at {addr:#x} is not compact (state {:#x})",
        state[0]
    );
    let length = read_length(mem, field(addr, layout.string_length)?, cap)?;
    if ascii {
        ensure!(kind == 1, "ASCII string at {addr:#x} of kind {kind}");
        let bytes = read_bytes(mem, field(addr, layout.string_data)?, length)?;
        ensure!(bytes.is_ascii(), "ASCII string at {addr:#x} is not");
        return Ok(String::from_utf8(bytes).expect("ASCII is UTF-8"));
    }
    // A cached UTF-8 copy, when the interpreter made one.
    let utf8 = read_u64(mem, field(addr, layout.unicode_utf8)?)?;
    if utf8 != 0 {
        let utf8_length = read_length(mem, field(addr, layout.unicode_utf8_length)?, cap)?;
        let bytes = read_bytes(mem, utf8, utf8_length)?;
        return String::from_utf8(bytes).with_context(|| format!("UTF-8 of {addr:#x}"));
    }
    ensure!(
        matches!(kind, 1 | 2 | 4),
        "string at {addr:#x} of kind {kind}"
    );
    ensure!(
        length * kind <= cap,
        "string at {addr:#x}: {length} characters of {kind} bytes"
    );
    let data = read_bytes(
        mem,
        field(addr, layout.unicode_compact_data)?,
        length * kind,
    )?;
    let char_of = |code: u32| char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    Ok(match kind {
        1 => data.iter().map(|&byte| char::from(byte)).collect(),
        2 => data
            .chunks_exact(2)
            .map(|unit| char_of(u32::from(u16::from_le_bytes([unit[0], unit[1]]))))
            .collect(),
        _ => data
            .chunks_exact(4)
            .map(|unit| char_of(u32::from_le_bytes([unit[0], unit[1], unit[2], unit[3]])))
            .collect(),
    })
}

/// What a report needs from one code object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CodeInfo {
    pub name: String,
    pub filename: String,
    pub first_line: i32,
    pub line_table: Vec<u8>,
    pub line_table_format: LineTableFormat,
    /// Where the bytecode starts in the process (the data of `co_code`,
    /// or `co_code_adaptive`): instruction pointers are relative to it.
    pub code_start: u64,
    pub instr_unit: InstrUnit,
}

/// Reads the code object at `addr`.
pub(crate) fn read_code(mem: &dyn Memory, layout: &PythonLayout, addr: u64) -> Result<CodeInfo> {
    ensure!(addr != 0, "a NULL code object");
    let pointer = |offset: u16| -> Result<u64> { read_u64(mem, field(addr, offset)?) };
    let name = read_string(mem, layout, pointer(layout.code_name)?, MAX_NAME)
        .with_context(|| format!("co_name of the code object at {addr:#x}"))?;
    let filename = read_string(mem, layout, pointer(layout.code_filename)?, MAX_PATH)
        .with_context(|| format!("co_filename of the code object at {addr:#x}"))?;
    let first_line = read_i32(mem, field(addr, layout.code_firstlineno)?)?;
    let table = pointer(layout.code_line_table)?;
    ensure!(table != 0, "the code object at {addr:#x} has no line table");
    let line_table = read_bytes_object(mem, layout, table, MAX_LINE_TABLE)
        .with_context(|| format!("line table of the code object at {addr:#x}"))?;
    let code_start = match layout.instr_unit {
        InstrUnit::Pointer => field(addr, layout.code_code)?,
        InstrUnit::LastiBytes | InstrUnit::LastiCodeUnits => {
            field(pointer(layout.code_code)?, layout.bytes_data)?
        }
    };
    Ok(CodeInfo {
        name,
        filename,
        first_line,
        line_table,
        line_table_format: layout.line_table_format,
        code_start,
        instr_unit: layout.instr_unit,
    })
}

/// One Python frame, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PythonFrame {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
}

/// Names the frame that runs `code` at `instr`: `f_lasti` as the kernel
/// read it (≤3.10, an int in the low 32 bits) or the instruction pointer
/// (3.11+). Before the first instruction (-1, or the pointer one unit
/// before the code) the line is the first line, as `CPython` says.
pub(crate) fn python_frame(code: &CodeInfo, instr: u64) -> PythonFrame {
    let offset = match code.instr_unit {
        InstrUnit::LastiBytes => u64::try_from(instr as u32 as i32).ok(),
        InstrUnit::LastiCodeUnits => u64::try_from(instr as u32 as i32)
            .ok()
            .map(|units| units * 2),
        InstrUnit::Pointer => instr.checked_sub(code.code_start),
    };
    let line = match offset {
        Some(offset) => line_at(
            code.line_table_format,
            &code.line_table,
            code.first_line,
            offset,
        ),
        None => u32::try_from(code.first_line).ok(),
    };
    PythonFrame {
        function: code.name.clone(),
        file: code.filename.clone(),
        line,
    }
}

/// Code objects already read, by (pid, address). A code object freed and
/// another allocated at its address would be named wrongly; code objects
/// live as long as their functions, which in a long-running service is
/// almost always the process. Forget a process when it exits or execs.
#[derive(Default)]
pub(crate) struct CodeCache {
    entries: HashMap<(u32, u64), Option<Arc<CodeInfo>>>,
}

impl CodeCache {
    /// The code object at `addr` in `pid`, read with `read` the first time.
    /// A failed read is remembered too (its address is not read again).
    pub(crate) fn get(
        &mut self,
        pid: u32,
        addr: u64,
        read: impl FnOnce() -> Result<CodeInfo>,
    ) -> Result<Arc<CodeInfo>> {
        if let Some(cached) = self.entries.get(&(pid, addr)) {
            return cached
                .clone()
                .with_context(|| format!("code object {addr:#x} of {pid} was unreadable"));
        }
        if self.entries.len() >= MAX_CACHED {
            self.entries.clear();
        }
        let result = read().map(Arc::new);
        self.entries
            .insert((pid, addr), result.as_ref().ok().cloned());
        result
    }

    /// Drops everything read from `pid` (it exited, or exec'd).
    pub(crate) fn forget(&mut self, pid: u32) {
        self.entries.retain(|&(entry_pid, _), _| entry_pid != pid);
    }

    /// Code objects cached (the tests check each is read once).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
