//! Live processes: the interpreter found through /proc/PID/maps and
//! /proc/PID/root, as the tracer finds it; and a root that is not ours.
use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    PythonCache, PythonFound,
    tests::{DEBIAN_PYTHON, oracle, pyenv_root},
};
use crate::target::procfs::{Mapping, check_pid, parse_maps, process_root};

/// The interpreter running in process `pid`, from /proc/PID/maps and the
/// files under /proc/PID/root, as the tracer finds it.
fn detect_pid(pid: u32, cache: &mut PythonCache) -> Result<PythonFound> {
    check_pid(pid)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    Ok(cache.detect(&process_root(pid), &parse_maps(&maps)))
}

/// A child killed (and reaped) when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _: std::io::Result<()> = self.0.kill();
        let _: std::io::Result<std::process::ExitStatus> = self.0.wait();
    }
}

fn sleeping_python(python: &Path) -> KillOnDrop {
    assert!(python.exists(), "{} is missing", python.display());
    KillOnDrop(
        Command::new(python)
            .args(["-c", "import time; time.sleep(30)"])
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", python.display())),
    )
}

/// Asks until the process has mapped its interpreter (it is exec'ing and
/// loading libraries when spawn returns).
fn interpreter_of(child: &KillOnDrop) -> PythonFound {
    let mut cache = PythonCache::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = detect_pid(child.0.id(), &mut cache).expect("the child is there");
        if found != PythonFound::NotPython || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn live_debian_python3_is_found_in_its_executable() {
    let python = Path::new(DEBIAN_PYTHON);
    let child = sleeping_python(python);
    let PythonFound::Python(found) = interpreter_of(&child) else {
        panic!("no interpreter found in {DEBIAN_PYTHON}");
    };
    assert_eq!(found.display_path, DEBIAN_PYTHON);
    assert_eq!(found.version, oracle(python));
}

#[test]
fn live_pyenv_python_is_found_in_its_library() {
    let python = pyenv_root().join("versions/3.12.1/bin/python3.12");
    let child = sleeping_python(&python);
    let PythonFound::Python(found) = interpreter_of(&child) else {
        panic!("no interpreter found in {}", python.display());
    };
    assert!(
        found.display_path.ends_with("/lib/libpython3.12.so.1.0"),
        "{}",
        found.display_path
    );
    assert_eq!(found.version, oracle(&python));
}

/// A container's files are under /proc/PID/root: mappings name paths in
/// the process's root, opened under ours. Here the pyenv tree plays root.
#[test]
fn objects_are_opened_under_the_process_root() {
    let root = pyenv_root().join("versions");
    let mapping = |path: &str| Mapping {
        start: 0x7f00_0000_0000,
        end: 0x7f00_0010_0000,
        file_offset: 0,
        executable: true,
        path: path.into(),
    };
    let mappings = [
        mapping("/3.11.7/bin/python3.11"),
        mapping("/no/such/lib.so"),
        mapping("/3.11.7/lib/libpython3.11.so.1.0"),
    ];
    let mut cache = PythonCache::default();
    let PythonFound::Python(found) = cache.detect(&root, &mappings) else {
        panic!("nothing found under {}", root.display());
    };
    assert_eq!(found.display_path, "/3.11.7/lib/libpython3.11.so.1.0");
    assert_eq!(found.object, root.join("3.11.7/lib/libpython3.11.so.1.0"));
    assert_eq!(found.version.to_string(), "3.11.7");
    // Read once: the second process costs a stat per object.
    assert_eq!(cache.detect(&root, &mappings), PythonFound::Python(found));
    assert_eq!(cache.detect(&root, &mappings[..2]), PythonFound::NotPython);
}

/// An interpreter whose version cannot be read is reported as such, and
/// warned about once per file, however many processes map it.
#[test]
fn an_unreadable_version_is_reported_and_warned_about_once() {
    let library = pyenv_root().join("versions/3.11.7/lib/libpython3.11.so.1.0");
    let mut data = std::fs::read(&library)
        .unwrap_or_else(|err| panic!("pyenv 3.11.7 is missing: {}: {err}", library.display()));
    // Py_Version's value moved outside the file (see tests.rs).
    let entry = super::tests::dynsym_entry(&data, "Py_Version");
    data[entry + 8..entry + 16].copy_from_slice(&0xdead_0000_0000u64.to_le_bytes());
    let root = std::env::temp_dir().join(format!("leaktrace-python-{}", std::process::id()));
    std::fs::create_dir_all(root.join("lib")).unwrap();
    std::fs::write(root.join("lib/libpython3.11.so.1.0"), &data).unwrap();
    let mappings = [Mapping {
        start: 0x7f00_0000_0000,
        end: 0x7f00_0010_0000,
        file_offset: 0,
        executable: true,
        path: "/lib/libpython3.11.so.1.0".into(),
    }];
    let mut cache = PythonCache::default();
    let found = cache.detect(&root, &mappings);
    std::fs::remove_dir_all(&root).unwrap();
    let PythonFound::VersionUnreadable { display_path, .. } = &found else {
        panic!("{found:?}");
    };
    assert_eq!(display_path, "/lib/libpython3.11.so.1.0");
    let warning = cache.first_warning(&found).expect("a first warning");
    assert!(
        warning.contains("Py_Version: 0xdead00000000 is outside every loadable segment"),
        "{warning}"
    );
    assert_eq!(cache.first_warning(&found), None);
    assert_eq!(cache.first_warning(&PythonFound::NotPython), None);
}
