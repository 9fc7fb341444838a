//! Settings the kernel programs are loaded with: one struct, written once by
//! the loader before the programs are verified and never changed after.
//!
//! The kernel side keeps it in a read-only global (`SETTINGS`, in the
//! object's `.rodata`): the verifier knows every field as a constant, so it
//! skips the code a setting turns off (the frame-pointer walk when unwinding
//! with tables, the sampling when recording every call), and the probes read
//! a setting with a plain load instead of a map lookup.

/// `Settings::stack_mode`: frame pointers only.
pub const STACK_MODE_FP: u32 = 0;
/// `Settings::stack_mode`: .`eh_frame` tables where there are rows, frame
/// pointers elsewhere.
pub const STACK_MODE_DWARF: u32 = 1;

/// Everything the kernel programs need to know that does not change while
/// they run. Booleans are `u32` (0 or 1): any bit pattern must be valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// How stacks are captured: `STACK_MODE_FP` or `STACK_MODE_DWARF`.
    pub stack_mode: u32,
    /// Mean bytes between samples; 0 when every call is recorded.
    pub sample_mean: u32,
    /// leaktrace's own pid, which the probes ignore: with system-wide probes
    /// (`--all`) the daemon's own allocations would otherwise feed it
    /// records about itself without end.
    pub self_pid: u32,
    /// 1 when every process is traced (`--all`): the exec and exit
    /// tracepoints then report every process, not only the pids in
    /// `TRACED_PIDS`.
    pub trace_all: u32,
    /// Offset of `group_dead` in the `sched_process_exit` tracepoint's record
    /// (read from its format file by userspace); 0 when the kernel has no
    /// such field, and then a process counts as gone when its main thread
    /// exits.
    pub group_dead_offset: u32,
    /// Offset of the FS base (`pthread_self()`) in the kernel's
    /// `task_struct` (`thread.fsbase`, from BTF); 0 when unknown, and then
    /// no Python frames are walked (the allocating thread's own thread
    /// state could not be told from another thread's).
    pub task_fsbase_offset: u32,
    /// 1 when processes forked by a traced process are traced too
    /// (`trace --pid` and `run` without `--no-children`): the fork
    /// tracepoint adds each new child process to `TRACED_PIDS` at once and
    /// tells the daemon, which attaches the child's uprobes. 0 under `--all`
    /// (every process is traced already) and with `--no-children`.
    pub follow_children: u32,
    /// Offsets of `pid` and `tgid` in the kernel's `task_struct` (from
    /// BTF): the fork tracepoint reads them from the new task to tell a new
    /// process (`pid == tgid`) from a new thread, which the kernel reports
    /// through the same tracepoint. Only meaningful with `follow_children`.
    pub task_pid_offset: u32,
    pub task_tgid_offset: u32,
    /// Growth mode keeps one page in 2^shift, chosen by address (0: every
    /// page); reports scale what they count by 2^shift.
    pub page_sample_shift: u32,
    /// Offsets of `group_leader` and `start_time` in the kernel's
    /// `task_struct` (from BTF; 0 when unknown): a sampled block recorded
    /// before the process started is a stale entry of an earlier process
    /// with the same pid, never matched (`start_time` and the blocks'
    /// entry times are both `CLOCK_MONOTONIC` ns).
    pub task_group_leader_offset: u32,
    pub task_start_time_offset: u32,
    /// Seed of the kernel's per-CPU generators that pick sampling gaps from
    /// the pool (`EXPONENTIAL_POOL`); each CPU mixes in its id. The same
    /// seed and the same pool give the same gaps, so a test can fix both.
    pub sample_seed: u64,
}

// Both sides must agree on the layout byte for byte.
const _: () = assert!(size_of::<Settings>() == 56);

/// The splitmix64 output function: a bijection on u64 that spreads every
/// input bit over the whole word. Both sides use it to turn a seed (and the
/// kernel a generator's state) into well-mixed bits.
#[inline(always)]
pub const fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The splitmix64 increment (2^64 / golden ratio): successive states of a
/// generator differ by it.
pub const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
