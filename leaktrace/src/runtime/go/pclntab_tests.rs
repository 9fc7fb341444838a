//! The pclntab reader on tables written here byte by byte, in each of the
//! three layouts (the 1.16/1.17 one has no toolchain on this machine: this
//! is its only test), and on every truncation and corruption of them: an
//! error value or a wrong answer, never a panic. Real binaries are in
//! `oracle_tests`.
use std::collections::HashMap;

use super::pclntab::{GoFrame, Memory, Pclntab, PclntabError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Go116,
    Go118,
    Go120,
}

/// Funcdata bytes by address.
#[derive(Default)]
struct Bytes(HashMap<u64, Vec<u8>>);

impl Memory for Bytes {
    fn exact_at(&self, address: u64, len: usize) -> Option<&[u8]> {
        self.0.iter().find_map(|(&start, bytes)| {
            let into = usize::try_from(address.checked_sub(start)?).ok()?;
            bytes.get(into..into.checked_add(len)?)
        })
    }
}

const TEXT: u64 = 0x40_1000;
const GOFUNC: u64 = 0x50_0000;
const TREE_OFFSET: u32 = 0x100;

/// A value table: (value, PCs it holds for), zig-zag deltas from -1.
fn value_table(runs: &[(i32, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut previous = -1i32;
    for &(value, length) in runs {
        let delta = value - previous;
        let zigzag = ((delta << 1) ^ (delta >> 31)).cast_unsigned();
        leb128(&mut out, zigzag);
        leb128(&mut out, length);
        previous = value;
    }
    out.push(0);
    out
}

fn leb128(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Two functions: `main.outer` at TEXT (0x40 bytes), whose code at
/// [0x10, 0x20) is `main.inner` inlined from its line 10 (the call site at
/// offset 8), and `main.leaf` at TEXT+0x40 (0x20 bytes, no file table).
/// Files: a.go (outer), b.go (inner).
fn table(layout: Layout) -> (Vec<u8>, Bytes) {
    let header_words = if layout == Layout::Go116 { 7 } else { 8 };
    let header_size = 8 + 8 * header_words;
    let funcnames = b"\0main.outer\0main.inner\0main.leaf\0".to_vec();
    let (outer_name, inner_name, leaf_name) = (1u32, 12u32, 23u32);
    let cutab: Vec<u8> = [0u32, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let filetab = b"a.go\0b.go\0".to_vec();
    let mut pctab = vec![0u8]; // offset 0 is "no table"
    let mut add = |t: Vec<u8>| {
        let at = pctab.len() as u32;
        pctab.extend(t);
        at
    };
    let outer_line = add(value_table(&[(10, 0x10), (20, 0x10), (11, 0x20)]));
    let outer_file = add(value_table(&[(0, 0x10), (1, 0x10), (0, 0x20)]));
    let outer_inline = add(value_table(&[(-1, 0x10), (0, 0x10), (-1, 0x20)]));
    let leaf_line = add(value_table(&[(30, 0x20)]));

    let funcnames_at = header_size;
    let cutab_at = funcnames_at + funcnames.len();
    let filetab_at = cutab_at + cutab.len();
    let pctab_at = filetab_at + filetab.len();
    let functab_at = (pctab_at + pctab.len()).next_multiple_of(8);

    // Function table, then the two records (8-aligned).
    let entry_size = if layout == Layout::Go116 { 16 } else { 8 };
    let records_at = 3 * entry_size;
    let record =
        |entry: u64, name: u32, pcfile: u32, pcln: u32, pcdata: &[u32], funcdata: &[u64]| {
            let mut r = Vec::new();
            match layout {
                Layout::Go116 => r.extend(entry.to_le_bytes()),
                _ => r.extend(((entry - TEXT) as u32).to_le_bytes()),
            }
            for field in [name, 0, 0, 0, pcfile, pcln, pcdata.len() as u32, 0] {
                r.extend(field.to_le_bytes());
            }
            if layout == Layout::Go120 {
                r.extend(1u32.to_le_bytes()); // startLine
            }
            r.extend([0, 0, 0, funcdata.len() as u8]);
            for p in pcdata {
                r.extend(p.to_le_bytes());
            }
            match layout {
                Layout::Go116 => {
                    while r.len() % 8 != 0 {
                        r.push(0);
                    }
                    for f in funcdata {
                        r.extend(f.to_le_bytes());
                    }
                }
                _ => {
                    for &f in funcdata {
                        r.extend((f as u32).to_le_bytes());
                    }
                }
            }
            while r.len() % 8 != 0 {
                r.push(0);
            }
            r
        };
    let (none, tree) = match layout {
        Layout::Go116 => (0, GOFUNC + u64::from(TREE_OFFSET)),
        _ => (u64::from(u32::MAX), u64::from(TREE_OFFSET)),
    };
    let outer = record(
        TEXT,
        outer_name,
        outer_file,
        outer_line,
        &[0, 0, outer_inline],
        &[none, none, none, tree],
    );
    let leaf = record(TEXT + 0x40, leaf_name, 0, leaf_line, &[], &[]);
    let mut functab = Vec::new();
    let mut entry = |pc: u64, offset: usize| {
        if layout == Layout::Go116 {
            functab.extend(pc.to_le_bytes());
            functab.extend((offset as u64).to_le_bytes());
        } else {
            functab.extend(((pc - TEXT) as u32).to_le_bytes());
            functab.extend((offset as u32).to_le_bytes());
        }
    };
    entry(TEXT, records_at);
    entry(TEXT + 0x40, records_at + outer.len());
    entry(TEXT + 0x60, 0);
    functab.extend(outer);
    functab.extend(leaf);

    let mut data = Vec::new();
    let magic: u32 = match layout {
        Layout::Go116 => 0xffff_fffa,
        Layout::Go118 => 0xffff_fff0,
        Layout::Go120 => 0xffff_fff1,
    };
    data.extend(magic.to_le_bytes());
    data.extend([0, 0, 1, 8]);
    let mut words = vec![2u64, 2];
    if layout != Layout::Go116 {
        words.push(TEXT);
    }
    words.extend([funcnames_at, cutab_at, filetab_at, pctab_at, functab_at].map(|w| w as u64));
    for w in words {
        data.extend(w.to_le_bytes());
    }
    data.extend(funcnames);
    data.extend(cutab);
    data.extend(filetab);
    data.extend(pctab);
    data.resize(functab_at, 0);
    data.extend(functab);

    // The inline tree: one call of main.inner, its call site at offset 8.
    let mut call = Vec::new();
    match layout {
        Layout::Go116 | Layout::Go118 => {
            call.extend((-1i16).to_le_bytes());
            call.extend([0, 0]);
            call.extend(0u32.to_le_bytes()); // file
            call.extend(10u32.to_le_bytes()); // line
            call.extend(inner_name.to_le_bytes());
            call.extend(8u32.to_le_bytes());
        }
        Layout::Go120 => {
            call.extend([0, 0, 0, 0]);
            call.extend(inner_name.to_le_bytes());
            call.extend(8u32.to_le_bytes());
            call.extend(1u32.to_le_bytes());
        }
    }
    let mut memory = Bytes::default();
    memory.0.insert(GOFUNC + u64::from(TREE_OFFSET), call);
    (data, memory)
}

fn frame(function: &str, file: Option<&str>, line: u32, inlined: bool) -> GoFrame {
    GoFrame {
        function: function.into(),
        file: file.map(Into::into),
        line: Some(line),
        inlined,
    }
}

#[test]
fn each_layout_gives_functions_files_lines_and_inlined_calls() {
    for layout in [Layout::Go116, Layout::Go118, Layout::Go120] {
        let (data, memory) = table(layout);
        let table = Pclntab::parse(&data, Some(GOFUNC)).unwrap();
        let frames = |pc| table.frames(pc, &memory).unwrap();
        assert_eq!(
            table.text_range().unwrap(),
            (TEXT, TEXT + 0x60),
            "{layout:?}"
        );
        assert_eq!(
            frames(TEXT + 4),
            Some(vec![frame("main.outer", Some("a.go"), 10, false)]),
            "{layout:?}"
        );
        // Inlined: inner at b.go:20, called from outer's a.go:10.
        assert_eq!(
            frames(TEXT + 0x14),
            Some(vec![
                frame("main.inner", Some("b.go"), 20, true),
                frame("main.outer", Some("a.go"), 10, false),
            ]),
            "{layout:?}"
        );
        assert_eq!(
            frames(TEXT + 0x3f),
            Some(vec![frame("main.outer", Some("a.go"), 11, false)])
        );
        assert_eq!(
            frames(TEXT + 0x40),
            Some(vec![frame("main.leaf", None, 30, false)])
        );
        assert_eq!(frames(TEXT - 1), None);
        assert_eq!(frames(TEXT + 0x60), None, "the end is not code");
        let leaf = table.function_named("main.leaf").unwrap().unwrap();
        assert_eq!((leaf.entry, leaf.end), (TEXT + 0x40, TEXT + 0x60));
        assert_eq!(table.function_named("main.lea").unwrap(), None);
        assert_eq!(
            table.function_named("main.inner").unwrap(),
            None,
            "inlined only"
        );
        let outer = table.function_at(TEXT + 0x3f).unwrap().unwrap();
        assert_eq!((outer.name.as_str(), outer.entry), ("main.outer", TEXT));
    }
}

#[test]
fn without_gofunc_frames_are_the_outermost_functions() {
    let (data, memory) = table(Layout::Go120);
    let table = Pclntab::parse(&data, None).unwrap();
    assert_eq!(
        table.frames(TEXT + 0x14, &memory).unwrap(),
        Some(vec![frame("main.outer", Some("b.go"), 20, false)])
    );
}

#[test]
fn headers_that_are_no_table_are_errors() {
    let (mut data, _) = table(Layout::Go120);
    assert!(matches!(
        Pclntab::parse(&[], None),
        Err(PclntabError::BadHeader(_))
    ));
    data[0] = 0xfb;
    assert_eq!(
        Pclntab::parse(&data, None).err(),
        Some(PclntabError::UnknownMagic(0xffff_fffb))
    );
    data[0] = 0xf1;
    data[7] = 3;
    assert!(matches!(
        Pclntab::parse(&data, None),
        Err(PclntabError::BadHeader(_))
    ));
    data[7] = 8;
    data[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        Pclntab::parse(&data, None),
        Err(PclntabError::BadHeader(_))
    ));
}

/// Every lookup the API offers, over the whole text and around it.
fn exercise(data: &[u8], memory: &Bytes) {
    let Ok(table) = Pclntab::parse(data, Some(GOFUNC)) else {
        return;
    };
    for pc in (TEXT - 2..TEXT + 0x62).step_by(3) {
        let _: Result<_, _> = table.frames(pc, memory);
        let _: Result<_, _> = table.function_at(pc);
    }
    let _: Result<_, _> = table.function_named("main.leaf");
    let _: Result<_, _> = table.text_range();
}

#[test]
fn truncated_and_corrupted_tables_never_panic() {
    for layout in [Layout::Go116, Layout::Go118, Layout::Go120] {
        let (data, memory) = table(layout);
        for length in 0..data.len() {
            exercise(&data[..length], &memory);
        }
        for at in 0..data.len() {
            for value in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = data.clone();
                bad[at] = value;
                exercise(&bad, &memory);
            }
        }
        // A tree entry cut short, or its parent PC outside the function.
        let mut short = Bytes::default();
        short.0.insert(GOFUNC + u64::from(TREE_OFFSET), vec![0; 6]);
        let table = Pclntab::parse(&data, Some(GOFUNC)).unwrap();
        assert!(matches!(
            table.frames(TEXT + 0x14, &short),
            Err(PclntabError::Funcdata(_))
        ));
        let mut far = Bytes::default();
        let mut call = memory.0[&(GOFUNC + u64::from(TREE_OFFSET))].clone();
        let parent_at = if layout == Layout::Go120 { 8 } else { 16 };
        call[parent_at..parent_at + 4].copy_from_slice(&0x1000u32.to_le_bytes());
        far.0.insert(GOFUNC + u64::from(TREE_OFFSET), call);
        assert!(table.frames(TEXT + 0x14, &far).is_err());
    }
}
