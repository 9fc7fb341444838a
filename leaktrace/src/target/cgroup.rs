//! Containers from cgroups: the cgroup (v2) a process is in, from its
//! `/proc/PID/cgroup`, and the container and Kubernetes pod that the
//! cgroup's path names. No container runtime is asked: on a production host
//! its socket may not be reachable, and every runtime writes its ids into
//! the cgroup path the same way, year after year. Pure text in, values out;
//! `procfs::cgroup_path` reads the file.
//!
//! The paths, innermost component last (`<id>`: 64 hex digits):
//!
//! | runtime | systemd driver | cgroupfs driver |
//! | --- | --- | --- |
//! | docker | `/system.slice/docker-<id>.scope` | `/docker/<id>` |
//! | containerd | `cri-containerd-<id>.scope`, `nerdctl-<id>.scope`, `<pod slice>:cri-containerd:<id>` | `<id>` (under a pod) |
//! | cri-o | `crio-<id>.scope`, `crio-conmon-<id>.scope` (its monitor) | `crio-<id>` |
//! | podman | `/machine.slice/libpod-<id>.scope`, `libpod-conmon-<id>.scope` | `/libpod_parent/libpod-<id>` |
//! | ECS | | `/ecs/<task>/<id>`, `/ecs/<task>/<32 hex>-<digits>` (Fargate's short form) |
//!
//! A Kubernetes pod is the container's parent: with the systemd driver
//! `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`
//! (the uid's `-` written `_`; `kubepods-pod<uid>.slice` for Guaranteed pods
//! directly under `kubepods.slice`; kind and others prefix `kubelet-`), with
//! cgroupfs `/kubepods/burstable/pod<uid>` (`/kubepods/pod<uid>` for
//! Guaranteed). The uid is a UUID, or 32 hex digits for a static pod (a
//! hash of its manifest). With cgroupfs, the container's own component is
//! the bare id, which does not say which runtime made it: then the runtime
//! is unknown (None), not guessed.
//!
//! The text comes from the traced host, and a cgroup's name may be any
//! bytes but `/` and NUL, newlines included, which the kernel prints
//! unescaped. Nothing here trusts it: ids and uids are kept only when they
//! are hex of the right shape, and the path is returned as text, for each
//! output format to escape its own way.

/// The longest path kept, in bytes: the kernel formats a cgroup path into a
/// buffer of `PATH_MAX`, so a longer one is not a path it printed.
pub(crate) const MAX_PATH: usize = 4096;

/// The cgroup v2 path in the text of `/proc/PID/cgroup` (bytes from the
/// file; invalid UTF-8 is replaced), or None when the process is in no v2
/// hierarchy (a cgroup v1-only host).
///
/// The v2 line is `0::/path`; a hybrid host has v1 lines too
/// (`4:memory:/...`). A path holding newlines spans several lines: the
/// lines after `0::` that are not v1 lines (`N:controllers:path`, N > 0)
/// continue it. The kernel prints the v2 line last, so a v1 name that
/// holds `\n0::` could pose as the v2 path of its own process; no one else's.
/// A removed cgroup (a zombie's) is printed with ` (deleted)`, dropped here.
pub(crate) fn v2_path(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let mut lines = text.split('\n');
    let mut path = lines.find_map(|line| line.strip_prefix("0::"))?.to_string();
    for line in lines {
        if is_v1_line(line) {
            break;
        }
        path.push('\n');
        path.push_str(line);
    }
    let path = path.strip_suffix(" (deleted)").unwrap_or(&path);
    if !path.starts_with('/') {
        return None;
    }
    Some(truncated(path, MAX_PATH).to_string())
}

/// `N:controllers:path` with N > 0: a v1 hierarchy's line.
fn is_v1_line(line: &str) -> bool {
    line.split_once(':').is_some_and(|(id, rest)| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && id.bytes().any(|b| b != b'0')
            && rest.contains(':')
    })
}

/// The longest prefix of `text` of at most `max` bytes, cut at a character.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The program that made a container, as its cgroup says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    Ecs,
}

impl Runtime {
    /// Its name in reports: "docker", "containerd", "cri-o", "podman",
    /// "ecs".
    pub(crate) fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Ecs => "ecs",
        }
    }
}

/// A Kubernetes pod's quality-of-service class, which picks its cgroup's parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// As Kubernetes spells it (`status.qosClass`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// The container a cgroup path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Container {
    /// None when the path does not say (cgroupfs Kubernetes: a bare id).
    pub runtime: Option<Runtime>,
    /// 64 lowercase hex digits (Fargate: 32 of them, `-` and digits).
    pub id: String,
    /// The Kubernetes pod's uid, with dashes (`_` in systemd's names).
    pub pod: Option<String>,
    pub qos: Option<Qos>,
}

/// Systemd scope prefixes (the scope is `<prefix><id>.scope`).
const PREFIXES: [(&str, Runtime); 7] = [
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("nerdctl-", Runtime::Containerd),
    ("crio-conmon-", Runtime::CriO),
    ("crio-", Runtime::CriO),
    ("libpod-conmon-", Runtime::Podman),
    ("libpod-", Runtime::Podman),
];

/// The container `path` names, or None. The innermost component that is a
/// container's wins (docker in docker: the inner one; a container running
/// its own systemd has cgroups below its scope); its pod is the nearest pod
/// above it.
pub(crate) fn container(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    (0..parts.len()).rev().find_map(|at| {
        let (runtime, id, slice) = container_component(&parts[..=at])?;
        let (pod, qos) = match slice.and_then(systemd_pod) {
            Some((pod, qos)) => (Some(pod), Some(qos)),
            None => (0..at)
                .rev()
                .find_map(|above| pod_component(&parts[..=above]))
                .map_or((None, None), |(pod, qos)| (Some(pod), Some(qos))),
        };
        Some(Container {
            runtime,
            id: id.to_string(),
            pod,
            qos,
        })
    })
}

/// Whether the last of `parts` is a container's cgroup: its runtime (None:
/// not said), its id, and the pod slice written into it (containerd's
/// `<pod slice>:cri-containerd:<id>`, made when the kubelet uses systemd
/// and containerd does not).
fn container_component<'a>(
    parts: &[&'a str],
) -> Option<(Option<Runtime>, &'a str, Option<&'a str>)> {
    let (&name, above) = parts.split_last()?;
    if let Some((slice, id)) = name.split_once(":cri-containerd:") {
        return is_hex(id, 64).then_some((Some(Runtime::Containerd), id, Some(slice)));
    }
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix)
            && is_hex(id, 64)
        {
            return Some((Some(runtime), id, None));
        }
    }
    let parent = above.last().copied();
    let grandparent = above.len().checked_sub(2).map(|i| above[i]);
    if grandparent == Some("ecs") && (is_hex(name, 64) || is_fargate_id(name)) {
        return Some((Some(Runtime::Ecs), name, None));
    }
    if !is_hex(name, 64) {
        return None;
    }
    let runtime = (parent == Some("docker")).then_some(Runtime::Docker);
    Some((runtime, name, None))
}

/// Whether the last of `parts` is a Kubernetes pod's cgroup, of either
/// driver: its uid (with dashes) and quality-of-service class.
fn pod_component(parts: &[&str]) -> Option<(String, Qos)> {
    let (&name, above) = parts.split_last()?;
    if let Some(pod) = systemd_pod(name) {
        return Some(pod);
    }
    // cgroupfs: /kubepods/pod<uid> or /kubepods/<qos>/pod<uid>.
    let uid = pod_uid(name.strip_prefix("pod")?)?;
    let qos = match above {
        [.., "kubepods"] => Qos::Guaranteed,
        [.., "kubepods", "burstable"] => Qos::Burstable,
        [.., "kubepods", "besteffort"] => Qos::BestEffort,
        _ => return None,
    };
    Some((uid, qos))
}

/// A systemd pod slice: `kubepods-burstable-pod<uid>.slice`,
/// `kubepods-besteffort-pod<uid>.slice`, `kubepods-pod<uid>.slice`
/// (Guaranteed), with any prefix before `kubepods` (`kubelet-kubepods-...`).
fn systemd_pod(name: &str) -> Option<(String, Qos)> {
    let (base, uid) = name.strip_suffix(".slice")?.rsplit_once("-pod")?;
    let (base, qos) = if let Some(base) = base.strip_suffix("-burstable") {
        (base, Qos::Burstable)
    } else if let Some(base) = base.strip_suffix("-besteffort") {
        (base, Qos::BestEffort)
    } else {
        (base, Qos::Guaranteed)
    };
    if base != "kubepods" && !base.ends_with("-kubepods") {
        return None;
    }
    Some((pod_uid(uid)?, qos))
}

/// A pod uid, with dashes: a UUID (`-` or, in systemd's names, `_` between
/// its groups) or 32 hex digits (a static pod's).
fn pod_uid(text: &str) -> Option<String> {
    if is_hex(text, 32) {
        return Some(text.to_string());
    }
    let uid = text.replace('_', "-");
    let groups: Vec<&str> = uid.split('-').collect();
    let shaped = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| is_hex(group, len));
    shaped.then_some(uid)
}

/// Fargate's container id: 32 hex digits, `-`, decimal digits.
fn is_fargate_id(text: &str) -> bool {
    text.split_once('-').is_some_and(|(hex, number)| {
        is_hex(hex, 32) && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Exactly `len` lowercase hex digits: runtimes write ids in lowercase.
fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
