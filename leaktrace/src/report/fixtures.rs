//! Reports made up for the format tests: two sites of one process, a
//! frame named with markup, processes in containers.
use super::*;

pub(crate) fn frame(function: &str, file: Option<&str>, line: Option<u32>) -> Frame {
    Frame {
        function: function.into(),
        file: file.map(Into::into),
        line,
        module: "/usr/bin/prog".into(),
        address: 0x401000,
        inlined: false,
        fallback: false,
        kind: crate::symbolize::FrameKind::Native,
        python_unmatched: false,
    }
}

/// A function name that is markup, to check it is escaped wherever it
/// is written into HTML or SVG.
pub(crate) const MARKUP: &str = "leak<script>alert(1)</script>&\"'";

/// [`report`] with `leak_a`'s frame named [`MARKUP`].
pub(crate) fn report_with_markup() -> Report {
    let mut report = report();
    report.sites[0].frames[0].function = MARKUP.into();
    report
}

/// Two sites: 4096 bytes in 4 mallocs from `leak_a`, 100 bytes from one calloc in `leak_b`.
pub(crate) fn report() -> Report {
    Report {
        mode: "allocations".into(),
        pids: vec![42],
        command: Some(vec!["./prog".into()]),
        all_processes: false,
        processes: vec![ProcessReport {
            pid: 42,
            command: "./prog".into(),
            exited: true,
            bytes: 4196,
            count: 5,
            call_sites: 2,
            runtime: None,
            rss_growth_bytes: None,
            cgroup: Some("/user.slice/user-1000.slice/session-2.scope".into()),
            container: None,
            parent: None,
        }],
        allocator_objects: vec!["/lib/libc.so.6".into()],
        elapsed_ms: 1500,
        is_final: true,
        min_age_ms: 0,
        sample_bytes: 0,
        page_sample: 1,
        totals: Totals {
            outstanding_bytes: 4196,
            outstanding_allocations: 5,
            call_sites: 2,
            events: 20,
            allocations: 12,
            releases: 7,
            ..Totals::default()
        },
        losses: Losses::default(),
        sites: vec![
            SiteReport {
                pid: 42,
                allocator: "malloc".into(),
                bytes: 4096,
                count: 4,
                oldest_age_ms: 1200,
                growth: Some(Growth {
                    bytes_per_second: 1024.0,
                    steady: true,
                    samples: 5,
                }),
                frames: vec![
                    frame("leak_a", Some("prog.c"), Some(10)),
                    frame("main", Some("prog.c"), Some(30)),
                ],
                ids: vec![0],
            },
            SiteReport {
                pid: 42,
                allocator: "calloc".into(),
                bytes: 100,
                count: 1,
                oldest_age_ms: 3,
                growth: None,
                frames: vec![
                    frame("leak;b", None, None),
                    frame("main", Some("prog.c"), Some(31)),
                ],
                ids: vec![1],
            },
        ],
        c_library: Vec::new(),
        python_types: Vec::new(),
        goroutines: Vec::new(),
        goroutine_reads: Vec::new(),
    }
}

/// The container of [`report_in_containers`]' processes.
pub(crate) const CONTAINER_ID: &str =
    "605439acbd4fb18c145069289094b17f17e0cfa938f78012d4960bc797305f22";
/// Its pod's uid.
pub(crate) const POD_UID: &str = "ac04f3f2-1f2c-11e9-b015-1ebee232acfa";
/// Pid 42's cgroup: a Burstable pod's containerd container.
pub(crate) const POD_CGROUP: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podac04f3f2_1f2c_11e9_b015_1ebee232acfa.slice/cri-containerd-605439acbd4fb18c145069289094b17f17e0cfa938f78012d4960bc797305f22.scope";

/// [`report`] with pid 42 in a Kubernetes pod ([`POD_CGROUP`]) and an
/// idle pid 43, `evil`, in a docker container whose cgroup path carries a
/// quote, a backslash, a newline and markup.
pub(crate) fn report_in_containers() -> Report {
    let mut report = report();
    report.pids.push(43);
    report.processes[0].cgroup = Some(POD_CGROUP.into());
    report.processes.push(ProcessReport {
        pid: 43,
        command: "evil".into(),
        exited: false,
        bytes: 0,
        count: 0,
        call_sites: 0,
        runtime: None,
        rss_growth_bytes: None,
        cgroup: Some(format!("/a\"b\\c\nd<e>/docker-{CONTAINER_ID}.scope")),
        container: None,
        parent: None,
    });
    for process in &mut report.processes {
        process.container = process
            .cgroup
            .as_deref()
            .and_then(ContainerReport::from_cgroup);
    }
    report
}
