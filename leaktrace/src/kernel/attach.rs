//! The attach plan: where each kernel program is attached, and with which
//! cookie.
//!
//! Pure: turns the functions `target` found into a list of attachments, so
//! that the plan is tested without a kernel. Each entry probe goes where
//! `target::placement` put it: with `--probe-placement auto`, on the first
//! instruction the kernel emulates when everything before it is provably
//! harmless to run unobserved (glibc's `free` on its `je`, after `test
//! %rdi,%rdi`), otherwise at the function's first instruction. Both are
//! instruction boundaries found by decoding, never guessed. Allocating
//! calls also get a return probe; releasing calls need none.
use std::path::PathBuf;

use leaktrace_common::{AllocFn, COOKIE_SKIPS_CONTEXT};

use crate::target::ProbedObject;

/// The three kernel programs (see leaktrace-ebpf).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Program {
    /// Entry of an allocating call: stashes its arguments.
    AllocEntry,
    /// Return of an allocating call: sends the event with the stack.
    AllocReturn,
    /// Entry of a releasing call: sends the event.
    ReleaseEntry,
}

impl Program {
    /// The program's name in the eBPF object.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Program::AllocEntry => "alloc_entry",
            Program::AllocReturn => "alloc_return",
            Program::ReleaseEntry => "release_entry",
        }
    }
}

/// One uprobe to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub program: Program,
    pub func: AllocFn,
    pub object: PathBuf,
    /// File offset in `object` (what the uprobe PMU takes).
    pub file_offset: u64,
    /// The function's arguments start at the second register.
    pub skips_context: bool,
}

impl Attachment {
    /// The attach cookie the kernel program reads: which function, and
    /// where its arguments start.
    pub(crate) fn cookie(&self) -> u64 {
        let skips = if self.skips_context {
            COOKIE_SKIPS_CONTEXT
        } else {
            0
        };
        self.func as u64 | skips
    }
}

/// Every attachment needed to trace `objects`, in the order they must be
/// attached. Probes go live one by one, so the order decides what a call
/// made during attach looks like:
/// 1. releases first: a block whose free is missed would look leaked until
///    its address came back; a free of a block allocated before its malloc
///    probe is only counted as unmatched;
/// 2. returns before entries: a return without its entry is counted and
///    dropped, while an entry without its return would leave a stash that
///    makes later, deeper calls look nested.
///
/// With `placed`, entry (and return) probes sit at each function's placed
/// offset; otherwise at its first instruction. A return probe can move
/// with its entry probe because nothing before the placed offset moves
/// rsp: [rsp] still holds the return address the kernel hijacks.
pub(crate) fn plan(objects: &[ProbedObject], placed: bool) -> Vec<Attachment> {
    let mut attachments = unordered_plan(objects, placed);
    attachments.sort_by_key(|a| order(a.program));
    attachments
}

/// Where a program's probes come in a plan (see [`plan`]).
pub(crate) fn order(program: Program) -> u8 {
    match program {
        Program::ReleaseEntry => 0,
        Program::AllocReturn => 1,
        Program::AllocEntry => 2,
    }
}

fn unordered_plan(objects: &[ProbedObject], placed: bool) -> Vec<Attachment> {
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
                    file_offset: function.file_offset
                        + if placed { function.placement.offset } else { 0 },
                    skips_context: function.skips_context,
                });
            }
        }
    }
    attachments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{
        FunctionSymbol,
        placement::{Placement, PlacementReason},
    };

    fn function(func: AllocFn, file_offset: u64, placed_at: u64) -> FunctionSymbol {
        FunctionSymbol {
            func,
            file_offset,
            placement: Placement {
                offset: placed_at,
                reason: PlacementReason::NotPlaced,
            },
            aliases: vec![],
            skips_context: false,
        }
    }

    #[test]
    fn releases_then_returns_then_entries_at_placed_offsets() {
        let objects = [ProbedObject {
            path: "/lib/libc.so.6".into(),
            display_path: "/lib/libc.so.6".into(),
            functions: vec![
                function(AllocFn::Malloc, 0x10, 0),
                function(AllocFn::Free, 0x20, 3),
                function(AllocFn::Munmap, 0x30, 0),
            ],
        }];
        let summary = |plan: Vec<Attachment>| -> Vec<_> {
            plan.iter()
                .map(|a| (a.program, a.func, a.file_offset))
                .collect()
        };
        assert_eq!(
            summary(plan(&objects, true)),
            [
                (Program::ReleaseEntry, AllocFn::Free, 0x23),
                (Program::ReleaseEntry, AllocFn::Munmap, 0x30),
                (Program::AllocReturn, AllocFn::Malloc, 0x10),
                (Program::AllocEntry, AllocFn::Malloc, 0x10),
            ]
        );
        // --probe-placement entry: every probe at the first instruction.
        assert_eq!(
            summary(plan(&objects, false))[0],
            (Program::ReleaseEntry, AllocFn::Free, 0x20)
        );
    }
}
