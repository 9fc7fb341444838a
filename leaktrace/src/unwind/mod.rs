//! Compact unwind tables from an ELF object's `.eh_frame`, for the eBPF unwinder.
//!
//! Why: a frame-pointer walk (the kernel's own stack helpers, and our
//! fallback) needs frame pointers, but most of what a
//! traced process runs has none: Debian builds libc, python3 and nearly every
//! release binary with `-fomit-frame-pointer`, so a frame-pointer walk loses
//! the callers of any function in them. `.eh_frame` is always there (C++
//! exceptions and glibc's `backtrace` need it, so it is never stripped); it
//! says, for every instruction, how to find the caller's frame. Its DWARF
//! call-frame programs cannot run in eBPF, so userspace evaluates them here
//! into a flat table the kernel binary-searches by pc.
//!
//! The format: [`UnwindRow`]s sorted by `pc`, each row covering `pc` up to the
//! next row's `pc`. A row says how to compute the CFA (`rsp` or `rbp` plus an
//! offset) and where the caller's `rbp` was saved; the return address is at
//! CFA - 8 on `x86_64`, so rows whose return address lives elsewhere are
//! [`UNWIND_NONE`]. Gaps between FDEs get a `UNWIND_NONE` row (so a gap is not
//! covered by the function before it), the table ends with one, and
//! consecutive rows with the same rule are merged. `UNWIND_NONE`,
//! `UNWIND_OUTERMOST` and `UNWIND_PLT` rows have both offsets 0.
//!
//! Addresses are the object's ELF virtual addresses, 32 bits: an FDE that
//! reaches above `u32::MAX` is skipped and counted in
//! [`TableStats::fdes_above_4g`] (never seen in practice: shared objects start
//! at 0, non-PIE executables at 0x400000).
use anyhow::{Context, bail};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, UnwindTableRow, X86_64,
};
use leaktrace_common::{
    UNWIND_CFA_RBP, UNWIND_CFA_RSP, UNWIND_NONE, UNWIND_OUTERMOST, UNWIND_PLT, UnwindRow,
};
use object::{Architecture, CompressionFormat, Object, ObjectSection};

type Slice<'a> = EndianSlice<'a, LittleEndian>;

// The eBPF side reads rows as 12-byte records.
const _: () = assert!(size_of::<UnwindRow>() == 12);

/// The CFA expression binutils emits for lazy `.plt` entries: `DW_OP_breg7
/// (rsp) 8; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11;
/// DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`, i.e. rsp + 8, plus 8 once the
/// entry's `push $index` (which ends at byte 11 of the 16-byte entry) ran.
/// Other thresholds (`DW_OP_lit10` in some IBT/x32 variants) do not match
/// [`UNWIND_PLT`]'s fixed 11 and become `UNWIND_NONE`.
const PLT_CFA_EXPRESSION: [u8; 11] = [
    0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
];

/// What building a table met, for logs and tests. Row counts are over the
/// rows gimli produced, before gap rows are added and rows are merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableStats {
    /// FDEs in the section, including skipped ones.
    pub fdes: usize,
    /// FDEs whose range reaches above `u32::MAX`: skipped.
    pub fdes_above_4g: usize,
    /// FDEs gimli could not parse or evaluate: skipped (their range is a gap).
    pub fdes_invalid: usize,
    /// FDEs that start before the previous one ends (malformed): the later
    /// one wins from its start.
    pub fdes_overlapping: usize,
    /// Rows produced by gimli for the kept FDEs.
    pub rows: usize,
    /// Rows that became `UNWIND_NONE`, by cause: CFA offset beyond i16, CFA
    /// based on a register other than rsp/rbp, CFA expression that is not the
    /// PLT one, rbp saved in a way the table cannot express (register,
    /// expression, offset beyond i16), return address not at CFA - 8.
    pub none_cfa_offset: usize,
    pub none_cfa_register: usize,
    pub none_cfa_expression: usize,
    pub none_rbp_rule: usize,
    pub none_ra_rule: usize,
    /// `UNWIND_NONE` rows added at the end of an FDE not followed by another.
    pub gap_rows: usize,
}

/// Builds the unwind table of an `x86_64` ELF object (see the module doc).
/// An object with neither `.eh_frame` nor `.debug_frame` gets an empty table.
pub(crate) fn build_table(elf_data: &[u8]) -> anyhow::Result<Vec<UnwindRow>> {
    Ok(build_table_with_stats(elf_data)?.0)
}

/// [`build_table`], also saying what it met.
pub(crate) fn build_table_with_stats(
    elf_data: &[u8],
) -> anyhow::Result<(Vec<UnwindRow>, TableStats)> {
    let file = object::File::parse(elf_data).context("parsing the ELF object")?;
    if file.architecture() != Architecture::X86_64 {
        bail!("not an x86_64 object: {:?}", file.architecture());
    }
    // Pointer encodings in .eh_frame may be relative to these sections.
    let address = |name| file.section_by_name(name).map_or(0, |s| s.address());
    let bases = BaseAddresses::default()
        .set_text(address(".text"))
        .set_eh_frame_hdr(address(".eh_frame_hdr"))
        .set_got(address(".got"));
    let mut stats = TableStats::default();
    let fdes = if let Some(section) = file.section_by_name(".eh_frame") {
        let bases = bases.set_eh_frame(section.address());
        let eh_frame = EhFrame::new(section_bytes(&section)?, LittleEndian);
        walk(&eh_frame, &bases, &mut stats)?
    } else if let Some(section) = file.section_by_name(".debug_frame") {
        let mut debug_frame = DebugFrame::new(section_bytes(&section)?, LittleEndian);
        debug_frame.set_address_size(8);
        walk(&debug_frame, &bases, &mut stats)?
    } else {
        Vec::new()
    };
    Ok((assemble(fdes, &mut stats), stats))
}

/// The start addresses of the object's FDEs (`.eh_frame`, else
/// `.debug_frame`), without evaluating their rows: probe placement refuses
/// to move a probe past bytes where a function's unwind entry begins (code
/// may enter there without calling the probed function). Empty when the
/// object has no table or it cannot be read.
pub(crate) fn fde_starts(elf_data: &[u8]) -> Vec<u64> {
    fn starts<'a, S: UnwindSection<Slice<'a>>>(section: &S, bases: &BaseAddresses) -> Vec<u64> {
        let mut found = Vec::new();
        let mut entries = section.entries(bases);
        while let Ok(Some(entry)) = entries.next() {
            if let CieOrFde::Fde(partial) = entry
                && let Ok(fde) = partial.parse(S::cie_from_offset)
            {
                found.push(fde.initial_address());
            }
        }
        found
    }
    let Ok(file) = object::File::parse(elf_data) else {
        return Vec::new();
    };
    let address = |name| file.section_by_name(name).map_or(0, |s| s.address());
    let bases = BaseAddresses::default()
        .set_text(address(".text"))
        .set_eh_frame_hdr(address(".eh_frame_hdr"))
        .set_got(address(".got"));
    if let Some(section) = file.section_by_name(".eh_frame")
        && let Ok(bytes) = section_bytes(&section)
    {
        let bases = bases.set_eh_frame(section.address());
        return starts(&EhFrame::new(bytes, LittleEndian), &bases);
    }
    if let Some(section) = file.section_by_name(".debug_frame")
        && let Ok(bytes) = section_bytes(&section)
    {
        let mut debug_frame = DebugFrame::new(bytes, LittleEndian);
        debug_frame.set_address_size(8);
        return starts(&debug_frame, &bases);
    }
    Vec::new()
}

/// The table of a bare `.eh_frame` section loaded at `address` (no ELF
/// around it): for the fuzz target, which reaches the CFI parser far more
/// often this way than through mutated ELF headers.
pub(crate) fn eh_frame_table(
    section: &[u8],
    address: u64,
) -> anyhow::Result<(Vec<UnwindRow>, TableStats)> {
    let bases = BaseAddresses::default().set_eh_frame(address);
    let mut stats = TableStats::default();
    let fdes = walk(&EhFrame::new(section, LittleEndian), &bases, &mut stats)?;
    Ok((assemble(fdes, &mut stats), stats))
}

/// The last row with `row.pc <= pc`: the rule for `pc`. None before the first
/// row (no FDE covers it); past the last FDE this is its `UNWIND_NONE` row.
/// For a caller's frame, look up its return address - 1: a call to a
/// noreturn function can end an FDE, its return address then lies past it.
/// (The kernel does this search in BPF; this copy lets the tests check a
/// table the way the kernel reads it.)
#[cfg(test)]
pub(crate) fn find(rows: &[UnwindRow], pc: u64) -> Option<&UnwindRow> {
    let after = rows.partition_point(|row| u64::from(row.pc) <= pc);
    after.checked_sub(1).map(|i| &rows[i])
}

fn section_bytes<'a>(section: &object::Section<'a, '_>) -> anyhow::Result<&'a [u8]> {
    // `object` is built without decompression; a compressed .debug_frame
    // would be parsed as garbage.
    let range = section.compressed_file_range()?;
    if range.format != CompressionFormat::None {
        bail!("{} is compressed", section.name().unwrap_or("?"));
    }
    Ok(section.data()?)
}

/// One FDE's rows: [start, end) and the rows inside it, first at `start`.
struct Fde {
    start: u32,
    end: u32,
    rows: Vec<UnwindRow>,
}

/// Evaluates every FDE of the section into rows.
fn walk<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    stats: &mut TableStats,
) -> anyhow::Result<Vec<Fde>> {
    let mut ctx = Box::new(UnwindContext::new());
    let mut fdes = Vec::new();
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().context("reading CFI entries")? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        stats.fdes += 1;
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            stats.fdes_invalid += 1;
            continue;
        };
        let start = fde.initial_address();
        let (Ok(start32), Some(Ok(end))) = (
            u32::try_from(start),
            start.checked_add(fde.len()).map(u32::try_from),
        ) else {
            stats.fdes_above_4g += 1;
            continue;
        };
        if start32 >= end {
            continue; // Covers nothing.
        }
        // Counts of an FDE that fails half-way are rolled back with it.
        let saved = *stats;
        let mut rows = Vec::new();
        let walked = (|| -> gimli::Result<()> {
            let mut table = fde.rows(section, bases, &mut ctx)?;
            while let Some(row) = table.next_row()? {
                if row.start_address() >= row.end_address() {
                    continue;
                }
                stats.rows += 1;
                let mut out = classify(section, row, stats);
                // Inside [start, end), which fits u32.
                out.pc = row.start_address() as u32;
                rows.push(out);
            }
            Ok(())
        })();
        if let Ok(()) = walked {
            fdes.push(Fde {
                start: start32,
                end,
                rows,
            });
        } else {
            *stats = saved;
            stats.fdes_invalid += 1;
        }
    }
    Ok(fdes)
}

fn rule(kind: u8, cfa_offset: i16, rbp_offset: i16) -> UnwindRow {
    UnwindRow {
        pc: 0,
        cfa_offset,
        rbp_offset,
        kind,
        _padding: [0; 3],
    }
}

/// Maps one gimli row to a table rule (pc left 0), counting what it met.
fn classify<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    row: &UnwindTableRow<usize>,
    stats: &mut TableStats,
) -> UnwindRow {
    let none = rule(UNWIND_NONE, 0, 0);
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return rule(UNWIND_OUTERMOST, 0, 0),
        // No rule at all means the x86_64 convention: `call` pushed it.
        None | Some(RegisterRule::Offset(-8)) => {}
        Some(_) => {
            stats.none_ra_rule += 1;
            return none;
        }
    }
    let (kind, offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => UNWIND_CFA_RSP,
                X86_64::RBP => UNWIND_CFA_RBP,
                _ => {
                    stats.none_cfa_register += 1;
                    return none;
                }
            };
            (kind, *offset)
        }
        CfaRule::Expression(expression) => {
            let is_plt = expression
                .get(section)
                .is_ok_and(|e| e.0.slice() == PLT_CFA_EXPRESSION);
            if is_plt {
                return rule(UNWIND_PLT, 0, 0);
            }
            stats.none_cfa_expression += 1;
            return none;
        }
    };
    let Ok(cfa_offset) = i16::try_from(offset) else {
        stats.none_cfa_offset += 1;
        return none;
    };
    let rbp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => Some(0),
        // 0 would read as "not saved"; CFA + 0 is the caller's frame anyway.
        Some(RegisterRule::Offset(n)) if n != 0 => i16::try_from(n).ok(),
        Some(_) => None,
    };
    let Some(rbp_offset) = rbp_offset else {
        stats.none_rbp_rule += 1;
        return none;
    };
    rule(kind, cfa_offset, rbp_offset)
}

fn same_rule(a: &UnwindRow, b: &UnwindRow) -> bool {
    (a.kind, a.cfa_offset, a.rbp_offset) == (b.kind, b.cfa_offset, b.rbp_offset)
}

/// Orders the FDEs' rows by pc, closes gaps with `UNWIND_NONE` rows, keeps
/// one row per pc (the later-starting FDE's) and merges repeated rules.
fn assemble(mut fdes: Vec<Fde>, stats: &mut TableStats) -> Vec<UnwindRow> {
    fdes.sort_by_key(|fde| fde.start);
    let mut rows = Vec::with_capacity(fdes.iter().map(|f| f.rows.len() + 1).sum());
    for (i, fde) in fdes.iter().enumerate() {
        rows.extend_from_slice(&fde.rows);
        match fdes.get(i + 1) {
            Some(next) if next.start == fde.end => {}
            Some(next) if next.start < fde.end => stats.fdes_overlapping += 1,
            _ => {
                stats.gap_rows += 1;
                rows.push(UnwindRow {
                    pc: fde.end,
                    ..rule(UNWIND_NONE, 0, 0)
                });
            }
        }
    }
    // Stable: at one pc, what was pushed last (the later FDE) comes last.
    rows.sort_by_key(|row| row.pc);
    let mut table: Vec<UnwindRow> = Vec::with_capacity(rows.len());
    for row in rows {
        if table.last().is_some_and(|last| last.pc == row.pc) {
            table.pop();
        }
        if !table.last().is_some_and(|last| same_rule(last, &row)) {
            table.push(row);
        }
    }
    table
}

#[cfg(test)]
mod tests;
