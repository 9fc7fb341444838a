//! Tests of the unwind table builder against real objects (the machine's
//! libc and python3, gcc-built fixtures) and what binutils (readelf's
//! reading of their CFI, objdump's of their instructions) says of them.
//! A missing object or tool fails the test unless skips are allowed (see
//! `crate::test_support`).

use super::*;
use crate::test_support::{
    objdump::{self, Instruction, Library, Verdict},
    prerequisite_missing, read_or_missing, require_binutils,
};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const RSP: u8 = UNWIND_CFA_RSP;
const RBP: u8 = UNWIND_CFA_RBP;
/// (kind, `cfa_offset`, `rbp_offset`)
type Rule = (u8, i16, i16);

/// The machine's python3 interpreter, symlinks resolved
/// (`/usr/bin/python3.11` on Debian 12).
fn python() -> String {
    let python = std::path::Path::new("/usr/bin/python3");
    std::fs::canonicalize(python)
        .unwrap_or_else(|_| python.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// The C library and python3, read; None when one is missing (and
/// skipping is allowed).
fn libc_and_python(test: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let mut objects = Vec::new();
    for path in [LIBC.to_string(), python()] {
        let data = read_or_missing(test, &path)?;
        objects.push((path, data));
    }
    Some(objects)
}

/// The rule for `pc`.
fn at(rows: &[UnwindRow], pc: u64) -> Rule {
    let row = find(rows, pc).unwrap_or_else(|| panic!("no row for {pc:#x}"));
    (row.kind, row.cfa_offset, row.rbp_offset)
}

/// Address and size of a symbol, from .symtab or .dynsym.
fn symbol(data: &[u8], name: &str) -> (u64, u64) {
    use object::ObjectSymbol;
    let file = object::File::parse(data).unwrap();
    let symbol = file.symbols().chain(file.dynamic_symbols());
    let found = symbol
        .filter(|s| s.name() == Ok(name))
        .find(|s| s.size() > 0);
    let found = found.unwrap_or_else(|| panic!("no symbol {name}"));
    (found.address(), found.size())
}

fn assert_well_formed(rows: &[UnwindRow]) {
    for pair in rows.windows(2) {
        assert!(pair[0].pc < pair[1].pc, "unsorted: {pair:?}");
        assert!(!same_rule(&pair[0], &pair[1]), "unmerged: {pair:?}");
    }
    assert_eq!(rows.last().map(|r| r.kind), Some(UNWIND_NONE));
}

fn fde(start: u32, end: u32, rows: &[(u32, u8, i16)]) -> Fde {
    let rows = rows.iter().map(|&(pc, kind, cfa)| UnwindRow {
        pc,
        ..rule(kind, cfa, 0)
    });
    Fde {
        start,
        end,
        rows: rows.collect(),
    }
}

#[test]
fn gaps_are_closed_and_repeated_rules_merged() {
    let fdes = vec![
        fde(0x160, 0x170, &[(0x160, RSP, 8)]),
        fde(0x100, 0x120, &[(0x100, RSP, 8), (0x101, RSP, 16)]),
        fde(0x120, 0x130, &[(0x120, RSP, 8), (0x121, RSP, 8)]),
        fde(0x140, 0x160, &[(0x140, RSP, 8)]),
        fde(0x170, 0x180, &[(0x170, RSP, 8)]),
    ];
    let mut stats = TableStats::default();
    let rows = assemble(fdes, &mut stats);
    let got: Vec<_> = rows.iter().map(|r| (r.pc, r.kind, r.cfa_offset)).collect();
    let want = [
        (0x100, RSP, 8),
        (0x101, RSP, 16),
        (0x120, RSP, 8),
        (0x130, UNWIND_NONE, 0),
        (0x140, RSP, 8),
        (0x180, UNWIND_NONE, 0),
    ];
    assert_eq!(got, want);
    assert_eq!(stats.gap_rows, 2);
    assert_well_formed(&rows);
    assert_eq!(find(&rows, 0xff), None);
    assert_eq!(at(&rows, 0x11f), (RSP, 16, 0));
    assert_eq!(at(&rows, 0x13f).0, UNWIND_NONE);
    assert_eq!(at(&rows, u64::MAX).0, UNWIND_NONE);
}

/// An immediate operand (`$0x10`, `$-0x80`).
fn immediate(operand: &str) -> Option<i64> {
    let digits = operand.strip_prefix('$')?;
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits),
    };
    let value = i64::from_str_radix(digits.strip_prefix("0x")?, 16).ok()?;
    Some(if negative { -value } else { value })
}

/// The rule that must hold before each of a function's first
/// instructions, derived from the instructions alone: the CFA starts at
/// rsp+8, each push of a register adds 8 (a push of rbp saves it at
/// CFA-offset), `sub $n,%rsp` adds n, `add $n,%rsp` takes n away, and
/// instructions that only set flags or write other registers change
/// nothing. Stops after the first instruction whose effect on the frame
/// this does not model (a branch, a store, a write to rsp or rbp).
fn prologue_rules(code: &[Instruction]) -> Vec<(Instruction, Rule)> {
    let (mut cfa, mut rbp) = (8i64, 0i64);
    let mut rules = Vec::new();
    for instruction in code {
        let (Ok(cfa_offset), Ok(rbp_offset)) = (i16::try_from(cfa), i16::try_from(rbp)) else {
            break;
        };
        rules.push((instruction.clone(), (RSP, cfa_offset, rbp_offset)));
        let operands = instruction.operand_list();
        match (instruction.mnemonic.as_str(), operands.as_slice()) {
            ("push", [register]) if objdump::general_register(register).is_some() => {
                cfa += 8;
                if objdump::general_register(register) == Some("rbp") {
                    rbp = -cfa;
                }
            }
            ("sub", [amount, "%rsp"]) => match immediate(amount) {
                Some(n) => cfa += n,
                None => break,
            },
            ("add", [amount, "%rsp"]) => match immediate(amount) {
                Some(n) => cfa -= n,
                None => break,
            },
            _ if objdump::judge(instruction, &[]) == Verdict::Harmless => {}
            _ => break,
        }
    }
    rules
}

/// The table's rows over the C library's malloc prologue are what its
/// instructions do to the stack (objdump's decoding, not the CFI): on
/// Debian 12's glibc 2.36, rsp+8 at +0, rsp+16 after push %r12, rsp+24 and
/// rbp at CFA-24 after push %rbp, rsp+32 after push %rbx and rsp+48 after
/// sub $0x10,%rsp; another build is checked against its own instructions.
#[test]
fn libc_malloc_prologue_follows_its_instructions() {
    const TEST: &str = "unwind::tests::libc_malloc_prologue_follows_its_instructions";
    if !require_binutils(TEST) {
        return;
    }
    let Some(data) = read_or_missing(TEST, LIBC) else {
        return;
    };
    let rows = build_table(&data).unwrap();
    let library = Library::read(std::path::Path::new(LIBC));
    let (malloc, size) = library.function("malloc").expect("readelf finds malloc");
    assert_eq!(
        symbol(&data, "malloc"),
        (malloc, size),
        "readelf and object"
    );
    let code = library.disassemble(malloc, malloc + size.min(128));
    let rules = prologue_rules(&code);
    let changes = rules.windows(2).filter(|w| w[0].1 != w[1].1).count();
    if changes < 2 {
        return prerequisite_missing(
            TEST,
            &format!("a malloc whose prologue moves rsp at least twice before a branch: {code:#?}"),
        );
    }
    for (instruction, rule) in &rules {
        for pc in instruction.address..instruction.end() {
            assert_eq!(
                at(&rows, pc),
                *rule,
                "malloc+{:#x}, in `{} {}`",
                pc - malloc,
                instruction.mnemonic,
                instruction.operands
            );
        }
    }
    eprintln!(
        "malloc: {} instructions, {changes} changes of rule, agree with objdump",
        rules.len()
    );
}

/// What readelf's interpreted row says the table must hold; None for
/// rows we do not check (CFA expressions).
fn expected(columns: &[&str], words: &[&str]) -> Option<Rule> {
    let column = |name| columns.iter().position(|c| *c == name).map(|i| words[i]);
    let none = Some((UNWIND_NONE, 0, 0));
    match column("ra") {
        Some("u") => return Some((UNWIND_OUTERMOST, 0, 0)),
        None | Some("c-8") => {}
        Some(_) => return none,
    }
    let cfa = column("CFA")?;
    if cfa == "exp" {
        return None;
    }
    let (register, offset) = cfa.split_at(cfa.find(['+', '-'])?);
    let kind = match register {
        "rsp" => RSP,
        "rbp" => RBP,
        _ => return none,
    };
    let Ok(offset) = i16::try_from(offset.parse::<i64>().unwrap()) else {
        return none;
    };
    let rbp = match column("rbp") {
        None | Some("u" | "s") => 0,
        Some(saved) => match saved.strip_prefix('c').map(str::parse::<i16>) {
            Some(Ok(n)) if n != 0 => n,
            _ => return none,
        },
    };
    Some((kind, offset, rbp))
}

/// Compares the table with readelf's evaluation of the same CFI at every
/// row start it prints; returns how many rows were compared, and how
/// many of those are `UNWIND_NONE`.
fn cross_check(path: &str, data: &[u8]) -> (usize, usize) {
    // Not following the debug link: libc6-dbg's file has a NOBITS
    // .eh_frame, which makes readelf fail.
    let readelf = Command::new("readelf")
        .args(["--debug-dump=frames-interp,no-follow-links", path])
        .output();
    let text = match readelf {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap(),
        other => panic!("readelf --debug-dump=frames-interp {path}: {other:?}"),
    };
    let rows = build_table(data).unwrap();
    let (mut columns, mut fde_end, mut cie) = (Vec::new(), 0, None);
    // (pc, readelf's line, expected rule), one per row readelf prints.
    let mut listed: Vec<(u64, &str, Option<Rule>)> = Vec::new();
    // The rule of each CIE's initial instructions, by offset: readelf
    // lists no rows for an FDE without instructions, which has that rule.
    let mut cie_rules = std::collections::HashMap::new();
    for line in text.lines() {
        // Register rules read `r9 (r9)`: drop the names in parentheses.
        let words: Vec<&str> = line
            .split_whitespace()
            .filter(|w| !w.starts_with('('))
            .collect();
        match words.as_slice() {
            [offset, _, _, "CIE", ..] => (fde_end, cie) = (0, Some(*offset)),
            [_, _, _, "FDE", cie_offset, .., range] => {
                let (start, end) = range.trim_start_matches("pc=").split_once("..").unwrap();
                let start = u64::from_str_radix(start, 16).unwrap();
                (fde_end, cie) = (u64::from_str_radix(end, 16).unwrap(), None);
                // Replaced by the FDE's first row when it lists one.
                let initial = cie_rules.get(cie_offset.trim_start_matches("cie="));
                if start < fde_end {
                    listed.push((start, line, initial.copied().flatten()));
                }
            }
            ["LOC", ..] => columns = words,
            [loc, ..] if words.len() == columns.len() && loc.len() == 16 => {
                let pc = u64::from_str_radix(loc, 16).unwrap();
                if let Some(offset) = cie {
                    cie_rules.insert(offset, expected(&columns, &words));
                } else if pc < fde_end {
                    listed.push((pc, line, expected(&columns, &words)));
                }
            }
            _ => {}
        }
    }
    let (mut compared, mut none) = (0, 0);
    let mut mismatches = Vec::new();
    for (i, &(pc, line, want)) in listed.iter().enumerate() {
        // A later row at the same pc replaces this one.
        let replaced = listed.get(i + 1).is_some_and(|next| next.0 == pc);
        let Some(want) = want.filter(|_| !replaced) else {
            continue;
        };
        compared += 1;
        none += usize::from(want.0 == UNWIND_NONE);
        let got = find(&rows, pc).map(|r| (r.kind, r.cfa_offset, r.rbp_offset));
        if got != Some(want) {
            mismatches.push(format!("{pc:#x}: want {want:?}, got {got:?} ({line})"));
        }
    }
    assert!(
        listed.len() > 100,
        "{path}: readelf listed {}",
        listed.len()
    );
    assert!(mismatches.is_empty(), "{path}: {mismatches:#?}");
    (compared, none)
}

#[test]
fn libc_and_python_match_readelf() {
    const TEST: &str = "unwind::tests::libc_and_python_match_readelf";
    if !require_binutils(TEST) {
        return;
    }
    let Some(objects) = libc_and_python(TEST) else {
        return;
    };
    for (path, data) in objects {
        let (compared, none) = cross_check(&path, &data);
        eprintln!("{path}: {compared} rows agree with readelf, {none} of them NONE");
    }
}

const FIXTURE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
__attribute__((noinline)) long leaf(long x) { return x * 3 + 1; }
__attribute__((noinline, optimize("no-omit-frame-pointer"))) long framed(long n) {
volatile long buf[16];
for (long i = 0; i < 16; i++) buf[i] = leaf(n + i);
return buf[n & 15];
}
__attribute__((noinline)) long busy(long a, long b, long c) {
long s = 0;
for (long i = 0; i < a; i++) s += leaf(i) * b + framed(c + i);
return s;
}
int main(int argc, char **argv) {
char *p = malloc(64);
strcpy(p, argv[0]);
printf("%s %ld\n", p, busy(argc, argc + 1, argc + 2));
free(p);
return 0;
}
"#;

/// The fixture built twice, dynamically linked with a lazy .plt:
/// `-O2 -fomit-frame-pointer` and `-O0 -fno-omit-frame-pointer`; None when
/// gcc is missing (and skipping is allowed). gcc failing fails the test.
fn fixtures(test: &str) -> Option<&'static (Vec<u8>, Vec<u8>)> {
    static BUILT: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    if !objdump::on_path("gcc") {
        prerequisite_missing(test, "gcc (apt-get install gcc)");
        return None;
    }
    let build = || {
        let optimized = gcc(&["-O2", "-fomit-frame-pointer"]);
        (optimized, gcc(&["-O0", "-fno-omit-frame-pointer"]))
    };
    Some(BUILT.get_or_init(build))
}

fn gcc(flags: &[&str]) -> Vec<u8> {
    let name = format!("leaktrace-unwind-{}{}", std::process::id(), flags[0]);
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (source, binary) = (dir.join("fixture.c"), dir.join("fixture"));
    std::fs::write(&source, FIXTURE_C).unwrap();
    let status = Command::new("gcc")
        .args(flags)
        .args(["-Wl,-z,lazy", "-o"])
        .args([&binary, &source])
        .status();
    let built = status.as_ref().is_ok_and(std::process::ExitStatus::success);
    let built = built.then(|| std::fs::read(&binary).unwrap());
    let _: Result<_, _> = std::fs::remove_dir_all(&dir);
    built.unwrap_or_else(|| panic!("gcc {flags:?} could not build the fixture: {status:?}"))
}

/// The pcs just after `push %rbp` and just after `mov %rsp,%rbp` in a
/// function, and the pc of its last `ret`.
fn frame_setup(data: &[u8], function: &str) -> (u64, u64, u64) {
    use iced_x86::{Code, Decoder, DecoderOptions, Register};
    let (address, size) = symbol(data, function);
    let file = object::File::parse(data).unwrap();
    let text = file.section_by_name(".text").unwrap();
    let start = (address - text.address()) as usize;
    let code = &text.data().unwrap()[start..start + size as usize];
    let (mut pushed, mut moved, mut ret) = (None, None, None);
    for insn in Decoder::with_ip(64, code, address, DecoderOptions::NONE) {
        let regs = (insn.op0_register(), insn.op1_register());
        match insn.code() {
            Code::Push_r64 if regs.0 == Register::RBP => pushed = pushed.or(Some(insn.next_ip())),
            Code::Mov_rm64_r64 | Code::Mov_r64_rm64 if regs == (Register::RBP, Register::RSP) => {
                moved = moved.or(Some(insn.next_ip()));
            }
            Code::Retnq => ret = Some(insn.ip()),
            _ => {}
        }
    }
    let found = |pc: Option<u64>| pc.unwrap_or_else(|| panic!("{function}: {code:02x?}"));
    (found(pushed), found(moved), found(ret))
}

#[test]
fn fixture_frame_pointers_outermost_and_plt() {
    let Some((optimized, framed)) =
        fixtures("unwind::tests::fixture_frame_pointers_outermost_and_plt")
    else {
        return;
    };
    for data in [optimized, framed] {
        let rows = build_table(data).unwrap();
        assert_well_formed(&rows);
        // Scrt1.o's CIE says DW_CFA_undefined r16 (rip) for _start.
        let (start, size) = symbol(data, "_start");
        assert_eq!(at(&rows, start).0, UNWIND_OUTERMOST);
        assert_eq!(at(&rows, start + size - 1).0, UNWIND_OUTERMOST);
    }
    // `framed` keeps its frame pointer at -O2 too (optimize attribute);
    // every function does at -O0.
    let checks = [
        (optimized, &["framed"][..]),
        (framed, &["leaf", "framed", "busy", "main"]),
    ];
    for (data, functions) in checks {
        let rows = build_table(data).unwrap();
        for &function in functions {
            let (pushed, moved, ret) = frame_setup(data, function);
            assert_eq!(at(&rows, pushed), (RSP, 16, -16), "{function}");
            assert_eq!(at(&rows, moved), (RBP, 16, -16), "{function}");
            let (kind, cfa_offset, _) = at(&rows, ret);
            assert_eq!((kind, cfa_offset), (RSP, 8), "{function} at ret");
        }
    }
    // Without frame pointers the CFA follows rsp throughout.
    let rows = build_table(optimized).unwrap();
    for function in ["leaf", "busy", "main"] {
        let (address, size) = symbol(optimized, function);
        for pc in address..address + size {
            assert_eq!(at(&rows, pc).0, RSP, "{function} at {pc:#x}");
        }
    }
    // .plt: PLT0 pushes the link map under the index the entry pushed,
    // then the entries follow the standard expression.
    let file = object::File::parse(&optimized[..]).unwrap();
    let plt = file.section_by_name(".plt").expect("lazy .plt");
    let (address, size) = (plt.address(), plt.size());
    assert!(size >= 32, "expected PLT0 and an entry, {size} bytes");
    assert_eq!(at(&rows, address), (RSP, 16, 0));
    for pc in address + 16..address + size {
        assert_eq!(at(&rows, pc), (UNWIND_PLT, 0, 0), "{pc:#x}");
    }
}

/// Prints row counts, what became `UNWIND_NONE` and build times; run with
/// `cargo test --release -p leaktrace --lib unwind -- --nocapture`.
#[test]
fn sizes_and_times() {
    let Some(objects) = libc_and_python("unwind::tests::sizes_and_times") else {
        return;
    };
    for (path, data) in objects {
        let began = Instant::now();
        let (rows, stats) = build_table_with_stats(&data).unwrap();
        let took = began.elapsed();
        assert_well_formed(&rows);
        let mut kinds = [0usize; 5];
        for row in &rows {
            kinds[usize::from(row.kind)] += 1;
        }
        println!(
            "{path}: {} rows ({} KiB) in {took:?}; by kind [none, rsp, rbp, outermost, plt] = {kinds:?}\n  {stats:?}",
            rows.len(),
            rows.len() * size_of::<UnwindRow>() / 1024,
        );
        assert!(stats.fdes > 1000 && stats.fdes_invalid == 0 && stats.fdes_above_4g == 0);
        assert!(kinds[usize::from(UNWIND_PLT)] >= 1);
    }
}
