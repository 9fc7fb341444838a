//! The kernel features checked at start (`leaktrace/src/kernel/features.rs`):
//! on this kernel every one is found (a trace in each mode runs), and each
//! one hidden with the test-only `LEAKTRACE_TEST_HIDE_FEATURE` makes
//! leaktrace refuse with one line naming it and the Linux release that
//! brought it, and exit 1, before anything is loaded or started.
mod common;

use std::{process::Command, time::Duration};

use common::{
    Finished, assert_one_error_line, leaktrace_bin, require_root, run_with_timeout, serial,
};

const TIMEOUT: Duration = Duration::from_mins(1);

/// `leaktrace run --quiet --mode MODE -- PROGRAM`, with `hide` hidden.
fn run(mode: &str, program: &str, hide: Option<&str>) -> Finished {
    let mut command = Command::new(leaktrace_bin());
    command.args(["run", "--quiet", "--mode", mode, "--", program]);
    if let Some(hide) = hide {
        command.env("LEAKTRACE_TEST_HIDE_FEATURE", hide);
    }
    run_with_timeout("leaktrace run", &mut command, TIMEOUT)
}

#[test]
fn every_feature_is_found_on_this_kernel_and_each_missing_one_is_named() {
    if !require_root("every_feature_is_found_on_this_kernel_and_each_missing_one_is_named") {
        return;
    }
    let _serial = serial();
    // A program that does not run long: what is checked is that tracing
    // starts.
    let program = "/bin/true";
    for mode in ["allocations", "growth"] {
        run(mode, program, None).succeeded(&format!("leaktrace run --mode {mode}"));
    }
    // Each feature, as its refusal names it, and its release.
    let cases: [(&str, &str, &str, &str); 10] = [
        (
            "allocations",
            "uprobe",
            "uprobes through perf (/sys/bus/event_source/devices/uprobe, CONFIG_UPROBES)",
            "4.17",
        ),
        (
            "allocations",
            "btf",
            "kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)",
            "5.4",
        ),
        (
            "allocations",
            "ringbuf",
            "the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)",
            "5.8",
        ),
        ("allocations", "bpf_loop", "the bpf_loop helper", "5.17"),
        (
            "allocations",
            "sched_process_exec",
            "the tracepoint sched:sched_process_exec",
            "3.4",
        ),
        (
            "allocations",
            "sched_process_exit",
            "the tracepoint sched:sched_process_exit",
            "2.6.32",
        ),
        (
            "allocations",
            "sched_process_fork",
            "the tracepoint sched:sched_process_fork",
            "2.6.32",
        ),
        (
            "growth",
            "page_fault_user",
            "the tracepoint exceptions:page_fault_user (x86)",
            "3.13",
        ),
        (
            "growth",
            "page_fault_kernel",
            "the tracepoint exceptions:page_fault_kernel (x86)",
            "3.13",
        ),
        (
            "growth",
            "vm_unmapped_area",
            "the tracepoint mmap:vm_unmapped_area",
            "5.8",
        ),
    ];
    for (mode, name, named, since) in cases {
        let what = format!("--mode {mode} without {name}");
        let finished = run(mode, program, Some(name));
        let line = assert_one_error_line(&what, &finished);
        assert_eq!(
            line,
            format!(
                "leaktrace: error: this kernel lacks {named} (Linux {since}): leaktrace needs it (Linux {since} or later, see Requirements in the README)"
            ),
            "{what}"
        );
        assert_eq!(finished.status.code(), Some(1), "{what}: {line}");
    }
    // Growth mode's tracepoints are not asked of allocations mode.
    run("allocations", program, Some("vm_unmapped_area"))
        .succeeded("--mode allocations without vm_unmapped_area");
    // Two: one line naming both, asking for the newer release.
    let finished = run("allocations", program, Some("ringbuf,bpf_loop"));
    let line = assert_one_error_line("without ringbuf and bpf_loop", &finished);
    assert!(
        line.contains("BPF_MAP_TYPE_RINGBUF) (Linux 5.8), the bpf_loop helper (Linux 5.17)")
            && line.contains("(Linux 5.17 or later"),
        "{line}"
    );
}
