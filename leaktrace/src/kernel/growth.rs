//! Growth mode's kernel programs: the page-fault tracepoints, and where
//! mremap moves a region.
//!
//! No syscall tracepoint is enabled: any of them sends every syscall of
//! every process on the host through the kernel's slow syscall path
//! (measured here: a getppid loop at 250 ns per call while growth mode
//! watched munmap, madvise, mremap and brk at their tracepoints, 170 ns
//! without; redis-benchmark makes about 7 syscalls per request, redis 2).
//! fexit on the syscalls would cost only the calls made, but this kernel
//! refuses tracing programs. So pages given back are found absent from
//! the process's page map by the daemon, and mremap's moves are seen at
//! `mmap:vm_unmapped_area`, which only mappings pay for.
use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::TracePoint};

/// Growth mode's tracepoints: (program, category, event).
const TRACEPOINTS: [(&str, &str, &str); 3] = [
    ("on_page_fault_user", "exceptions", "page_fault_user"),
    ("on_page_fault_kernel", "exceptions", "page_fault_kernel"),
    ("on_vm_unmapped_area", "mmap", "vm_unmapped_area"),
];

/// Loads and attaches growth mode's programs.
pub(crate) fn attach(ebpf: &mut Ebpf) -> Result<()> {
    for (name, category, event) in TRACEPOINTS {
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
