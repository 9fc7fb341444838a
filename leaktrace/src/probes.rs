//! Probes: where each kernel program is attached, and with which cookie.
//!
//! Pure: turns the functions `target` found into a list of attachments, so
//! that the placement is tested without a kernel. Every function gets its
//! probe at its first instruction (offset 0 from the symbol), which is
//! always an instruction boundary.
use std::path::PathBuf;

use leaktrace_common::AllocFn;

use crate::target::ProbedObject;

/// The three kernel programs (see leaktrace-ebpf).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// Entry of an allocating call: stashes its arguments.
    AllocEntry,
    /// Return of an allocating call: sends the event with the stack.
    AllocReturn,
    /// Entry of a releasing call: sends the event.
    ReleaseEntry,
}

impl Program {
    /// The program's name in the eBPF object.
    pub fn name(self) -> &'static str {
        match self {
            Program::AllocEntry => "alloc_entry",
            Program::AllocReturn => "alloc_return",
            Program::ReleaseEntry => "release_entry",
        }
    }
}

/// One uprobe to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub program: Program,
    pub func: AllocFn,
    pub object: PathBuf,
    /// File offset in `object` (what the uprobe PMU takes).
    pub file_offset: u64,
}

/// Every attachment needed to trace `objects`.
pub fn plan(objects: &[ProbedObject]) -> Vec<Attachment> {
    let mut attachments = Vec::new();
    for object in objects {
        for function in &object.functions {
            let programs: &[Program] = if function.func.is_release() {
                &[Program::ReleaseEntry]
            } else {
                &[Program::AllocEntry, Program::AllocReturn]
            };
            for &program in programs {
                attachments.push(Attachment {
                    program,
                    func: function.func,
                    object: object.path.clone(),
                    file_offset: function.file_offset,
                });
            }
        }
    }
    attachments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::FunctionSymbol;

    #[test]
    fn allocating_functions_get_entry_and_return_release_functions_entry_only() {
        let objects = [ProbedObject {
            path: "/lib/libc.so.6".into(),
            display_path: "/lib/libc.so.6".into(),
            functions: vec![
                FunctionSymbol {
                    func: AllocFn::Malloc,
                    file_offset: 0x10,
                    aliases: vec![],
                },
                FunctionSymbol {
                    func: AllocFn::Free,
                    file_offset: 0x20,
                    aliases: vec![],
                },
                FunctionSymbol {
                    func: AllocFn::Munmap,
                    file_offset: 0x30,
                    aliases: vec![],
                },
            ],
        }];
        let plan = plan(&objects);
        let summary: Vec<_> = plan
            .iter()
            .map(|a| (a.program, a.func, a.file_offset))
            .collect();
        assert_eq!(
            summary,
            [
                (Program::AllocEntry, AllocFn::Malloc, 0x10),
                (Program::AllocReturn, AllocFn::Malloc, 0x10),
                (Program::ReleaseEntry, AllocFn::Free, 0x20),
                (Program::ReleaseEntry, AllocFn::Munmap, 0x30),
            ]
        );
    }
}
