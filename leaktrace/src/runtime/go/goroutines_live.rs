//! Reading a running Go process's goroutines: `runtime.allglen`, the
//! `runtime.allgs` slice, then each `*g`, in batches of
//! `process_vm_readv` (one system call for up to 1024 goroutines).
//!
//! Read-only, and bounded: at most [`Limits::goroutines`], a byte and a
//! time budget; every failed read is counted. The process runs meanwhile
//! (nothing stops it), so a read can be torn: a `g` reused between the
//! slice's read and its own, a slice grown under us. Such a `g` is counted
//! as torn (`goroutines::state`), never trusted; the counts are those of
//! one pass, a few milliseconds wide.
use std::time::{Duration, Instant};

use super::{
    goroutine_source::GoroutineSource,
    goroutines::{Snapshot, decode},
};

/// Bounds on one read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub goroutines: u64,
    pub bytes: u64,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            goroutines: 1_000_000,
            bytes: 512 << 20,
            time: Duration::from_secs(2),
        }
    }
}

/// Memory of a traced process, read in batches.
pub(crate) trait BatchMemory {
    /// Fills each buffer from its address; returns, per request, whether
    /// it was read whole.
    fn read_batch(&self, requests: &mut [(u64, &mut [u8])]) -> Vec<bool>;

    /// One read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read_batch(&mut [(addr, buf)])[0]
    }
}

/// `process_vm_readv` on a pid (needs the rights ptrace needs: root here).
pub(crate) struct VmReader {
    pub pid: u32,
}

/// iovecs per system call (the kernel's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

impl BatchMemory for VmReader {
    fn read_batch(&self, requests: &mut [(u64, &mut [u8])]) -> Vec<bool> {
        let mut done = vec![false; requests.len()];
        let mut start = 0;
        while start < requests.len() {
            let end = (start + IOV_MAX).min(requests.len());
            let chunk = &mut requests[start..end];
            let local: Vec<libc::iovec> = chunk
                .iter_mut()
                .map(|(_, buf)| libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                })
                .collect();
            let remote: Vec<libc::iovec> = chunk
                .iter()
                .map(|(addr, buf)| libc::iovec {
                    iov_base: *addr as *mut libc::c_void,
                    iov_len: buf.len(),
                })
                .collect();
            // SAFETY: each local iovec points into a live, exclusively
            // borrowed buffer of its length; remote addresses are only
            // read by the kernel, in the other process.
            let got = unsafe {
                libc::process_vm_readv(
                    self.pid as libc::pid_t,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            // Transfers stop at the first iovec that fails: those before it
            // are whole, it is not, the next call starts after it.
            let mut left = usize::try_from(got).unwrap_or(0);
            let mut whole = 0;
            for (_, buf) in chunk.iter() {
                if left < buf.len() {
                    break;
                }
                left -= buf.len();
                whole += 1;
            }
            for flag in &mut done[start..start + whole] {
                *flag = true;
            }
            if got < 0
                && whole == 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            {
                // The process is gone: nothing more will read.
                break;
            }
            start += whole + usize::from(start + whole < end);
        }
        done
    }
}

fn u64_from(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
}

/// Reads every goroutine of the process `memory` is, whose binary is
/// `source` loaded at `bias`.
pub(crate) fn read_goroutines(
    memory: &dyn BatchMemory,
    source: &GoroutineSource,
    bias: u64,
    limits: Limits,
) -> Snapshot {
    let started = Instant::now();
    let mut snapshot = Snapshot::default();
    let stats = &mut snapshot.stats;
    let mut allglen = [0u8; 8];
    let mut header = [0u8; 24];
    let read = memory.read_batch(&mut [
        (source.allglen.wrapping_add(bias), &mut allglen[..]),
        (source.allgs.wrapping_add(bias), &mut header[..]),
    ]);
    stats.failed_reads += read.iter().filter(|ok| !**ok).count() as u64;
    if read.contains(&false) {
        return snapshot;
    }
    let listed = u64_from(&allglen);
    let (array, length) = (u64_from(&header[..8]), u64_from(&header[8..16]));
    stats.listed = listed;
    // allglen is stored after the slice grows: the smaller is consistent.
    let mut wanted = listed.min(length);
    if listed != length {
        stats.torn += listed.abs_diff(length);
    }
    if wanted > limits.goroutines {
        wanted = limits.goroutines;
        stats.truncated = true;
    }
    let span = source.layout.span();
    let affordable = limits.bytes / (span + 8).max(1);
    if wanted > affordable {
        wanted = affordable;
        stats.truncated = true;
    }
    // The slice's pointers, in reads of 64 Ki pointers.
    let mut pointers: Vec<u64> = Vec::with_capacity(wanted as usize);
    let mut chunk = vec![0u8; 8 << 16];
    let mut at = 0u64;
    while at < wanted {
        let count = (wanted - at).min(1 << 16);
        let buf = &mut chunk[..(count * 8) as usize];
        let address = array.wrapping_add(at * 8);
        if memory.read(address, buf) {
            pointers.extend(buf.chunks_exact(8).map(u64_from));
        } else {
            stats.failed_reads += 1;
        }
        at += count;
    }
    let reasons = &source.wait_reasons;
    let mut bytes = vec![0u8; span as usize * IOV_MAX];
    for batch in pointers.chunks(IOV_MAX) {
        if started.elapsed() > limits.time {
            snapshot.stats.truncated = true;
            break;
        }
        let mut requests: Vec<(u64, &mut [u8])> = Vec::with_capacity(batch.len());
        let mut nil = 0;
        for (&pointer, buf) in batch
            .iter()
            .filter(|&&p| {
                if p == 0 {
                    nil += 1;
                }
                p != 0
            })
            .zip(bytes.chunks_mut(span as usize))
        {
            requests.push((pointer, buf));
        }
        snapshot.stats.torn += nil;
        let read = memory.read_batch(&mut requests);
        for ((_, buf), ok) in requests.iter().zip(read) {
            if !ok {
                snapshot.stats.failed_reads += 1;
                continue;
            }
            match decode(buf, &source.layout) {
                Some(g) => snapshot.add(&g, reasons),
                None => snapshot.stats.torn += 1,
            }
        }
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::runtime::go::{
        g_layout::GLayout,
        goroutine_source::Origin,
        goroutines::{Group, SiteKey},
    };

    /// A made-up process: byte ranges at addresses.
    struct Fake(BTreeMap<u64, Vec<u8>>);

    impl BatchMemory for Fake {
        fn read_batch(&self, requests: &mut [(u64, &mut [u8])]) -> Vec<bool> {
            requests
                .iter_mut()
                .map(|(addr, buf)| {
                    let Some((start, bytes)) = self.0.range(..=*addr).next_back() else {
                        return false;
                    };
                    let from = (*addr - start) as usize;
                    match bytes.get(from..from + buf.len()) {
                        Some(src) => {
                            buf.copy_from_slice(src);
                            true
                        }
                        None => false,
                    }
                })
                .collect()
        }
    }

    const LAYOUT: GLayout = GLayout {
        stack_lo: 0,
        stack_hi: 8,
        atomicstatus: 16,
        goid: 24,
        waitreason: 32,
        gopc: 40,
        startpc: 48,
    };

    fn g(status: u32, reason: u8, gopc: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; 56];
        bytes[8..16].copy_from_slice(&8192u64.to_le_bytes());
        bytes[16..20].copy_from_slice(&status.to_le_bytes());
        bytes[32] = reason;
        bytes[40..48].copy_from_slice(&gopc.to_le_bytes());
        bytes[48..56].copy_from_slice(&0x4000u64.to_le_bytes());
        bytes
    }

    fn source() -> GoroutineSource {
        GoroutineSource {
            version: Some("go1.23.4".into()),
            allgs: 0x1000,
            allglen: 0x2000,
            layout: LAYOUT,
            layout_origin: Origin::Binary,
            wait_reasons: vec![String::new(), "chan send".into()],
            segments: Vec::new(),
            position_independent: false,
        }
    }

    /// Goroutines at 0x10000 + 0x100 * i; the slice at 0x9000.
    fn process(gs: &[Vec<u8>], listed: u64, pointers: &[u64]) -> Fake {
        let mut memory = BTreeMap::new();
        let bias = 0x40_0000;
        memory.insert(bias + 0x2000, listed.to_le_bytes().to_vec());
        let mut header = 0x9000u64.to_le_bytes().to_vec();
        header.extend((pointers.len() as u64).to_le_bytes());
        header.extend((pointers.len() as u64).to_le_bytes());
        memory.insert(bias + 0x1000, header);
        memory.insert(
            0x9000,
            pointers.iter().flat_map(|p| p.to_le_bytes()).collect(),
        );
        for (i, bytes) in gs.iter().enumerate() {
            memory.insert(0x10000 + 0x100 * i as u64, bytes.clone());
        }
        Fake(memory)
    }

    #[test]
    fn reads_every_live_goroutine_and_counts_what_failed() {
        let gs = vec![g(4, 1, 0xa0), g(4, 1, 0xa0), g(6, 0, 0xa0), g(2, 0, 0xb0)];
        // One pointer to nowhere, one nil.
        let pointers = [0x10000, 0x10100, 0x10200, 0x10300, 0x7777_0000, 0];
        let memory = process(&gs, 6, &pointers);
        let snapshot = read_goroutines(&memory, &source(), 0x40_0000, Limits::default());
        let key = |gopc| SiteKey {
            gopc,
            startpc: 0x4000,
        };
        assert_eq!(
            snapshot.groups[&key(0xa0)],
            Group {
                count: 2,
                wait_reasons: BTreeMap::from([("chan send".into(), 2)]),
                stack_bytes: 2 * 8192,
            }
        );
        assert_eq!(snapshot.groups[&key(0xb0)].wait_reasons["running"], 1);
        let s = snapshot.stats;
        assert_eq!(
            (
                s.listed,
                s.live,
                s.dead,
                s.failed_reads,
                s.torn,
                s.truncated
            ),
            (6, 3, 1, 1, 1, false)
        );
    }

    #[test]
    fn the_caps_truncate_and_say_so() {
        let gs: Vec<Vec<u8>> = (0..10).map(|_| g(4, 1, 0xa0)).collect();
        let pointers: Vec<u64> = (0..10).map(|i| 0x10000 + 0x100 * i).collect();
        let memory = process(&gs, 10, &pointers);
        let limits = Limits {
            goroutines: 4,
            ..Limits::default()
        };
        let snapshot = read_goroutines(&memory, &source(), 0x40_0000, limits);
        assert_eq!(snapshot.stats.live, 4);
        assert!(snapshot.stats.truncated);
        // A process not there: one failed read each, nothing else.
        let gone = read_goroutines(&Fake(BTreeMap::new()), &source(), 0, Limits::default());
        assert_eq!(gone.stats.failed_reads, 2);
        assert!(gone.groups.is_empty());
    }

    #[test]
    fn reads_this_process_through_process_vm_readv() {
        let data: Vec<u8> = (0..=255).collect();
        let other = [7u8; 16];
        let reader = VmReader {
            pid: std::process::id(),
        };
        let mut a = [0u8; 16];
        let mut b = [0u8; 8];
        let mut c = [0u8; 16];
        let ok = reader.read_batch(&mut [
            (data.as_ptr() as u64 + 16, &mut a[..]),
            (8, &mut b[..]),
            (other.as_ptr() as u64, &mut c[..]),
        ]);
        assert_eq!(ok, [true, false, true]);
        assert_eq!(a[0], 16);
        assert_eq!(c, other);
    }
}
