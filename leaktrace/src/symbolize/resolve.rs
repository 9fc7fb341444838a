//! Symbol resolution proper: object files read, DWARF and symbol tables
//! parsed (blazesym), Go tables decoded. This is the expensive part of a
//! report (seconds for a large debug binary), kept apart from the cache
//! that the report reads so that it can run on a worker thread
//! ([`super::worker`]) while the event loop keeps draining.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use blazesym::symbolize::{self, Input, Symbolized, source::Source};

use super::{Frame, FrameKind, ObjectKey, go, unknown_frame};

/// Test-only: `LEAKTRACE_TEST_SLOW_SYMBOLS=SECONDS` makes every batch of
/// resolution sleep that long first, standing in for the large debug
/// binaries whose DWARF takes that long to read, so that a test can show
/// that the event loop keeps draining meanwhile.
pub(crate) const SLOW_VARIABLE: &str = "LEAKTRACE_TEST_SLOW_SYMBOLS";

/// Addresses the cache does not hold: per object, the file to open and the
/// file offsets wanted (sorted, no duplicates once [`Wanted::batch`] made).
#[derive(Default)]
pub(crate) struct Wanted {
    by_object: HashMap<ObjectKey, (PathBuf, Vec<u64>)>,
}

impl Wanted {
    pub(super) fn add(&mut self, object: ObjectKey, open: impl FnOnce() -> PathBuf, offset: u64) {
        self.by_object
            .entry(object)
            .or_insert_with(|| (open(), Vec::new()))
            .1
            .push(offset);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_object.is_empty()
    }

    /// The addresses, deduplicated, ready to send.
    pub(crate) fn batch(self) -> Batch {
        Batch(
            self.by_object
                .into_iter()
                .map(|(object, (open, mut offsets))| {
                    offsets.sort_unstable();
                    offsets.dedup();
                    (object, open, offsets)
                })
                .collect(),
        )
    }
}

/// What to resolve: (object, file to open, file offsets).
pub(crate) struct Batch(Vec<(ObjectKey, PathBuf, Vec<u64>)>);

/// Resolved addresses, to merge into the cache.
pub(crate) type Resolved = Vec<((ObjectKey, u64), Vec<Frame>)>;

/// Owns blazesym and the Go tables read; each object's files are parsed
/// once and kept (blazesym's own caching).
pub(crate) struct Resolver {
    blazesym: symbolize::Symbolizer,
    go: go::GoObjects,
    /// [`SLOW_VARIABLE`].
    delay: Option<Duration>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            blazesym: symbolize::Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            go: go::GoObjects::default(),
            delay: std::env::var(SLOW_VARIABLE)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_secs),
        }
    }
}

impl Resolver {
    /// Resolves every address of `batch`, one blazesym call per object; an
    /// address nothing names becomes `[module+0xoffset]`.
    pub(crate) fn resolve(&mut self, batch: Batch) -> Resolved {
        if let Some(delay) = self.delay
            && !batch.0.is_empty()
        {
            std::thread::sleep(delay);
        }
        let mut resolved = Vec::new();
        for (object, open, mut offsets) in batch.0 {
            let path = object.1.clone();
            // Go code from the Go table; the rest (cgo's C code) below.
            if let Some(binary) = self.go.binary(&object, &open) {
                offsets.retain(|&offset| match go::frames(&binary, &path, offset) {
                    Some(frames) => {
                        resolved.push(((object.clone(), offset), frames));
                        false
                    }
                    None => true,
                });
            }
            let results = self.symbolize_offsets(&open, &path, &offsets);
            for (offset, result) in offsets.into_iter().zip(results) {
                let frames = result.unwrap_or_else(|| vec![unknown_frame(&path, offset)]);
                resolved.push(((object.clone(), offset), frames));
            }
        }
        resolved
    }

    /// `object` is the file to open, `module` its path as the process sees it.
    fn symbolize_offsets(
        &self,
        object: &Path,
        module: &Arc<str>,
        offsets: &[u64],
    ) -> Vec<Option<Vec<Frame>>> {
        let source = Source::Elf(symbolize::source::Elf::new(object));
        let module = module.to_string();
        let Ok(symbols) = self.blazesym.symbolize(&source, Input::FileOffset(offsets)) else {
            return vec![None; offsets.len()];
        };
        symbols
            .into_iter()
            .map(|symbolized| match symbolized {
                Symbolized::Sym(sym) => {
                    let location = |info: Option<&symbolize::CodeInfo<'_>>| match info {
                        Some(info) => (
                            Some(info.to_path().to_string_lossy().into_owned()),
                            info.line,
                        ),
                        None => (None, None),
                    };
                    let mut frames = Vec::with_capacity(1 + sym.inlined.len());
                    for inlined in sym.inlined.iter().rev() {
                        let (file, line) = location(inlined.code_info.as_ref());
                        frames.push(Frame {
                            function: inlined.name.to_string(),
                            file,
                            line,
                            module: module.clone(),
                            address: 0,
                            inlined: true,
                            fallback: false,
                            kind: FrameKind::Native,
                            python_unmatched: false,
                        });
                    }
                    let (file, line) = location(sym.code_info.as_deref());
                    frames.push(Frame {
                        function: sym.name.to_string(),
                        file,
                        line,
                        module: module.clone(),
                        address: 0,
                        inlined: false,
                        fallback: false,
                        kind: FrameKind::Native,
                        python_unmatched: false,
                    });
                    Some(frames)
                }
                Symbolized::Unknown(_) => None,
            })
            .collect()
    }
}
