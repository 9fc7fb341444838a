//! Where traced processes run: `leaky hold` fixtures (tests/common/holder.rs)
//! started in cgroups made to look like a container runtime's, one a
//! containerd container of a Burstable Kubernetes pod (systemd driver), the
//! other a docker container, under a tree of this test's own in the
//! cgroup v2 hierarchy (removed at the end, failed or not).
//!
//! `trace --pid` reports each one's exact cgroup path, runtime, container
//! id and pod uid in JSON; `serve --all` (sampled, as it is by default),
//! tracing them from their first recorded call, labels their `/metrics`
//! series and pprof samples with them, shows them on its page and puts
//! them in its final JSON report.
mod common;

use std::{path::Path, time::Duration};

use common::{
    EXPECTED_LEAKS, Holder, Memory, TempDir, build_leaky,
    cgroups::{Cgroup, CgroupTree, cgroup_of, start_in},
    get, leaktrace, process_sample, read_json, require_root, serial, start_serve,
};
use serde_json::{Value, json};

const POD_UID: &str = "3f6c2a9e-8b1d-4e7f-a250-6d9c4b8e1f07";
const POD_CONTAINER: &str = "b7e4c1a9d2f0835e6a1c9b4d7e2f0a8c5b3d6e9f1a4c7b0e2d5f8a1c4b7e0d3f";
const DOCKER_CONTAINER: &str = "4e1a7c0d3b6f9e2a5d8c1b4e7a0d3c6f9b2e5a8d1c4f7b0a3e6d9c2f5b8a1e4d";

/// The two container cgroups of `tree`: (the pod's containerd container,
/// the docker container).
fn container_cgroups(tree: &CgroupTree) -> (Cgroup, Cgroup) {
    let pod_slice = format!("kubepods-burstable-pod{}.slice", POD_UID.replace('-', "_"));
    let pod = tree.cgroup(&format!(
        "kubepods.slice/kubepods-burstable.slice/{pod_slice}/cri-containerd-{POD_CONTAINER}.scope"
    ));
    let docker = tree.cgroup(&format!("system.slice/docker-{DOCKER_CONTAINER}.scope"));
    (pod, docker)
}

/// A `leaky hold` started in `cgroup`, checked to be there.
fn hold_in(leaky: &Path, cgroup: &Cgroup) -> Holder {
    let holder = Holder::start_with(leaky, |command| start_in(command, cgroup));
    assert_eq!(
        cgroup_of(holder.pid()).as_deref(),
        Some(cgroup.path.as_str()),
        "the fixture is not in the cgroup made for it"
    );
    holder
}

/// The report's entry for `pid`.
fn process(report: &Value, pid: u32) -> &Value {
    report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("pid {pid} not in {}", report["processes"]))
}

/// Checks `pid`'s cgroup and container in a JSON report.
fn assert_placed(report: &Value, pid: u32, cgroup: &Cgroup, container: &Value) {
    let entry = process(report, pid);
    assert_eq!(
        entry["cgroup"].as_str(),
        Some(cgroup.path.as_str()),
        "{entry}"
    );
    assert_eq!(&entry["container"], container, "{entry}");
}

fn pod_container() -> Value {
    json!({"runtime": "containerd", "id": POD_CONTAINER, "pod": POD_UID, "qos": "Burstable"})
}

fn docker_container() -> Value {
    json!({"runtime": "docker", "id": DOCKER_CONTAINER, "pod": null, "qos": null})
}

#[test]
fn trace_pid_reports_each_processs_cgroup_and_container() {
    let test = "trace_pid_reports_each_processs_cgroup_and_container";
    if !require_root(test) {
        return;
    }
    let _serial = serial();
    let Some(tree) = CgroupTree::create(test) else {
        return;
    };
    let (pod, docker) = container_cgroups(&tree);
    let dir = TempDir::new("containers-pid");
    let leaky = build_leaky(&dir);
    let in_pod = hold_in(&leaky, &pod);
    let in_docker = hold_in(&leaky, &docker);
    let report_path = dir.join("report.json");
    let pids = format!("{},{}", in_pod.pid(), in_docker.pid());
    leaktrace(
        &[
            "trace",
            "--pid",
            &pids,
            "--duration",
            "500ms",
            "--format",
            "json",
            "--output",
            report_path.to_str().unwrap(),
        ],
        Duration::from_mins(1),
    )
    .succeeded("leaktrace trace --pid");
    let report = read_json(&report_path);
    assert_placed(&report, in_pod.pid(), &pod, &pod_container());
    assert_placed(&report, in_docker.pid(), &docker, &docker_container());
}

/// GETs `path` from `serve`, which must answer 200.
fn get_ok(address: &str, path: &str) -> Vec<u8> {
    let (status, body) = get(address, path);
    assert_eq!(status, 200, "GET {path}");
    body
}

#[test]
fn serve_all_labels_processes_with_their_container() {
    let test = "serve_all_labels_processes_with_their_container";
    if !require_root(test) {
        return;
    }
    let _serial = serial();
    let Some(tree) = CgroupTree::create(test) else {
        return;
    };
    let (pod, docker) = container_cgroups(&tree);
    let dir = TempDir::new("containers-all");
    let leaky = build_leaky(&dir);
    // Allocations mode, sampled (serve --all's sampling there): every
    // allocation (or, in growth mode, every page a busy host's compilers
    // touch), recorded and symbolized at each GET, would take long in a
    // debug build. The fixtures' mappings are always recorded. Every
    // process on the page: others on the host may hold more.
    let mut server = start_serve(&[
        "--all",
        "--mode",
        "allocations",
        "--format",
        "json",
        "--top",
        "100000",
    ]);
    server
        .stderr
        .wait_for(Duration::from_mins(2), |l| {
            l.starts_with("leaktrace: tracing all processes")
        })
        .unwrap_or_else(|e| panic!("serve --all never started tracing: {e}"));
    // Started after the probes: traced from their first allocation, which
    // is when leaktrace reads their cgroup.
    let mut in_pod = hold_in(&leaky, &pod);
    let mut in_docker = hold_in(&leaky, &docker);
    let (a, b) = (in_pod.pid(), in_docker.pid());
    in_pod.leak();
    in_docker.leak();

    let mapped: u64 = EXPECTED_LEAKS
        .iter()
        .filter(|r| matches!(r.memory, Memory::Mapped))
        .map(|r| r.bytes)
        .sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = String::from_utf8(get_ok(&server.address, "/metrics")).unwrap();
        let holds = |pid| {
            process_sample(&metrics, "leaktrace_outstanding_bytes", pid)
                .is_some_and(|(_, bytes)| bytes >= mapped)
        };
        if holds(a) && holds(b) {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no series with the leaks of pids {a} and {b}:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for (pid, cgroup, id, pod_uid) in [
        (a, &pod, POD_CONTAINER, POD_UID),
        (b, &docker, DOCKER_CONTAINER, ""),
    ] {
        let (labels, _) = process_sample(&metrics, "leaktrace_outstanding_bytes", pid).unwrap();
        assert_eq!(
            labels,
            format!(
                "{{pid=\"{pid}\",comm=\"leaky\",cgroup=\"{}\",container_id=\"{id}\",pod_uid=\"{pod_uid}\"}}",
                cgroup.path
            )
        );
    }

    let profile = leaktrace::report::pprof::decode(&get_ok(&server.address, "/debug/pprof/heap"))
        .expect("a pprof profile");
    let labels_of = |pid: u32| -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = profile
            .sample
            .iter()
            .filter(|s| {
                s.label
                    .iter()
                    .any(|l| profile.string(l.key) == "pid" && l.num == i64::from(pid))
            })
            .flat_map(|s| s.label.iter())
            .filter(|l| l.str != 0)
            .map(|l| (profile.string(l.key).into(), profile.string(l.str).into()))
            .filter(|(key, _): &(String, String)| key != "allocator")
            .collect();
        found.sort();
        found.dedup();
        found
    };
    assert_eq!(
        labels_of(a),
        [
            ("container_id".to_string(), POD_CONTAINER.to_string()),
            ("pod_uid".to_string(), POD_UID.to_string())
        ]
    );
    assert_eq!(
        labels_of(b),
        [("container_id".to_string(), DOCKER_CONTAINER.to_string())]
    );

    let page = String::from_utf8(get_ok(&server.address, "/")).unwrap();
    for cell in [
        format!(
            "<td title=\"{}\">containerd {}<br>pod {POD_UID} (Burstable)</td>",
            pod.path,
            &POD_CONTAINER[..12]
        ),
        format!(
            "<td title=\"{}\">docker {}</td>",
            docker.path,
            &DOCKER_CONTAINER[..12]
        ),
    ] {
        assert!(page.contains(&cell), "no {cell} in the page:\n{page}");
    }

    // SIGTERM: the final report, with both processes placed.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.process.pid() as i32, libc::SIGTERM) };
    let status = server
        .process
        .wait_timeout(Duration::from_secs(30))
        .expect("serve --all stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", server.stderr.text());
    let stdout = server.stdout.finish(Duration::from_secs(10)).join("\n");
    let report: Value = serde_json::from_str(&stdout).expect("a final JSON report on stdout");
    assert_eq!(report["all_processes"], true);
    assert_placed(&report, a, &pod, &pod_container());
    assert_placed(&report, b, &docker, &docker_container());
    in_pod.finish();
    in_docker.finish();
}
