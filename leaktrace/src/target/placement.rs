//! Probe placement: where in a function its entry uprobe is cheapest.
//!
//! A uprobe replaces an instruction with int3. When it fires, the kernel
//! must then execute the displaced instruction: it emulates a few kinds
//! (relative jmp/jcc/call, one-byte nop, push of a register: ~1 µs a hit
//! here) and single-steps every other one out of line (~20 µs). glibc's
//! `free` starts with `test %rdi,%rdi`, jemalloc's `malloc` with
//! `cmp $0x1000,%rdi`: both single-stepped at offset 0.
//!
//! So the probe goes on the first instruction the kernel emulates, provided
//! every instruction before it is harmless to run unobserved: it does not
//! branch, does not move rsp, does not store to memory, and writes no
//! register the probe reads (the argument registers of that function, rsp,
//! and rbp, which the frame-pointer unwinder follows). Then the probe sees
//! exactly the arguments, the return address at [rsp] (which the return
//! probe hijacks) and the stack it would have seen at offset 0, on every
//! call. Otherwise the probe stays at offset 0. Instructions are decoded
//! with iced-x86, never guessed: the chosen offset is an instruction
//! boundary by construction. (Jumps from elsewhere into the skipped bytes
//! are ruled out by the caller, which scans the object's code.)
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, Register,
};
use leaktrace_common::AllocFn;

/// How far into a function to look for an emulated instruction.
const WINDOW_INSTRUCTIONS: usize = 16;

/// Where to put a function's entry probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Bytes from the function's first instruction.
    pub offset: u64,
    /// What was decided, for `--verbose` style diagnostics and tests.
    pub reason: PlacementReason,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum PlacementReason {
    /// Not decided (placement off, or no code).
    #[default]
    NotPlaced,
    /// The first instruction is emulated already.
    EmulatedAtEntry,
    /// Moved past this many harmless instructions.
    SkippedHarmless(usize),
    /// An instruction before any emulated one is not harmless.
    Blocked(String),
    /// No emulated instruction in the window (or undecodable bytes).
    NoneInWindow,
}

/// Argument registers a probe on `func` reads, in order (System V ABI).
pub(crate) fn argument_registers(func: AllocFn) -> &'static [Register] {
    const ARGS: [Register; 4] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];
    let count = match func {
        AllocFn::Malloc
        | AllocFn::Valloc
        | AllocFn::Pvalloc
        | AllocFn::Free
        | AllocFn::Mallocx
        | AllocFn::Xallocx
        | AllocFn::Dallocx
        | AllocFn::Sdallocx => 1,
        AllocFn::Calloc
        | AllocFn::Realloc
        | AllocFn::AlignedAlloc
        | AllocFn::Memalign
        | AllocFn::Rallocx
        | AllocFn::Munmap
        | AllocFn::PyObjectMalloc
        | AllocFn::PyObjectFree
        // Tracepoint records and the Go profile, never probed.
        | AllocFn::PageFault
        | AllocFn::GoHeap => 2,
        // CPython's object allocator counts the context pointer 3.6+ passes
        // first (protecting one register too many is harmless).
        AllocFn::Reallocarray
        | AllocFn::PosixMemalign
        | AllocFn::Mremap
        | AllocFn::PyObjectCalloc
        | AllocFn::PyObjectRealloc => 3,
        // mmap's length (rsi) and flags (rcx, 4th argument).
        AllocFn::Mmap => 4,
    };
    &ARGS[..count]
}

/// Whether the kernel emulates this instruction instead of single-stepping
/// it: the same byte-level test as arch/x86/kernel/uprobes.c, restricted to
/// forms without prefixes (a prefixed form may be refused and single-stepped,
/// which is slower but still correct, so only the plain forms count).
// One arm per instruction form, as the kernel lists them, even where the
// answers are the same.
#[allow(clippy::match_same_arms)]
pub(crate) fn is_emulated(bytes: &[u8]) -> bool {
    match *bytes {
        // jcc rel8, jmp rel8
        [0x70..=0x7f | 0xeb, _] => true,
        // jcc rel32
        [0x0f, 0x80..=0x8f, _, _, _, _] => true,
        // jmp rel32, call rel32
        [0xe9 | 0xe8, _, _, _, _] => true,
        // nop
        [0x90] => true,
        // push %reg, push %r8..%r15 (REX.B only)
        [0x50..=0x57] | [0x41, 0x50..=0x57] => true,
        _ => false,
    }
}

/// Why `instruction` may not run unobserved before the probe, if it may not.
fn harm(
    instruction: &Instruction,
    factory: &mut InstructionInfoFactory,
    protected: &[Register],
) -> Option<String> {
    if instruction.flow_control() != FlowControl::Next {
        return Some("branches".into());
    }
    if instruction.stack_pointer_increment() != 0 {
        return Some("moves rsp".into());
    }
    if instruction.has_lock_prefix() {
        return Some("locked".into());
    }
    let info = factory.info(instruction);
    let writes = |access: OpAccess| {
        matches!(
            access,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    if info.used_memory().iter().any(|m| writes(m.access())) {
        return Some("stores to memory".into());
    }
    for used in info.used_registers() {
        let register = used.register().full_register();
        if writes(used.access())
            && (register.is_segment_register()
                || register == Register::RSP
                || register == Register::RBP
                || protected.contains(&register))
        {
            return Some(format!("writes {register:?}"));
        }
    }
    None
}

/// Places the probe of a function whose code starts with `code` (at
/// virtual address `address`) and whose probe reads `protected` registers.
pub(crate) fn place(code: &[u8], address: u64, protected: &[Register]) -> Placement {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut instruction = Instruction::default();
    for skipped in 0..WINDOW_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        let position = decoder.position();
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        let bytes = &code[position..position + instruction.len()];
        if is_emulated(bytes) {
            return Placement {
                offset: position as u64,
                reason: if skipped == 0 {
                    PlacementReason::EmulatedAtEntry
                } else {
                    PlacementReason::SkippedHarmless(skipped)
                },
            };
        }
        if let Some(why) = harm(&instruction, &mut factory, protected) {
            return Placement {
                offset: 0,
                reason: PlacementReason::Blocked(format!("{instruction} {why}")),
            };
        }
    }
    Placement {
        offset: 0,
        reason: PlacementReason::NoneInWindow,
    }
}

/// Targets of the direct (relative) jumps and calls in `code`, decoded
/// linearly from `address`. Used to refuse a placement when any code jumps
/// into the instructions the probe would skip.
pub(crate) fn direct_branch_targets(code: &[u8], address: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut targets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if matches!(
            instruction.flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call
        ) && instruction.near_branch_target() != 0
        {
            targets.push(instruction.near_branch_target());
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malloc_regs() -> &'static [Register] {
        argument_registers(AllocFn::Malloc)
    }

    // Prologues as Debian 12's libc.so.6 (glibc 2.36) and libjemalloc.so.2
    // (5.3.0) have them, copied from `objdump -d`. These tests check
    // `place` on those copied bytes only, whatever the machine's libraries
    // are; the placements in the libraries actually installed are checked
    // against objdump in target.rs (`real_*_placements_match_objdump`) and,
    // in a traced process's memory, by tests/placement.rs.
    const GLIBC_MALLOC: &[u8] = &[0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb]; // push %r12; push %rbp; push %rbx; mov %rdi,%rbx
    const GLIBC_FREE: &[u8] = &[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55]; // test %rdi,%rdi; je; push %rbp
    const GLIBC_CALLOC: &[u8] = &[0x41, 0x55, 0x48, 0x89, 0xf8]; // push %r13; mov %rdi,%rax
    const GLIBC_REALLOC: &[u8] = &[0x41, 0x57, 0x41, 0x56]; // push %r15; push %r14
    // cmpb $0x0,0x140201(%rip); push %r12; mov %rdx,%r12
    const GLIBC_POSIX_MEMALIGN: &[u8] = &[
        0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54, 0x49, 0x89, 0xd4,
    ];
    // cmp $0x1000,%rdi; ja +0x93; lea 0x2c7f5c(%rip),%rdx
    const JEMALLOC_MALLOC: &[u8] = &[
        0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x87, 0x93, 0x00, 0x00, 0x00, 0x48, 0x8d,
        0x15, 0x5c, 0x7f, 0x2c, 0x00,
    ];
    // mov %rdi,%rax; mov 0xa530e(%rip),%rdx; mov %rdi,%rcx; shr $0x1a,%rax;
    // and $0xffffffffc0000000,%rcx; ... then (made-up tail) push %rbx
    const JEMALLOC_FREE: &[u8] = &[
        0x48, 0x89, 0xf8, 0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, 0x48, 0x89, 0xf9, 0x48, 0xc1,
        0xe8, 0x1a, 0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, 0x53,
    ];

    #[test]
    fn glibc_malloc_calloc_realloc_are_emulated_at_entry() {
        for code in [GLIBC_MALLOC, GLIBC_CALLOC, GLIBC_REALLOC] {
            assert_eq!(
                place(code, 0x1000, malloc_regs()),
                Placement {
                    offset: 0,
                    reason: PlacementReason::EmulatedAtEntry
                }
            );
        }
    }

    #[test]
    fn glibc_free_probe_moves_to_the_je_after_test() {
        let placement = place(GLIBC_FREE, 0x98ef0, argument_registers(AllocFn::Free));
        assert_eq!(
            placement,
            Placement {
                offset: 3,
                reason: PlacementReason::SkippedHarmless(1)
            }
        );
    }

    #[test]
    fn glibc_posix_memalign_probe_moves_past_the_rip_relative_cmpb() {
        let placement = place(
            GLIBC_POSIX_MEMALIGN,
            0x9a280,
            argument_registers(AllocFn::PosixMemalign),
        );
        assert_eq!(placement.offset, 7);
    }

    #[test]
    fn jemalloc_malloc_probe_moves_to_the_ja() {
        let placement = place(JEMALLOC_MALLOC, 0x23910, malloc_regs());
        assert_eq!(
            placement,
            Placement {
                offset: 7,
                reason: PlacementReason::SkippedHarmless(1)
            }
        );
    }

    #[test]
    fn jemalloc_free_skips_writes_to_registers_free_does_not_read() {
        // rax, rdx and rcx are written; free's probe reads rdi only.
        let placement = place(JEMALLOC_FREE, 0x27c60, argument_registers(AllocFn::Free));
        assert_eq!(
            placement,
            Placement {
                offset: 24,
                reason: PlacementReason::SkippedHarmless(5)
            }
        );
        // A probe that read rdx (a 3-argument function) must stay at 0.
        let placement = place(
            JEMALLOC_FREE,
            0x27c60,
            argument_registers(AllocFn::Reallocarray),
        );
        assert_eq!(placement.offset, 0);
        assert!(
            matches!(placement.reason, PlacementReason::Blocked(ref why) if why.contains("RDX")),
            "{placement:?}"
        );
    }

    #[test]
    fn endbr64_is_skipped() {
        // endbr64; push %rbp
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55];
        assert_eq!(place(&code, 0, malloc_regs()).offset, 4);
    }

    #[test]
    fn a_function_starting_with_a_branch_is_probed_on_it() {
        // jmp rel32 (a PLT-like tail call)
        assert_eq!(place(&[0xe9, 1, 2, 3, 4], 0, malloc_regs()).offset, 0);
        // jne rel8
        assert_eq!(place(&[0x75, 0x10, 0x90], 0, malloc_regs()).offset, 0);
    }

    #[test]
    fn nothing_harmful_is_ever_skipped() {
        // sub $0x8,%rsp moves rsp.
        assert_eq!(
            place(&[0x48, 0x83, 0xec, 0x08, 0x55], 0, malloc_regs()).offset,
            0
        );
        // mov %rsi,%rdi overwrites malloc's argument.
        assert_eq!(place(&[0x48, 0x89, 0xf7, 0x55], 0, malloc_regs()).offset, 0);
        // mov %rax,(%rip) stores.
        assert_eq!(
            place(&[0x48, 0x89, 0x05, 0, 0, 0, 0, 0x55], 0, malloc_regs()).offset,
            0
        );
        // mov %rsp,%rbp changes the frame pointer.
        assert_eq!(place(&[0x48, 0x89, 0xe5, 0x55], 0, malloc_regs()).offset, 0);
        // ret, syscall: not Next.
        assert_eq!(place(&[0xc3], 0, malloc_regs()).offset, 0);
        assert_eq!(place(&[0x0f, 0x05, 0x55], 0, malloc_regs()).offset, 0);
        // Garbage stays at 0.
        assert_eq!(place(&[0xff, 0xff], 0, malloc_regs()).offset, 0);
        assert_eq!(
            place(&[], 0, malloc_regs()),
            Placement {
                offset: 0,
                reason: PlacementReason::NoneInWindow
            }
        );
    }

    #[test]
    fn emulated_forms_match_the_kernel() {
        assert!(is_emulated(&[0x41, 0x54])); // push %r12
        assert!(is_emulated(&[0x55])); // push %rbp
        assert!(!is_emulated(&[0x66, 0x55])); // push %bp: prefixed
        assert!(!is_emulated(&[0x48, 0x85, 0xff])); // test
        assert!(is_emulated(&[0x0f, 0x84, 0, 0, 0, 0])); // je rel32
        assert!(!is_emulated(&[0xf3, 0x0f, 0x1e, 0xfa])); // endbr64
        assert!(!is_emulated(&[0xc3])); // ret
    }

    #[test]
    fn direct_branch_targets_are_found() {
        // je +0x10 at 0x100 (2 bytes) -> 0x112; call rel32 0 at 0x102 -> 0x107
        let code = [0x74, 0x10, 0xe8, 0, 0, 0, 0];
        assert_eq!(direct_branch_targets(&code, 0x100), [0x112, 0x107]);
    }
}
