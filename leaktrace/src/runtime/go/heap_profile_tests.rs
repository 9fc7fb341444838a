//! The heap profile reader on hand-made buckets laid out as Go 1.19 to 1.23
//! lay them out (`src/runtime/mprof.go`: the same header, stack and
//! `memRecord` in each), with the expected hashes and scaled estimates
//! computed by Go itself (the runtime's `stkbucket` hash and pprof's
//! `scaleHeapSample`, run with go1.23).
use std::collections::BTreeMap;

use anyhow::{Result, bail};

use super::{
    heap_profile::{
        Bucket, Cycle, HEADER_BYTES, bucket_hash, in_use_sites, parse_header, published,
        read_buckets, scale_heap_sample,
    },
    heap_symbols::rip_relative_targets,
};
use crate::runtime::python::code_object::Memory;

/// A process's memory as a few regions at given addresses.
#[derive(Default)]
struct FakeMemory(BTreeMap<u64, Vec<u8>>);

impl Memory for FakeMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        for (&start, bytes) in &self.0 {
            if let Some(from) = addr.checked_sub(start)
                && let Some(part) = bytes.get(from as usize..from as usize + buf.len())
            {
                buf.copy_from_slice(part);
                return Ok(());
            }
        }
        bail!("{addr:#x} unmapped")
    }
}

/// A bucket's bytes: header, stack, `active` then `future[0..3]`.
fn bucket_bytes(allnext: u64, size: u64, stack: &[u64], cycles: [Cycle; 4]) -> Vec<u8> {
    let mut words = vec![
        0,
        allnext,
        1,
        bucket_hash(stack, size),
        size,
        stack.len() as u64,
    ];
    words.extend_from_slice(stack);
    for c in cycles {
        words.extend([c.allocs, c.frees, c.alloc_bytes, c.free_bytes]);
    }
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn cycle(allocs: u64, frees: u64, size: u64) -> Cycle {
    Cycle {
        allocs,
        frees,
        alloc_bytes: allocs * size,
        free_bytes: frees * size,
    }
}

const STACK: [u64; 3] = [0x4b_8a1d, 0x4b_8c06, 0x43_c14a];

#[test]
fn the_bucket_hash_is_the_runtimes() {
    // Go's stkbucket hash of this stack and size 4096.
    assert_eq!(bucket_hash(&STACK, 4096), 0xb076_92ae_4dc2_3d07);
}

#[test]
fn in_use_is_scaled_as_pprof_scales_it() {
    // Go's scaleHeapSample(8, 32768, 524288) and (3, 196608, 524288).
    assert_eq!(scale_heap_sample(8, 32768, 524_288), (1028, 4_210_709));
    assert_eq!(scale_heap_sample(3, 196_608, 524_288), (25, 1_673_215));
    // Rate 1 recorded everything; 0 or less is unknown: unscaled.
    assert_eq!(scale_heap_sample(8, 32768, 1), (8, 32768));
    assert_eq!(scale_heap_sample(8, 32768, 0), (8, 32768));
    assert_eq!(scale_heap_sample(0, 32768, 524_288), (0, 0));
}

#[test]
fn buckets_are_walked_checked_scaled_and_merged_by_stack() {
    let none = Cycle::default();
    // Three buckets: STACK at 4 KiB (8 of 10 in use), STACK at 64 KiB (3
    // in use: another size class, the same site), and one all freed.
    let (a, b, c) = (0x10_0000u64, 0x20_0000u64, 0x30_0000u64);
    let mut memory = FakeMemory::default();
    memory.0.insert(
        a,
        bucket_bytes(b, 4096, &STACK, [cycle(10, 2, 4096), none, none, none]),
    );
    memory.0.insert(
        b,
        bucket_bytes(c, 65536, &STACK, [cycle(3, 0, 65536), none, none, none]),
    );
    memory.0.insert(
        c,
        bucket_bytes(0, 64, &[0x40_1000], [cycle(5, 5, 64), none, none, none]),
    );
    let read = read_buckets(&memory, a, 100).unwrap();
    assert_eq!((read.buckets.len(), read.cut), (3, 0));
    let sites = in_use_sites(&read.buckets, 524_288, 128);
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(sites[0].stack, STACK);
    assert_eq!(
        (sites[0].objects, sites[0].bytes),
        (1028 + 25, 4_210_709 + 1_673_215)
    );
    // Stacks cut to a depth are merged where they then agree.
    assert_eq!(in_use_sites(&read.buckets, 1, 2)[0].stack, STACK[..2]);
    // The cap: one bucket read, the other two counted.
    let capped = read_buckets(&memory, a, 1).unwrap();
    assert_eq!((capped.buckets.len(), capped.cut), (1, 2));
}

#[test]
fn before_any_collection_every_cycle_counts() {
    // No bucket has a published cycle yet: the runtime sums them all.
    let bucket = |active: Cycle, future: Cycle| Bucket {
        size: 4096,
        stack: STACK.to_vec(),
        active,
        future: [future, cycle(1, 0, 4096), Cycle::default()],
    };
    let unpublished = [bucket(Cycle::default(), cycle(2, 0, 4096))];
    assert_eq!(published(&unpublished), [cycle(3, 0, 4096)]);
    // Once any is published, only `active` counts.
    let mixed = [
        bucket(Cycle::default(), cycle(2, 0, 4096)),
        bucket(cycle(4, 1, 4096), cycle(2, 0, 4096)),
    ];
    assert_eq!(published(&mixed), [Cycle::default(), cycle(4, 1, 4096)]);
}

#[test]
fn anything_that_is_not_a_bucket_is_refused() {
    let none = Cycle::default();
    let good = bucket_bytes(0, 4096, &STACK, [cycle(1, 0, 4096), none, none, none]);
    let mut memory = FakeMemory::default();
    // A hash that is not its stack's.
    let mut bad_hash = good.clone();
    bad_hash[24] ^= 1;
    memory.0.insert(0x1000, bad_hash);
    assert!(read_buckets(&memory, 0x1000, 10).is_err());
    // Another profile's bucket type; no stack; a stack too deep.
    let mut header = good[..HEADER_BYTES].to_vec();
    header[16] = 2;
    assert!(parse_header(&header).is_err());
    let mut header = good[..HEADER_BYTES].to_vec();
    header[40..48].copy_from_slice(&0u64.to_le_bytes());
    assert!(parse_header(&header).is_err());
    header[40..48].copy_from_slice(&1025u64.to_le_bytes());
    assert!(parse_header(&header).is_err());
    assert!(parse_header(&good[..HEADER_BYTES]).is_ok());
    // An unreadable bucket, and a list that leads nowhere.
    assert!(read_buckets(&memory, 0x9000, 10).is_err());
    let mut dangling = FakeMemory::default();
    dangling.0.insert(
        0x1000,
        bucket_bytes(0x5000, 4096, &STACK, [cycle(1, 0, 4096), none, none, none]),
    );
    assert!(read_buckets(&dangling, 0x1000, 10).is_err());
    // No list at all is no bucket.
    assert!(read_buckets(&memory, 0, 10).unwrap().buckets.is_empty());
}

#[test]
fn rip_relative_loads_are_found_in_code() {
    // mov rax, [rip+0x10]; nop; lea rcx, [rip-0x20]; mov rdx, [rax]
    let code = [
        0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00, 0x90, 0x48, 0x8d, 0x0d, 0xe0, 0xff, 0xff, 0xff,
        0x48, 0x8b, 0x10,
    ];
    assert_eq!(
        rip_relative_targets(&code, 0x1000),
        [0x1000 + 7 + 0x10, 0x1000 + 15 - 0x20]
    );
}
