//! Calling contracts: what each traced call did to the heap, from its
//! arguments and return value.
//!
//! The kernel sends raw registers; the rules live here, as pure functions:
//! - realloc(NULL, n) is malloc(n); realloc(p, 0) returning NULL freed p;
//!   a realloc that fails (NULL for n > 0) leaves p allocated.
//! - calloc(n, m) and reallocarray(p, n, m) fail when n*m overflows.
//! - `posix_memalign` returns its block through the out-pointer, 0 on success.
//! - mmap and mremap fail with `MAP_FAILED` (-1), not 0; only anonymous maps
//!   are heap memory; lengths are rounded up to whole pages.
use leaktrace_common::AllocFn;

pub const PAGE_SIZE: u64 = 4096;
const MAP_ANONYMOUS: u64 = 0x20;

/// What one call did to the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapOp {
    /// A new heap block (or mapped region when `mapped`).
    Alloc { addr: u64, size: u64, mapped: bool },
    /// Pages [addr, addr+size) became resident (growth mode): kept as a
    /// mapped piece, merged with the piece before or after it when they
    /// touch and come from the same site.
    Resident { addr: u64, size: u64 },
    /// A heap block was released.
    Free { addr: u64 },
    /// A block moved or was resized: `old` is released, `new` allocated.
    Realloc { old: u64, new: u64, size: u64 },
    /// A block changed size in place (jemalloc's xallocx).
    Resize { addr: u64, size: u64 },
    /// Pages [addr, addr+len) were unmapped.
    Unmap { addr: u64, len: u64 },
    /// A mapped range moved or changed size.
    Remap {
        old: u64,
        old_len: u64,
        new: u64,
        new_len: u64,
    },
    /// The call failed and changed nothing.
    Failed,
    /// A call that does not concern the heap (a file-backed mmap).
    Ignored,
}

/// `len` rounded up to whole pages. Lengths come from the traced process's
/// syscall arguments (munmap, madvise, mremap): a hostile one near 2^64
/// saturates instead of overflowing.
fn page_round(len: u64) -> u64 {
    len.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE)
}

fn map_failed(ret: u64) -> bool {
    // The raw syscall returns -errno; the libc wrapper returns -1.
    ret > u64::MAX - 4096
}

/// The effect of an allocating call, from its arguments and return value.
pub fn interpret_alloc(func: AllocFn, args: [u64; 4], ret: u64, out: u64) -> HeapOp {
    let alloc = |addr: u64, size: u64| {
        if addr == 0 {
            HeapOp::Failed
        } else {
            HeapOp::Alloc {
                addr,
                size,
                mapped: false,
            }
        }
    };
    let realloc = |old: u64, size: Option<u64>| match (old, size) {
        // Overflowing size: the call fails before touching the block.
        (_, None) => HeapOp::Failed,
        (0, Some(size)) => alloc(ret, size),
        (old, Some(0)) if ret == 0 => HeapOp::Free { addr: old },
        (_, Some(_)) if ret == 0 => HeapOp::Failed,
        (old, Some(size)) => HeapOp::Realloc {
            old,
            new: ret,
            size,
        },
    };
    match func {
        AllocFn::Malloc
        | AllocFn::Valloc
        | AllocFn::Pvalloc
        | AllocFn::Mallocx
        | AllocFn::PyObjectMalloc => alloc(ret, args[0]),
        AllocFn::Calloc | AllocFn::PyObjectCalloc => match args[0].checked_mul(args[1]) {
            Some(size) => alloc(ret, size),
            None => HeapOp::Failed,
        },
        AllocFn::AlignedAlloc | AllocFn::Memalign => alloc(ret, args[1]),
        AllocFn::PosixMemalign => {
            if ret == 0 {
                alloc(out, args[2])
            } else {
                HeapOp::Failed
            }
        }
        // pymalloc's realloc follows the C contract (NULL: the old block
        // stays; a zero size still returns a block).
        AllocFn::Realloc | AllocFn::PyObjectRealloc => realloc(args[0], Some(args[1])),
        AllocFn::Reallocarray => realloc(args[0], args[1].checked_mul(args[2])),
        AllocFn::Rallocx => {
            if ret == 0 {
                HeapOp::Failed
            } else {
                HeapOp::Realloc {
                    old: args[0],
                    new: ret,
                    size: args[1],
                }
            }
        }
        AllocFn::Xallocx => HeapOp::Resize {
            addr: args[0],
            size: ret,
        },
        AllocFn::Mmap => {
            if map_failed(ret) {
                HeapOp::Failed
            } else if args[3] & MAP_ANONYMOUS == 0 {
                HeapOp::Ignored
            } else {
                HeapOp::Alloc {
                    addr: ret,
                    size: page_round(args[1]),
                    mapped: true,
                }
            }
        }
        AllocFn::Mremap => {
            if map_failed(ret) {
                HeapOp::Failed
            } else {
                let new_len = page_round(args[2]);
                HeapOp::Remap {
                    old: args[0],
                    old_len: page_round(args[1]),
                    new: moved_to(args[0], ret, new_len, out),
                    new_len,
                }
            }
        }
        // A page made resident (growth mode): a mapped piece of one page.
        AllocFn::PageFault => HeapOp::Resident {
            addr: args[0],
            size: args[1],
        },
        // Read from a Go process's own profile, never a record.
        AllocFn::GoHeap => HeapOp::Ignored,
        AllocFn::Free
        | AllocFn::Dallocx
        | AllocFn::Sdallocx
        | AllocFn::Munmap
        | AllocFn::PyObjectFree => interpret_release(func, [args[0], args[1]]),
    }
}

/// Where an mremap moved a region of `new_len` bytes from `old`, given
/// `found`, the start of the free range the kernel found, and `searched`,
/// that range's length (growth mode's `mmap:vm_unmapped_area`; 0 from a
/// probe on mremap's return, which gives the address itself). A new length
/// that is a multiple of 2 MiB has its search padded by 2 MiB, and the
/// region placed in it at the huge-page alignment of its file offset,
/// which for an anonymous region never moved before is its old address
/// (the kernel's `__thp_get_unmapped_area`, top-down layout). A region
/// moved before keeps its first offset, so the guess may be wrong: the
/// daemon's page-map check then finds its pages absent and drops them.
fn moved_to(old: u64, found: u64, new_len: u64, searched: u64) -> u64 {
    const HUGE: u64 = 2 << 20;
    if searched <= new_len || searched != new_len.saturating_add(HUGE) {
        return found;
    }
    match old.wrapping_sub(found) & (HUGE - 1) {
        0 => found.saturating_add(HUGE),
        shift => found.saturating_add(shift),
    }
}

/// One past the highest user address on x86-64 (4-level paging, the
/// kernel's `TASK_SIZE`: 47 bits less a guard page; with 5-level paging the
/// kernel only maps above it when asked to by an address hint).
const USER_ADDRESS_END: u64 = 0x7fff_ffff_f000;

/// Whether the kernel refuses `munmap(addr, len)` with EINVAL and unmaps
/// nothing (`do_vmi_munmap`'s checks): an address not page aligned, a
/// range past the user address space, a length of 0. munmap is probed at
/// its entry only (a release costs one trap), so its failure is decided
/// here from its arguments, as the kernel decides it.
fn munmap_fails(addr: u64, len: u64) -> bool {
    !addr.is_multiple_of(PAGE_SIZE)
        || addr > USER_ADDRESS_END
        || len > USER_ADDRESS_END - addr
        || len == 0
}

/// The effect of a releasing call.
pub fn interpret_release(func: AllocFn, args: [u64; 2]) -> HeapOp {
    match func {
        AllocFn::Munmap if munmap_fails(args[0], args[1]) => HeapOp::Failed,
        AllocFn::Munmap => HeapOp::Unmap {
            addr: args[0],
            len: page_round(args[1]),
        },
        _ if args[0] == 0 => HeapOp::Ignored,
        _ => HeapOp::Free { addr: args[0] },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO: [u64; 4] = [0; 4];

    /// A traced process may pass any length: munmap of one near 2^64
    /// fails in the kernel (EINVAL) and releases nothing here, never a
    /// panic; so do an unaligned address and a length of 0.
    #[test]
    fn hostile_lengths_saturate() {
        for args in [
            [0x1000, u64::MAX],
            [0x1000, USER_ADDRESS_END],
            [0x1001, 4096],
            [0x1000, 0],
            [!0xfff, 4096],
        ] {
            assert_eq!(
                interpret_release(AllocFn::Munmap, args),
                HeapOp::Failed,
                "{args:x?}"
            );
        }
        assert_eq!(
            interpret_release(AllocFn::Munmap, [0x1000, USER_ADDRESS_END - 0x1000]),
            HeapOp::Unmap {
                addr: 0x1000,
                len: USER_ADDRESS_END - 0x1000,
            }
        );
        let mut table = crate::daemon::heap::HeapTable::default();
        table.apply(
            1,
            HeapOp::Resident {
                addr: 0x2000,
                size: PAGE_SIZE,
            },
            0,
            0,
        );
        table.apply(
            1,
            interpret_release(AllocFn::Munmap, [0x1000, u64::MAX]),
            0,
            0,
        );
        assert_eq!(table.len(), 1, "a failed munmap released a page");
        table.apply(
            1,
            interpret_release(AllocFn::Munmap, [0x1000, 0x10_0000]),
            0,
            0,
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn malloc_family_success_and_failure() {
        assert_eq!(
            interpret_alloc(AllocFn::Malloc, [100, 0, 0, 0], 0x1000, 0),
            HeapOp::Alloc {
                addr: 0x1000,
                size: 100,
                mapped: false
            }
        );
        assert_eq!(
            interpret_alloc(AllocFn::Malloc, [100, 0, 0, 0], 0, 0),
            HeapOp::Failed
        );
        assert_eq!(
            interpret_alloc(AllocFn::Memalign, [64, 300, 0, 0], 0x2000, 0),
            HeapOp::Alloc {
                addr: 0x2000,
                size: 300,
                mapped: false
            }
        );
    }

    #[test]
    fn calloc_multiplies_and_overflow_fails() {
        assert_eq!(
            interpret_alloc(AllocFn::Calloc, [10, 12, 0, 0], 0x1000, 0),
            HeapOp::Alloc {
                addr: 0x1000,
                size: 120,
                mapped: false
            }
        );
        assert_eq!(
            interpret_alloc(AllocFn::Calloc, [u64::MAX / 2, 3, 0, 0], 0x1000, 0),
            HeapOp::Failed
        );
    }

    #[test]
    fn realloc_rules() {
        // realloc(NULL, n) is malloc.
        assert_eq!(
            interpret_alloc(AllocFn::Realloc, [0, 50, 0, 0], 0x1000, 0),
            HeapOp::Alloc {
                addr: 0x1000,
                size: 50,
                mapped: false
            }
        );
        // Moves.
        assert_eq!(
            interpret_alloc(AllocFn::Realloc, [0x1000, 5000, 0, 0], 0x9000, 0),
            HeapOp::Realloc {
                old: 0x1000,
                new: 0x9000,
                size: 5000
            }
        );
        // Fails: the old block stays.
        assert_eq!(
            interpret_alloc(AllocFn::Realloc, [0x1000, 1 << 62, 0, 0], 0, 0),
            HeapOp::Failed
        );
        // realloc(p, 0) returning NULL freed p.
        assert_eq!(
            interpret_alloc(AllocFn::Realloc, [0x1000, 0, 0, 0], 0, 0),
            HeapOp::Free { addr: 0x1000 }
        );
        // reallocarray overflow fails without freeing.
        assert_eq!(
            interpret_alloc(AllocFn::Reallocarray, [0x1000, u64::MAX, 2, 0], 0, 0),
            HeapOp::Failed
        );
        assert_eq!(
            interpret_alloc(AllocFn::Reallocarray, [0x1000, 10, 20, 0], 0x1000, 0),
            HeapOp::Realloc {
                old: 0x1000,
                new: 0x1000,
                size: 200
            }
        );
    }

    #[test]
    fn posix_memalign_uses_the_out_pointer() {
        assert_eq!(
            interpret_alloc(AllocFn::PosixMemalign, [0x7ff0, 64, 1000, 0], 0, 0x4000),
            HeapOp::Alloc {
                addr: 0x4000,
                size: 1000,
                mapped: false
            }
        );
        // ENOMEM (12).
        assert_eq!(
            interpret_alloc(AllocFn::PosixMemalign, [0x7ff0, 64, 1000, 0], 12, 0),
            HeapOp::Failed
        );
    }

    #[test]
    fn mmap_rules() {
        let anon_private = 0x20 | 0x02;
        assert_eq!(
            interpret_alloc(
                AllocFn::Mmap,
                [0, 10000, 3, anon_private],
                0x7f00_0000_0000,
                0
            ),
            HeapOp::Alloc {
                addr: 0x7f00_0000_0000,
                size: 12288,
                mapped: true
            }
        );
        assert_eq!(
            interpret_alloc(AllocFn::Mmap, [0, 4096, 3, anon_private], u64::MAX, 0),
            HeapOp::Failed
        );
        // Address 0 is a valid mmap result (MAP_FIXED at 0); only MAP_FAILED fails.
        assert!(matches!(
            interpret_alloc(AllocFn::Mmap, [0, 4096, 3, anon_private | 0x10], 0, 0),
            HeapOp::Alloc { addr: 0, .. }
        ));
        assert_eq!(
            interpret_alloc(AllocFn::Mmap, [0, 4096, 1, 0x02], 0x5000, 0),
            HeapOp::Ignored
        );
        assert_eq!(
            interpret_alloc(AllocFn::Mremap, [0x1000, 4096, 8192, 1], 0x8000, 0),
            HeapOp::Remap {
                old: 0x1000,
                old_len: 4096,
                new: 0x8000,
                new_len: 8192
            }
        );
        assert_eq!(
            interpret_alloc(AllocFn::Mremap, NO, u64::MAX, 0),
            HeapOp::Failed
        );
        // Growth mode: the free range found, searched at the new length.
        assert_eq!(
            interpret_alloc(AllocFn::Mremap, [0x1000, 4096, 8192, 1], 0x8000, 8192),
            HeapOp::Remap {
                old: 0x1000,
                old_len: 4096,
                new: 0x8000,
                new_len: 8192
            }
        );
    }

    #[test]
    fn a_huge_page_aligned_move_lands_at_its_offsets_alignment() {
        const HUGE: u64 = 2 << 20;
        let old = 0x7f00_0012_3000;
        let found = 0x7e00_0000_5000;
        // Padded by 2 MiB: placed where (new - old) is a multiple of 2 MiB.
        let new = moved_to(old, found, 4 * HUGE, 5 * HUGE);
        assert_eq!(new.abs_diff(old) % HUGE, 0);
        assert!(new > found && new < found + HUGE);
        // Already aligned: the top-down layout skips a whole 2 MiB.
        assert_eq!(
            moved_to(old, old - 8 * HUGE, 4 * HUGE, 5 * HUGE),
            old - 7 * HUGE
        );
        // Not padded: where it was found.
        assert_eq!(
            moved_to(old, found, 4 * HUGE + 4096, 4 * HUGE + 4096),
            found
        );
        assert_eq!(moved_to(old, found, 4 * HUGE, 0), found);
    }

    #[test]
    fn releases() {
        assert_eq!(
            interpret_release(AllocFn::Free, [0x10, 0]),
            HeapOp::Free { addr: 0x10 }
        );
        assert_eq!(interpret_release(AllocFn::Free, [0, 0]), HeapOp::Ignored);
        assert_eq!(
            interpret_release(AllocFn::Sdallocx, [0x10, 32]),
            HeapOp::Free { addr: 0x10 }
        );
        assert_eq!(
            interpret_release(AllocFn::Munmap, [0x1000, 100]),
            HeapOp::Unmap {
                addr: 0x1000,
                len: 4096
            }
        );
    }
}
