//! The Python type of a block the object allocator handed out, read from
//! the live process (exact object mode's by-type view, like pyrasite's
//! memory viewer or objgraph's `show_growth`, from outside).
//!
//! An allocation does not say what it is for: `PyObject_Malloc` runs before
//! the object's type is set, and the same allocator serves buffers that are
//! no objects at all (a list's item array, a dict's keys). So the type is
//! read when a report is made, from the block itself: where the object
//! starts in its block depends on its type (a GC header before tracked
//! objects, and from 3.11 two more words before objects with a managed
//! dict or weakref list), so each possible start is tried, and one is
//! accepted only when the word at `ob_type` there points to a type object
//! (whose own type is `type`, or a metatype whose type is `type`) whose
//! flags put the object exactly at that start. Anything else is not an
//! object. The process is hostile input: names are capped, bytes that are
//! not UTF-8 are replaced, every read may fail.
use std::collections::HashMap;

use super::{code_object::Memory, version::PythonVersion};

/// `Py_TPFLAGS_HAVE_GC`, the same bit in 2.7 and 3.x.
const HAVE_GC: u64 = 1 << 14;
/// `Py_TPFLAGS_MANAGED_WEAKREF` (3.12+).
const MANAGED_WEAKREF: u64 = 1 << 3;
/// `Py_TPFLAGS_MANAGED_DICT` (3.11+).
const MANAGED_DICT: u64 = 1 << 4;
/// Longest type name kept (`tp_name` is a C string in the process).
const MAX_NAME: usize = 120;

/// Where a version keeps what the type reader follows. Every number was
/// printed by `offsetof`/`sizeof` against the version's headers
/// (`object_types_tests.rs` recompiles that oracle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ObjectLayout {
    /// `sizeof(PyGC_Head)`.
    pub gc_head: u64,
    /// Type flags that put two words before the GC header
    /// (`_PyType_PreHeaderSize`): none before 3.11.
    pub preheader_flags: u64,
    /// `offsetof(PyObject, ob_type)`.
    pub ob_type: u64,
    /// `offsetof(PyTypeObject, tp_name)`.
    pub tp_name: u64,
    /// `offsetof(PyTypeObject, tp_flags)`.
    pub tp_flags: u64,
    /// 2.7's old-style instances (all of type `instance`): offsets of
    /// `PyInstanceObject.in_class`, `PyClassObject.cl_name` and
    /// `PyStringObject.ob_sval`, to name the class instead.
    pub old_style: Option<(u64, u64, u64)>,
}

impl ObjectLayout {
    pub(crate) fn for_version(version: PythonVersion) -> Option<ObjectLayout> {
        let base = ObjectLayout {
            gc_head: 16,
            preheader_flags: 0,
            ob_type: 8,
            tp_name: 24,
            tp_flags: 168,
            old_style: None,
        };
        match (version.major, version.minor) {
            (2, 7) => Some(ObjectLayout {
                gc_head: 32,
                old_style: Some((16, 32, 36)),
                ..base
            }),
            (3, 6 | 7) => Some(ObjectLayout {
                gc_head: 32,
                ..base
            }),
            (3, 8..=10) => Some(base),
            (3, 11) => Some(ObjectLayout {
                preheader_flags: MANAGED_DICT,
                ..base
            }),
            (3, 12 | 13) => Some(ObjectLayout {
                preheader_flags: MANAGED_DICT | MANAGED_WEAKREF,
                ..base
            }),
            _ => None,
        }
    }

    /// Bytes before the object in its block, for a type with `flags`.
    fn prefix(&self, flags: u64) -> u64 {
        let gc = if flags & HAVE_GC != 0 {
            self.gc_head
        } else {
            0
        };
        let preheader = if flags & self.preheader_flags != 0 {
            16
        } else {
            0
        };
        gc + preheader
    }
}

/// What a type object was found to be (cached by its address).
#[derive(Clone, Debug)]
struct TypeFacts {
    /// None: not a type object.
    name: Option<String>,
    flags: u64,
}

/// Reads blocks' types in one process, each type object read once.
pub(crate) struct TypeReader<'m> {
    memory: &'m dyn Memory,
    layout: ObjectLayout,
    /// The process's address of `PyType_Type`.
    type_type: u64,
    types: HashMap<u64, TypeFacts>,
}

fn word(bytes: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    let slice = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(slice.try_into().ok()?))
}

impl<'m> TypeReader<'m> {
    pub(crate) fn new(memory: &'m dyn Memory, layout: ObjectLayout, type_type: u64) -> Self {
        TypeReader {
            memory,
            layout,
            type_type,
            types: HashMap::new(),
        }
    }

    fn read_word(&self, addr: u64) -> Option<u64> {
        let mut buf = [0u8; 8];
        self.memory.read(addr, &mut buf).ok()?;
        Some(u64::from_le_bytes(buf))
    }

    /// A C string of at most `MAX_NAME` bytes at `addr`.
    fn read_c_string(&self, addr: u64) -> Option<String> {
        let mut buf = [0u8; MAX_NAME];
        let mut len = MAX_NAME;
        if self.memory.read(addr, &mut buf).is_err() {
            // The name ends near the end of its mapping: 8 bytes at a time,
            // up to its end.
            len = 0;
            while len < MAX_NAME && !buf[..len].contains(&0) {
                if self
                    .memory
                    .read(addr + len as u64, &mut buf[len..len + 8])
                    .is_err()
                {
                    break;
                }
                len += 8;
            }
        }
        let end = buf[..len].iter().position(|&b| b == 0).unwrap_or(len);
        (end > 0).then(|| String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    fn facts(&mut self, candidate: u64) -> TypeFacts {
        if let Some(facts) = self.types.get(&candidate) {
            return facts.clone();
        }
        let is_type = self
            .read_word(candidate + self.layout.ob_type)
            .is_some_and(|meta| {
                meta == self.type_type
                    || self.read_word(meta + self.layout.ob_type) == Some(self.type_type)
            });
        let facts = if is_type {
            TypeFacts {
                name: self
                    .read_word(candidate + self.layout.tp_name)
                    .and_then(|name| self.read_c_string(name)),
                flags: self
                    .read_word(candidate + self.layout.tp_flags)
                    .unwrap_or(0),
            }
        } else {
            TypeFacts {
                name: None,
                flags: 0,
            }
        };
        self.types.insert(candidate, facts.clone());
        facts
    }

    /// The type name of the object in the block at `addr` of `size` bytes,
    /// or None when the block holds no object (or no longer exists).
    pub(crate) fn type_of(&mut self, addr: u64, size: u64) -> Option<String> {
        let layout = self.layout;
        let mut prefixes = vec![0, layout.gc_head];
        if layout.preheader_flags != 0 {
            prefixes.push(layout.gc_head + 16);
        }
        // One read covers every candidate's `ob_type`.
        let span = (layout.gc_head + 16 + layout.ob_type + 8).min(size);
        let mut head = vec![0u8; usize::try_from(span).ok()?];
        self.memory.read(addr, &mut head).ok()?;
        for prefix in prefixes {
            let Some(candidate) = word(&head, prefix + layout.ob_type) else {
                continue;
            };
            if candidate == 0 || candidate % 8 != 0 {
                continue;
            }
            let facts = self.facts(candidate);
            let Some(name) = facts.name else { continue };
            if layout.prefix(facts.flags) != prefix {
                continue;
            }
            if let (Some((in_class, cl_name, sval)), "instance") = (layout.old_style, &*name) {
                let class_name = self
                    .read_word(addr + prefix + in_class)
                    .and_then(|class| self.read_word(class + cl_name))
                    .and_then(|string| self.read_c_string(string + sval));
                if let Some(class_name) = class_name {
                    return Some(class_name);
                }
            }
            return Some(name);
        }
        None
    }
}
