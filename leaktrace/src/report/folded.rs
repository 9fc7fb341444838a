//! Folded stacks: `root;...;caller;allocator bytes`, one line per site.
//! flamegraph.pl, inferno and speedscope read it.
use super::Report;

/// Frame names may not contain the separator.
fn clean(name: &str) -> String {
    name.replace(';', ":")
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for site in &report.sites {
        let mut names: Vec<String> = site
            .frames
            .iter()
            .rev()
            .map(|f| clean(&f.function))
            .collect();
        names.push(site.allocator.clone());
        out.push_str(&names.join(";"));
        out.push(' ');
        out.push_str(&site.bytes.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;

    #[test]
    fn root_first_allocator_last_bytes_after_a_space() {
        assert_eq!(
            super::render(&fixtures::report()),
            "main;leak_a;malloc 4096\nmain;leak:b;calloc 100\n"
        );
    }
}
