//! The Go runtime's own heap profile, read from outside: the memory
//! profile buckets (`runtime.mbuckets`, linked through `allnext`), each a
//! call stack with its allocation and free counts, as `runtime.MemProfile`
//! reads them, scaled to unbiased estimates as `runtime/pprof` writes them.
//!
//! Layout (`src/runtime/mprof.go`, the same in Go 1.19, 1.21, 1.22 and
//! 1.23; 64-bit): a bucket header of six words (`next`, `allnext`, `typ`,
//! `hash`, `size`, `nstk`), `nstk` stack words (return PCs, innermost
//! first), then a `memRecord`: `active` (the published cycles: allocs,
//! frees, `alloc_bytes`, `free_bytes`) and `future[3]` (cycles not yet
//! published). pprof's in-use is `active`'s allocs less frees, kept only
//! where `alloc_bytes` differs from `free_bytes`.
//!
//! Every bucket read is checked before it is used: its type is the memory
//! profile's, its stack no deeper than the runtime allows, and its `hash`
//! is the runtime's own hash of its stack and size (`stkbucket`), so a
//! read of anything that is not a bucket (a wrong symbol, a torn list) is
//! refused rather than reported. Bucket count and depth are capped and
//! what was cut is counted.
use anyhow::{Result, bail};

use crate::runtime::python::code_object::Memory;

/// The bucket header: six 8-byte words.
pub(crate) const HEADER_BYTES: usize = 48;
/// A `memRecord`: `active` and `future[3]`, four words each.
pub(crate) const RECORD_BYTES: usize = 128;
/// `memProfile`, the first `bucketType`.
const MEM_PROFILE: u64 = 1;
/// The deepest stack a bucket holds (`maxProfStackDepth` in 1.23; 32
/// before).
pub(crate) const MAX_STACK: u64 = 1024;

/// One profiling cycle's counts (`memRecordCycle`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cycle {
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    pub free_bytes: u64,
}

impl Cycle {
    fn parse(words: &[u64]) -> Cycle {
        let word = |i: usize| words.get(i).copied().unwrap_or(0);
        Cycle {
            allocs: word(0),
            frees: word(1),
            alloc_bytes: word(2),
            free_bytes: word(3),
        }
    }

    fn add(&mut self, other: &Cycle) {
        self.allocs = self.allocs.wrapping_add(other.allocs);
        self.frees = self.frees.wrapping_add(other.frees);
        self.alloc_bytes = self.alloc_bytes.wrapping_add(other.alloc_bytes);
        self.free_bytes = self.free_bytes.wrapping_add(other.free_bytes);
    }

    fn is_empty(&self) -> bool {
        self.allocs == 0 && self.frees == 0
    }
}

/// A bucket header's words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub allnext: u64,
    pub hash: u64,
    pub size: u64,
    pub nstk: u64,
}

/// One memory profile bucket, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// The allocation size it counts.
    pub size: u64,
    /// Return PCs, innermost first.
    pub stack: Vec<u64>,
    pub active: Cycle,
    pub future: [Cycle; 3],
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
}

/// Parses a bucket header (`bytes` is at least [`HEADER_BYTES`] long).
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header> {
    let w: Vec<u64> = words(bytes.get(..HEADER_BYTES).unwrap_or_default()).collect();
    let [_next, allnext, typ, hash, size, nstk] = w[..] else {
        bail!("a bucket header is {HEADER_BYTES} bytes");
    };
    if typ != MEM_PROFILE {
        bail!("not a memory profile bucket (type {typ})");
    }
    if nstk == 0 || nstk > MAX_STACK {
        bail!("a bucket of {nstk} frames");
    }
    Ok(Header {
        allnext,
        hash,
        size,
        nstk,
    })
}

/// How many bytes follow the header: the stack and the record.
pub(crate) fn body_len(header: &Header) -> usize {
    // nstk <= MAX_STACK: no overflow.
    header.nstk as usize * 8 + RECORD_BYTES
}

/// The runtime's hash of a stack and size (`stkbucket`).
pub(crate) fn bucket_hash(stack: &[u64], size: u64) -> u64 {
    let mut h: u64 = 0;
    for &pc in stack.iter().chain(std::iter::once(&size)) {
        h = h.wrapping_add(pc);
        h = h.wrapping_add(h << 10);
        h ^= h >> 6;
    }
    h = h.wrapping_add(h << 3);
    h ^= h >> 11;
    h
}

/// Parses the stack and record that follow `header` ([`body_len`] bytes),
/// checking the bucket's hash.
pub(crate) fn parse_body(header: &Header, body: &[u8]) -> Result<Bucket> {
    if body.len() != body_len(header) {
        bail!("a bucket body of {} bytes", body.len());
    }
    let all: Vec<u64> = words(body).collect();
    let (stack, record) = all.split_at(header.nstk as usize);
    if bucket_hash(stack, header.size) != header.hash {
        bail!("a bucket whose hash is not its stack's");
    }
    let cycle = |i: usize| Cycle::parse(record.get(i * 4..).unwrap_or_default());
    Ok(Bucket {
        size: header.size,
        stack: stack.to_vec(),
        active: cycle(0),
        future: [cycle(1), cycle(2), cycle(3)],
    })
}

/// The counts `runtime.MemProfile` reports for each bucket: `active`; when
/// no bucket has any (no collection has published a cycle yet), every
/// cycle summed, as the runtime does then. (Between a mark termination and
/// the flush that follows it, the runtime would add one more cycle: a
/// window of microseconds, not read here.)
pub(crate) fn published(buckets: &[Bucket]) -> Vec<Cycle> {
    let nothing_published = buckets.iter().all(|b| b.active.is_empty());
    buckets
        .iter()
        .map(|b| {
            let mut counts = b.active;
            if nothing_published {
                for future in &b.future {
                    counts.add(future);
                }
            }
            counts
        })
        .collect()
}

/// pprof's `scaleHeapSample`: `count` objects of `bytes` sampled one byte
/// in `rate` stand for `count / (1 - exp(-avg / rate))` objects, avg the
/// mean object size; unscaled at rate 1 (every allocation recorded) or
/// below (unknown). Truncated to integers as Go does.
pub(crate) fn scale_heap_sample(count: u64, bytes: u64, rate: i64) -> (u64, u64) {
    if count == 0 || bytes == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, bytes);
    }
    let average = bytes as f64 / count as f64;
    let scale = 1.0 / -(-average / rate as f64).exp_m1();
    ((count as f64 * scale) as u64, (bytes as f64 * scale) as u64)
}

/// One call site's in-use heap, estimated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InUseSite {
    /// Return PCs, innermost first, at most the depth asked for.
    pub stack: Vec<u64>,
    pub objects: u64,
    pub bytes: u64,
}

/// The in-use heap per stack: each bucket's published allocs less frees
/// (buckets with nothing in use left out, as pprof does), scaled at
/// `rate`, summed over buckets of the same stack (one per size class),
/// stacks cut to `max_frames`. Most bytes first.
pub(crate) fn in_use_sites(buckets: &[Bucket], rate: i64, max_frames: usize) -> Vec<InUseSite> {
    let mut sites: Vec<InUseSite> = Vec::new();
    let mut index: std::collections::HashMap<Vec<u64>, usize> = std::collections::HashMap::new();
    for (bucket, counts) in buckets.iter().zip(published(buckets)) {
        if counts.alloc_bytes == counts.free_bytes {
            continue;
        }
        let (objects, bytes) = scale_heap_sample(
            counts.allocs.saturating_sub(counts.frees),
            counts.alloc_bytes.saturating_sub(counts.free_bytes),
            rate,
        );
        let stack: Vec<u64> = bucket.stack.iter().take(max_frames).copied().collect();
        let at = *index.entry(stack.clone()).or_insert_with(|| {
            sites.push(InUseSite {
                stack,
                objects: 0,
                bytes: 0,
            });
            sites.len() - 1
        });
        sites[at].objects = sites[at].objects.saturating_add(objects);
        sites[at].bytes = sites[at].bytes.saturating_add(bytes);
    }
    sites.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.stack.cmp(&b.stack)));
    sites
}

/// The buckets read from a process, and what was left unread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BucketsRead {
    pub buckets: Vec<Bucket>,
    /// Buckets past the cap, not read.
    pub cut: u64,
}

/// Walks the bucket list from `head` (the value of `runtime.mbuckets`),
/// reading at most `max_buckets`. A bucket that fails its checks ends the
/// walk with an error: the list is not what it should be.
pub(crate) fn read_buckets(
    memory: &dyn Memory,
    head: u64,
    max_buckets: usize,
) -> Result<BucketsRead> {
    let mut read = BucketsRead::default();
    let mut at = head;
    let mut header_bytes = [0u8; HEADER_BYTES];
    while at != 0 {
        if read.buckets.len() >= max_buckets {
            read.cut += 1;
            // Count the rest by their headers only, within the same bound.
            if read.cut > max_buckets as u64 {
                break;
            }
            memory.read(at, &mut header_bytes)?;
            at = parse_header(&header_bytes)?.allnext;
            continue;
        }
        memory.read(at, &mut header_bytes)?;
        let header = parse_header(&header_bytes)?;
        let mut body = vec![0u8; body_len(&header)];
        let Some(body_at) = at.checked_add(HEADER_BYTES as u64) else {
            bail!("a bucket at the end of the address space");
        };
        memory.read(body_at, &mut body)?;
        read.buckets.push(parse_body(&header, &body)?);
        at = header.allnext;
    }
    Ok(read)
}
