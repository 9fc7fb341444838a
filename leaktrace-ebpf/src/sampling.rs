//! Byte-based Poisson sampling, decided in the kernel (as jemalloc and
//! tcmalloc sample their heaps): each allocated byte starts a sample with
//! probability 1/mean, so a block of `size` bytes is sampled with
//! probability 1 - exp(-size/mean). A per-CPU countdown of bytes to the
//! next sample, reset from a pool of exponential gaps, makes that decision
//! at the allocator's entry. An unsampled call then costs its two traps and
//! nothing else: no stack walk, no record, no table entry. The addresses of
//! sampled blocks are kept here, so that releases of unsampled blocks are
//! dropped in the kernel too. mmap and mremap are never sampled out: they
//! are rare, and munmap may release any part of a region.
//!
//! Gaps are picked from the pool by a per-CPU generator seeded from
//! `Settings::sample_seed`, so that a test can fix the sequence.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use leaktrace_common::{AllocFn, EXPONENTIAL_POOL, GOLDEN_GAMMA, LossCounter, SampledKey, mix64};

use crate::{maps::count_loss, settings};

/// Exponential gaps (bytes) with the configured mean, drawn by userspace.
#[map]
static EXPONENTIALS: Array<u32> = Array::with_max_entries(EXPONENTIAL_POOL, 0);

/// Bytes until this CPU's next sample; 0 before the first draw.
#[map]
static COUNTDOWN: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// Sampled blocks still outstanding (sized by the loader; not
/// preallocated: only sampled blocks take room).
#[map]
static SAMPLED: HashMap<SampledKey, u64> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// This CPU's generator (splitmix64 state); 0 before its first draw.
#[map]
static RANDOM: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// a * b, or `u64::MAX` when a factor reaches 2^32 (such a call is sampled
/// for sure, or fails). BPF has no 128-bit multiply, and LLVM turns any
/// overflow check it recognises into one.
#[inline(always)]
fn product(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 {
        0
    } else if (a | b) >> 32 != 0 {
        u64::MAX
    } else {
        a * b
    }
}

/// Bytes a call asks for, from its argument registers.
#[inline(always)]
fn requested(func: u32, args: &[u64; 4]) -> u64 {
    match func {
        f if f == AllocFn::Calloc as u32 || f == AllocFn::PyObjectCalloc as u32 => {
            product(args[0], args[1])
        }
        f if f == AllocFn::Reallocarray as u32 => product(args[1], args[2]),
        f if f == AllocFn::PosixMemalign as u32 => args[2],
        f if f == AllocFn::Realloc as u32
            || f == AllocFn::PyObjectRealloc as u32
            || f == AllocFn::AlignedAlloc as u32
            || f == AllocFn::Memalign as u32
            || f == AllocFn::Rallocx as u32 =>
        {
            args[1]
        }
        _ => args[0],
    }
}

/// 32 random bits from this CPU's generator. Its first draw seeds it from
/// the loader's seed mixed with the CPU's id, so CPUs draw different
/// sequences and a fixed seed gives each CPU a fixed one.
#[inline(always)]
fn next_random() -> u32 {
    let Some(state) = RANDOM.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not preempt each other.
    let mut current = unsafe { *state };
    if current == 0 {
        // SAFETY: plain helper call.
        let cpu = u64::from(unsafe { bpf_get_smp_processor_id() }) + 1;
        // Never 0, which means "not seeded yet".
        current = mix64(settings::sample_seed() ^ cpu.wrapping_mul(GOLDEN_GAMMA)) | 1;
    }
    // A state that wraps to 0 (once in 2^64 draws) is simply seeded again.
    current = current.wrapping_add(GOLDEN_GAMMA);
    // SAFETY: as above.
    unsafe { *state = current };
    (mix64(current) >> 32) as u32
}

/// The next gap between samples, from the pool.
#[inline(always)]
fn next_gap() -> i64 {
    let index = next_random() % EXPONENTIAL_POOL;
    EXPONENTIALS
        .get(index)
        .map_or(1, |gap| i64::from(*gap).max(1))
}

/// Whether the call about to run allocates a sampled block.
#[inline(always)]
pub(crate) fn decide(func: u32, args: &[u64; 4]) -> bool {
    if settings::sample_mean() == 0
        || func == AllocFn::Mmap as u32
        || func == AllocFn::Mremap as u32
    {
        return true;
    }
    // xallocx resizes a block in place and allocates none: nothing to
    // sample, and its size must not count towards the next sample.
    if func == AllocFn::Xallocx as u32 {
        return false;
    }
    let Some(countdown) = COUNTDOWN.get_ptr_mut(0) else {
        return true;
    };
    let size = requested(func, args).min(i64::MAX as u64) as i64;
    // SAFETY: this CPU's slot; programs on one CPU do not preempt each other.
    unsafe {
        if *countdown == 0 {
            *countdown = next_gap();
        }
        *countdown -= size;
        if *countdown > 0 {
            return false;
        }
        *countdown = next_gap();
    }
    true
}

/// Records a sampled block with the time it entered (for the daemon's
/// sweep); false (counted) when the map is full.
#[inline(always)]
pub(crate) fn record(pid: u32, addr: u64) -> bool {
    let key = SampledKey {
        pid,
        _padding: 0,
        addr,
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if SAMPLED.insert(key, now, 0).is_err() {
        count_loss(LossCounter::SampledMapFull);
        return false;
    }
    true
}

/// When the current process started (its group leader's `start_time`,
/// `CLOCK_MONOTONIC` ns); 0 when unknown.
#[inline(always)]
fn process_start_ns() -> u64 {
    let (leader_offset, start_offset) = settings::task_start_offsets();
    if leader_offset == 0 || start_offset == 0 {
        return 0;
    }
    // SAFETY: the helper returns the current task's address; the reads are
    // checked by bpf_probe_read_kernel, at the kernel's own offsets (BTF).
    unsafe {
        let task = bpf_get_current_task();
        let Ok(leader) = bpf_probe_read_kernel((task + u64::from(leader_offset)) as *const u64)
        else {
            return 0;
        };
        bpf_probe_read_kernel((leader + u64::from(start_offset)) as *const u64).unwrap_or(0)
    }
}

/// Whether the current process has a sampled block at `addr`: an entry
/// recorded before the process started belongs to an earlier process
/// that had the same pid (its release or exit was lost): it is dropped.
#[inline(always)]
fn take_or_keep(pid: u32, addr: u64, take: bool) -> bool {
    let key = SampledKey {
        pid,
        _padding: 0,
        addr,
    };
    // SAFETY: a map value, copied out at once.
    let Some(recorded_ns) = (unsafe { SAMPLED.get(key) }).copied() else {
        return false;
    };
    if recorded_ns < process_start_ns() {
        let _: Result<_, _> = SAMPLED.remove(key);
        return false;
    }
    if take {
        // Gone meanwhile (another thread's release): not ours to count.
        return SAMPLED.remove(key).is_ok();
    }
    true
}

/// Whether a block is a sampled one.
#[inline(always)]
pub(crate) fn contains(pid: u32, addr: u64) -> bool {
    take_or_keep(pid, addr, false)
}

/// Forgets a block; true when it was a sampled one.
#[inline(always)]
pub(crate) fn forget(pid: u32, addr: u64) -> bool {
    take_or_keep(pid, addr, true)
}
