//! The files the page loads, inside the binary: uPlot (the charting
//! library, installed from npm at the version `leaktrace/web/package-lock.json`
//! pins, by `cargo xtask setup`, and found by `build.rs`) and the page's own
//! script and style. The page never loads anything from elsewhere: a host
//! that traces production need not reach the internet, and what it serves
//! is what was built.

/// A file served at `path`.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// uPlot's script (the IIFE build: it defines the global `uPlot`).
pub const UPLOT_JS: Asset = Asset {
    path: "/assets/uPlot.iife.min.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!(env!("LEAKTRACE_UPLOT_JS")),
};

/// uPlot's style sheet (its legend and cursor).
pub const UPLOT_CSS: Asset = Asset {
    path: "/assets/uPlot.min.css",
    content_type: "text/css; charset=utf-8",
    body: include_bytes!(env!("LEAKTRACE_UPLOT_CSS")),
};

/// uPlot's license, served beside it as its MIT license asks.
pub const UPLOT_LICENSE: Asset = Asset {
    path: "/assets/uPlot.LICENSE.txt",
    content_type: "text/plain; charset=utf-8",
    body: include_bytes!(env!("LEAKTRACE_UPLOT_LICENSE")),
};

/// The page's script: fetches the series, draws and refreshes.
pub const PAGE_JS: Asset = Asset {
    path: "/assets/page.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!("../../web/page.js"),
};

/// The page's style.
pub const PAGE_CSS: Asset = Asset {
    path: "/assets/page.css",
    content_type: "text/css; charset=utf-8",
    body: include_bytes!("../../web/page.css"),
};

const ALL: [&Asset; 5] = [&UPLOT_JS, &UPLOT_CSS, &UPLOT_LICENSE, &PAGE_JS, &PAGE_CSS];

/// The asset served at `path`, if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    ALL.into_iter().find(|asset| asset.path == path)
}

/// The uPlot version embedded (from its own banner), for the README's
/// claim and the tests.
pub fn uplot_version() -> Option<&'static str> {
    let banner = std::str::from_utf8(UPLOT_JS.body.get(..200)?).ok()?;
    let start = banner.find("(v")? + 2;
    let end = start + banner[start..].find(')')?;
    Some(&banner[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_at_its_path_and_nothing_else() {
        for asset in ALL {
            assert_eq!(find(asset.path), Some(asset));
            assert!(!asset.body.is_empty(), "{}", asset.path);
        }
        assert_eq!(find("/assets/../etc/passwd"), None);
        assert_eq!(find("/assets/"), None);
    }

    /// The embedded library is the version package-lock.json pins.
    #[test]
    fn the_embedded_uplot_is_the_pinned_one() {
        let lock: serde_json::Value =
            serde_json::from_str(include_str!("../../web/package-lock.json")).unwrap();
        let pinned = lock["packages"]["node_modules/uplot"]["version"]
            .as_str()
            .expect("uplot in package-lock.json");
        assert_eq!(uplot_version(), Some(pinned));
        let script = std::str::from_utf8(UPLOT_JS.body).unwrap();
        assert!(script.contains("var uPlot="), "the IIFE build");
        assert!(
            std::str::from_utf8(UPLOT_LICENSE.body)
                .unwrap()
                .contains("MIT License")
        );
    }
}
