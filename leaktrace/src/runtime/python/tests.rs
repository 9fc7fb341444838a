//! Every interpreter on the machine, read from its file and checked against
//! what it says of itself when run; then made-up, hostile files.
//!
//! A missing interpreter fails its test, naming it: CI without it is not a
//! pass.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::{
    detect::{ObjectVerdict, ReadVersion, Unreadable, VersionSource, inspect},
    elf,
    version::{self, PythonVersion},
};

pub(super) fn pyenv_root() -> PathBuf {
    std::env::var_os("PYENV_ROOT").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".pyenv")
        },
        PathBuf::from,
    )
}

/// pyenv's interpreter of `build` ("3.11.7"): `bin/python3.11` under it.
pub(super) fn pyenv(build: &str) -> PathBuf {
    let minor: String = build.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
    pyenv_root()
        .join("versions")
        .join(build)
        .join("bin")
        .join(format!("python{minor}"))
}

/// What `python` reports of itself: `sys.version_info[:3]`.
pub(super) fn oracle(python: &Path) -> PythonVersion {
    let output = Command::new(python)
        .args(["-c", "import sys; print(sys.version_info[:3])"])
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", python.display()));
    assert!(output.status.success(), "{} failed", python.display());
    let text = String::from_utf8_lossy(&output.stdout);
    let numbers: Vec<u8> = text
        .trim()
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(|n| n.trim().parse().expect("a version number"))
        .collect();
    let [major, minor, micro] = numbers[..] else {
        panic!("{} printed {text:?}", python.display());
    };
    PythonVersion {
        major,
        minor,
        micro,
    }
}

/// The pyenv build `name` ("3.11.7"): its interpreter and its library.
fn pyenv_build(name: &str) -> (PathBuf, PathBuf) {
    let dir = pyenv_root().join("versions").join(name);
    let minor: String = name.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
    let python = dir.join("bin").join(format!("python{minor}"));
    assert!(
        python.exists(),
        "pyenv's Python {name} is missing: no {} (install it with `pyenv install {name}` configured --enable-shared)",
        python.display()
    );
    // Find the library by what it defines: every libpython* in lib/, of
    // which exactly one holds the interpreter (libpython3.so forwards).
    let mut libraries = Vec::new();
    for entry in fs::read_dir(dir.join("lib")).expect("pyenv lib/") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("libpython") && !path.is_symlink() && path.is_file() {
            let verdict = inspect(&fs::read(&path).unwrap());
            if matches!(verdict, ObjectVerdict::Python(_)) {
                libraries.push(path);
            } else {
                assert_eq!(verdict, ObjectVerdict::NotPython, "{name}");
            }
        }
    }
    let [library] = &libraries[..] else {
        panic!("pyenv {name}: interpreter libraries {libraries:?}, want one (a shared build)");
    };
    (python, library.clone())
}

fn read(path: &Path) -> ReadVersion {
    let data = fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    match inspect(&data) {
        ObjectVerdict::Python(Ok(read)) => read,
        other => panic!("{}: {other:?}", path.display()),
    }
}

/// Reads pyenv's `name`, checks it against the interpreter, and checks the
/// sources each version has: the string always, `Py_Version` from 3.11,
/// the debug offsets from 3.13.
fn check_pyenv(name: &str) {
    let (python, library) = pyenv_build(name);
    let expected = oracle(&python);
    let read = read(&library);
    eprintln!("{}: {read:?}", library.display());
    assert_eq!(read.version, expected, "{}", library.display());
    let mut sources = vec![read.how];
    sources.extend(&read.confirmed_by);
    let want_symbol = (expected.major, expected.minor) >= (3, 11);
    let want_debug = (expected.major, expected.minor) >= (3, 13);
    assert_eq!(
        sources.contains(&VersionSource::PyVersionSymbol),
        want_symbol,
        "{read:?}"
    );
    assert_eq!(
        sources.contains(&VersionSource::DebugOffsets),
        want_debug,
        "{read:?}"
    );
    assert!(sources.contains(&VersionSource::VersionString), "{read:?}");
    // The shared build's executable only imports the interpreter.
    let exe = fs::read(&python).unwrap();
    assert_eq!(
        inspect(&exe),
        ObjectVerdict::NotPython,
        "{}",
        python.display()
    );
}

#[test]
fn pyenv_2_7_18() {
    check_pyenv("2.7.18");
}
#[test]
fn pyenv_3_6_15() {
    check_pyenv("3.6.15");
}
#[test]
fn pyenv_3_7_16() {
    check_pyenv("3.7.16");
}
#[test]
fn pyenv_3_8_18() {
    check_pyenv("3.8.18");
}
#[test]
fn pyenv_3_9_18() {
    check_pyenv("3.9.18");
}
#[test]
fn pyenv_3_10_13() {
    check_pyenv("3.10.13");
}
#[test]
fn pyenv_3_11_7() {
    check_pyenv("3.11.7");
}
#[test]
fn pyenv_3_12_1() {
    check_pyenv("3.12.1");
}
#[test]
fn pyenv_3_13_0() {
    check_pyenv("3.13.0");
}

pub(super) const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// Debian's static, stripped, LTO+PGO build: no `.symtab`, the C API in
/// `.dynsym`, addresses as absolute immediates (non-PIE).
#[test]
fn debian_python_3_11_static_stripped() {
    let path = Path::new(DEBIAN_PYTHON);
    assert!(
        path.exists(),
        "Debian's python3.11 is missing: no {DEBIAN_PYTHON} (apt-get install python3.11)"
    );
    let data = fs::read(path).unwrap();
    let started = std::time::Instant::now();
    let verdict = inspect(&data);
    eprintln!(
        "{DEBIAN_PYTHON}: inspected in {:?}: {verdict:?}",
        started.elapsed()
    );
    let file = object::File::parse(&*data).unwrap();
    assert!(file.symbols().next().is_none(), "expected a stripped build");
    assert!(
        file.dynamic_symbols()
            .any(|s| s.name() == Ok("Py_Version") && s.is_definition()),
        "Py_Version is not exported"
    );
    let read = read(path);
    eprintln!("{DEBIAN_PYTHON}: {read:?}");
    assert_eq!(read.version, oracle(path));
    assert_eq!(read.how, VersionSource::PyVersionSymbol);
    assert_eq!(read.confirmed_by, [VersionSource::VersionString]);
}

#[test]
fn the_c_library_is_not_python() {
    let path = "/lib/x86_64-linux-gnu/libc.so.6";
    let data = fs::read(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    assert_eq!(inspect(&data), ObjectVerdict::NotPython);
}

#[test]
fn garbage_and_truncated_files_are_not_objects() {
    assert!(matches!(inspect(&[]), ObjectVerdict::NotAnObject(_)));
    assert!(matches!(
        inspect(&[0xAB; 4096]),
        ObjectVerdict::NotAnObject(_)
    ));
    let mut elf_ish = b"\x7fELF\x02\x01\x01".to_vec();
    elf_ish.resize(200, 0xff);
    assert!(matches!(inspect(&elf_ish), ObjectVerdict::NotAnObject(_)));
    let (_, library) = pyenv_build("3.11.7");
    let data = fs::read(library).unwrap();
    // Cut anywhere: never a panic, never a version.
    for len in [1, 64, 4096, data.len() / 2, data.len() - 1] {
        let verdict = inspect(&data[..len]);
        assert!(
            !matches!(verdict, ObjectVerdict::Python(Ok(_))),
            "cut at {len}: {verdict:?}"
        );
    }
}

/// The file offset of `name`'s `.dynsym` entry (`Elf64_Sym`, 24 bytes).
pub(super) fn dynsym_entry(data: &[u8], name: &str) -> usize {
    let file = object::File::parse(data).unwrap();
    let dynsym = file.section_by_name(".dynsym").unwrap();
    let (offset, _) = dynsym.file_range().unwrap();
    let symbol = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("no {name}"));
    offset as usize + symbol.index().0 * 24
}

fn patched_u64(data: &mut [u8], at: usize, value: u64) {
    data[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn a_version_symbol_outside_the_file_is_unreadable_not_a_guess() {
    let (_, library) = pyenv_build("3.11.7");
    let mut data = fs::read(library).unwrap();
    let entry = dynsym_entry(&data, "Py_Version");
    for address in [0xdead_0000_0000, u64::MAX - 3] {
        patched_u64(&mut data, entry + 8, address);
        match inspect(&data) {
            ObjectVerdict::Python(Err(Unreadable::SourceOutsideFile { symbol, .. })) => {
                assert_eq!(symbol, "Py_Version");
            }
            other => panic!("{address:#x}: {other:?}"),
        }
    }
    // A Py_Version in .bss has no bytes in the file either.
    let file = object::File::parse(&*data).unwrap();
    let bss = file.section_by_name(".bss").unwrap().address();
    patched_u64(&mut data, entry + 8, bss);
    assert!(matches!(
        inspect(&data),
        ObjectVerdict::Python(Err(Unreadable::SourceOutsideFile { .. }))
    ));
}

#[test]
fn sources_that_disagree_make_the_version_unreadable() {
    let (_, library) = pyenv_build("3.13.0");
    let original = fs::read(library).unwrap();
    let file = object::File::parse(&*original).unwrap();
    let runtime = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("_PyRuntime"))
        .unwrap()
        .address();
    let data_section = file
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&runtime))
        .unwrap();
    let (start, _) = data_section.file_range().unwrap();
    let at = (start + runtime - data_section.address()) as usize;
    assert_eq!(&original[at..at + 8], b"xdebugpy");
    let mut data = original.clone();
    patched_u64(&mut data, at + 8, 0x030c01f0);
    assert!(
        matches!(
            inspect(&data),
            ObjectVerdict::Python(Err(Unreadable::Conflict { .. }))
        ),
        "{:?}",
        inspect(&data)
    );
    // A cookie followed by no version.
    patched_u64(&mut data, at + 8, 7);
    assert!(matches!(
        inspect(&data),
        ObjectVerdict::Python(Err(Unreadable::NotAVersion { .. }))
    ));
    // The version string says otherwise (same length, so nothing moves).
    // Found the way the reader finds it: the linker may merge it into the
    // tail of another string (here the install prefix, ".../3.13.0").
    let mut data = original.clone();
    let at = version_string_offset(&original);
    assert_eq!(&data[at..at + 7], b"3.13.0\0");
    data[at..at + 6].copy_from_slice(b"3.13.9");
    assert!(matches!(
        inspect(&data),
        ObjectVerdict::Python(Err(Unreadable::Conflict { .. }))
    ));
}

/// The file offset of the `PY_VERSION` string `Py_GetVersion` takes.
fn version_string_offset(data: &[u8]) -> usize {
    let file = object::File::parse(data).unwrap();
    let get_version = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("Py_GetVersion"))
        .unwrap();
    let code = elf::bytes_at(&file, data, get_version.address(), get_version.size()).unwrap();
    version::addresses_taken(code, get_version.address(), 64)
        .into_iter()
        .filter_map(|address| elf::c_string_at(&file, data, address, 64))
        .find(|s| PythonVersion::from_version_string(s).is_some())
        .map(|s| s.as_ptr() as usize - data.as_ptr() as usize)
        .expect("a version string")
}

#[test]
fn an_interpreter_with_no_version_source_says_why() {
    let (_, library) = pyenv_build("3.9.18");
    let mut data = fs::read(library).unwrap();
    // Py_GetVersion moved outside every segment: no string, no symbol.
    let entry = dynsym_entry(&data, "Py_GetVersion");
    patched_u64(&mut data, entry + 8, 0xdead_0000_0000);
    match inspect(&data) {
        ObjectVerdict::Python(Err(why @ Unreadable::NoSource { .. })) => {
            assert!(why.to_string().contains("outside"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}
