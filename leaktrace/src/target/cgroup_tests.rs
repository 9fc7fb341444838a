//! Paths as runtimes and the kubelet write them, and paths a hostile
//! process could make.
use super::*;

const ID: &str = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d";
const UID: &str = "0c7a4f1e-58b2-4d3a-9f61-2b8e7c5d4a10";
const UID_SYSTEMD: &str = "0c7a4f1e_58b2_4d3a_9f61_2b8e7c5d4a10";

fn expect(path: &str, runtime: Option<Runtime>, pod: Option<&str>, qos: Option<Qos>) {
    assert_eq!(
        container(path),
        Some(Container {
            runtime,
            id: ID.into(),
            pod: pod.map(Into::into),
            qos,
        }),
        "{path}"
    );
}

#[test]
fn the_v2_line_of_a_unified_host() {
    assert_eq!(
        v2_path(b"0::/system.slice/nginx.service\n").as_deref(),
        Some("/system.slice/nginx.service")
    );
    assert_eq!(v2_path(b"0::/\n").as_deref(), Some("/"));
}

#[test]
fn the_v2_line_among_a_hybrid_hosts_v1_lines() {
    let text = format!(
        "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n2:cpu,cpuacct:/docker/{ID}\n\
         1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
    );
    assert_eq!(
        v2_path(text.as_bytes()).as_deref(),
        Some("/system.slice/containerd.service")
    );
    // Wherever it is: its order is the kernel's, not a contract.
    assert_eq!(
        v2_path(b"0::/init.scope\n1:name=systemd:/init.scope\n").as_deref(),
        Some("/init.scope")
    );
}

#[test]
fn no_v2_line_on_a_v1_only_host() {
    let text = format!("4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
    assert_eq!(v2_path(text.as_bytes()), None);
    assert_eq!(v2_path(b""), None);
    assert_eq!(v2_path(b"0::relative\n"), None);
}

#[test]
fn a_name_with_newlines_is_kept_whole() {
    // mkdir $'evil\n1:x' is allowed; the kernel prints it as is.
    assert_eq!(
        v2_path(b"3:cpu:/\n0::/evil\nname\n").as_deref(),
        Some("/evil\nname")
    );
    // A trailing newline in the name survives the file's own.
    assert_eq!(v2_path(b"0::/evil\n\n").as_deref(), Some("/evil\n"));
    // A continuation that looks like a v1 line ends the path: the v2 line
    // may come first (nothing but the kernel's habit says it is last).
    assert_eq!(v2_path(b"0::/evil\n7:cpu:/x\n").as_deref(), Some("/evil"));
    // "0::" inside a name is no v1 line: the path goes on.
    assert_eq!(v2_path(b"0::/a\n0::/b\n").as_deref(), Some("/a\n0::/b"));
}

#[test]
fn invalid_utf8_is_replaced_and_deleted_is_dropped() {
    assert_eq!(
        v2_path(b"0::/caf\xc3/x\xff.scope\n").as_deref(),
        Some("/caf\u{fffd}/x\u{fffd}.scope")
    );
    let text = format!("0::/system.slice/docker-{ID}.scope (deleted)\n");
    let path = v2_path(text.as_bytes()).unwrap();
    assert_eq!(path, format!("/system.slice/docker-{ID}.scope"));
    assert_eq!(container(&path).unwrap().runtime, Some(Runtime::Docker));
}

#[test]
fn a_path_longer_than_the_kernel_prints_is_cut_at_a_character() {
    let text = format!("0::/{}\n", "é".repeat(3000));
    let path = v2_path(text.as_bytes()).unwrap();
    assert!(path.len() <= MAX_PATH && path.len() > MAX_PATH - 2);
    assert!(path.ends_with('é'));
    assert!(container(&path).is_none());
    // A long path whose leaf is a container still names it.
    let deep = format!("/{}/docker-{ID}.scope", "a.slice/".repeat(400));
    expect(&deep, Some(Runtime::Docker), None, None);
}

#[test]
fn docker_with_either_driver() {
    expect(
        &format!("/system.slice/docker-{ID}.scope"),
        Some(Runtime::Docker),
        None,
        None,
    );
    expect(&format!("/docker/{ID}"), Some(Runtime::Docker), None, None);
    // Rootless docker under the user's systemd.
    expect(
        &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"),
        Some(Runtime::Docker),
        None,
        None,
    );
    // A container running its own systemd: its cgroups are below the scope.
    expect(
        &format!("/system.slice/docker-{ID}.scope/system.slice/cron.service"),
        Some(Runtime::Docker),
        None,
        None,
    );
}

#[test]
fn docker_in_docker_names_the_inner_container() {
    let outer = "1111111111111111111111111111111111111111111111111111111111111111";
    expect(
        &format!("/docker/{outer}/docker/{ID}"),
        Some(Runtime::Docker),
        None,
        None,
    );
}

#[test]
fn containerd_cri_o_podman_and_nerdctl_scopes() {
    for (scope, runtime) in [
        (format!("cri-containerd-{ID}.scope"), Runtime::Containerd),
        (format!("nerdctl-{ID}.scope"), Runtime::Containerd),
        (format!("crio-{ID}.scope"), Runtime::CriO),
        (format!("crio-conmon-{ID}.scope"), Runtime::CriO),
        (format!("libpod-{ID}.scope"), Runtime::Podman),
        (format!("libpod-conmon-{ID}.scope"), Runtime::Podman),
    ] {
        expect(&format!("/system.slice/{scope}"), Some(runtime), None, None);
    }
    expect(
        &format!("/machine.slice/libpod-{ID}.scope/container"),
        Some(Runtime::Podman),
        None,
        None,
    );
    expect(
        &format!("/libpod_parent/libpod-{ID}"),
        Some(Runtime::Podman),
        None,
        None,
    );
    // A podman pod is no Kubernetes pod.
    expect(
        &format!(
            "/machine.slice/machine-libpod_pod_{}.slice/libpod-{ID}.scope",
            &ID[..32]
        ),
        Some(Runtime::Podman),
        None,
        None,
    );
}

#[test]
fn kubernetes_pods_with_the_systemd_driver() {
    for (qos_slice, pod_prefix, qos) in [
        (
            "kubepods-burstable.slice/",
            "kubepods-burstable",
            Qos::Burstable,
        ),
        (
            "kubepods-besteffort.slice/",
            "kubepods-besteffort",
            Qos::BestEffort,
        ),
        ("", "kubepods", Qos::Guaranteed),
    ] {
        for (scope, runtime) in [
            (format!("cri-containerd-{ID}.scope"), Runtime::Containerd),
            (format!("crio-{ID}.scope"), Runtime::CriO),
            (format!("docker-{ID}.scope"), Runtime::Docker),
        ] {
            expect(
                &format!("/kubepods.slice/{qos_slice}{pod_prefix}-pod{UID_SYSTEMD}.slice/{scope}"),
                Some(runtime),
                Some(UID),
                Some(qos),
            );
        }
    }
    // kind's nodes: the kubelet's own slice above kubepods.
    expect(
        &format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
        ),
        Some(Runtime::Containerd),
        Some(UID),
        Some(Qos::BestEffort),
    );
}

#[test]
fn kubernetes_pods_with_the_cgroupfs_driver() {
    for (qos_dir, qos) in [
        ("burstable/", Qos::Burstable),
        ("besteffort/", Qos::BestEffort),
        ("", Qos::Guaranteed),
    ] {
        // The bare id does not say which runtime made it.
        expect(
            &format!("/kubepods/{qos_dir}pod{UID}/{ID}"),
            None,
            Some(UID),
            Some(qos),
        );
        expect(
            &format!("/kubepods/{qos_dir}pod{UID}/crio-{ID}"),
            Some(Runtime::CriO),
            Some(UID),
            Some(qos),
        );
    }
    // k3s and others nest kubepods.
    expect(
        &format!("/kubelet/kubepods/besteffort/pod{UID}/{ID}"),
        None,
        Some(UID),
        Some(Qos::BestEffort),
    );
}

#[test]
fn containerd_under_its_own_service_names_the_pod_slice() {
    expect(
        &format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{UID_SYSTEMD}.slice:cri-containerd:{ID}"
        ),
        Some(Runtime::Containerd),
        Some(UID),
        Some(Qos::Burstable),
    );
}

#[test]
fn a_static_pods_uid_is_a_hash() {
    let uid = "6b1f3d9e0a2c4b7d8e9f0a1b2c3d4e5f";
    let found = container(&format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
    ))
    .unwrap();
    assert_eq!(found.pod.as_deref(), Some(uid));
    let found = container(&format!("/kubepods/pod{uid}/{ID}")).unwrap();
    assert_eq!(
        (found.pod.as_deref(), found.qos),
        (Some(uid), Some(Qos::Guaranteed))
    );
}

#[test]
fn ecs_tasks_and_fargates_short_ids() {
    let task = &ID[..32];
    expect(&format!("/ecs/{task}/{ID}"), Some(Runtime::Ecs), None, None);
    let fargate = format!("{task}-1234567890");
    let found = container(&format!("/ecs/{task}/{fargate}")).unwrap();
    assert_eq!(
        (found.runtime, found.id.as_str()),
        (Some(Runtime::Ecs), fargate.as_str())
    );
    // Only under /ecs/<task>/: elsewhere it is just a name.
    assert_eq!(container(&format!("/system.slice/{fargate}")), None);
}

#[test]
fn a_bare_id_is_a_container_of_no_known_runtime() {
    expect(&format!("/{ID}"), None, None, None);
}

#[test]
fn what_is_not_a_container() {
    for path in [
        "/",
        "/init.scope",
        "/system.slice/docker.service",
        "/system.slice/containerd.service",
        "/user.slice/user-1000.slice/session-3.scope",
        "/kubepods.slice/kubepods-burstable.slice",
        // A pod slice without a container in it.
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c7a4f1e_58b2_4d3a_9f61_2b8e7c5d4a10.slice",
        "/machine.slice/machine-qemu\\x2d1\\x2dvm.scope",
        "/lxc/web01",
    ] {
        assert_eq!(container(path), None, "{path}");
    }
}

#[test]
fn ids_of_the_wrong_shape_are_refused() {
    let (longer, upper, not_hex) = (
        format!("{ID}0"),
        ID.to_uppercase(),
        format!("{}g", &ID[..63]),
    );
    for id in [&ID[..63], &longer, &upper, &not_hex, &ID[..12]] {
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!("/kubepods/burstable/pod{UID}/{id}"),
        ] {
            assert_eq!(container(&path), None, "{path}");
        }
    }
}

#[test]
fn pod_uids_of_the_wrong_shape_or_place_are_left_out() {
    for pod in [
        // Not a UUID.
        "kubepods-burstable-podnot_a_uid.slice".to_string(),
        format!("kubepods-burstable-pod{}.slice", &UID_SYSTEMD[..35]),
        format!("kubepods-burstable-pod{}x.slice", &UID_SYSTEMD[..35]),
        // Not under kubepods.
        format!("other-burstable-pod{UID_SYSTEMD}.slice"),
        format!("kubepodsx-pod{UID_SYSTEMD}.slice"),
    ] {
        let found = container(&format!("/kubepods.slice/{pod}/cri-containerd-{ID}.scope")).unwrap();
        assert_eq!((found.pod, found.qos), (None, None), "{pod}");
    }
    // cgroupfs: pod<uid> counts only under kubepods, at a QoS level.
    for path in [
        format!("/pod{UID}/{ID}"),
        format!("/kubepods/gold/pod{UID}/{ID}"),
        format!("/other/burstable/pod{UID}/{ID}"),
    ] {
        assert_eq!(container(&path).unwrap().pod, None, "{path}");
    }
}

#[test]
fn hostile_components_do_not_confuse_the_parse() {
    // `..` (a cgroup outside the reader's namespace), markup, newlines,
    // quotes and replaced bytes around a real scope: the id is still the
    // id, and nothing of the rest is taken.
    expect(
        &format!("/../../<script>\"x\"</script>/\u{fffd}\n/docker-{ID}.scope"),
        Some(Runtime::Docker),
        None,
        None,
    );
    for path in [
        format!("/system.slice/docker-{ID}\n.scope"),
        format!("/system.slice/docker-{ID}.scope\n"),
        format!("/system.slice/docker-../{ID}x"),
        format!("/system.slice/docker-{ID}<b>.scope"),
        format!("/system.slice/x:cri-containerd:{ID}\""),
    ] {
        assert_eq!(container(&path), None, "{path:?}");
    }
    // A name that only contains a prefix and an id is not a scope of it.
    assert_eq!(container(&format!("/evil-docker-{ID}.scope")), None);
}

#[test]
fn names_as_reports_write_them() {
    let names: Vec<&str> = [
        Runtime::Docker,
        Runtime::Containerd,
        Runtime::CriO,
        Runtime::Podman,
        Runtime::Ecs,
    ]
    .iter()
    .map(|r| r.name())
    .collect();
    assert_eq!(names, ["docker", "containerd", "cri-o", "podman", "ecs"]);
    let qos: Vec<&str> = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort]
        .iter()
        .map(|q| q.name())
        .collect();
    assert_eq!(qos, ["Guaranteed", "Burstable", "BestEffort"]);
}
