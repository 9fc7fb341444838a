//! The layout tables against the headers of every installed interpreter:
//! a C program compiled with each version's headers prints `offsetof` of
//! every field, and the table must say the same. A missing interpreter or
//! header directory fails its test, naming it.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    layout::{EntryMarker, PythonLayout},
    tests::{DEBIAN_PYTHON, oracle as oracle_version, pyenv_root},
    version::PythonVersion,
};

/// Oracles compiled so far: each gets its own scratch directory (tests run
/// in parallel, several per version).
static ORACLES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Shared by both oracles: the printing macro.
pub(super) const PRELUDE: &str = r#"#include <stdio.h>
#include <stddef.h>
#include <string.h>
#define P(name, expr) printf("%s=%lu\n", name, (unsigned long)(expr))
"#;

/// 2.7: `PyStringObject`, frame objects, the classic code object.
const ORACLE_27: &str = r#"#include <Python.h>
#include <frameobject.h>

int main(void){
P("tstate_frame", offsetof(PyThreadState, frame));
P("tstate_thread_id", offsetof(PyThreadState, thread_id));
P("tstate_interp", offsetof(PyThreadState, interp));
P("tstate_next", offsetof(PyThreadState, next));
P("interp_next", offsetof(PyInterpreterState, next));
P("interp_tstate_head", offsetof(PyInterpreterState, tstate_head));
P("frame_back", offsetof(PyFrameObject, f_back));
P("frame_code", offsetof(PyFrameObject, f_code));
P("frame_lasti", offsetof(PyFrameObject, f_lasti));
P("code_name", offsetof(PyCodeObject, co_name));
P("code_filename", offsetof(PyCodeObject, co_filename));
P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
P("code_line_table", offsetof(PyCodeObject, co_lnotab));
P("code_code", offsetof(PyCodeObject, co_code));
P("string_data", offsetof(PyStringObject, ob_sval));
P("string_length", offsetof(PyStringObject, ob_size));
P("bytes_data", offsetof(PyStringObject, ob_sval));
P("bytes_size", offsetof(PyStringObject, ob_size));
return 0;}
"#;

/// 3.6–3.13, by `PY_VERSION_HEX`; `Py_BUILD_CORE` opens the internal
/// headers (`_PyRuntimeState`, `_PyInterpreterFrame`, `PyInterpreterState`).
const ORACLE_3: &str = r#"#define Py_BUILD_CORE 1
#include <Python.h>
#include <frameobject.h>
#if PY_VERSION_HEX < 0x03070000
#elif PY_VERSION_HEX < 0x03080000
#include "internal/pystate.h"
#elif PY_VERSION_HEX < 0x03090000
#include "internal/pycore_pystate.h"
#else
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#endif
#if PY_VERSION_HEX >= 0x030b0000
#include "internal/pycore_frame.h"
#endif

int main(void){
#if PY_VERSION_HEX >= 0x03070000 && PY_VERSION_HEX < 0x030c0000
P("runtime_tstate_current", offsetof(_PyRuntimeState, gilstate.tstate_current));
#endif
#if PY_VERSION_HEX >= 0x03070000
P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
#endif
P("interp_next", offsetof(PyInterpreterState, next));
#if PY_VERSION_HEX < 0x030b0000
P("interp_tstate_head", offsetof(PyInterpreterState, tstate_head));
#else
P("interp_tstate_head", offsetof(PyInterpreterState, threads.head));
#endif
#if PY_VERSION_HEX >= 0x030c0000
P("runtime_interpreters_main", offsetof(_PyRuntimeState, interpreters.main));
P("interp_gil_last_holder", offsetof(PyInterpreterState, _gil.last_holder));
#endif
#if PY_VERSION_HEX < 0x030b0000
P("tstate_frame", offsetof(PyThreadState, frame));
#elif PY_VERSION_HEX < 0x030d0000
P("tstate_frame", offsetof(PyThreadState, cframe));
P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
#else
P("tstate_frame", offsetof(PyThreadState, current_frame));
#endif
P("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030b0000
P("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#endif
P("tstate_interp", offsetof(PyThreadState, interp));
P("tstate_next", offsetof(PyThreadState, next));
#if PY_VERSION_HEX < 0x030b0000
P("frame_back", offsetof(PyFrameObject, f_back));
P("frame_code", offsetof(PyFrameObject, f_code));
P("frame_lasti", offsetof(PyFrameObject, f_lasti));
#else
P("frame_back", offsetof(_PyInterpreterFrame, previous));
#if PY_VERSION_HEX < 0x030d0000
P("frame_code", offsetof(_PyInterpreterFrame, f_code));
P("frame_lasti", offsetof(_PyInterpreterFrame, prev_instr));
#else
P("frame_code", offsetof(_PyInterpreterFrame, f_executable));
P("frame_lasti", offsetof(_PyInterpreterFrame, instr_ptr));
#endif
#if PY_VERSION_HEX < 0x030c0000
P("frame_entry", offsetof(_PyInterpreterFrame, is_entry));
#else
P("frame_entry", offsetof(_PyInterpreterFrame, owner));
P("frame_owner_cstack", FRAME_OWNED_BY_CSTACK);
#endif
#endif
P("code_name", offsetof(PyCodeObject, co_name));
P("code_filename", offsetof(PyCodeObject, co_filename));
P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
#if PY_VERSION_HEX < 0x030a0000
P("code_line_table", offsetof(PyCodeObject, co_lnotab));
#else
P("code_line_table", offsetof(PyCodeObject, co_linetable));
#endif
#if PY_VERSION_HEX < 0x030b0000
P("code_code", offsetof(PyCodeObject, co_code));
#else
P("code_code", offsetof(PyCodeObject, co_code_adaptive));
#endif
P("string_data", sizeof(PyASCIIObject));
P("string_length", offsetof(PyASCIIObject, length));
P("unicode_state", offsetof(PyASCIIObject, state));
P("unicode_compact_data", sizeof(PyCompactUnicodeObject));
P("unicode_utf8", offsetof(PyCompactUnicodeObject, utf8));
P("unicode_utf8_length", offsetof(PyCompactUnicodeObject, utf8_length));
{ PyASCIIObject o; memset(&o, 0, sizeof o); o.state.kind = 7; o.state.compact = 1; o.state.ascii = 1;
  unsigned char b[sizeof o.state]; memcpy(b, &o.state, sizeof b); P("unicode_state_bits", b[0]); }
P("bytes_data", offsetof(PyBytesObject, ob_sval));
P("bytes_size", offsetof(PyBytesObject, ob_base.ob_size));
return 0;}
"#;

/// What the C oracle prints for pyenv's `build` ("3.11.7") with headers in
/// `include/<dir>`, or for `build` "debian-3.11.x" with `dir` an absolute path.
fn oracle(build: &str, dir: &str) -> BTreeMap<String, u32> {
    let body = if build.starts_with("2.") {
        ORACLE_27
    } else {
        ORACLE_3
    };
    run_oracle(build, dir, &format!("{PRELUDE}{body}"))
}

/// Compiles the C program `source` against the headers of `build` (as for
/// `oracle`), runs it and parses its `name=value` lines.
pub(super) fn run_oracle(build: &str, dir: &str, source: &str) -> BTreeMap<String, u32> {
    let include = if Path::new(dir).is_absolute() {
        PathBuf::from(dir)
    } else {
        pyenv_root()
            .join("versions")
            .join(build)
            .join("include")
            .join(dir)
    };
    assert!(
        include.join("Python.h").exists(),
        "Python {build} headers are missing: no {}/Python.h (pyenv: `pyenv install {build}`; Debian: `apt-get install python3.11-dev`)",
        include.display()
    );
    let work = std::env::temp_dir().join(format!(
        "leaktrace-layout-{build}-{}-{}",
        std::process::id(),
        ORACLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&work).expect("a scratch directory");
    let source_path = work.join("oracle.c");
    let binary = work.join("oracle");
    std::fs::write(&source_path, source).expect("writing the oracle");
    let compiled = Command::new("gcc")
        .arg("-I")
        .arg(&include)
        .arg(&source_path)
        .arg("-o")
        .arg(&binary)
        .output()
        .expect("gcc runs");
    assert!(
        compiled.status.success(),
        "gcc against {}: {}",
        include.display(),
        String::from_utf8_lossy(&compiled.stderr)
    );
    let run = Command::new(&binary).output().expect("the oracle runs");
    let _: std::io::Result<()> = std::fs::remove_dir_all(&work);
    assert!(run.status.success());
    String::from_utf8(run.stdout)
        .expect("ASCII output")
        .lines()
        .map(|line| {
            let (name, value) = line.split_once('=').expect("name=value");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// The version a build name says: "3.11.7", or "debian-3.11.2".
pub(super) fn build_version(build: &str) -> PythonVersion {
    let mut numbers = build
        .trim_start_matches("debian-")
        .split('.')
        .map(|n| n.parse::<u8>().unwrap());
    PythonVersion {
        major: numbers.next().unwrap(),
        minor: numbers.next().unwrap(),
        micro: numbers.next().unwrap(),
    }
}

fn check(build: &str, dir: &str) {
    let version = build_version(build);
    let layout = PythonLayout::for_version(version).expect("a table for this version");
    let mut want = oracle(build, dir);
    if version.major == 3 {
        // kind (bits 2-4), compact (5), ascii (6) all set: 0b0111_1100.
        assert_eq!(
            want.remove("unicode_state_bits"),
            Some(0x7c),
            "{build}: state bits moved"
        );
    }
    let have: BTreeMap<String, u32> = layout
        .offsets()
        .into_iter()
        .map(|(name, offset)| (name.to_owned(), offset))
        .collect();
    assert_eq!(
        have, want,
        "Python {build}: table (left) against its headers (right)"
    );
    let entry_ok = match (version.minor, layout.entry_marker) {
        (11, EntryMarker::IsEntry) | (12 | 13, EntryMarker::OwnerCstack(_)) => true,
        (minor, EntryMarker::None) => version.major == 2 || minor <= 10,
        _ => false,
    };
    assert!(entry_ok, "{build}: entry marker {:?}", layout.entry_marker);
}

#[test]
fn layout_2_7_matches_headers() {
    check("2.7.18", "python2.7");
}

#[test]
fn layout_3_6_matches_headers() {
    check("3.6.15", "python3.6m");
}

#[test]
fn layout_3_7_matches_headers() {
    check("3.7.16", "python3.7m");
}

#[test]
fn layout_3_8_matches_headers() {
    check("3.8.18", "python3.8");
}

#[test]
fn layout_3_9_matches_headers() {
    check("3.9.18", "python3.9");
}

#[test]
fn layout_3_10_matches_headers() {
    check("3.10.13", "python3.10");
}

#[test]
fn layout_3_11_matches_headers() {
    check("3.11.7", "python3.11");
}

#[test]
fn layout_3_12_matches_headers() {
    check("3.12.1", "python3.12");
}

#[test]
fn layout_3_13_matches_headers() {
    check("3.13.0", "python3.13");
}

/// Debian's python3.11 (static, LTO) has the layout of a release 3.11
/// build: its own headers say so.
#[test]
fn layout_debian_python3_11_matches_headers() {
    let version = oracle_version(Path::new(DEBIAN_PYTHON));
    check(&format!("debian-{version}"), "/usr/include/python3.11");
}

#[test]
fn unknown_versions_have_no_table() {
    for (major, minor) in [(2, 6), (3, 5), (3, 14), (4, 0)] {
        let version = PythonVersion {
            major,
            minor,
            micro: 0,
        };
        assert!(PythonLayout::for_version(version).is_none(), "{version}");
    }
}
