//! The type reader's numbers against each version's headers, and the
//! reader itself on a made-up memory image.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};

use super::{
    code_object::Memory,
    layout_tests::{PRELUDE, build_version, run_oracle},
    object_types::{ObjectLayout, TypeReader},
    tests::{DEBIAN_PYTHON, oracle as oracle_version},
    version::PythonVersion,
};

/// 3.9+ keep `PyGC_Head` in the internal headers.
const ORACLE: &str = r#"#define Py_BUILD_CORE 1
#include <Python.h>
#if PY_VERSION_HEX >= 0x03090000
#include "internal/pycore_gc.h"
#endif
int main(void){
P("gc_head", sizeof(PyGC_Head));
P("ob_type", offsetof(PyObject, ob_type));
P("tp_name", offsetof(PyTypeObject, tp_name));
P("tp_flags", offsetof(PyTypeObject, tp_flags));
P("have_gc", Py_TPFLAGS_HAVE_GC);
#if PY_MAJOR_VERSION == 2
P("in_class", offsetof(PyInstanceObject, in_class));
P("cl_name", offsetof(PyClassObject, cl_name));
P("ob_sval", offsetof(PyStringObject, ob_sval));
#endif
#if PY_VERSION_HEX >= 0x030c0000
P("preheader_flags", Py_TPFLAGS_PREHEADER);
#elif PY_VERSION_HEX >= 0x030b0000
P("preheader_flags", Py_TPFLAGS_MANAGED_DICT);
#else
P("preheader_flags", 0);
#endif
return 0;}
"#;

fn check(build: &str, dir: &str) {
    let version = build_version(build);
    let layout = ObjectLayout::for_version(version).expect("a table for this version");
    let want = run_oracle(build, dir, &format!("{PRELUDE}{ORACLE}"));
    let mut have = BTreeMap::from([
        ("gc_head".to_owned(), layout.gc_head),
        ("ob_type".to_owned(), layout.ob_type),
        ("tp_name".to_owned(), layout.tp_name),
        ("tp_flags".to_owned(), layout.tp_flags),
        ("have_gc".to_owned(), 1 << 14),
        ("preheader_flags".to_owned(), layout.preheader_flags),
    ]);
    if let Some((in_class, cl_name, ob_sval)) = layout.old_style {
        have.insert("in_class".to_owned(), in_class);
        have.insert("cl_name".to_owned(), cl_name);
        have.insert("ob_sval".to_owned(), ob_sval);
    }
    let want: BTreeMap<String, u64> = want.into_iter().map(|(k, v)| (k, u64::from(v))).collect();
    assert_eq!(have, want, "Python {build}");
}

#[test]
fn object_layout_2_7_matches_headers() {
    check("2.7.18", "python2.7");
}

#[test]
fn object_layout_3_6_matches_headers() {
    check("3.6.15", "python3.6m");
}

#[test]
fn object_layout_3_7_matches_headers() {
    check("3.7.16", "python3.7m");
}

#[test]
fn object_layout_3_8_matches_headers() {
    check("3.8.18", "python3.8");
}

#[test]
fn object_layout_3_9_matches_headers() {
    check("3.9.18", "python3.9");
}

#[test]
fn object_layout_3_10_matches_headers() {
    check("3.10.13", "python3.10");
}

#[test]
fn object_layout_3_11_matches_headers() {
    check("3.11.7", "python3.11");
}

#[test]
fn object_layout_3_12_matches_headers() {
    check("3.12.1", "python3.12");
}

#[test]
fn object_layout_3_13_matches_headers() {
    check("3.13.0", "python3.13");
}

#[test]
fn object_layout_debian_python3_11_matches_headers() {
    let version = oracle_version(Path::new(DEBIAN_PYTHON));
    check(&format!("debian-{version}"), "/usr/include/python3.11");
}

/// A sparse memory image: words at addresses, strings at addresses.
#[derive(Default)]
struct Image {
    bytes: BTreeMap<u64, u8>,
}

impl Image {
    fn word(&mut self, addr: u64, value: u64) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.bytes.insert(addr + i as u64, b);
        }
    }
    /// A C string, its last word padded with zeros (memory is mapped in
    /// pages: what follows a short name is readable).
    fn string(&mut self, addr: u64, text: &str) {
        let padded = (text.len() + 1).next_multiple_of(8);
        for (i, b) in text.bytes().chain([0; 8]).take(padded).enumerate() {
            self.bytes.insert(addr + i as u64, b);
        }
    }
}

impl Memory for Image {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        for (i, slot) in buf.iter_mut().enumerate() {
            match self.bytes.get(&(addr + i as u64)) {
                Some(b) => *slot = *b,
                None => bail!("unmapped {:#x}", addr + i as u64),
            }
        }
        Ok(())
    }
}

const TYPE_TYPE: u64 = 0x10_0000;

/// A type object at `addr` named `name`, whose type is `meta`.
fn type_object(image: &mut Image, addr: u64, meta: u64, name: &str, flags: u64) {
    image.word(addr + 8, meta);
    image.word(addr + 24, addr + 0x800);
    image.string(addr + 0x800, name);
    image.word(addr + 168, flags);
}

/// A block of `size` bytes at `addr` whose object starts `prefix` bytes in.
fn object(image: &mut Image, addr: u64, size: u64, prefix: u64, ob_type: u64) {
    for offset in (0..size).step_by(8) {
        image.word(addr + offset, 0);
    }
    image.word(addr + prefix + 8, ob_type);
}

#[test]
fn each_object_is_found_at_the_start_its_type_gives() {
    let version = PythonVersion {
        major: 3,
        minor: 12,
        micro: 1,
    };
    let layout = ObjectLayout::for_version(version).unwrap();
    let mut image = Image::default();
    type_object(&mut image, TYPE_TYPE, TYPE_TYPE, "type", 1 << 14);
    // A plain str (no GC), a GC'd list, a class with a managed dict whose
    // metatype is ABCMeta (itself of type `type`).
    type_object(&mut image, 0x20_0000, TYPE_TYPE, "str", 0);
    type_object(&mut image, 0x30_0000, TYPE_TYPE, "list", 1 << 14);
    type_object(&mut image, 0x40_0000, TYPE_TYPE, "ABCMeta", 1 << 14);
    type_object(
        &mut image,
        0x50_0000,
        0x40_0000,
        "Kept",
        (1 << 14) | (1 << 4),
    );
    object(&mut image, 0x1000, 64, 0, 0x20_0000);
    object(&mut image, 0x2000, 56, 16, 0x30_0000);
    object(&mut image, 0x3000, 64, 32, 0x50_0000);
    // A buffer whose words point at nothing like a type.
    object(&mut image, 0x4000, 64, 0, 0x1234_5678);
    // A GC'd type's pointer where a plain object's would be: the flags say
    // that object would start 16 bytes later, so it is not taken.
    object(&mut image, 0x5000, 24, 0, 0x30_0000);
    let mut reader = TypeReader::new(&image, layout, TYPE_TYPE);
    assert_eq!(reader.type_of(0x1000, 64).as_deref(), Some("str"));
    assert_eq!(reader.type_of(0x2000, 56).as_deref(), Some("list"));
    assert_eq!(reader.type_of(0x3000, 64).as_deref(), Some("Kept"));
    assert_eq!(reader.type_of(0x4000, 64), None);
    assert_eq!(reader.type_of(0x5000, 24), None);
    // Freed and unmapped since.
    assert_eq!(reader.type_of(0x9000, 64), None);
}

#[test]
fn old_style_instances_are_named_by_their_class() {
    let version = PythonVersion {
        major: 2,
        minor: 7,
        micro: 18,
    };
    let layout = ObjectLayout::for_version(version).unwrap();
    let mut image = Image::default();
    type_object(&mut image, TYPE_TYPE, TYPE_TYPE, "type", 1 << 14);
    type_object(&mut image, 0x20_0000, TYPE_TYPE, "instance", 1 << 14);
    // The instance's class, and its name as a string object.
    image.word(0x60_0000 + 32, 0x70_0000);
    image.string(0x70_0000 + 36, "DicomFileLike");
    object(&mut image, 0x1000, 72, 32, 0x20_0000);
    image.word(0x1000 + 32 + 16, 0x60_0000);
    let mut reader = TypeReader::new(&image, layout, TYPE_TYPE);
    assert_eq!(reader.type_of(0x1000, 72).as_deref(), Some("DicomFileLike"));
}

/// Names come from the traced process: long ones are cut, bytes that are
/// not UTF-8 replaced.
#[test]
fn hostile_type_names_are_capped() {
    let version = PythonVersion {
        major: 3,
        minor: 9,
        micro: 0,
    };
    let layout = ObjectLayout::for_version(version).unwrap();
    let mut image = Image::default();
    type_object(&mut image, TYPE_TYPE, TYPE_TYPE, "type", 1 << 14);
    type_object(&mut image, 0x20_0000, TYPE_TYPE, &"x".repeat(500), 0);
    image.word(0x30_0000 + 8, TYPE_TYPE);
    image.word(0x30_0000 + 24, 0x30_0800);
    for (i, b) in [0xff, 0xfe, b'<', 0, 0, 0, 0, 0].into_iter().enumerate() {
        image.bytes.insert(0x30_0800 + i as u64, b);
    }
    image.word(0x30_0000 + 168, 0);
    object(&mut image, 0x1000, 32, 0, 0x20_0000);
    object(&mut image, 0x2000, 32, 0, 0x30_0000);
    let mut reader = TypeReader::new(&image, layout, TYPE_TYPE);
    assert_eq!(reader.type_of(0x1000, 32).map(|n| n.len()), Some(120));
    assert_eq!(
        reader.type_of(0x2000, 32).as_deref(),
        Some("\u{fffd}\u{fffd}<")
    );
}
