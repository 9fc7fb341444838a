//! What the kernel must offer leaktrace's programs, checked at start so
//! that an old or trimmed kernel gets one line naming what it lacks and the
//! Linux release that brought it, rather than a verifier log or an attach
//! error halfway through. The list and the message are pure (tested on
//! made-up probe results); [`probe`] asks this kernel, and
//! [`check_environment`] asks it at start, with root and tracefs too.
//!
//! `LEAKTRACE_TEST_HIDE_FEATURE=NAME[,NAME...]` (test only) makes the
//! probe report the features named (by [`Feature::name`]) as absent, so a
//! test shows the refusal on a kernel that has everything.
use std::path::Path;

use anyhow::{Result, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported},
};

/// The variable that hides features from [`probe`], for tests.
pub(crate) const HIDE_VARIABLE: &str = "LEAKTRACE_TEST_HIDE_FEATURE";

/// How a feature is found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Probe {
    /// A file the kernel exposes.
    File(&'static str),
    /// A BPF map type the kernel creates.
    Map(MapType),
    /// A BPF helper a uprobe (kprobe-type) program may call.
    Helper(BpfHelper),
    /// A tracepoint, `category:event`, under tracefs.
    Tracepoint(&'static str, &'static str),
}

/// One thing the programs need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Feature {
    /// Short name (for [`HIDE_VARIABLE`]).
    pub name: &'static str,
    /// What it is, for the message.
    pub what: &'static str,
    /// The first Linux release that has it.
    pub since: &'static str,
    pub probe: Probe,
}

/// Needed in every mode: uprobes through perf (the allocator probes),
/// BTF (the offsets of `task_struct` fields the fork tracepoint and the
/// Python walk read), the ring buffer every record goes through, `bpf_loop`
/// (the Python frame walk, in programs always loaded) and the process
/// lifecycle tracepoints.
const ALWAYS: [Feature; 7] = [
    Feature {
        name: "uprobe",
        what: "uprobes through perf (/sys/bus/event_source/devices/uprobe, CONFIG_UPROBES)",
        since: "4.17",
        probe: Probe::File("/sys/bus/event_source/devices/uprobe/type"),
    },
    Feature {
        name: "btf",
        what: "kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)",
        since: "5.4",
        probe: Probe::File("/sys/kernel/btf/vmlinux"),
    },
    Feature {
        name: "ringbuf",
        what: "the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)",
        since: "5.8",
        probe: Probe::Map(MapType::RingBuf),
    },
    Feature {
        name: "bpf_loop",
        what: "the bpf_loop helper",
        since: "5.17",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_loop),
    },
    Feature {
        name: "sched_process_exec",
        what: "the tracepoint sched:sched_process_exec",
        since: "3.4",
        probe: Probe::Tracepoint("sched", "sched_process_exec"),
    },
    Feature {
        name: "sched_process_exit",
        what: "the tracepoint sched:sched_process_exit",
        since: "2.6.32",
        probe: Probe::Tracepoint("sched", "sched_process_exit"),
    },
    Feature {
        name: "sched_process_fork",
        what: "the tracepoint sched:sched_process_fork",
        since: "2.6.32",
        probe: Probe::Tracepoint("sched", "sched_process_fork"),
    },
];

/// Needed in growth mode: first touches of pages, and where mappings go.
const GROWTH: [Feature; 3] = [
    Feature {
        name: "page_fault_user",
        what: "the tracepoint exceptions:page_fault_user (x86)",
        since: "3.13",
        probe: Probe::Tracepoint("exceptions", "page_fault_user"),
    },
    Feature {
        name: "page_fault_kernel",
        what: "the tracepoint exceptions:page_fault_kernel (x86)",
        since: "3.13",
        probe: Probe::Tracepoint("exceptions", "page_fault_kernel"),
    },
    Feature {
        name: "vm_unmapped_area",
        what: "the tracepoint mmap:vm_unmapped_area",
        since: "5.8",
        probe: Probe::Tracepoint("mmap", "vm_unmapped_area"),
    },
];

/// What a trace needs; `growth`: growth mode's tracepoints too.
pub(crate) fn required(growth: bool) -> Vec<Feature> {
    let mut features = ALWAYS.to_vec();
    if growth {
        features.extend(GROWTH);
    }
    features
}

/// The refusal for the features `missing` (None when nothing is): one
/// line, each named with the release that brought it, and the release that
/// has them all.
pub(crate) fn refusal(missing: &[Feature]) -> Option<String> {
    let newest = missing
        .iter()
        .map(|f| f.since)
        .max_by_key(|since| release(since))?;
    let named: Vec<String> = missing
        .iter()
        .map(|f| format!("{} (Linux {})", f.what, f.since))
        .collect();
    Some(format!(
        "this kernel lacks {}: leaktrace needs it (Linux {newest} or later, see Requirements in the README)",
        named.join(", ")
    ))
}

/// A release's numbers, to compare them (`2.6.32` < `5.4` < `5.17`; a
/// kernel's `6.9.12-generic` is 6.9: the numbers up to the first part
/// that is not one).
pub(crate) fn release(since: &str) -> Vec<u32> {
    since.split('.').map_while(|n| n.parse().ok()).collect()
}

/// The features of `required` this kernel lacks (or that the test variable
/// hides).
pub(crate) fn probe(required: &[Feature]) -> Vec<Feature> {
    missing(required, &std::env::var(HIDE_VARIABLE).unwrap_or_default())
}

/// Whether the test variable hides `name`, a feature leaktrace does
/// without (multi-uprobe links: `uprobe_multi`), so that tests on a kernel
/// that has it still run the path of kernels that do not.
pub(crate) fn hidden(name: &str) -> bool {
    std::env::var(HIDE_VARIABLE)
        .unwrap_or_default()
        .split(',')
        .any(|hidden| hidden.trim() == name)
}

/// The features of `required` this kernel lacks, or named in `hidden`
/// (comma-separated).
fn missing(required: &[Feature], hidden: &str) -> Vec<Feature> {
    let hidden: Vec<&str> = hidden.split(',').map(str::trim).collect();
    required
        .iter()
        .filter(|f| hidden.contains(&f.name) || !present(f.probe))
        .copied()
        .collect()
}

/// Whether this kernel has what `probe` looks for. A probe that fails
/// (the kernel refused the question) counts as absent.
fn present(probe: Probe) -> bool {
    match probe {
        Probe::File(path) => Path::new(path).exists(),
        Probe::Map(map_type) => is_map_supported(map_type).unwrap_or(false),
        Probe::Helper(helper) => is_helper_supported(ProgramType::KProbe, helper).unwrap_or(false),
        Probe::Tracepoint(category, event) => ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .any(|root| {
                Path::new(root)
                    .join("events")
                    .join(category)
                    .join(event)
                    .exists()
            }),
    }
}

/// Checks that this process may load BPF programs and the kernel has what
/// they need (see [`probe`]; `growth`: growth mode's tracepoints too).
pub(crate) fn check_environment(growth: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("leaktrace must run as root (it loads eBPF programs and uprobes): try sudo");
    }
    // Tracepoints are looked for in tracefs; probing creates a map, which
    // kernels before 5.11 charge to the memlock limit.
    ensure_tracefs();
    raise_memlock_limit();
    if let Some(refusal) = refusal(&probe(&required(growth))) {
        bail!(refusal);
    }
    Ok(())
}

/// The exec tracepoint is found through tracefs, which a minimal system may
/// not have mounted. Mounting it changes nothing else; a failure surfaces
/// later as a clear attach error.
fn ensure_tracefs() {
    let tracing = Path::new("/sys/kernel/tracing");
    if tracing.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return;
    }
    // SAFETY: static NUL-terminated strings.
    unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`.
pub(super) fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer; failure is harmless here.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Feature {
        *ALWAYS
            .iter()
            .chain(&GROWTH)
            .find(|f| f.name == name)
            .unwrap()
    }

    #[test]
    fn growth_mode_needs_its_tracepoints_too() {
        let names = |growth| -> Vec<&str> { required(growth).iter().map(|f| f.name).collect() };
        assert_eq!(
            names(false),
            [
                "uprobe",
                "btf",
                "ringbuf",
                "bpf_loop",
                "sched_process_exec",
                "sched_process_exit",
                "sched_process_fork"
            ]
        );
        assert_eq!(
            names(true)[7..],
            ["page_fault_user", "page_fault_kernel", "vm_unmapped_area"]
        );
    }

    #[test]
    fn nothing_missing_is_no_refusal() {
        assert_eq!(refusal(&[]), None);
    }

    #[test]
    fn one_missing_feature_is_named_with_its_release() {
        assert_eq!(
            refusal(&[named("ringbuf")]).unwrap(),
            "this kernel lacks the BPF ring buffer (BPF_MAP_TYPE_RINGBUF) (Linux 5.8): leaktrace needs it (Linux 5.8 or later, see Requirements in the README)"
        );
        assert_eq!(
            refusal(&[named("bpf_loop")]).unwrap(),
            "this kernel lacks the bpf_loop helper (Linux 5.17): leaktrace needs it (Linux 5.17 or later, see Requirements in the README)"
        );
        let btf = refusal(&[named("btf")]).unwrap();
        assert!(btf.contains("/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF) (Linux 5.4)"));
        let tracepoint = refusal(&[named("vm_unmapped_area")]).unwrap();
        assert!(tracepoint.starts_with("this kernel lacks the tracepoint mmap:vm_unmapped_area"));
    }

    /// Several: all named on one line, the newest release asked for
    /// (compared as numbers: 5.17 is after 5.8).
    #[test]
    fn several_missing_are_one_line_asking_for_the_newest() {
        let message = refusal(&[
            named("uprobe"),
            named("bpf_loop"),
            named("ringbuf"),
            named("sched_process_exit"),
        ])
        .unwrap();
        assert!(!message.contains('\n'));
        assert!(message.contains("Linux 5.17 or later"), "{message}");
        for name in [
            "uprobes through perf",
            "bpf_loop",
            "ring buffer",
            "sched_process_exit",
        ] {
            assert!(message.contains(name), "{name}: {message}");
        }
    }

    /// On this machine (kernel 6.x, root: probing loads tiny programs),
    /// every feature is there.
    #[test]
    fn this_kernel_has_every_feature() {
        if !crate::test_support::require_root("this_kernel_has_every_feature") {
            return;
        }
        assert_eq!(missing(&required(true), ""), []);
        // The probes can say no: a helper uprobes may not call, a map type
        // and a tracepoint that do not exist.
        assert!(present(Probe::Helper(BpfHelper::BPF_FUNC_loop)));
        assert!(!present(Probe::Helper(BpfHelper::BPF_FUNC_redirect)));
        assert!(present(Probe::Map(MapType::RingBuf)));
        assert!(!present(Probe::Map(MapType::Unspecified)));
        assert!(!present(Probe::Tracepoint("sched", "sched_no_such_event")));
        assert!(!present(Probe::File("/sys/kernel/btf/no_such_object")));
        assert_eq!(
            missing(&required(true), "ringbuf, vm_unmapped_area"),
            [named("ringbuf"), named("vm_unmapped_area")]
        );
    }
}
