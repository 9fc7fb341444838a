//! The data a function's code refers to. A stripped Go binary (`-ldflags=-s
//! -w`) names no variable, but `.gopclntab` still names every function and
//! where its code is; on amd64 the runtime reaches its globals
//! RIP-relative, so decoding a function that uses a variable gives that
//! variable's link-time address. Readers pick functions whose references
//! are unambiguous in every release they support (`runtime.forEachG` for
//! `runtime.allgs`, say) and check what they find.
//!
//! Pure: code bytes and their address in, references out, in code order.
//! The bytes are the target's: decoding is capped, never trusted to end.
use iced_x86::{
    Code, Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
};

/// Code bytes decoded at most (the runtime's largest functions are a few
/// tens of KiB; the callers want small ones).
pub(crate) const MAX_CODE: usize = 1 << 18;
/// References kept at most.
pub(crate) const MAX_REFS: usize = 1 << 14;

/// What an instruction does with the memory it refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads it (`mov sym(%rip),%rax`, `cmp $0,sym(%rip)`).
    Load,
    /// Writes it (`mov %rax,sym(%rip)`).
    Store,
    /// Reads and writes it (`add $1,sym(%rip)`, `xchg %rax,sym(%rip)`).
    LoadStore,
    /// Takes its address only (`lea sym(%rip),%rax`).
    Address,
}

/// One RIP-relative memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataRef {
    /// The instruction's address.
    pub at: u64,
    /// The absolute address its operand designates.
    pub address: u64,
    pub access: Access,
    /// Bytes read or written (0 when only the address is taken).
    pub size: usize,
}

impl DataRef {
    /// Whether it reads `size` bytes at its address.
    pub(crate) fn loads(&self, size: usize) -> bool {
        matches!(self.access, Access::Load | Access::LoadStore) && self.size == size
    }
}

/// The RIP-relative memory operands of `code` (64-bit x86, placed at
/// `address`), in order; past [`MAX_CODE`] bytes the code is not read.
pub(crate) fn data_refs(code: &[u8], address: u64) -> Vec<DataRef> {
    let code = code.get(..MAX_CODE.min(code.len())).unwrap_or_default();
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut info = InstructionInfoFactory::new();
    let mut refs = Vec::new();
    while decoder.can_decode() && refs.len() < MAX_REFS {
        decoder.decode_out(&mut instruction);
        if instruction.code() == Code::INVALID || !instruction.is_ip_rel_memory_operand() {
            continue;
        }
        let Some(operand) =
            (0..instruction.op_count()).find(|&i| instruction.op_kind(i) == OpKind::Memory)
        else {
            continue;
        };
        let access = if instruction.mnemonic() == Mnemonic::Lea {
            Access::Address
        } else {
            match info.info(&instruction).op_access(operand) {
                OpAccess::Read | OpAccess::CondRead => Access::Load,
                OpAccess::Write | OpAccess::CondWrite => Access::Store,
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => Access::LoadStore,
                // Prefetches and the like touch nothing.
                OpAccess::None | OpAccess::NoMemAccess => Access::Address,
            }
        };
        refs.push(DataRef {
            at: instruction.ip(),
            address: instruction.ip_rel_memory_address(),
            access,
            size: if access == Access::Address {
                0
            } else {
                instruction.memory_size().size()
            },
        });
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes as Go 1.23 wrote them in `runtime.allgadd` and
    /// `runtime.forEachGRace` (displacements kept, addresses moved).
    #[test]
    fn loads_stores_and_addresses_are_told_apart_with_their_sizes() {
        let code: Vec<u8> = [
            // 0x1000: lea 0x100(%rip),%rax
            &[0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00][..],
            // 0x1007: mov 0x200(%rip),%rcx
            &[0x48, 0x8b, 0x0d, 0x00, 0x02, 0x00, 0x00],
            // 0x100e: mov %rcx,0x200(%rip)
            &[0x48, 0x89, 0x0d, 0x00, 0x02, 0x00, 0x00],
            // 0x1015: cmpq $0,0x10(%rip) (7 + disp 4 + imm 1 = 8 bytes)
            &[0x48, 0x83, 0x3d, 0x10, 0x00, 0x00, 0x00, 0x00],
            // 0x101d: cmpb $0,-0x20(%rip)
            &[0x80, 0x3d, 0xe0, 0xff, 0xff, 0xff, 0x00],
            // 0x1024: xchg %rcx,0x30(%rip)
            &[0x48, 0x87, 0x0d, 0x30, 0x00, 0x00, 0x00],
            // 0x102b: xchg %rcx,(%rdx): not RIP-relative
            &[0x48, 0x87, 0x0a],
            // 0x102e: mov 0x8(%rax),%rcx: not RIP-relative
            &[0x48, 0x8b, 0x48, 0x08],
            // 0x1032: ret; int3 padding
            &[0xc3, 0xcc, 0xcc],
        ]
        .concat();
        let refs = data_refs(&code, 0x1000);
        let seen: Vec<(u64, u64, Access, usize)> = refs
            .iter()
            .map(|r| (r.at, r.address, r.access, r.size))
            .collect();
        assert_eq!(
            seen,
            [
                (0x1000, 0x1007 + 0x100, Access::Address, 0),
                (0x1007, 0x100e + 0x200, Access::Load, 8),
                (0x100e, 0x1015 + 0x200, Access::Store, 8),
                (0x1015, 0x101d + 0x10, Access::Load, 8),
                (0x101d, 0x1024 - 0x20, Access::Load, 1),
                (0x1024, 0x102b + 0x30, Access::LoadStore, 8),
            ]
        );
        assert!(refs[1].loads(8) && !refs[2].loads(8) && !refs[4].loads(8));
    }

    #[test]
    fn garbage_and_truncated_code_give_what_decodes() {
        assert!(data_refs(&[], 0).is_empty());
        // A lone prefix, an invalid opcode, then a load cut short.
        assert!(data_refs(&[0x48, 0x0f, 0x0b, 0x06, 0x48, 0x8b, 0x05, 0x00], 0x10).is_empty());
        // A load at the very top of the address space wraps, not panics.
        let refs = data_refs(&[0x48, 0x8b, 0x05, 0x00, 0x00, 0x00, 0x00], u64::MAX - 3);
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].address, (u64::MAX - 3).wrapping_add(7));
    }
}
