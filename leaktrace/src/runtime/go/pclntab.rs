//! `.gopclntab`: the table the Go runtime itself names its frames with
//! (tracebacks, `runtime.Callers`), so it is in every Go binary, stripped
//! ones included. Three layouts are read, told apart by the header's magic:
//!
//! - Go 1.16/1.17 (`0xfffffffa`): function table of pointer-sized
//!   (entry, offset) pairs, funcdata as absolute addresses;
//! - Go 1.18/1.19 (`0xfffffff0`): entries as 32-bit offsets from the text
//!   start, funcdata as 32-bit offsets from `moduledata.gofunc`;
//! - Go 1.20+ (`0xfffffff1`): the same, with `startLine` in each function
//!   record and a shorter inline-tree record.
//!
//! A PC's frames: the function holding it (binary search of the function
//! table), its file and line (the pcfile and pcline value tables at that
//! PC), and, where the compiler inlined calls, the inline tree
//! (`FUNCDATA_InlTree`, indexed by `PCDATA_InlTreeIndex` at the PC): each
//! inlined call names its function and the PC in its caller whose file and
//! line are the call site, as the runtime's `inlineUnwinder` walks it.
//!
//! The table is the target's: hostile. Every offset is checked against the
//! table's length, every loop is capped, and a malformed table is a
//! [`PclntabError`], never a panic.
use std::fmt;

/// `FUNCDATA_InlTree` and `PCDATA_InlTreeIndex` (`internal/abi`; the same
/// numbers since Go 1.12).
const FUNCDATA_INL_TREE: u32 = 3;
const PCDATA_INL_TREE_INDEX: u32 = 2;

/// Caps: more functions than any real binary has, longer names and paths
/// than any real one, more inlining depth than the compiler produces, more
/// steps through one value table than one function's code can need.
const MAX_FUNCTIONS: usize = 1 << 24;
const MAX_STRING: usize = 64 << 10;
const MAX_INLINE_DEPTH: usize = 256;
const MAX_VALUE_STEPS: usize = 1 << 20;

/// Which layout the table has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Go116,
    Go118,
    Go120,
}

/// Why a table, or a part of it, could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PclntabError {
    /// The header's magic is not one of the layouts read here.
    UnknownMagic(u32),
    /// The header is short, or names a pointer size or instruction size
    /// no Go target has.
    BadHeader(&'static str),
    /// An offset or count points outside the table.
    OutOfBounds(&'static str),
    /// A funcdata address is not readable in the binary.
    Funcdata(u64),
}

impl fmt::Display for PclntabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PclntabError::UnknownMagic(magic) => {
                write!(
                    f,
                    ".gopclntab magic {magic:#x} is not a layout of Go 1.16 or later"
                )
            }
            PclntabError::BadHeader(what) => write!(f, ".gopclntab header: {what}"),
            PclntabError::OutOfBounds(what) => write!(f, ".gopclntab: {what} out of bounds"),
            PclntabError::Funcdata(address) => {
                write!(f, "funcdata at {address:#x} is not in the binary")
            }
        }
    }
}

impl std::error::Error for PclntabError {}

/// Where the bytes that funcdata point at (the inline trees) are read.
pub(crate) trait Memory {
    /// Exactly `len` bytes at virtual `address`, or None.
    fn exact_at(&self, address: u64, len: usize) -> Option<&[u8]>;
}

/// One frame at a PC: a function, and the file and line it is at there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GoFrame {
    /// As the runtime prints it: `main.growKeep`, `net/http.(*conn).serve`.
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Inlined into the next frame (the same machine code).
    pub inlined: bool,
}

/// A function of the table: its name and where its code starts and ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GoFunction {
    pub name: String,
    pub entry: u64,
    /// One past its last byte (the next function's entry).
    pub end: u64,
}

/// A parsed header over the table's bytes. Parsing reads the header only;
/// each lookup reads what it needs.
#[derive(Clone, Copy)]
pub(crate) struct Pclntab<'d> {
    data: &'d [u8],
    format: Format,
    pointer_size: usize,
    quantum: u64,
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    functab: usize,
    /// `moduledata.gofunc` (1.18+): the base of funcdata offsets; None when
    /// it could not be found (then inlined calls are not expanded).
    gofunc: Option<u64>,
}

/// One function's record, decoded.
#[derive(Clone, Copy, Debug)]
struct Func {
    /// Its offset in the table.
    at: usize,
    entry: u64,
    end: u64,
    name_off: u32,
    pcfile: u32,
    pcln: u32,
    npcdata: u32,
    cu_offset: u32,
    nfuncdata: u8,
    /// The record's fixed part's size (pcdata follow it).
    size: usize,
}

impl<'d> Pclntab<'d> {
    /// Reads the header of the table `data`. `gofunc` is where
    /// `moduledata.gofunc` points (1.18+; see [`super::moduledata`]).
    pub(crate) fn parse(data: &'d [u8], gofunc: Option<u64>) -> Result<Self, PclntabError> {
        let magic = le_u32(data, 0).ok_or(PclntabError::BadHeader("shorter than its magic"))?;
        let format = match magic {
            0xffff_fffa => Format::Go116,
            0xffff_fff0 => Format::Go118,
            0xffff_fff1 => Format::Go120,
            other => return Err(PclntabError::UnknownMagic(other)),
        };
        let (Some(&min_lc), Some(&pointer_size)) = (data.get(6), data.get(7)) else {
            return Err(PclntabError::BadHeader("shorter than its sizes"));
        };
        if data.get(4..6) != Some(&[0, 0]) {
            return Err(PclntabError::BadHeader("padding is not zero"));
        }
        if !matches!(min_lc, 1 | 2 | 4) {
            return Err(PclntabError::BadHeader("instruction size is not 1, 2 or 4"));
        }
        let pointer_size = usize::from(pointer_size);
        if pointer_size != 4 && pointer_size != 8 {
            return Err(PclntabError::BadHeader("pointer size is not 4 or 8"));
        }
        let word = |index: usize| {
            le_word(data, 8 + index * pointer_size, pointer_size)
                .ok_or(PclntabError::BadHeader("shorter than its fields"))
        };
        let offset = |index: usize| -> Result<usize, PclntabError> {
            let value = usize::try_from(word(index)?)
                .map_err(|_| PclntabError::OutOfBounds("table offset"))?;
            if value > data.len() {
                return Err(PclntabError::OutOfBounds("table offset"));
            }
            Ok(value)
        };
        let nfunc = usize::try_from(word(0)?).unwrap_or(usize::MAX);
        if nfunc > MAX_FUNCTIONS {
            return Err(PclntabError::BadHeader(
                "more functions than any binary has",
            ));
        }
        // Go 1.18 added textStart after nfiles; the offsets follow.
        let (text_start, first) = match format {
            Format::Go116 => (0, 2),
            Format::Go118 | Format::Go120 => (word(2)?, 3),
        };
        Ok(Pclntab {
            data,
            format,
            pointer_size,
            quantum: u64::from(min_lc),
            nfunc,
            text_start,
            funcnames: offset(first)?,
            cutab: offset(first + 1)?,
            filetab: offset(first + 2)?,
            pctab: offset(first + 3)?,
            functab: offset(first + 4)?,
            gofunc,
        })
    }

    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// The header's text start (1.18+; 0 before): `moduledata.text`.
    pub(crate) fn text_start(&self) -> u64 {
        self.text_start
    }

    /// The header's offset of the function-name table.
    pub(crate) fn funcnames_offset(&self) -> usize {
        self.funcnames
    }

    /// The range of code the function table covers.
    pub(crate) fn text_range(&self) -> Result<(u64, u64), PclntabError> {
        Ok((self.functab_entry(0)?.0, self.functab_entry(self.nfunc)?.0))
    }

    /// Function table entry `index`: (entry PC, record offset).
    fn functab_entry(&self, index: usize) -> Result<(u64, usize), PclntabError> {
        let bounds = PclntabError::OutOfBounds("function table");
        let (entry, offset) = match self.format {
            Format::Go116 => {
                let at = index
                    .checked_mul(2 * self.pointer_size)
                    .and_then(|o| o.checked_add(self.functab))
                    .ok_or(bounds.clone())?;
                let entry = le_word(self.data, at, self.pointer_size).ok_or(bounds.clone())?;
                let offset = le_word(self.data, at + self.pointer_size, self.pointer_size)
                    .ok_or(bounds.clone())?;
                (entry, offset)
            }
            Format::Go118 | Format::Go120 => {
                let at = index
                    .checked_mul(8)
                    .and_then(|o| o.checked_add(self.functab))
                    .ok_or(bounds.clone())?;
                let entry = le_u32(self.data, at).ok_or(bounds.clone())?;
                let offset = le_u32(self.data, at + 4).ok_or(bounds.clone())?;
                let entry = self
                    .text_start
                    .checked_add(u64::from(entry))
                    .ok_or(bounds.clone())?;
                (entry, u64::from(offset))
            }
        };
        let offset = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(self.functab))
            .filter(|&o| o <= self.data.len())
            .ok_or(bounds)?;
        Ok((entry, offset))
    }

    /// The function holding `pc`, by binary search (None: outside the Go
    /// code of this table, e.g. cgo's C code).
    fn find(&self, pc: u64) -> Result<Option<Func>, PclntabError> {
        if self.nfunc == 0 {
            return Ok(None);
        }
        let (first, _) = self.functab_entry(0)?;
        let (last, _) = self.functab_entry(self.nfunc)?;
        if pc < first || pc >= last {
            return Ok(None);
        }
        // The last entry whose start is <= pc; the search is bounded by
        // log2(nfunc) steps whatever the (possibly unsorted) entries say.
        let (mut low, mut high) = (0, self.nfunc);
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if self.functab_entry(middle)?.0 <= pc {
                low = middle;
            } else {
                high = middle;
            }
        }
        let (entry, at) = self.functab_entry(low)?;
        let (end, _) = self.functab_entry(low + 1)?;
        if pc < entry || pc >= end {
            return Ok(None);
        }
        self.func_at(at, end).map(Some)
    }

    /// The function record at table offset `at`, its code ending at `end`.
    fn func_at(&self, at: usize, end: u64) -> Result<Func, PclntabError> {
        let bounds = || PclntabError::OutOfBounds("function record");
        let field = |index: usize| le_u32(self.data, at + index * 4).ok_or_else(bounds);
        let (entry, fields_at) = match self.format {
            Format::Go116 => (
                le_word(self.data, at, self.pointer_size).ok_or_else(bounds)?,
                self.pointer_size,
            ),
            Format::Go118 | Format::Go120 => {
                let entry_off = field(0)?;
                (self.text_start.saturating_add(u64::from(entry_off)), 4)
            }
        };
        // nameOff, args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset.
        let u32_at =
            |index: usize| le_u32(self.data, at + fields_at + index * 4).ok_or_else(bounds);
        let size = match self.format {
            Format::Go116 => self.pointer_size + 36,
            Format::Go118 => 40,
            Format::Go120 => 44,
        };
        let nfuncdata = *self.data.get(at + size - 1).ok_or_else(bounds)?;
        Ok(Func {
            at,
            entry,
            end,
            name_off: u32_at(0)?,
            pcfile: u32_at(4)?,
            pcln: u32_at(5)?,
            npcdata: u32_at(6)?,
            cu_offset: u32_at(7)?,
            nfuncdata,
            size,
        })
    }

    /// The NUL-terminated string at `offset` of the table from `base`.
    fn string(&self, base: usize, offset: u32) -> Result<String, PclntabError> {
        let start = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(base))
            .ok_or(PclntabError::OutOfBounds("string"))?;
        let rest = self
            .data
            .get(start..)
            .ok_or(PclntabError::OutOfBounds("string"))?;
        let rest = &rest[..rest.len().min(MAX_STRING)];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(PclntabError::OutOfBounds("unterminated string"))?;
        Ok(String::from_utf8_lossy(&rest[..nul]).into_owned())
    }

    fn name(&self, name_off: u32) -> Result<String, PclntabError> {
        self.string(self.funcnames, name_off)
    }

    /// The value of the value table at `table` (an offset in pctab) for
    /// `pc` in `func`; -1 when the table is absent or ends before `pc`,
    /// as the runtime's `pcvalue` answers.
    fn value_at(&self, func: &Func, table: u32, pc: u64) -> Result<i32, PclntabError> {
        if table == 0 {
            return Ok(-1);
        }
        let mut at = usize::try_from(table)
            .ok()
            .and_then(|t| t.checked_add(self.pctab))
            .ok_or(PclntabError::OutOfBounds("value table"))?;
        let mut value: i32 = -1;
        let mut current = func.entry;
        for _ in 0..MAX_VALUE_STEPS {
            let (delta, used) = varint(self.data, at)?;
            // A zero delta ends the table, except as the first entry.
            if delta == 0 && current != func.entry {
                return Ok(-1);
            }
            at += used;
            // Zig-zag: the low bit is the sign.
            let delta = (delta >> 1).cast_signed() ^ -((delta & 1).cast_signed());
            value = value.wrapping_add(delta);
            let (pc_delta, used) = varint(self.data, at)?;
            at += used;
            current = current.saturating_add(u64::from(pc_delta) * self.quantum);
            if pc < current {
                return Ok(value);
            }
        }
        Err(PclntabError::OutOfBounds("value table longer than its cap"))
    }

    /// File and line at `pc` of `func` (None each where the tables say
    /// nothing, as the runtime's "?" and 0).
    fn file_line(
        &self,
        func: &Func,
        pc: u64,
    ) -> Result<(Option<String>, Option<u32>), PclntabError> {
        let file_index = self.value_at(func, func.pcfile, pc)?;
        let line = self.value_at(func, func.pcln, pc)?;
        let line = u32::try_from(line).ok().filter(|&l| l > 0);
        let file = match u32::try_from(file_index) {
            Ok(index) => self.file_name(func.cu_offset, index)?,
            Err(_) => None,
        };
        Ok((file, line))
    }

    /// File `index` of the compilation unit at `cu_offset` of the cutab.
    fn file_name(&self, cu_offset: u32, index: u32) -> Result<Option<String>, PclntabError> {
        let slot = cu_offset
            .checked_add(index)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| s.checked_mul(4))
            .and_then(|s| s.checked_add(self.cutab))
            .ok_or(PclntabError::OutOfBounds("cutab"))?;
        let offset = le_u32(self.data, slot).ok_or(PclntabError::OutOfBounds("cutab"))?;
        if offset == u32::MAX {
            return Ok(None);
        }
        self.string(self.filetab, offset).map(Some)
    }

    /// The offset in pctab of `func`'s pcdata table `table` (0: none).
    fn pcdata(&self, func: &Func, table: u32) -> Result<u32, PclntabError> {
        if table >= func.npcdata {
            return Ok(0);
        }
        le_u32(self.data, func.at + func.size + table as usize * 4)
            .ok_or(PclntabError::OutOfBounds("pcdata"))
    }

    /// The address of `func`'s funcdata `index` (None: it has none).
    fn funcdata(&self, func: &Func, index: u32) -> Result<Option<u64>, PclntabError> {
        if index >= u32::from(func.nfuncdata) {
            return Ok(None);
        }
        let bounds = PclntabError::OutOfBounds("funcdata");
        let after_pcdata = (func.npcdata as usize)
            .checked_mul(4)
            .and_then(|n| n.checked_add(func.at + func.size))
            .ok_or(bounds.clone())?;
        match self.format {
            Format::Go116 => {
                // Pointer-aligned absolute addresses; 0 is none.
                let aligned = after_pcdata.next_multiple_of(self.pointer_size);
                let at = aligned + index as usize * self.pointer_size;
                let address = le_word(self.data, at, self.pointer_size).ok_or(bounds)?;
                Ok((address != 0).then_some(address))
            }
            Format::Go118 | Format::Go120 => {
                let offset = le_u32(self.data, after_pcdata + index as usize * 4).ok_or(bounds)?;
                if offset == u32::MAX {
                    return Ok(None);
                }
                Ok(self
                    .gofunc
                    .and_then(|base| base.checked_add(u64::from(offset))))
            }
        }
    }

    /// The frames at `pc`, innermost (inlined) first, the function holding
    /// the code last; None when `pc` is outside this table's functions.
    /// `pc` is looked up as given: a return address must be made a call
    /// address (minus one) by the caller.
    pub(crate) fn frames(
        &self,
        pc: u64,
        memory: &dyn Memory,
    ) -> Result<Option<Vec<GoFrame>>, PclntabError> {
        let Some(func) = self.find(pc)? else {
            return Ok(None);
        };
        let tree = self.funcdata(&func, FUNCDATA_INL_TREE)?;
        let index_table = self.pcdata(&func, PCDATA_INL_TREE_INDEX)?;
        let mut frames = Vec::new();
        let mut at = pc;
        for _ in 0..MAX_INLINE_DEPTH {
            let (file, line) = self.file_line(&func, at)?;
            let index = match tree {
                Some(_) => self.value_at(&func, index_table, at)?,
                None => -1,
            };
            let (Some(tree), Ok(index)) = (tree, u32::try_from(index)) else {
                frames.push(GoFrame {
                    function: self.name(func.name_off)?,
                    file,
                    line,
                    inlined: false,
                });
                return Ok(Some(frames));
            };
            let call = self.inlined_call(tree, index, memory)?;
            frames.push(GoFrame {
                function: self.name(call.name_off)?,
                file,
                line,
                inlined: true,
            });
            // The caller's frame is at the call site's PC, inside `func`.
            at = func
                .entry
                .checked_add(u64::from(call.parent_pc))
                .filter(|&p| p < func.end)
                .ok_or(PclntabError::OutOfBounds("inlined call's parent PC"))?;
        }
        Err(PclntabError::OutOfBounds("inlining deeper than its cap"))
    }

    /// Entry `index` of the inline tree at `tree`.
    fn inlined_call(
        &self,
        tree: u64,
        index: u32,
        memory: &dyn Memory,
    ) -> Result<InlinedCall, PclntabError> {
        // 1.12-1.19: parent i16, funcID u8, pad, file i32, line i32,
        // func_ i32, parentPc i32. 1.20+: funcID u8, pad [3], nameOff i32,
        // parentPc i32, startLine i32.
        let (size, name_at, parent_at) = match self.format {
            Format::Go116 | Format::Go118 => (20, 12, 16),
            Format::Go120 => (16, 4, 8),
        };
        let address = u64::from(index)
            .checked_mul(size as u64)
            .and_then(|o| o.checked_add(tree))
            .ok_or(PclntabError::Funcdata(tree))?;
        let bytes = memory
            .exact_at(address, size)
            .ok_or(PclntabError::Funcdata(address))?;
        let (Some(name_off), Some(parent_pc)) = (le_u32(bytes, name_at), le_u32(bytes, parent_at))
        else {
            return Err(PclntabError::Funcdata(address));
        };
        Ok(InlinedCall {
            name_off,
            parent_pc,
        })
    }

    /// The function holding `pc` (its name and code range).
    pub(crate) fn function_at(&self, pc: u64) -> Result<Option<GoFunction>, PclntabError> {
        let Some(func) = self.find(pc)? else {
            return Ok(None);
        };
        Ok(Some(GoFunction {
            name: self.name(func.name_off)?,
            entry: func.entry,
            end: func.end,
        }))
    }

    /// The function called `name`, by a walk of the table (the first one
    /// with that name). Records that cannot be read are passed over.
    pub(crate) fn function_named(&self, name: &str) -> Result<Option<GoFunction>, PclntabError> {
        let wanted = name.as_bytes();
        for index in 0..self.nfunc {
            let (_, at) = self.functab_entry(index)?;
            let (end, _) = self.functab_entry(index + 1)?;
            let Ok(func) = self.func_at(at, end) else {
                continue;
            };
            let Some(start) = usize::try_from(func.name_off)
                .ok()
                .and_then(|o| o.checked_add(self.funcnames))
            else {
                continue;
            };
            let matches = self
                .data
                .get(start..)
                .and_then(|rest| rest.get(..=wanted.len()))
                .is_some_and(|candidate| {
                    candidate.starts_with(wanted) && candidate[wanted.len()] == 0
                });
            if matches {
                return Ok(Some(GoFunction {
                    name: name.to_string(),
                    entry: func.entry,
                    end: func.end,
                }));
            }
        }
        Ok(None)
    }
}

/// The parts of an inline-tree entry that are read.
struct InlinedCall {
    name_off: u32,
    parent_pc: u32,
}

fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// A little-endian word of 4 or 8 bytes (the targets read here are
/// little-endian: amd64 and arm64).
fn le_word(data: &[u8], at: usize, size: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(size)?)?;
    Some(bytes.iter().rev().fold(0, |v, &b| (v << 8) | u64::from(b)))
}

/// An unsigned LEB128 value of at most 32 bits at `at`, and its length.
pub(super) fn varint(data: &[u8], at: usize) -> Result<(u32, usize), PclntabError> {
    let mut value: u32 = 0;
    for (index, shift) in (0..35).step_by(7).enumerate() {
        let byte = *data
            .get(at + index)
            .ok_or(PclntabError::OutOfBounds("value table"))?;
        value |= u32::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    Err(PclntabError::OutOfBounds("varint longer than 5 bytes"))
}
