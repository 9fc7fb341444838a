//! The diff end to end on made-up reports, through both importers.
use super::{
    compare::{SiteDiff, diff},
    load::{Amount, SiteKey, Sites, gunzip_capped, load, parse},
    render::{render_folded, render_text},
};
use std::path::Path;

use crate::report::{Report, fixtures, json, pprof};

fn key(stack: &[&str], allocator: &str) -> SiteKey {
    SiteKey {
        stack: stack.iter().map(std::string::ToString::to_string).collect(),
        allocator: allocator.into(),
    }
}

/// The fixture with `leak_a` doubled, leak;b gone and a new site.
fn grown() -> Report {
    let mut report = fixtures::report();
    report.sites[0].bytes *= 2;
    report.sites[0].count *= 2;
    report.sites.remove(1);
    let mut site = report.sites[0].clone();
    site.allocator = "mmap".into();
    site.bytes = 8192;
    site.count = 1;
    site.frames = vec![
        fixtures::frame("map_it", None, None),
        fixtures::frame("main", Some("prog.c"), Some(40)),
    ];
    report.sites.push(site);
    report
}

fn deltas(diffs: &[SiteDiff]) -> Vec<(SiteKey, i128, i128)> {
    diffs
        .iter()
        .map(|d| (d.key.clone(), d.bytes(), d.count()))
        .collect()
}

#[test]
fn per_site_deltas_largest_growth_first() {
    let old = Sites::from_report(&fixtures::report());
    let new = Sites::from_report(&grown());
    let diffs = diff(&old, &new);
    assert_eq!(
        deltas(&diffs),
        [
            (key(&["main", "map_it"], "mmap"), 8192, 1),
            (key(&["main", "leak_a"], "malloc"), 4096, 4),
            (key(&["main", "leak;b"], "calloc"), -100, -1),
        ]
    );
    assert_eq!(
        render_folded(&diffs),
        "main;map_it;mmap 8192\nmain;leak_a;malloc 4096\n"
    );
    let text = render_text("a.json", "b.pb.gz", &old, &new, &diffs);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "leaktrace diff: a.json -> b.pb.gz");
    assert_eq!(
        lines[1],
        "old: 4196 bytes (4.1 KiB) in 5 allocations at 2 call sites"
    );
    assert_eq!(
        lines[2],
        "new: 16384 bytes (16.0 KiB) in 9 allocations at 2 call sites"
    );
    assert_eq!(
        lines[3],
        "change: +12188 bytes (+11.9 KiB), +4 allocations; 2 call sites grew, 1 shrank (1 only in new, 1 only in old), 0 unchanged"
    );
    assert_eq!(
        lines[5],
        "#1 +8192 bytes (+8.0 KiB), +1 allocations from mmap: 0 -> 8192 bytes, 0 -> 1 allocations [only in new]"
    );
    assert_eq!(lines[6], "    map_it");
    assert_eq!(lines[7], "    main");
    assert_eq!(
        lines[9],
        "#2 +4096 bytes (+4.0 KiB), +4 allocations from malloc: 4096 -> 8192 bytes, 4 -> 8 allocations"
    );
    assert_eq!(
        lines[13],
        "#3 -100 bytes (-100 B), -1 allocations from calloc: 100 -> 0 bytes, 1 -> 0 allocations [only in old]"
    );
    assert_eq!(lines[14], "    leak;b");
}

#[test]
fn a_report_against_itself_changes_nothing() {
    let sites = Sites::from_report(&fixtures::report());
    let diffs = diff(&sites, &sites);
    assert_eq!(diffs.len(), 2);
    assert!(diffs.iter().all(|d| d.bytes() == 0 && d.count() == 0));
    assert_eq!(render_folded(&diffs), "");
    let text = render_text("a", "a", &sites, &sites, &diffs);
    assert!(text.contains("change: +0 bytes (+0 B), +0 allocations; 0 call sites grew"));
    assert!(text.ends_with("\n(2 call sites unchanged, not shown)\n"));
}

#[test]
fn json_and_pprof_inputs_read_the_same() {
    let old = fixtures::report();
    let new = grown();
    let from_json = |r: &Report| parse(json::render(r).as_bytes()).unwrap();
    let from_pprof = |r: &Report| parse(&pprof::render(r)).unwrap();
    assert_eq!(from_json(&old), Sites::from_report(&old));
    assert_eq!(from_pprof(&old), Sites::from_report(&old));
    let expected = diff(&Sites::from_report(&old), &Sites::from_report(&new));
    assert_eq!(diff(&from_json(&old), &from_pprof(&new)), expected);
    assert_eq!(diff(&from_pprof(&old), &from_json(&new)), expected);
    assert_eq!(diff(&from_pprof(&old), &from_pprof(&new)), expected);
    // Where processes run (JSON's cgroup and container, pprof's labels)
    // is no part of a site: both still read.
    let contained = fixtures::report_in_containers();
    assert_eq!(from_json(&contained), Sites::from_report(&old));
    assert_eq!(from_pprof(&contained), Sites::from_report(&old));
}

#[test]
fn sites_with_the_same_names_add_up_and_empty_stacks_match() {
    let mut report = fixtures::report();
    let mut twin = report.sites[0].clone();
    twin.frames[0].line = Some(11);
    twin.pid = 43;
    report.sites.push(twin);
    report.sites[1].frames.clear();
    for sites in [
        Sites::from_report(&report),
        parse(json::render(&report).as_bytes()).unwrap(),
        parse(&pprof::render(&report)).unwrap(),
    ] {
        assert_eq!(sites.0.len(), 2);
        assert_eq!(
            sites.0[&key(&["main", "leak_a"], "malloc")],
            Amount {
                bytes: 8192,
                count: 8
            }
        );
        assert_eq!(sites.0[&key(&[], "calloc")].bytes, 100);
    }
}

#[test]
fn the_last_json_document_counts() {
    let mut text = json::render(&fixtures::report());
    text.push_str(&json::render(&grown()));
    assert_eq!(
        parse(text.as_bytes()).unwrap(),
        Sites::from_report(&grown())
    );
}

#[test]
fn neither_json_nor_pprof_is_an_error() {
    let err = parse(b"hello").unwrap_err().to_string();
    assert!(
        err.starts_with("neither a leaktrace JSON report nor a gzipped pprof profile"),
        "{err}"
    );
    assert!(parse(b"").is_err());
    assert!(parse(&[0x1f, 0x8b, 0, 0]).is_err());
    let err = format!(
        "{:#}",
        load(Path::new("/nonexistent/old.json")).unwrap_err()
    );
    assert!(err.starts_with("reading /nonexistent/old.json: "), "{err}");
}

/// Python frames match by function and file: two `handle` functions in two
/// modules are two sites, in JSON and pprof alike; a line that moved
/// between the runs does not split a site.
#[test]
fn python_frames_match_by_function_and_file() {
    let python = |function: &str, file: &str, line: u32| {
        let mut frame = fixtures::frame(function, Some(file), Some(line));
        frame.kind = crate::symbolize::FrameKind::Python;
        frame
    };
    let mut old = fixtures::report();
    old.sites[0].frames = vec![
        python("handle", "app/views.py", 10),
        fixtures::frame("main", Some("prog.c"), Some(30)),
    ];
    old.sites[1].frames = vec![
        python("handle", "app/admin.py", 12),
        fixtures::frame("main", Some("prog.c"), Some(30)),
    ];
    let mut new = old.clone();
    new.sites[0].frames[0].line = Some(11);
    new.sites[0].bytes += 100;
    let sites = Sites::from_report(&old);
    assert_eq!(sites.0.len(), 2, "{sites:?}");
    assert!(
        sites
            .0
            .contains_key(&key(&["main", "handle (app/views.py)"], "malloc"))
    );
    let from_json = |r: &Report| parse(json::render(r).as_bytes()).unwrap();
    let from_pprof = |r: &Report| parse(&pprof::render(r)).unwrap();
    assert_eq!(from_json(&old), sites);
    assert_eq!(from_pprof(&old), sites);
    assert_eq!(
        deltas(&diff(&from_pprof(&old), &from_json(&new))),
        [
            (key(&["main", "handle (app/views.py)"], "malloc"), 100, 0),
            (key(&["main", "handle (app/admin.py)"], "calloc"), 0, 0),
        ]
    );
}

/// A pprof profile whose one sample lists a 5,000-line location 5,000
/// times names 25 million frames from 30 KiB: refused before any is built
/// (without the cap, diff copied every frame's name: gigabytes).
#[test]
fn a_profile_that_repeats_frames_is_refused() {
    use prost::Message as _;
    let mut profile = pprof::profile(&fixtures::report());
    let location = pprof::Location {
        id: 999,
        line: vec![
            pprof::Line {
                function_id: profile.function[0].id,
                ..Default::default()
            };
            5000
        ],
        ..Default::default()
    };
    profile.location.push(location);
    profile.sample[0].location_id = vec![999; 5000];
    let gzipped = {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&profile.encode_to_vec()).unwrap();
        gz.finish().unwrap()
    };
    let err = parse(&gzipped).unwrap_err().to_string();
    let cap = super::load::MAX_PPROF_FRAMES;
    assert!(
        err.contains(&format!("more than {cap} frames in all")),
        "{err}"
    );
}

/// A gzip bomb (here 3 MiB of zeros, a cap of 1 MiB; diff's cap is 1 GiB)
/// is refused once it has unpacked past the cap, not read whole.
#[test]
fn gunzip_stops_at_the_cap() {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 3 << 20]).unwrap();
    let gzipped = gz.finish().unwrap();
    let err = gunzip_capped(&gzipped, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("unpacks to more than 1048576 bytes"), "{err}");
    assert_eq!(gunzip_capped(&gzipped, 3 << 20).unwrap().len(), 3 << 20);
}
