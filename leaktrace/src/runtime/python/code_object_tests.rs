//! The code object reader on made-up memory (every string kind, hostile
//! sizes), then on live interpreters: a process prints `id()` of its code
//! objects and the reader must find, through /proc/PID/mem, the names,
//! files and first lines the process printed. A missing interpreter fails
//! its test, naming it.
use std::{
    cell::Cell,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Result, bail};

use super::{
    code_object::{CodeCache, CodeInfo, Memory, ProcessMemory, python_frame, read_code},
    layout::{InstrUnit, PythonLayout},
    tests::{DEBIAN_PYTHON, oracle, pyenv},
    version::PythonVersion,
};

/// Memory made of regions; reads must fall inside one.
#[derive(Default)]
struct FakeMemory {
    regions: Vec<(u64, Vec<u8>)>,
    reads: Cell<usize>,
}

impl FakeMemory {
    fn put(&mut self, addr: u64, bytes: Vec<u8>) {
        self.regions.push((addr, bytes));
    }

    fn poke(&mut self, addr: u64, bytes: &[u8]) {
        for (start, region) in &mut self.regions {
            if addr >= *start && addr + bytes.len() as u64 <= *start + region.len() as u64 {
                let at = (addr - *start) as usize;
                region[at..at + bytes.len()].copy_from_slice(bytes);
                return;
            }
        }
        panic!("poke outside the regions at {addr:#x}");
    }
}

impl Memory for FakeMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.reads.set(self.reads.get() + 1);
        for (start, region) in &self.regions {
            let end = *start + region.len() as u64;
            if addr >= *start
                && addr
                    .checked_add(buf.len() as u64)
                    .is_some_and(|last| last <= end)
            {
                let at = (addr - *start) as usize;
                buf.copy_from_slice(&region[at..at + buf.len()]);
                return Ok(());
            }
        }
        bail!("unmapped {addr:#x}")
    }
}

fn layout(major: u8, minor: u8) -> PythonLayout {
    PythonLayout::for_version(PythonVersion {
        major,
        minor,
        micro: 0,
    })
    .unwrap()
}

fn put_u64(object: &mut [u8], offset: u16, value: u64) {
    let at = usize::from(offset);
    object[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// A 3.x compact string: ASCII when `kind` is 0, else a kind 1/2/4 string
/// of `units`; `utf8` is a cached UTF-8 copy's address.
fn unicode(layout: &PythonLayout, kind: u8, units: &[u32], utf8: Option<(u64, usize)>) -> Vec<u8> {
    let ascii = kind == 0;
    let width = if ascii { 1 } else { usize::from(kind) };
    let data = if ascii {
        layout.string_data
    } else {
        layout.unicode_compact_data
    };
    let mut object = vec![0; usize::from(data) + units.len() * width + 4];
    let state = if ascii {
        0x40 | 0x20 | (1 << 2)
    } else {
        0x20 | (kind << 2)
    };
    object[usize::from(layout.unicode_state)] = state;
    put_u64(&mut object, layout.string_length, units.len() as u64);
    if let Some((addr, length)) = utf8 {
        put_u64(&mut object, layout.unicode_utf8, addr);
        put_u64(&mut object, layout.unicode_utf8_length, length as u64);
    }
    for (index, &unit) in units.iter().enumerate() {
        let at = usize::from(data) + index * width;
        object[at..at + width].copy_from_slice(&unit.to_le_bytes()[..width]);
    }
    object
}

fn ascii(layout: &PythonLayout, text: &str) -> Vec<u8> {
    unicode(
        layout,
        0,
        &text.bytes().map(u32::from).collect::<Vec<_>>(),
        None,
    )
}

/// A bytes object (a `str` in 2.7).
fn bytes(layout: &PythonLayout, data: &[u8]) -> Vec<u8> {
    let mut object = vec![0; usize::from(layout.bytes_data) + data.len() + 1];
    put_u64(&mut object, layout.bytes_size, data.len() as u64);
    let at = usize::from(layout.bytes_data);
    object[at..at + data.len()].copy_from_slice(data);
    object
}

const CODE: u64 = 0x10_000;
const NAME: u64 = 0x20_000;
const FILE: u64 = 0x30_000;
const TABLE: u64 = 0x40_000;
const BYTECODE: u64 = 0x50_000;

/// A code object at `CODE` with its name and file objects as given.
fn fake_code(layout: &PythonLayout, name: Vec<u8>, file: Vec<u8>, table: &[u8]) -> FakeMemory {
    let mut code = vec![0; 512];
    put_u64(&mut code, layout.code_name, NAME);
    put_u64(&mut code, layout.code_filename, FILE);
    put_u64(&mut code, layout.code_line_table, TABLE);
    let first = usize::from(layout.code_firstlineno);
    code[first..first + 4].copy_from_slice(&40i32.to_le_bytes());
    if layout.instr_unit != InstrUnit::Pointer {
        put_u64(&mut code, layout.code_code, BYTECODE);
    }
    let mut memory = FakeMemory::default();
    memory.put(CODE, code);
    memory.put(NAME, name);
    memory.put(FILE, file);
    memory.put(TABLE, bytes(layout, table));
    memory
}

#[test]
fn reads_a_3_12_code_object_and_names_its_frame() {
    let layout = layout(3, 12);
    // Unit 0: line 41 (no columns, +1); units 1-2: line 43.
    let table = [0x80 | (13 << 3), 2, 0x80 | (13 << 3) | 1, 4];
    let memory = fake_code(
        &layout,
        ascii(&layout, "handle"),
        ascii(&layout, "/srv/app.py"),
        &table,
    );
    let code = read_code(&memory, &layout, CODE).unwrap();
    assert_eq!(
        (code.name.as_str(), code.filename.as_str(), code.first_line),
        ("handle", "/srv/app.py", 40)
    );
    assert_eq!(code.code_start, CODE + u64::from(layout.code_code));
    let frame = python_frame(&code, code.code_start + 4);
    assert_eq!(
        (frame.function.as_str(), frame.file.as_str(), frame.line),
        ("handle", "/srv/app.py", Some(43))
    );
    assert_eq!(python_frame(&code, code.code_start).line, Some(41));
    // prev_instr of a frame that has not started: one unit before the code.
    assert_eq!(python_frame(&code, code.code_start - 2).line, Some(40));
}

#[test]
fn reads_every_string_kind() {
    let layout = layout(3, 11);
    let latin: Vec<u32> = "café".chars().map(u32::from).collect();
    let bmp: Vec<u32> = "名前".chars().map(u32::from).collect();
    let astral: Vec<u32> = "f\u{20000}".chars().map(u32::from).collect();
    for (kind, units, want) in [
        (1, &latin, "café"),
        (2, &bmp, "名前"),
        (4, &astral, "f\u{20000}"),
    ] {
        let memory = fake_code(
            &layout,
            unicode(&layout, kind, units, None),
            ascii(&layout, "a.py"),
            &[],
        );
        assert_eq!(
            read_code(&memory, &layout, CODE).unwrap().name,
            want,
            "kind {kind}"
        );
    }
    // The cached UTF-8 copy wins when there is one.
    let utf8 = "naïve".as_bytes();
    let units: Vec<u32> = "naïve".chars().map(u32::from).collect();
    let mut memory = fake_code(
        &layout,
        unicode(&layout, 1, &units, Some((0x60_000, utf8.len()))),
        ascii(&layout, "a.py"),
        &[],
    );
    memory.put(0x60_000, utf8.to_vec());
    assert_eq!(read_code(&memory, &layout, CODE).unwrap().name, "naïve");
}

#[test]
fn reads_a_2_7_code_object() {
    let layout = layout(2, 7);
    let memory = fake_code(
        &layout,
        bytes(&layout, b"main"),
        bytes(&layout, b"tool.py"),
        &[0, 1, 6, 2],
    );
    let code = read_code(&memory, &layout, CODE).unwrap();
    assert_eq!(code.code_start, BYTECODE + u64::from(layout.bytes_data));
    assert_eq!(code.instr_unit, InstrUnit::LastiBytes);
    assert_eq!(python_frame(&code, 3).line, Some(41));
    assert_eq!(python_frame(&code, 6).line, Some(43));
    // f_lasti -1, sent as a 32-bit int.
    assert_eq!(python_frame(&code, u64::from(u32::MAX)).line, Some(40));
}

#[test]
fn hostile_objects_are_errors() {
    let layout = layout(3, 9);
    let good = || {
        fake_code(
            &layout,
            ascii(&layout, "f"),
            ascii(&layout, "f.py"),
            &[0, 1],
        )
    };
    assert!(read_code(&good(), &layout, CODE).is_ok());
    assert!(read_code(&good(), &layout, 0).is_err());
    assert!(read_code(&good(), &layout, 0xdead_0000).is_err());
    assert!(read_code(&good(), &layout, u64::MAX - 8).is_err());
    let string_length = NAME + u64::from(layout.string_length);
    let table_length = TABLE + u64::from(layout.bytes_size);
    for (addr, value) in [
        (string_length, 1u64 << 40),                        // a huge name
        (string_length, u64::MAX),                          // a negative length
        (string_length, 1025),                              // over the 1 KiB cap
        (table_length, 64 * 1024 + 1),                      // a line table over 64 KiB
        (CODE + u64::from(layout.code_name), 0),            // no name
        (CODE + u64::from(layout.code_filename), 0x77_000), // unmapped
    ] {
        let mut memory = good();
        memory.poke(addr, &value.to_le_bytes());
        let err = read_code(&memory, &layout, CODE).expect_err("a hostile object");
        assert!(!format!("{err:#}").is_empty());
    }
    for state in [0x00, 0x40 | 0x20 | (2 << 2), 0x20 | (3 << 2)] {
        let mut memory = good();
        memory.poke(NAME + u64::from(layout.unicode_state), &[state]);
        assert!(
            read_code(&memory, &layout, CODE).is_err(),
            "state {state:#x}"
        );
    }
}

#[test]
fn the_cache_reads_each_code_object_once() {
    let layout = layout(3, 10);
    let memory = fake_code(
        &layout,
        ascii(&layout, "f"),
        ascii(&layout, "f.py"),
        &[2, 1],
    );
    let mut cache = CodeCache::default();
    let first = cache
        .get(7, CODE, || read_code(&memory, &layout, CODE))
        .unwrap();
    let reads = memory.reads.get();
    let again = cache
        .get(7, CODE, || read_code(&memory, &layout, CODE))
        .unwrap();
    assert_eq!(memory.reads.get(), reads);
    assert_eq!(first, again);
    assert!(
        cache
            .get(7, 0xbad, || read_code(&memory, &layout, 0xbad))
            .is_err()
    );
    let reads = memory.reads.get();
    assert!(
        cache
            .get(7, 0xbad, || read_code(&memory, &layout, 0xbad))
            .is_err()
    );
    assert_eq!(memory.reads.get(), reads, "a failure is remembered");
    cache
        .get(8, CODE, || read_code(&memory, &layout, CODE))
        .unwrap();
    cache.forget(7);
    assert_eq!(cache.len(), 1);
}

/// A child killed (and reaped) when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _: std::io::Result<()> = self.0.kill();
        let _: std::io::Result<std::process::ExitStatus> = self.0.wait();
    }
}

fn unhex(text: &str) -> String {
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
        .collect();
    String::from_utf8(bytes).expect("UTF-8")
}

fn live(python: &Path) {
    assert!(python.exists(), "{} is missing", python.display());
    let version = oracle(python);
    let layout = PythonLayout::for_version(version).expect("a table for this version");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/runtime/python/testdata/code_objects.py");
    let mut child = KillOnDrop(
        Command::new(python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", python.display())),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let memory = ProcessMemory::open(child.0.id()).expect("our child's memory");
    let mut cache = CodeCache::default();
    let mut seen = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line from the child");
        if line == "READY" {
            break;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let ["CODE", addr, name, file, first] = fields[..] else {
            panic!("{version}: unexpected line {line:?}");
        };
        let addr: u64 = addr.parse().expect("id()");
        let want: (String, String, i32) =
            (unhex(name), unhex(file), first.parse().expect("a line"));
        let code: std::sync::Arc<CodeInfo> = cache
            .get(child.0.id(), addr, || read_code(&memory, &layout, addr))
            .unwrap_or_else(|err| panic!("Python {version}: code object {addr:#x}: {err:#}"));
        assert_eq!(
            (code.name.clone(), code.filename.clone(), code.first_line),
            want,
            "Python {version}"
        );
        assert!(
            !code.line_table.is_empty() || version.major == 2,
            "{version}: empty line table"
        );
        seen += 1;
    }
    let want = if version.major == 2 { 1 } else { 4 };
    assert_eq!(seen, want, "Python {version}: code objects read");
}

#[test]
fn live_code_objects_2_7() {
    live(&pyenv("2.7.18"));
}

#[test]
fn live_code_objects_3_6() {
    live(&pyenv("3.6.15"));
}

#[test]
fn live_code_objects_3_7() {
    live(&pyenv("3.7.16"));
}

#[test]
fn live_code_objects_3_8() {
    live(&pyenv("3.8.18"));
}

#[test]
fn live_code_objects_3_9() {
    live(&pyenv("3.9.18"));
}

#[test]
fn live_code_objects_3_10() {
    live(&pyenv("3.10.13"));
}

#[test]
fn live_code_objects_3_11() {
    live(&pyenv("3.11.7"));
}

#[test]
fn live_code_objects_3_12() {
    live(&pyenv("3.12.1"));
}

#[test]
fn live_code_objects_3_13() {
    live(&pyenv("3.13.0"));
}

#[test]
fn live_code_objects_debian_python3_11() {
    live(Path::new(DEBIAN_PYTHON));
}
