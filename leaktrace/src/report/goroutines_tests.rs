use super::super::{fixtures, json, metrics};
use super::*;

fn site(function: &str, count: u64, only_grows: bool, runtime: bool) -> GoroutineSiteReport {
    GoroutineSiteReport {
        pid: 42,
        created_at: CodeLocation {
            function: function.into(),
            file: Some("/src/daemon.go".into()),
            line: Some(39),
        },
        start: CodeLocation {
            function: format!("{function}.func1"),
            file: Some("/src/daemon.go".into()),
            line: Some(25),
        },
        count,
        wait_reasons: BTreeMap::from([
            ("chan send".to_owned(), count.saturating_sub(1)),
            ("running".to_owned(), 1),
        ]),
        stack_bytes: count * 8192,
        growth: GoroutineGrowth {
            since_previous: 400,
            since_attach: count.cast_signed(),
            only_grows,
        },
        runtime_internal: runtime,
    }
}

fn with_goroutines() -> Report {
    let mut report = fixtures::report();
    report.goroutines = vec![
        site("main.round", 2000, true, false),
        site("runtime.gcenable", 2, false, true),
        site("main.<script>x\"\\\n", 3, false, false),
    ];
    report.goroutine_reads = vec![GoroutineReadReport {
        pid: 42,
        go_version: Some("go1.23.4".into()),
        layout: Some("dwarf".into()),
        reads: 3,
        listed: 2010,
        live: 2005,
        dead: 5,
        failed_reads: 1,
        torn: 0,
        truncated: false,
        note: Some("Go heap needs --mode growth <for now>".into()),
    }];
    report
}

#[test]
fn text_names_the_go_statement_its_growth_and_what_it_waits_on() {
    let mut out = String::new();
    text(&with_goroutines(), 10, &mut out);
    assert!(out.contains("goroutines by creation site"), "{out}");
    let leak = out
        .lines()
        .find(|l| l.contains("created at main.round (/src/daemon.go:39)"))
        .expect(&out);
    let words: Vec<&str> = leak.split_whitespace().collect();
    assert_eq!(
        words[..6],
        ["2000", "+400", "+2000", "15.6", "MiB", "LEAK"],
        "{leak}"
    );
    assert!(
        out.contains("runs main.round.func1 (/src/daemon.go:25); chan send 1999, running 1"),
        "{out}"
    );
    assert!(out.contains("pid 42: 2005 live goroutines (1 failed reads, 0 torn); Go heap needs"));
    assert!(
        out.contains("runtime-internal: 2 goroutines at 1 sites"),
        "{out}"
    );
    // The runtime's sites are not among the program's.
    assert!(!out.contains("created at runtime.gcenable"), "{out}");
    let mut one = String::new();
    text(&with_goroutines(), 1, &mut one);
    assert!(one.contains("(1 more creation sites not shown"), "{one}");
    let mut empty = String::new();
    text(&fixtures::report(), 10, &mut empty);
    assert!(empty.is_empty());
}

#[test]
fn the_page_escapes_names_from_the_process() {
    let mut out = String::new();
    html(&with_goroutines(), 10, &mut out);
    assert!(out.contains("main.&lt;script&gt;x&quot;"), "{out}");
    assert!(!out.contains("<script>"), "{out}");
    assert!(out.contains("&lt;for now&gt;"), "{out}");
    assert!(
        out.contains("<td class=\"n\">42</td><td class=\"n\">2000</td><td class=\"n\">+400</td><td class=\"n\">+2000</td><td>only grows</td>"),
        "{out}"
    );
    // The runtime's site comes after the program's.
    let runtime = out.find("runtime.gcenable").expect(&out);
    assert!(out.find("main.round").expect(&out) < runtime);
}

#[test]
fn json_carries_each_site_with_its_growth_object() {
    let value: serde_json::Value = serde_json::from_str(&json::render(&with_goroutines())).unwrap();
    let first = &value["goroutines"][0];
    assert_eq!(first["created_at"]["function"], "main.round");
    assert_eq!(first["created_at"]["file"], "/src/daemon.go");
    assert_eq!(first["created_at"]["line"], 39);
    assert_eq!(first["start"]["function"], "main.round.func1");
    assert_eq!(first["start"]["line"], 25);
    assert_eq!(first["count"], 2000);
    assert_eq!(first["wait_reasons"]["chan send"], 1999);
    assert_eq!(first["stack_bytes"], 2000 * 8192);
    assert_eq!(
        first["growth"],
        serde_json::json!({"since_previous": 400, "since_attach": 2000, "only_grows": true})
    );
    assert_eq!(first["runtime_internal"], false);
    assert_eq!(value["goroutine_reads"][0]["live"], 2005);
    assert_eq!(value["goroutine_reads"][0]["layout"], "dwarf");
}

#[test]
fn metrics_have_one_escaped_series_per_site_capped() {
    let text = metrics::render(&with_goroutines(), 0);
    assert!(
        text.lines().any(|l| l
            == "leaktrace_goroutines{pid=\"42\",created_function=\"main.round\",created_file=\"/src/daemon.go\",created_line=\"39\",start_function=\"main.round.func1\",runtime_internal=\"false\"} 2000"),
        "{text}"
    );
    let hostile = text
        .lines()
        .find(|l| l.contains("main.<script>"))
        .expect(&text);
    assert!(
        hostile.contains("created_function=\"main.<script>x\\\"\\\\\\n\""),
        "{hostile}"
    );
    for line in text.lines() {
        assert!(
            line.starts_with('#') || line.starts_with("leaktrace_"),
            "{line:?}"
        );
    }
    let mut many = with_goroutines();
    many.goroutines = (0..80)
        .map(|i| site(&format!("main.f{i}"), 100 - i, false, false))
        .collect();
    let text = metrics::render(&many, 0);
    let series = text
        .lines()
        .filter(|l| l.starts_with("leaktrace_goroutines{"))
        .count();
    assert_eq!(series, 50);
}
