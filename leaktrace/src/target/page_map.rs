//! Which pages of a range are still there, from `/proc/PID/pagemap`: growth
//! mode's way to see memory given back (munmap, madvise DONTNEED/FREE once
//! reclaimed, brk shrinking, an mremap's old range) without watching the
//! memory syscalls, since enabling any syscall tracepoint slows every
//! syscall on the host. A page neither present nor swapped out has been
//! given back; a swapped page still belongs to the process.
use std::{fs::File, io, os::unix::fs::FileExt as _};

const PAGE: u64 = 4096;
/// `pagemap` entry bits: present (63), swapped (62).
const PRESENT_OR_SWAPPED: u64 = 3 << 62;
/// Entries read at a time (64 KiB of the file, 32 MiB of memory).
const CHUNK: usize = 8192;

/// The runs of pages given back in a range starting at `start`, from its
/// pagemap `entries` (one per page): (address, length) each.
pub(crate) fn absent_runs(start: u64, entries: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry & PRESENT_OR_SWAPPED != 0 {
            continue;
        }
        let page = start + index as u64 * PAGE;
        match runs.last_mut() {
            Some((at, len)) if *at + *len == page => *len += PAGE,
            _ => runs.push((page, PAGE)),
        }
    }
    runs
}

/// A process's page map, open for reading ranges.
pub(crate) struct PageMap(File);

impl PageMap {
    /// Opens process `pid`'s page map (None: the process is gone).
    pub(crate) fn open(pid: u32) -> Option<PageMap> {
        File::open(format!("/proc/{pid}/pagemap")).ok().map(PageMap)
    }

    /// The runs of pages given back in `[start, start + len)` (page
    /// aligned). A range the kernel will not describe (past the user
    /// address space) is an error.
    pub(crate) fn absent(&self, start: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
        let mut runs = Vec::new();
        let mut bytes = vec![0u8; CHUNK * 8];
        let end = start.saturating_add(len);
        let mut at = start;
        while at < end {
            let pages = (((end - at) / PAGE) as usize).min(CHUNK);
            let wanted = &mut bytes[..pages * 8];
            let offset = (at / PAGE)
                .checked_mul(8)
                .ok_or_else(|| io::Error::other("address past the page map"))?;
            self.0.read_exact_at(wanted, offset)?;
            let entries: Vec<u64> = wanted
                .chunks_exact(8)
                .map(|e| u64::from_ne_bytes(e.try_into().expect("8 bytes")))
                .collect();
            for run in absent_runs(at, &entries) {
                match runs.last_mut() {
                    Some((s, l)) if *s + *l == run.0 => *l += run.1,
                    _ => runs.push(run),
                }
            }
            at += pages as u64 * PAGE;
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_pages_make_runs() {
        let present = 1 << 63;
        let swapped = 1 << 62;
        let entries = [present, 0, 0, swapped, 0, present | 0x1234, 0];
        assert_eq!(
            absent_runs(0x10000, &entries),
            [(0x11000, 2 * PAGE), (0x14000, PAGE), (0x16000, PAGE)]
        );
        assert!(absent_runs(0, &[present, swapped]).is_empty());
    }

    #[test]
    fn this_process_pages_given_back_are_absent() {
        let len = 64 * PAGE as usize;
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
        let start = base as u64;
        // SAFETY: inside the mapping.
        unsafe {
            std::ptr::write_bytes(base.cast::<u8>(), 1, len);
            libc::madvise(
                base.cast::<u8>().add(8 * PAGE as usize).cast(),
                4 * PAGE as usize,
                libc::MADV_DONTNEED,
            );
            libc::munmap(
                base.cast::<u8>().add(60 * PAGE as usize).cast(),
                4 * PAGE as usize,
            );
        }
        let map = PageMap::open(std::process::id()).expect("own page map");
        let absent = map.absent(start, 64 * PAGE).expect("reading it");
        // SAFETY: what is left of the mapping.
        unsafe { libc::munmap(base, 60 * PAGE as usize) };
        assert_eq!(
            absent,
            [(start + 8 * PAGE, 4 * PAGE), (start + 60 * PAGE, 4 * PAGE)]
        );
    }
}
