//! Symbolize: return addresses to functions, files and lines.
//!
//! Addresses are first placed in the process's mappings (a history of every
//! /proc/PID/maps read, so a process that has exited, or unmapped a library,
//! is still symbolized), then turned into (object, file offset) pairs that
//! blazesym symbolizes from the object files themselves. No live process is
//! needed at report time.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::symbolize::{self, Input, Symbolized, source::Source};
use serde::Serialize;

/// One file-backed mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub executable: bool,
    /// Path as the process sees it.
    pub path: Arc<str>,
}

/// Parses /proc/PID/maps, keeping file-backed mappings.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode path
            let mut fields = line.splitn(6, ' ');
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            let _dev = fields.next()?;
            let _inode = fields.next()?;
            let path = fields.next()?.trim_start();
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            if !path.starts_with('/') {
                return None;
            }
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
                executable: perms.as_bytes().get(2) == Some(&b'x'),
                path: path.into(),
            })
        })
        .collect()
}

/// Where the process's files are from leaktrace's point of view: `/` when
/// it shares our root, `/proc/PID/root` when it lives in a container.
pub fn process_root(pid: u32) -> PathBuf {
    let theirs = fs::canonicalize(format!("/proc/{pid}/root"));
    let ours = fs::canonicalize("/proc/self/root");
    match (theirs, ours) {
        (Ok(a), Ok(b)) if a == b => PathBuf::from("/"),
        _ => PathBuf::from(format!("/proc/{pid}/root")),
    }
}

/// Every mapping a process was seen with, newest last.
#[derive(Clone, Debug)]
pub struct ProcessMaps {
    pub pid: u32,
    /// Shared with the symbolizer's cache keys.
    root: Arc<Path>,
    history: Vec<Mapping>,
    /// The mappings of the last successful read.
    current: Vec<Mapping>,
}

impl ProcessMaps {
    pub fn new(pid: u32) -> ProcessMaps {
        ProcessMaps {
            pid,
            root: process_root(pid).into(),
            history: Vec::new(),
            current: Vec::new(),
        }
    }

    /// Built from known mappings (tests, replays).
    pub fn from_mappings(pid: u32, mappings: Vec<Mapping>) -> ProcessMaps {
        ProcessMaps {
            pid,
            root: Path::new("/").into(),
            current: mappings.clone(),
            history: mappings,
        }
    }

    /// Reads the process's current mappings into the history. True when
    /// they changed since the last read (worth handing to the unwinder);
    /// false when they did not, or the process is gone (its last mappings
    /// stay known).
    pub fn refresh(&mut self) -> bool {
        let Ok(text) = fs::read_to_string(format!("/proc/{}/maps", self.pid)) else {
            return false;
        };
        let current = parse_maps(&text);
        if current.is_empty() || current == self.current {
            // A zombie has no mappings left; keep what we knew.
            return false;
        }
        for mapping in &current {
            if !self.history.contains(mapping) {
                self.history.push(mapping.clone());
            }
        }
        self.current = current;
        true
    }

    /// The mappings of the last successful read.
    pub fn current(&self) -> &[Mapping] {
        &self.current
    }

    /// Where the process's files are from here (`/` or /proc/PID/root).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The newest mapping holding `addr`, and `addr`'s offset in its file.
    pub fn locate(&self, addr: u64) -> Option<(&Mapping, u64)> {
        self.history
            .iter()
            .rev()
            .find(|m| addr >= m.start && addr < m.end)
            .map(|m| (m, addr - m.start + m.file_offset))
    }

    pub fn covers(&self, addr: u64) -> bool {
        self.locate(addr).is_some()
    }

    /// The path to open for a mapping's object.
    fn open_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

/// One symbolized frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Demangled function name, or `[module+0xoffset]` when unknown.
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The object (executable or library) holding the code.
    pub module: String,
    /// The return address as captured (an absolute address in the process).
    pub address: u64,
    /// An inlined call inside the next frame (same address).
    pub inlined: bool,
    /// Found by following frame pointers, not unwind tables: the code below
    /// it had no .eh_frame rows (JIT, anonymous code), so this frame and the
    /// ones above it may be incomplete.
    pub fallback: bool,
}

/// An object as the symbolizer knows it: the process's root and the path
/// in it (two containers' /usr/lib/.../libc.so.6 are different files).
type ObjectKey = (Arc<Path>, Arc<str>);

/// Symbolizes return addresses, caching per (object, offset).
pub struct Symbolizer {
    blazesym: symbolize::Symbolizer,
    cache: HashMap<(ObjectKey, u64), Vec<Frame>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer {
            blazesym: symbolize::Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            cache: HashMap::new(),
        }
    }
}

impl Symbolizer {
    /// Symbolizes a stack of return addresses (innermost first) into frames
    /// (innermost first, inlined calls expanded). Each return address is
    /// looked up at `addr - 1`, inside the call instruction, so a call that
    /// is the last instruction of a function is not blamed on the next one.
    /// Bit i of `fallback_frames` marks stack[i] as found by frame pointers.
    pub fn symbolize_stack(
        &mut self,
        maps: &ProcessMaps,
        stack: &[u64],
        fallback_frames: u64,
    ) -> Vec<Frame> {
        self.prefetch(maps, stack);
        let mut frames = Vec::with_capacity(stack.len());
        for (index, &addr) in stack.iter().enumerate() {
            let fallback = index < 64 && fallback_frames & (1 << index) != 0;
            match maps.locate(addr.saturating_sub(1)) {
                Some((mapping, offset)) => {
                    let key = ((maps.root.clone(), mapping.path.clone()), offset);
                    let cached = &self.cache[&key];
                    frames.extend(cached.iter().map(|f| Frame {
                        address: addr,
                        fallback,
                        ..f.clone()
                    }));
                }
                None => frames.push(Frame {
                    function: format!("[unknown {addr:#x}]"),
                    file: None,
                    line: None,
                    module: "[unknown]".into(),
                    address: addr,
                    inlined: false,
                    fallback,
                }),
            }
        }
        frames
    }

    /// Symbolizes, one blazesym call per object, every not yet cached address.
    fn prefetch(&mut self, maps: &ProcessMaps, stack: &[u64]) {
        let mut wanted: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for &addr in stack {
            if let Some((mapping, offset)) = maps.locate(addr.saturating_sub(1))
                && !self
                    .cache
                    .contains_key(&((maps.root.clone(), mapping.path.clone()), offset))
            {
                wanted.entry(mapping.path.clone()).or_default().push(offset);
            }
        }
        for (path, mut offsets) in wanted {
            offsets.sort_unstable();
            offsets.dedup();
            let open = maps.open_path(&path);
            let results = self.symbolize_offsets(&open, &path, &offsets);
            for (offset, result) in offsets.into_iter().zip(results) {
                let frames = result.unwrap_or_else(|| vec![unknown_frame(&path, offset)]);
                self.cache
                    .insert(((maps.root.clone(), path.clone()), offset), frames);
            }
        }
    }

    /// `object` is the file to open, `module` its path as the process sees it.
    fn symbolize_offsets(
        &self,
        object: &Path,
        module: &str,
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
                    });
                    Some(frames)
                }
                Symbolized::Unknown(_) => None,
            })
            .collect()
    }
}

fn unknown_frame(path: &str, offset: u64) -> Frame {
    let name = Path::new(path)
        .file_name()
        .map_or(path.into(), |n| n.to_string_lossy());
    Frame {
        function: format!("[{name}+{offset:#x}]"),
        file: None,
        line: None,
        module: path.to_string(),
        address: 0,
        inlined: false,
        fallback: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234                       /usr/bin/prog
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1234                       /usr/bin/prog
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000028000 r--p 00000000 fe:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f000019d000 r-xp 00028000 fe:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f00001a0000-7f00001a1000 r-xp 00000000 fe:01 77                         /tmp/gone.so (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn parses_file_backed_mappings_only() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[1].start, 0x55d0c0a01000);
        assert_eq!(maps[1].file_offset, 0x1000);
        assert!(maps[1].executable);
        assert!(!maps[0].executable);
        assert_eq!(&*maps[4].path, "/tmp/gone.so");
    }

    #[test]
    fn locate_gives_file_offsets_and_prefers_newest_mapping() {
        let mut mappings = parse_maps(MAPS);
        let pm = ProcessMaps::from_mappings(1, mappings.clone());
        let (m, offset) = pm.locate(0x7f0000028010).unwrap();
        assert_eq!(&*m.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(offset, 0x28010);
        assert!(pm.locate(0x55d0c1000100).is_none());
        // The same range mapped again later, from another object, wins.
        mappings.push(Mapping {
            start: 0x7f0000028000,
            end: 0x7f0000029000,
            file_offset: 0x5000,
            executable: true,
            path: "/opt/new.so".into(),
        });
        let pm = ProcessMaps::from_mappings(1, mappings);
        let (m, offset) = pm.locate(0x7f0000028010).unwrap();
        assert_eq!((&*m.path, offset), ("/opt/new.so", 0x5010));
    }

    #[test]
    fn symbolizes_this_test_binary() {
        // Our own code, through our own mappings, by file offset.
        let mut maps = ProcessMaps::new(std::process::id());
        assert!(maps.refresh());
        let here = symbolizes_this_test_binary as *const () as u64;
        let frames = Symbolizer::default().symbolize_stack(&maps, &[here + 1], 0);
        assert!(
            frames
                .iter()
                .any(|f| f.function.contains("symbolizes_this_test_binary")),
            "{frames:#?}"
        );
        let unknown = Symbolizer::default().symbolize_stack(&maps, &[0x10], 1);
        assert_eq!(unknown[0].function, "[unknown 0x10]");
        assert!(unknown[0].fallback);
        assert!(!frames[0].fallback);
    }
}
