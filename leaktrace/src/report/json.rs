//! JSON: the whole report, field names stable (documented in README.md).
use super::Report;

pub fn render(report: &Report) -> String {
    let mut out = serde_json::to_string_pretty(report).expect("a report always serializes");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;

    #[test]
    fn carries_every_site_frame_and_counter() {
        let value: serde_json::Value =
            serde_json::from_str(&super::render(&fixtures::report())).unwrap();
        assert_eq!(value["pids"], serde_json::json!([42]));
        assert_eq!(value["final"], true);
        assert_eq!(value["totals"]["outstanding_bytes"], 4196);
        assert_eq!(value["losses"]["total"], 0);
        assert_eq!(value["losses"]["releases_lost"], 0);
        assert_eq!(value["losses"]["overstated_bytes_max"], 0);
        assert_eq!(value["losses"]["abandoned_calls"], 0);
        assert!(value["totals"]["kernel_sampled_blocks"].is_null());
        let sites = value["sites"].as_array().unwrap();
        assert_eq!(sites.len(), 2);
        assert_eq!(sites[0]["allocator"], "malloc");
        assert_eq!(sites[0]["bytes"], 4096);
        assert_eq!(sites[0]["count"], 4);
        assert_eq!(sites[0]["oldest_age_ms"], 1200);
        let frame = &sites[0]["frames"][0];
        assert_eq!(frame["function"], "leak_a");
        assert_eq!(frame["file"], "prog.c");
        assert_eq!(frame["line"], 10);
        assert_eq!(frame["module"], "/usr/bin/prog");
        assert_eq!(frame["address"], 0x401000);
        assert_eq!(frame["inlined"], false);
        assert_eq!(frame["kind"], "native");
        assert!(frame.get("python_unmatched").is_none());
        assert!(sites[1]["frames"][0]["file"].is_null());
        assert!(value["processes"][0]["runtime"].is_null());
    }

    #[test]
    fn a_runtime_has_kind_version_object_and_walks() {
        let mut report = fixtures::report();
        report.processes[0].runtime = Some(super::super::RuntimeReport {
            kind: "python".into(),
            version: None,
            object: "/usr/bin/python3.11".into(),
            walks: crate::daemon::python_walks::PythonWalks {
                walked: 9,
                no_thread_state: 2,
                unresolved: 0,
                read_failed: 1,
            },
            go_heap: None,
        });
        let value: serde_json::Value = serde_json::from_str(&super::render(&report)).unwrap();
        assert_eq!(
            value["processes"][0]["runtime"],
            serde_json::json!({"kind": "python", "version": null, "object": "/usr/bin/python3.11",
                "walks": {"walked": 9, "no_thread_state": 2, "unresolved": 0, "read_failed": 1}})
        );
    }

    /// `cgroup` is the path, escaped as JSON escapes any string (a quote, a
    /// backslash, a newline); `container` has its runtime, id, pod and `qos`
    /// class, or is null, as `cgroup` is where there is none.
    #[test]
    fn processes_carry_their_cgroup_and_container() {
        let report = fixtures::report_in_containers();
        let text = super::render(&report);
        assert!(
            text.contains(r#""cgroup": "/a\"b\\c\nd<e>/docker-"#),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let processes = value["processes"].as_array().unwrap();
        assert_eq!(processes[0]["cgroup"], fixtures::POD_CGROUP);
        assert_eq!(
            processes[0]["container"],
            serde_json::json!({
                "runtime": "containerd",
                "id": fixtures::CONTAINER_ID,
                "pod": fixtures::POD_UID,
                "qos": "Burstable",
            })
        );
        assert_eq!(
            processes[1]["container"],
            serde_json::json!({
                "runtime": "docker", "id": fixtures::CONTAINER_ID, "pod": null, "qos": null,
            })
        );
        assert_eq!(
            processes[1]["cgroup"].as_str(),
            report.processes[1].cgroup.as_deref()
        );
        let mut bare = fixtures::report();
        bare.processes[0].cgroup = None;
        let value: serde_json::Value = serde_json::from_str(&super::render(&bare)).unwrap();
        assert!(value["processes"][0]["cgroup"].is_null());
        assert!(value["processes"][0]["container"].is_null());
    }
}
