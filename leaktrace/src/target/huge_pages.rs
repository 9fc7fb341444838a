//! Transparent huge pages, from outside: whether the page at an address of
//! a process is part of one.
//!
//! Growth mode counts the first write to each page, and a write fault in a
//! region the kernel backs with a transparent huge page makes 2 MiB
//! resident at once: the other 511 base pages never fault. The fault's
//! tracepoint runs before the kernel picks the page size, so the daemon
//! asks afterwards: `/proc/PID/pagemap` gives the page frame behind the
//! address (root reads frame numbers), and `/proc/kpageflags` whether that
//! frame is part of a transparent huge page.
use std::{fs::File, os::unix::fs::FileExt as _};

/// The size of a PMD-mapped transparent huge page on x86-64.
pub(crate) const HUGE_PAGE: u64 = 2 << 20;
const PAGE: u64 = 4096;
/// `pagemap` entry: the page is present (bit 63).
const PM_PRESENT: u64 = 1 << 63;
/// `pagemap` entry: the page frame number (bits 0-54).
const PM_PFN: u64 = (1 << 55) - 1;
/// `kpageflags`: the frame is part of a transparent huge page.
const KPF_THP: u64 = 1 << 22;

/// Whether the kernel makes transparent huge pages at all (its setting is
/// `always`, `madvise` or `never`; the bracketed word is the one in force).
pub(crate) fn possible() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|setting| !setting.contains("[never]"))
}

/// The frame behind a `pagemap` entry: None when the page is not present,
/// or its frame number is hidden (0).
pub(crate) fn present_frame(entry: u64) -> Option<u64> {
    let frame = entry & PM_PFN;
    (entry & PM_PRESENT != 0 && frame != 0).then_some(frame)
}

/// Whether a frame's `kpageflags` say it is part of a transparent huge page.
pub(crate) fn is_huge(flags: u64) -> bool {
    flags & KPF_THP != 0
}

/// Whether the page at `addr` in process `pid` is part of a transparent
/// huge page: None when it is not present (given back already, or the
/// process is gone) or cannot be read.
pub(crate) fn in_huge_page(pid: u32, addr: u64) -> Option<bool> {
    let read_u64 = |file: &File, offset: u64| -> Option<u64> {
        let mut bytes = [0u8; 8];
        file.read_exact_at(&mut bytes, offset).ok()?;
        Some(u64::from_ne_bytes(bytes))
    };
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).ok()?;
    let frame = present_frame(read_u64(&pagemap, (addr / PAGE).checked_mul(8)?)?)?;
    let flags = File::open("/proc/kpageflags").ok()?;
    Some(is_huge(read_u64(&flags, frame.checked_mul(8)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_flags_are_read_by_their_bits() {
        assert_eq!(present_frame(PM_PRESENT | 0x1234), Some(0x1234));
        assert_eq!(present_frame(0x1234), None, "not present");
        assert_eq!(present_frame(PM_PRESENT), None, "frame hidden");
        // Soft-dirty (55) and exclusive (56) bits are not part of the frame.
        assert_eq!(present_frame(PM_PRESENT | (3 << 55) | 7), Some(7));
        assert!(is_huge(KPF_THP | 1 << 15));
        assert!(!is_huge(1 << 15 | 1 << 17));
    }

    #[test]
    fn a_huge_page_of_this_process_is_seen() {
        if !crate::test_support::require_root("a_huge_page_of_this_process_is_seen") {
            return;
        }
        if !possible() {
            return crate::test_support::prerequisite_missing(
                "a_huge_page_of_this_process_is_seen",
                "transparent huge pages (echo madvise > /sys/kernel/mm/transparent_hugepage/enabled)",
            );
        }
        // 4 MiB mapped, so that an aligned 2 MiB lies inside.
        let len = 2 * HUGE_PAGE as usize;
        // SAFETY: a fresh anonymous private mapping, used only here.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let aligned = (base as u64).next_multiple_of(HUGE_PAGE);
        // SAFETY: [aligned, aligned + 2 MiB) lies in the mapping.
        unsafe {
            assert_eq!(
                libc::madvise(
                    aligned as *mut libc::c_void,
                    HUGE_PAGE as usize,
                    libc::MADV_HUGEPAGE
                ),
                0
            );
            *(aligned as *mut u8) = 1;
        }
        let pid = std::process::id();
        let huge = in_huge_page(pid, aligned);
        let small = {
            let page = aligned + HUGE_PAGE + PAGE;
            // SAFETY: inside the mapping, past the huge page, made to be a
            // base page.
            unsafe {
                libc::madvise(
                    (aligned + HUGE_PAGE) as *mut libc::c_void,
                    HUGE_PAGE as usize,
                    libc::MADV_NOHUGEPAGE,
                );
                *(page as *mut u8) = 1;
            }
            in_huge_page(pid, page)
        };
        let absent = in_huge_page(pid, aligned + HUGE_PAGE + 8 * PAGE);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(base, len) };
        assert_eq!(
            huge,
            Some(true),
            "the kernel gave no huge page (fragmented memory?)"
        );
        assert_eq!(small, Some(false));
        assert_eq!(absent, None, "an untouched page is not present");
    }
}
