//! An oracle for tests about a real library on this machine, independent of
//! leaktrace's own decoding: GNU binutils' `readelf` gives the library's
//! symbols and load segments, `objdump` its instructions, and the rules
//! below say where leaktrace's `auto` placement must put a function's entry
//! probe, without iced-x86 (which leaktrace uses).
//!
//! The rules are deliberately narrow. Before the first instruction the
//! kernel emulates (plain jcc/jmp/call rel, one-byte nop, push of a
//! register), an instruction is harmless when it only reads and sets flags
//! (test, cmp, bt), is endbr64 or a multi-byte nop, or writes only a general
//! register the probe does not read (not rsp, not rbp). A branch, a push or
//! pop, a lock prefix, a store, or a write to rsp, rbp or an argument
//! register keeps the probe at offset 0, as does any direct jump or call in
//! the object that lands inside the skipped bytes. Anything else is beyond
//! the oracle, which then says so instead of guessing.
//!
//! Shared by the integration tests (`tests/common`) and the unit tests in
//! `src` (`src/test_support.rs` includes this file).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

/// The binutils programs the oracle runs that are not on PATH.
pub(crate) fn missing_tools() -> Vec<&'static str> {
    ["readelf", "objdump"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect()
}

/// Whether a file named `tool` is in a directory on PATH.
pub(crate) fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn run(program: &str, args: &[&str], path: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {args:?} {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "{program} {args:?} {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).ok()
}

/// One instruction as objdump prints it (AT&T syntax).
#[derive(Clone, Debug)]
pub(crate) struct Instruction {
    pub address: u64,
    pub bytes: Vec<u8>,
    /// The first word (a prefix such as `lock`, `bnd` or `cs` when there
    /// is one).
    pub mnemonic: String,
    /// The rest of the line, `<symbol>` annotations and `#` comments
    /// removed.
    pub operands: String,
}

impl Instruction {
    pub(crate) fn end(&self) -> u64 {
        self.address + self.bytes.len() as u64
    }

    /// Operands split at top-level commas (not those inside parentheses).
    pub(crate) fn operand_list(&self) -> Vec<&str> {
        let mut list = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in self.operands.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    list.push(self.operands[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        if !self.operands.trim().is_empty() {
            list.push(self.operands[start..].trim());
        }
        list
    }

    /// Whether the kernel emulates this instruction, per the plain forms of
    /// arch/x86/kernel/uprobes.c: jcc/jmp rel8 or rel32, call rel32, the
    /// one-byte nop, push of a 64-bit register. The mnemonic must agree
    /// with the bytes.
    pub(crate) fn is_emulated(&self) -> bool {
        let mnemonic = self.mnemonic.as_str();
        let branch = mnemonic.starts_with('j') && !matches!(mnemonic, "jrcxz" | "jecxz");
        match self.bytes.as_slice() {
            [0x70..=0x7f | 0xeb, _] | [0x0f, 0x80..=0x8f, _, _, _, _] | [0xe9, _, _, _, _] => {
                branch
            }
            [0xe8, _, _, _, _] => mnemonic == "call",
            [0x90] => mnemonic == "nop",
            [0x50..=0x57] | [0x41, 0x50..=0x57] => mnemonic == "push",
            _ => false,
        }
    }

    /// The target of a direct jump, call or loop, if this is one.
    pub(crate) fn direct_target(&self) -> Option<u64> {
        let words: Vec<&str> = std::iter::once(self.mnemonic.as_str())
            .chain(self.operands.split_whitespace())
            .collect();
        let position = words
            .iter()
            .position(|w| w.starts_with('j') || w.starts_with("call") || w.starts_with("loop"))?;
        let target = words.get(position + 1)?;
        if target.starts_with('*') || target.starts_with('%') {
            return None;
        }
        hex(target)
    }
}

/// Parses `objdump -d -w` output (one instruction a line).
pub(crate) fn parse_objdump(text: &str) -> Vec<Instruction> {
    let mut instructions = Vec::new();
    for line in text.lines() {
        let mut fields = line.split('\t');
        let (Some(address), Some(bytes)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some(address) = address.trim().strip_suffix(':').and_then(hex) else {
            continue;
        };
        let Some(bytes) = bytes
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).ok())
            .collect::<Option<Vec<u8>>>()
        else {
            continue;
        };
        let text = fields.collect::<Vec<_>>().join(" ");
        let text = text.split('#').next().unwrap_or("");
        let text = match text.find(" <") {
            Some(i) => &text[..i],
            None => text,
        };
        let mut words = text.trim().splitn(2, char::is_whitespace);
        let mnemonic = words.next().unwrap_or("").to_string();
        let operands = words.next().unwrap_or("").trim().to_string();
        if bytes.is_empty() {
            continue;
        }
        instructions.push(Instruction {
            address,
            bytes,
            mnemonic,
            operands,
        });
    }
    instructions
}

/// The 64-bit register an AT&T register operand (`%edi`, `%r8b`) is part
/// of; None when it is not a general register.
pub(crate) fn general_register(operand: &str) -> Option<&'static str> {
    const FAMILIES: [(&str, &[&str]); 16] = [
        ("rax", &["rax", "eax", "ax", "al", "ah"]),
        ("rbx", &["rbx", "ebx", "bx", "bl", "bh"]),
        ("rcx", &["rcx", "ecx", "cx", "cl", "ch"]),
        ("rdx", &["rdx", "edx", "dx", "dl", "dh"]),
        ("rsi", &["rsi", "esi", "si", "sil"]),
        ("rdi", &["rdi", "edi", "di", "dil"]),
        ("rbp", &["rbp", "ebp", "bp", "bpl"]),
        ("rsp", &["rsp", "esp", "sp", "spl"]),
        ("r8", &["r8", "r8d", "r8w", "r8b"]),
        ("r9", &["r9", "r9d", "r9w", "r9b"]),
        ("r10", &["r10", "r10d", "r10w", "r10b"]),
        ("r11", &["r11", "r11d", "r11w", "r11b"]),
        ("r12", &["r12", "r12d", "r12w", "r12b"]),
        ("r13", &["r13", "r13d", "r13w", "r13b"]),
        ("r14", &["r14", "r14d", "r14w", "r14b"]),
        ("r15", &["r15", "r15d", "r15w", "r15b"]),
    ];
    let name = operand.strip_prefix('%')?;
    FAMILIES
        .iter()
        .find(|(_, names)| names.contains(&name))
        .map(|(family, _)| *family)
}

/// Argument registers of a function taking `count` arguments (System V).
pub(crate) fn argument_registers(count: usize) -> &'static [&'static str] {
    &["rdi", "rsi", "rdx", "rcx", "r8", "r9"][..count]
}

/// What an instruction before the first emulated one means for placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The probe may go past it.
    Harmless,
    /// The probe stays at offset 0 because of it (why).
    Blocks(String),
    /// The oracle's rules do not cover it.
    Unknown,
}

const FLAGS_ONLY: &[&str] = &[
    "test", "testb", "testw", "testl", "testq", "cmp", "cmpb", "cmpw", "cmpl", "cmpq", "bt", "btl",
    "btq",
];
const REGISTER_WRITES: &[&str] = &[
    "mov", "movl", "movq", "movabs", "lea", "shr", "shl", "sar", "and", "or", "xor", "add", "sub",
    "movzbl", "movzwl", "movzbq", "movslq", "movsbl", "movsbq",
];

/// Judges `instruction` for a probe that reads the `protected` registers.
pub(crate) fn judge(instruction: &Instruction, protected: &[&str]) -> Verdict {
    let mnemonic = instruction.mnemonic.as_str();
    if FLAGS_ONLY.contains(&mnemonic) || mnemonic == "endbr64" {
        return Verdict::Harmless;
    }
    if mnemonic.starts_with("nop") && instruction.bytes.len() > 1 {
        return Verdict::Harmless;
    }
    let flow = mnemonic.starts_with('j')
        || mnemonic.starts_with("call")
        || mnemonic.starts_with("ret")
        || mnemonic.starts_with("loop")
        || matches!(
            mnemonic,
            "bnd" | "notrack" | "syscall" | "int3" | "ud2" | "hlt"
        );
    if flow {
        return Verdict::Blocks(format!("{mnemonic} branches"));
    }
    if mnemonic.starts_with("push")
        || mnemonic.starts_with("pop")
        || matches!(mnemonic, "leave" | "enter")
    {
        return Verdict::Blocks(format!("{mnemonic} moves rsp"));
    }
    if mnemonic == "lock" {
        return Verdict::Blocks("locked".into());
    }
    if REGISTER_WRITES.contains(&mnemonic) {
        let operands = instruction.operand_list();
        let Some(destination) = operands.last() else {
            return Verdict::Unknown;
        };
        if destination.contains('(') || !destination.starts_with('%') {
            return Verdict::Blocks(format!("{mnemonic} stores to {destination}"));
        }
        return match general_register(destination) {
            Some(register @ ("rsp" | "rbp")) => Verdict::Blocks(format!("writes {register}")),
            Some(register) if protected.contains(&register) => {
                Verdict::Blocks(format!("writes argument register {register}"))
            }
            Some(_) => Verdict::Harmless,
            None => Verdict::Unknown,
        };
    }
    Verdict::Unknown
}

/// How many bytes and instructions leaktrace looks at from a function's
/// start (placement's window).
pub(crate) const WINDOW_BYTES: u64 = 64;
pub(crate) const WINDOW_INSTRUCTIONS: usize = 16;

/// Where the entry probe of a function whose code starts with `code` must
/// go, as an offset from its start, ignoring jumps from elsewhere; Err when
/// the oracle cannot tell (the instruction it does not know).
pub(crate) fn probe_offset_in(code: &[Instruction], protected: &[&str]) -> Result<u64, String> {
    let Some(first) = code.first() else {
        return Ok(0);
    };
    for instruction in code.iter().take(WINDOW_INSTRUCTIONS) {
        if instruction.mnemonic == "(bad)" {
            return Ok(0);
        }
        if instruction.is_emulated() {
            return Ok(instruction.address - first.address);
        }
        match judge(instruction, protected) {
            Verdict::Harmless => {}
            Verdict::Blocks(_) => return Ok(0),
            Verdict::Unknown => {
                return Err(format!(
                    "`{} {}` at +{:#x}, which the oracle's rules do not cover",
                    instruction.mnemonic,
                    instruction.operands,
                    instruction.address - first.address
                ));
            }
        }
    }
    Ok(0)
}

/// A library (or executable) on this machine, read with readelf and
/// objdump.
pub(crate) struct Library {
    pub path: PathBuf,
    /// Function symbols defined here: name (version removed) -> (address,
    /// size). The first definition of a name wins.
    functions: HashMap<String, (u64, u64)>,
    /// LOAD segments: (file offset, virtual address, file size).
    loads: Vec<(u64, u64, u64)>,
    /// Targets of every direct jump, call and loop in its code, sorted.
    branch_targets: std::cell::OnceCell<Vec<u64>>,
}

impl Library {
    /// Reads `path`'s symbols and segments (panics when readelf fails).
    pub(crate) fn read(path: &Path) -> Library {
        let mut functions = HashMap::new();
        let symbols = run("readelf", &["-W", "--dyn-syms", "--syms"], path);
        for line in symbols.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [number, value, size, kind, _, _, index, name, ..] = words[..] else {
                continue;
            };
            if !number.ends_with(':') || kind != "FUNC" || index == "UND" {
                continue;
            }
            let size = match size.strip_prefix("0x") {
                Some(hex_size) => u64::from_str_radix(hex_size, 16).ok(),
                None => size.parse().ok(),
            };
            let (Some(value), Some(size)) = (hex(value), size) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if size > 0 {
                functions.entry(name.to_string()).or_insert((value, size));
            }
        }
        let mut loads = Vec::new();
        for line in run("readelf", &["-W", "-l"], path).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["LOAD", offset, address, _, file_size, ..] = words[..] {
                let parsed = (hex(offset), hex(address), hex(file_size));
                if let (Some(offset), Some(address), Some(file_size)) = parsed {
                    loads.push((offset, address, file_size));
                }
            }
        }
        assert!(!loads.is_empty(), "{}: no LOAD segment", path.display());
        Library {
            path: path.to_path_buf(),
            functions,
            loads,
            branch_targets: std::cell::OnceCell::new(),
        }
    }

    /// Address and size of function `name`.
    pub(crate) fn function(&self, name: &str) -> Option<(u64, u64)> {
        self.functions.get(name).copied()
    }

    /// The file offset of virtual address `address`.
    pub(crate) fn file_offset(&self, address: u64) -> Option<u64> {
        self.loads.iter().find_map(|&(offset, start, size)| {
            (start..start + size)
                .contains(&address)
                .then(|| address - start + offset)
        })
    }

    /// The instructions in [start, end).
    pub(crate) fn disassemble(&self, start: u64, end: u64) -> Vec<Instruction> {
        let text = run(
            "objdump",
            &[
                "-d",
                "-w",
                &format!("--start-address={start:#x}"),
                &format!("--stop-address={end:#x}"),
            ],
            &self.path,
        );
        parse_objdump(&text)
    }

    /// Where leaktrace's `auto` placement must put the entry probe of
    /// function `name`, which takes `arguments` arguments, as an offset
    /// from its start; Err when the oracle cannot tell, or there is no such
    /// function.
    pub(crate) fn expected_probe_offset(
        &self,
        name: &str,
        arguments: usize,
    ) -> Result<u64, String> {
        let (address, _) = self
            .function(name)
            .ok_or_else(|| format!("{} defines no function {name}", self.path.display()))?;
        let code = self.disassemble(address, address + WINDOW_BYTES);
        let offset = probe_offset_in(&code, argument_registers(arguments))
            .map_err(|why| format!("{name} in {}: {why}", self.path.display()))?;
        if offset == 0 {
            return Ok(0);
        }
        let targets = self.branch_targets.get_or_init(|| {
            let text = run("objdump", &["-d", "-w"], &self.path);
            let mut targets: Vec<u64> = parse_objdump(&text)
                .iter()
                .filter_map(Instruction::direct_target)
                .collect();
            targets.sort_unstable();
            targets
        });
        let low = targets.partition_point(|&t| t <= address);
        if targets.get(low).is_some_and(|&t| t <= address + offset) {
            return Ok(0);
        }
        Ok(offset)
    }
}
