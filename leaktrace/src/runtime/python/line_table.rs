//! From an instruction offset to a source line, with the code object's own
//! line table, in the three encodings `CPython` has used.
//!
//! Why here and not in the kernel: the tables are variable-length and
//! versioned; the kernel sends (code object, instruction offset) and
//! userspace, which reads each code object once, decodes. Each decoder
//! follows the interpreter's own lookup (`PyCode_Addr2Line` and the
//! address-range walk of `codeobject.c`), so a line here is the line a
//! traceback would print; the test checks that against each interpreter at
//! every instruction offset. The tables come from a target's memory: any
//! byte string must give an answer or `None`, never a panic or a long loop
//! (every loop advances through the table).
use super::layout::LineTableFormat;

/// The line holding the instruction at byte `offset` of the code, or `None`
/// when the table gives it none (an artificial instruction, an offset past
/// the table, a malformed table).
///
/// `offset` is in bytes for every version; see [`super::layout::InstrUnit`]
/// for turning a frame's `f_lasti` or instruction pointer into it.
pub(crate) fn line_at(
    format: LineTableFormat,
    table: &[u8],
    first_line: i32,
    offset: u64,
) -> Option<u32> {
    let line = match format {
        LineTableFormat::Lnotab { signed_lines } => lnotab(table, first_line, offset, signed_lines),
        LineTableFormat::Linetable310 => linetable_310(table, first_line, offset)?,
        LineTableFormat::Locations => locations(table, first_line, offset)?,
    };
    u32::try_from(line).ok().filter(|&line| line > 0)
}

/// ≤3.9 `co_lnotab`: (byte delta, line delta) pairs; the line of the last
/// pair starting at or before the offset (`PyCode_Addr2Line`). Line deltas
/// are signed bytes from 3.6 on.
fn lnotab(table: &[u8], first_line: i32, offset: u64, signed_lines: bool) -> i64 {
    let mut line = i64::from(first_line);
    let mut address = 0u64;
    for pair in table.chunks_exact(2) {
        address += u64::from(pair[0]);
        if address > offset {
            break;
        }
        line += if signed_lines {
            i64::from(pair[1] as i8)
        } else {
            i64::from(pair[1])
        };
    }
    line
}

/// 3.10 `co_linetable`: each pair is a range of `byte delta` bytes and a
/// signed line delta; -128 means the range has no line.
fn linetable_310(table: &[u8], first_line: i32, offset: u64) -> Option<i64> {
    let mut line = i64::from(first_line);
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let range_line = if delta == -128 {
            None
        } else {
            line += i64::from(delta);
            Some(line)
        };
        if (start..end).contains(&offset) {
            return range_line;
        }
    }
    None
}

/// 3.11+ location table. Each entry starts with a byte that has bit 7 set:
/// bits 3–6 a code, bits 0–2 the length in code units minus one. Codes:
/// 15 no location; 14 long form (signed varint line delta, then end line
/// and columns); 13 no columns (signed varint line delta); 10–12 one line,
/// delta 0–2 (two column bytes follow); 0–9 short form, same line (one
/// column byte). Entries are found by their high bit, as `CPython` does.
fn locations(table: &[u8], first_line: i32, offset: u64) -> Option<i64> {
    let unit = offset / 2;
    let mut line = i64::from(first_line);
    let mut address = 0u64;
    let mut at = 0;
    while at < table.len() {
        let head = table[at];
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let length = u64::from(head & 7) + 1;
        let entry_line = match code {
            15 => None,
            13 | 14 => {
                line += signed_varint(table.get(at + 1..)?)?;
                Some(line)
            }
            10..=12 => {
                line += i64::from(code - 10);
                Some(line)
            }
            _ => Some(line),
        };
        if (address..address + length).contains(&unit) {
            return entry_line;
        }
        address += length;
        at += 1;
        while at < table.len() && table[at] & 0x80 == 0 {
            at += 1;
        }
    }
    None
}

/// An unsigned varint of 6-bit chunks, low first, bit 6 = more follow.
fn varint(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().take(6).enumerate() {
        value |= u64::from(byte & 63) << (6 * index);
        if byte & 64 == 0 {
            return Some(value);
        }
    }
    None
}

/// A varint whose low bit is the sign.
fn signed_varint(bytes: &[u8]) -> Option<i64> {
    let value = varint(bytes)?;
    let magnitude = (value >> 1) as i64;
    Some(if value & 1 == 1 {
        -magnitude
    } else {
        magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCATIONS: LineTableFormat = LineTableFormat::Locations;

    #[test]
    fn lnotab_signed_and_unsigned_deltas() {
        // +6 bytes +1 line, +4 bytes -2 lines (0xfe), then 255-byte step.
        let table = [6, 1, 4, 0xfe, 255, 0, 1, 3];
        let signed = LineTableFormat::Lnotab { signed_lines: true };
        let unsigned = LineTableFormat::Lnotab {
            signed_lines: false,
        };
        assert_eq!(line_at(signed, &table, 10, 0), Some(10));
        assert_eq!(line_at(signed, &table, 10, 6), Some(11));
        assert_eq!(line_at(signed, &table, 10, 10), Some(9));
        assert_eq!(line_at(signed, &table, 10, 266), Some(12));
        assert_eq!(line_at(unsigned, &table, 10, 10), Some(265));
    }

    #[test]
    fn linetable_310_no_line_and_past_the_end() {
        // 4 bytes at +1, 2 bytes with no line, 2 bytes at +2 (from 11).
        let table = [4, 1, 2, 0x80, 2, 2];
        let format = LineTableFormat::Linetable310;
        assert_eq!(line_at(format, &table, 10, 2), Some(11));
        assert_eq!(line_at(format, &table, 10, 4), None);
        assert_eq!(line_at(format, &table, 10, 6), Some(13));
        assert_eq!(line_at(format, &table, 10, 8), None);
    }

    #[test]
    fn locations_every_entry_kind() {
        let table = [
            0x80 | (13 << 3) | 1, // no columns, 2 units, line +1 (varint 2)
            2,
            0x80 | (10 << 3), // one line +0, 1 unit, two column bytes
            1,
            5,
            0x80 | (14 << 3) | 2, // long form, 3 units, line -3 (varint 7)
            7,
            0,
            1,
            1,
            0x80 | (15 << 3), // no location, 1 unit
            0x80 | (3 << 3),  // short form, same line, 1 unit
            9,
            0x80 | (13 << 3), // line +100: varint 200 = 0b11_001000
            0x40 | 8,
            3,
        ];
        let line = |unit: u64| line_at(LOCATIONS, &table, 20, unit * 2);
        assert_eq!(line(0), Some(21));
        assert_eq!(line(1), Some(21));
        assert_eq!(line(2), Some(21));
        assert_eq!(line(3), Some(18));
        assert_eq!(line(5), Some(18));
        assert_eq!(line(6), None);
        assert_eq!(line(7), Some(18));
        assert_eq!(line(8), Some(118));
        assert_eq!(line(9), None);
    }

    #[test]
    fn hostile_tables_give_none_or_a_line_never_a_panic() {
        for table in [
            &[][..],
            &[0x7f],
            &[0x80 | (14 << 3)],
            &[0x80 | (14 << 3), 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f],
            &[0xff; 9],
            &[255, 255, 255],
        ] {
            for format in [
                LOCATIONS,
                LineTableFormat::Linetable310,
                LineTableFormat::Lnotab { signed_lines: true },
            ] {
                for offset in [0, 1, 2, 1000, u64::MAX] {
                    let _: Option<u32> = line_at(format, table, i32::MAX, offset);
                    let _: Option<u32> = line_at(format, table, i32::MIN, offset);
                }
            }
        }
        assert_eq!(line_at(LOCATIONS, &[0x7f], 1, 0), None);
    }
}
