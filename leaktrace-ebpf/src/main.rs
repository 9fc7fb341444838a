//! Kernel-side programs, one file per concern, in the order data flows:
//!
//! - `alloc`: `alloc_entry` (uprobe) stashes the argument registers per
//!   thread; `alloc_return` (uretprobe) sends them with the return value
//!   and the user stack as one `AllocEvent`.
//! - `release`: `release_entry` (uprobe) sends a `ReleaseEvent` for free
//!   and friends.
//! - `sampling`: byte-based Poisson sampling, decided at the entry.
//! - `stack`: the native stack at the return, by frame pointers or by
//!   .`eh_frame` tables.
//! - `runtime`: frames of language runtimes walked from their own data
//!   structures: `python` (`CPython`'s frame chain, per traced process).
//! - `process`: exec and exit tracepoints, and the set of traced pids.
//! - `growth`: growth mode's tracepoints (page faults, munmap, madvise,
//!   mremap, brk): resident growth per stack, with no uprobe at all.
//! - `maps`: the ring buffer, loss counters, stash and scratch they share.
//! - `settings`: what the loader fixed (stack mode, sampling, own pid...).
//! - `entry_stop`: `run`'s stop at its command's entry point (a signal
//!   its tracer sees), with no breakpoint written into the command.
//! - `empty`: do-nothing programs for the benchmark's floor.
//!
//! Which function fired comes from the attach cookie (`AllocFn`), so the
//! same programs serve glibc, jemalloc and any other allocator. Everything
//! the rules of each function imply (realloc, calloc overflow, `MAP_FAILED`)
//! is decided in userspace; the kernel only copies registers, so that the
//! cost per call stays at the uprobe floor.
#![no_std]
#![no_main]
// aya's program macros take the context by value.
#![allow(clippy::needless_pass_by_value)]

mod alloc;
mod empty;
mod entry_stop;
mod growth;
mod maps;
mod process;
mod release;
mod runtime;
mod sampling;
mod settings;
mod stack;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
