//! The pclntab reader on STRIPPED builds of `tests/fixtures/go/symbols.go`
//! against the Go toolchain's own answers on the unstripped build of the
//! same source, for each Go release on the machine:
//!
//! - `go tool objdump`: every instruction of the fixture's `main.*`
//!   functions, the function (TEXT) holding it, its line;
//! - `go tool addr2line`: the function, full file and line of each;
//! - `go tool nm`: function entry addresses (`runtime.allgadd` too);
//! - the program itself: `runtime.Callers` and `runtime.CallersFrames`
//!   from inside an inlined chain name each frame, inlined ones included;
//! - `go version BINARY`: the release.
use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{binary::GoBinary, buildinfo, image::Image, pclntab::GoFrame};
use crate::test_support::prerequisite_missing;

const RELEASES: [&str; 4] = ["1.19", "1.21", "1.22", "1.23"];

fn go_command(release: &str) -> PathBuf {
    Path::new("/usr/lib").join(format!("go-{release}/bin/go"))
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/go/symbols.go")
}

/// A directory of builds, removed at the end.
struct Builds {
    dir: PathBuf,
}

impl Builds {
    fn new(tag: &str) -> Builds {
        let dir = std::env::temp_dir().join(format!("leaktrace-unit-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a build directory");
        Builds { dir }
    }

    /// The fixture built with `release`, stripped or not; None after
    /// reporting a missing toolchain.
    fn build(&self, test: &str, release: &str, stripped: bool) -> Option<PathBuf> {
        let go = go_command(release);
        if !go.exists() {
            prerequisite_missing(test, &format!("Go {release} at {}", go.display()));
            return None;
        }
        let output = self.dir.join(format!(
            "symbols-go{release}{}",
            if stripped { "-stripped" } else { "" }
        ));
        let mut command = Command::new(&go);
        command.arg("build").arg("-o").arg(&output);
        if stripped {
            command.arg("-ldflags=-s -w");
        }
        let built = self
            .go_env(command.arg(fixture()))
            .output()
            .expect("running go build");
        assert!(
            built.status.success(),
            "go {release} build: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        Some(output)
    }

    fn go_env<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        command
            // One cache for every build of every test run: Go's cache is
            // safe to share, and a cold one rebuilds the standard library.
            .env(
                "GOCACHE",
                std::env::temp_dir().join("leaktrace-unit-gocache"),
            )
            .env("GOPATH", self.dir.join("gopath"))
            .env("HOME", &self.dir)
            .env("GOTOOLCHAIN", "local")
            .env("GO111MODULE", "off")
    }

    /// `go ARGS...` of `release`, its stdout (asserted successful).
    fn go(&self, release: &str, args: &[&str], stdin: Option<&str>) -> String {
        let mut command = Command::new(go_command(release));
        let mut child = self
            .go_env(command.args(args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running go");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("writing to go");
        drop(input);
        let out = child.wait_with_output().expect("waiting for go");
        assert!(
            out.status.success(),
            "go {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("go's output is UTF-8")
    }
}

impl Drop for Builds {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _: std::io::Result<()> = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn load(path: &Path) -> GoBinary {
    GoBinary::parse(std::fs::read(path).expect("reading a build"))
        .expect("a readable table")
        .expect("a Go table")
}

/// One instruction as objdump lists it: its function, address and line.
struct Instruction {
    function: String,
    address: u64,
    line: u32,
}

fn objdump_main(builds: &Builds, release: &str, binary: &Path) -> Vec<Instruction> {
    let text = builds.go(
        release,
        &[
            "tool",
            "objdump",
            "-s",
            r"^main\.",
            binary.to_str().unwrap(),
        ],
        None,
    );
    let mut function = String::new();
    let mut instructions = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("TEXT"), Some(name)) => {
                function = name.trim_end_matches("(SB)").to_string();
            }
            (Some(position), Some(address)) if address.starts_with("0x") => {
                let line = position.rsplit(':').next().unwrap().parse().unwrap();
                let address = u64::from_str_radix(&address[2..], 16).unwrap();
                instructions.push(Instruction {
                    function: function.clone(),
                    address,
                    line,
                });
            }
            _ => {}
        }
    }
    instructions
}

/// addr2line's (function, file, line) for each address.
fn addr2line(
    builds: &Builds,
    release: &str,
    binary: &Path,
    addresses: &[u64],
) -> Vec<(String, String, u32)> {
    let input = addresses
        .iter()
        .map(|a| format!("{a:#x}"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = builds.go(
        release,
        &["tool", "addr2line", binary.to_str().unwrap()],
        Some(&input),
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * addresses.len(), "{text}");
    lines
        .chunks(2)
        .map(|pair| {
            let (file, line) = pair[1].rsplit_once(':').unwrap();
            (pair[0].to_string(), file.to_string(), line.parse().unwrap())
        })
        .collect()
}

/// The fixture's functions and the lines they span (`func` to `}`).
fn source_spans() -> HashMap<String, (u32, u32)> {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let mut spans = HashMap::new();
    let mut open: Option<(String, u32)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index as u32 + 1;
        if let Some(rest) = line.strip_prefix("func ") {
            let name = rest.split('(').next().unwrap();
            open = Some((format!("main.{name}"), number));
        } else if line == "}"
            && let Some((name, start)) = open.take()
        {
            spans.insert(name, (start, number));
        }
    }
    spans
}

#[test]
fn stripped_tables_agree_with_objdump_and_addr2line_for_each_release() {
    const TEST: &str = "stripped_tables_agree_with_objdump_and_addr2line_for_each_release";
    let builds = Builds::new("go-pclntab-oracle");
    let spans = source_spans();
    let fixture_path = fixture().to_string_lossy().into_owned();
    for release in RELEASES {
        let (Some(kept), Some(stripped)) = (
            builds.build(TEST, release, false),
            builds.build(TEST, release, true),
        ) else {
            return;
        };
        let binary = load(&stripped);
        assert!(
            binary.expands_inlined_calls(),
            "go{release}: gofunc not found"
        );
        let instructions = objdump_main(&builds, release, &kept);
        assert!(
            instructions.len() > 100,
            "go{release}: {} instructions",
            instructions.len()
        );
        let addresses: Vec<u64> = instructions.iter().map(|i| i.address).collect();
        let oracle = addr2line(&builds, release, &kept, &addresses);
        let mut inlined = 0;
        for (instruction, (function, file, line)) in instructions.iter().zip(&oracle) {
            let at = format!("go{release} {:#x}", instruction.address);
            let frames = binary
                .frames(instruction.address)
                .unwrap_or_else(|e| panic!("{at}: {e}"))
                .unwrap_or_else(|| panic!("{at}: not in the table"));
            let (innermost, outermost) = (&frames[0], frames.last().unwrap());
            assert_eq!(outermost.function, instruction.function, "{at}: {frames:?}");
            assert_eq!(&outermost.function, function, "{at}");
            assert!(!outermost.inlined && frames[..frames.len() - 1].iter().all(|f| f.inlined));
            assert_eq!(innermost.file.as_deref(), Some(file.as_str()), "{at}");
            assert_eq!(innermost.line, Some(instruction.line), "{at}");
            assert_eq!(innermost.line, Some(*line), "{at}");
            // A frame in the fixture's file is one of its functions, and
            // its line lies in that function's source.
            for frame in &frames {
                if frame.file.as_deref() == Some(fixture_path.as_str()) {
                    let &(start, end) = spans
                        .get(&frame.function)
                        .unwrap_or_else(|| panic!("{at}: {frame:?} is no function of the fixture"));
                    let line = frame.line.unwrap();
                    assert!(
                        (start..=end).contains(&line),
                        "{at}: {frame:?} outside {start}-{end}"
                    );
                }
            }
            inlined += usize::from(frames.len() > 1);
        }
        // square into sumSquares into outer and loop; leaf into middle
        // into outer: a good share of main's code is inlined code.
        eprintln!(
            "go{release}: {} instructions, {inlined} with inlined frames",
            instructions.len()
        );
        assert!(
            inlined >= 10,
            "go{release}: {inlined} instructions with inlined frames"
        );

        // Entries by name, against go tool nm on the unstripped build.
        let nm = builds.go(release, &["tool", "nm", kept.to_str().unwrap()], None);
        let mut checked = 0;
        for line in nm.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [address, "T", name] = words[..] else {
                continue;
            };
            if !(name.starts_with("main.")
                || name == "runtime.allgadd"
                || name == "runtime.mallocgc")
            {
                continue;
            }
            let entry = binary
                .function_named(name)
                .unwrap()
                .unwrap_or_else(|| panic!("go{release}: {name} not found by name"));
            assert_eq!(
                entry.entry,
                u64::from_str_radix(address, 16).unwrap(),
                "go{release} {name}"
            );
            let found = binary.function_at(entry.entry).unwrap().unwrap();
            assert_eq!((found.name.as_str(), found.end), (name, entry.end));
            checked += 1;
        }
        assert!(
            checked >= 6,
            "go{release}: {checked} functions checked by name"
        );
        assert!(
            binary
                .function_named("main.noSuchFunction")
                .unwrap()
                .is_none()
        );
    }
}

/// Parses the fixture's "PC"/"FRAME" lines: each PC with its frames.
fn runtime_frames(output: &str) -> Vec<(u64, Vec<GoFrame>)> {
    let mut stack: Vec<(u64, Vec<GoFrame>)> = Vec::new();
    for line in output.lines() {
        if let Some(pc) = line.strip_prefix("PC 0x") {
            stack.push((u64::from_str_radix(pc, 16).unwrap(), Vec::new()));
        } else if let Some(frame) = line.strip_prefix("FRAME ") {
            let parts: Vec<&str> = frame.split('|').collect();
            stack.last_mut().unwrap().1.push(GoFrame {
                function: parts[0].to_string(),
                file: Some(parts[1].to_string()),
                line: Some(parts[2].parse().unwrap()),
                inlined: false,
            });
        }
    }
    stack
}

#[test]
fn inlined_frames_agree_with_the_runtimes_own_callers() {
    const TEST: &str = "inlined_frames_agree_with_the_runtimes_own_callers";
    let builds = Builds::new("go-pclntab-callers");
    for release in RELEASES {
        let Some(stripped) = builds.build(TEST, release, true) else {
            return;
        };
        let output = Command::new(&stripped).arg("frames").output().unwrap();
        assert!(output.status.success());
        let stack = runtime_frames(&String::from_utf8_lossy(&output.stdout));
        // runtime.Callers lists one PC per logical frame: a physical return
        // address, then for each inlined level the call site's PC plus one.
        // Both are looked up one byte back; each lookup's chain must be
        // the runtime's frames from there on, and walking by chains must
        // use up the stack exactly.
        let flat: Vec<(String, u32)> = stack
            .iter()
            .map(|(_, frames)| {
                assert_eq!(frames.len(), 1, "{frames:?}");
                (frames[0].function.clone(), frames[0].line.unwrap())
            })
            .collect();
        let binary = load(&stripped);
        let mut index = 0;
        let mut longest = 0;
        while index < stack.len() {
            let pc = stack[index].0;
            let frames = binary.frames(pc - 1).unwrap().unwrap();
            let ours: Vec<(String, u32)> = frames
                .iter()
                .map(|f| (f.function.clone(), f.line.unwrap()))
                .collect();
            let theirs = flat.get(index..index + ours.len());
            assert_eq!(Some(&ours[..]), theirs, "go{release} at {pc:#x}: {flat:?}");
            for (frame, (_, runtime)) in frames.iter().zip(&stack[index..]) {
                assert_eq!(frame.file, runtime[0].file, "go{release}");
            }
            longest = longest.max(ours.len());
            index += ours.len();
        }
        assert_eq!(index, stack.len());
        // leaf and middle are inlined into outer: three frames at one PC.
        assert!(
            longest >= 3,
            "go{release}: longest chain {longest}: {flat:?}"
        );
        let names: Vec<&str> = flat.iter().map(|(f, _)| f.as_str()).collect();
        assert!(
            names.starts_with(&[
                "main.report",
                "main.leaf",
                "main.middle",
                "main.outer",
                "main.main"
            ]),
            "{names:?}"
        );
    }
}

#[test]
fn the_release_read_is_what_go_version_prints() {
    const TEST: &str = "the_release_read_is_what_go_version_prints";
    let builds = Builds::new("go-buildinfo");
    for release in RELEASES {
        let (Some(kept), Some(stripped)) = (
            builds.build(TEST, release, false),
            builds.build(TEST, release, true),
        ) else {
            return;
        };
        // "PATH: go1.22.12"
        let printed = builds.go(release, &["version", kept.to_str().unwrap()], None);
        let expected = printed.trim().rsplit(' ').next().unwrap().to_string();
        assert!(expected.starts_with(&format!("go{release}.")), "{printed}");
        for (path, symbols) in [(&kept, true), (&stripped, false)] {
            let image = Image::parse(std::fs::read(path).unwrap()).unwrap();
            let build = buildinfo::inspect(&image).expect("recognized as Go");
            assert_eq!(
                build.version.as_deref(),
                Some(expected.as_str()),
                "{}",
                path.display()
            );
            assert!(build.inline_format, "1.18+ writes the release inline");
            assert!(build.build_id.as_ref().is_some_and(|id| !id.is_empty()));
            let from_symbol = symbols.then(|| expected.clone());
            assert_eq!(build.symbol_version, from_symbol, "{}", path.display());
        }
    }
    // Our own (Rust) test binary is not Go.
    let own = Image::parse(std::fs::read("/proc/self/exe").unwrap()).unwrap();
    assert_eq!(buildinfo::inspect(&own), None);
}
