//! Python fixtures: pyenv's interpreters by version, the `# SITE name`
//! markers of a Python fixture, and the Python frames of a reported site.

use std::{collections::BTreeMap, path::PathBuf};

use serde_json::Value;

use super::fixtures::fixture_source;

/// pyenv's interpreter of `version` (e.g. "3.11.7"), by its binary name.
pub(crate) fn pyenv(version: &str) -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv"),
        PathBuf::from,
    );
    let minor: Vec<&str> = version.split('.').take(2).collect();
    root.join("versions")
        .join(version)
        .join("bin")
        .join(format!("python{}", minor.join(".")))
}

/// The `# SITE name` markers of a Python fixture: name -> line.
pub(crate) fn python_site_lines(fixture: &str) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(fixture_source(fixture)).expect("reading the fixture");
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let name = line.split("# SITE ").nth(1)?.trim();
            Some((name.to_string(), index as u64 + 1))
        })
        .collect()
}

/// The Python frames of a site, innermost first: (function, file, line).
pub(crate) fn python_frames(site: &Value) -> Vec<(String, String, u64)> {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "python")
        .map(|f| {
            (
                f["function"].as_str().unwrap_or_default().to_string(),
                f["file"].as_str().unwrap_or_default().to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}
