//! Growth mode's kernel programs: the page-fault tracepoints, and the memory
//! syscalls (munmap, madvise, mremap, brk) that give pages back or move them.
//!
//! The syscalls are watched at their `syscalls:sys_enter_*`/`sys_exit_*`
//! tracepoints. Enabling any syscall tracepoint sends every syscall of
//! every process on the host through the kernel's slow syscall path: about
//! 70 ns more per syscall, measured here (a getppid loop: 170 ns untraced,
//! 250 ns with growth mode on). fexit on the syscalls' wrappers would cost
//! only the calls watched, but this kernel refuses tracing programs
//! (`BPF_PROG_LOAD` of an fexit: EPERM), so it is not used.
use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::TracePoint};

/// The page-fault tracepoints: (program, category, event).
const FAULT_TRACEPOINTS: [(&str, &str, &str); 2] = [
    ("on_page_fault_user", "exceptions", "page_fault_user"),
    ("on_page_fault_kernel", "exceptions", "page_fault_kernel"),
];

/// The memory syscalls' tracepoints: (program, category, event).
const SYSCALL_TRACEPOINTS: [(&str, &str, &str); 5] = [
    ("on_munmap", "syscalls", "sys_enter_munmap"),
    ("on_madvise", "syscalls", "sys_enter_madvise"),
    ("on_mremap_enter", "syscalls", "sys_enter_mremap"),
    ("on_mremap_exit", "syscalls", "sys_exit_mremap"),
    ("on_brk", "syscalls", "sys_exit_brk"),
];

/// Loads and attaches growth mode's programs.
pub(crate) fn attach(ebpf: &mut Ebpf) -> Result<()> {
    for (name, category, event) in FAULT_TRACEPOINTS.iter().chain(&SYSCALL_TRACEPOINTS) {
        attach_tracepoint(ebpf, name, category, event)?;
    }
    Ok(())
}

/// Loads program `name` and attaches it to tracepoint `category:event`.
pub(crate) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &str,
    category: &str,
    event: &str,
) -> Result<()> {
    let tracepoint: &mut TracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()?;
    tracepoint
        .load()
        .with_context(|| format!("loading program {name}"))?;
    tracepoint.attach(category, event).with_context(|| {
        format!("attaching to tracepoint {category}:{event} (is tracefs mounted?)")
    })?;
    Ok(())
}
