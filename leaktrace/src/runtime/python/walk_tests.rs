//! The kernel walker's path, followed from userspace on live interpreters
//! with the layout tables: from the thread-state location to the frame
//! chain, entry markers and code objects of a process spinning in
//! `spin()` ← `outer()` ← the module; and through the interpreters' thread
//! lists to the thread state of a thread sleeping with the GIL released,
//! found by its `thread_id`. What the kernel half does, checked on the
//! real structures. A missing interpreter fails its test.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use super::{
    code_object::{Memory, ProcessMemory, python_frame, read_code},
    layout::{EntryMarker, FrameChain, PythonLayout, ThreadStateSource},
    tests::{DEBIAN_PYTHON, oracle, pyenv},
};
use crate::target::procfs::parse_maps;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _: std::io::Result<()> = self.0.kill();
        let _: std::io::Result<std::process::ExitStatus> = self.0.wait();
    }
}

fn read_u64(mem: &dyn Memory, addr: u64) -> u64 {
    let mut bytes = [0; 8];
    mem.read(addr, &mut bytes)
        .unwrap_or_else(|err| panic!("{err:#}"));
    u64::from_le_bytes(bytes)
}

fn read_u8(mem: &dyn Memory, addr: u64) -> u8 {
    let mut byte = [0; 1];
    mem.read(addr, &mut byte)
        .unwrap_or_else(|err| panic!("{err:#}"));
    byte[0]
}

/// The address of `name` in process `pid`: the symbol's value in the
/// interpreter object (a libpython, or the executable) plus the object's
/// load bias (where its first mapping starts, less its first segment's
/// address: 0x400000 for Debian's non-PIE python3.11).
fn symbol_address(pid: u32, python: &Path, name: &str) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let maps = parse_maps(&maps);
    let exe = std::fs::canonicalize(python).expect("the interpreter's path");
    let mapping = maps
        .iter()
        .find(|m| {
            m.path.contains("libpython") && m.file_offset == 0 && !m.path.ends_with("libpython3.so")
        })
        .or_else(|| {
            maps.iter()
                .find(|m| Path::new(&*m.path) == exe && m.file_offset == 0)
        })
        .unwrap_or_else(|| panic!("no interpreter mapping in {pid}"));
    let data = std::fs::read(&*mapping.path).expect("the interpreter object");
    let file = object::File::parse(&*data).expect("an ELF object");
    let symbol = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|symbol| symbol.name() == Ok(name))
        .unwrap_or_else(|| panic!("no {name} in {}", mapping.path));
    let first_segment = file
        .segments()
        .map(|segment| segment.address())
        .min()
        .expect("a loadable segment");
    mapping.start - first_segment + symbol.address()
}

/// The GIL holder's thread state, found as the kernel finds it; 0 when
/// nobody holds the GIL.
fn gil_holder(mem: &dyn Memory, layout: &PythonLayout, pid: u32, python: &Path) -> u64 {
    match layout.tstate_source {
        ThreadStateSource::CurrentSymbol => {
            read_u64(mem, symbol_address(pid, python, "_PyThreadState_Current"))
        }
        ThreadStateSource::RuntimeTstateCurrent => read_u64(
            mem,
            symbol_address(pid, python, "_PyRuntime") + u64::from(layout.runtime_tstate_current),
        ),
        ThreadStateSource::GilLastHolder => {
            let runtime = symbol_address(pid, python, "_PyRuntime");
            let interp = read_u64(mem, runtime + u64::from(layout.runtime_interpreters_main));
            read_u64(mem, interp + u64::from(layout.interp_gil_last_holder))
        }
    }
}

/// The thread state whose `thread_id` is `ident`, searched in every
/// interpreter's thread list as the kernel does: from `interp_head`
/// (2.7/3.6) or `_PyRuntime.interpreters.head`, by `interp_tstate_head`,
/// `tstate_next` and `interp_next`.
fn thread_state_of(
    mem: &dyn Memory,
    layout: &PythonLayout,
    pid: u32,
    python: &Path,
    ident: u64,
) -> Option<u64> {
    let head_word = if layout.runtime_interpreters_head == super::layout::ABSENT32 {
        symbol_address(pid, python, "interp_head")
    } else {
        symbol_address(pid, python, "_PyRuntime") + u64::from(layout.runtime_interpreters_head)
    };
    let mut interp = read_u64(mem, head_word);
    let mut steps = 0;
    while interp != 0 {
        let mut tstate = read_u64(mem, interp + u64::from(layout.interp_tstate_head));
        while tstate != 0 {
            steps += 1;
            assert!(steps < 256, "a thread list without end");
            if read_u64(mem, tstate + u64::from(layout.tstate_thread_id)) == ident {
                return Some(tstate);
            }
            tstate = read_u64(mem, tstate + u64::from(layout.tstate_next));
        }
        interp = read_u64(mem, interp + u64::from(layout.interp_next));
    }
    None
}

/// Walks the frame chain of `tstate` as the kernel will: `function:line`
/// and the entry marker of each Python frame, innermost first.
fn walk(mem: &dyn Memory, layout: &PythonLayout, tstate: u64) -> Vec<(String, bool)> {
    let mut frame = match layout.frame_chain {
        FrameChain::FrameObject | FrameChain::CurrentFrame => {
            read_u64(mem, tstate + u64::from(layout.tstate_frame))
        }
        FrameChain::CFrame => {
            let cframe = read_u64(mem, tstate + u64::from(layout.tstate_frame));
            read_u64(mem, cframe + u64::from(layout.cframe_current_frame))
        }
    };
    let mut frames: Vec<(String, bool)> = Vec::new();
    for _ in 0..32 {
        if frame == 0 {
            break;
        }
        let marker = match layout.entry_marker {
            EntryMarker::None => None,
            EntryMarker::IsEntry | EntryMarker::OwnerCstack(_) => {
                Some(read_u8(mem, frame + u64::from(layout.frame_entry)))
            }
        };
        let next = read_u64(mem, frame + u64::from(layout.frame_back));
        if let (EntryMarker::OwnerCstack(cstack), Some(owner)) = (layout.entry_marker, marker)
            && owner == cstack
        {
            // The shim of one eval call: the frame before it is its entry.
            frames.last_mut().expect("a frame before the shim").1 = true;
            frame = next;
            continue;
        }
        let code = read_code(
            mem,
            layout,
            read_u64(mem, frame + u64::from(layout.frame_code)),
        )
        .unwrap_or_else(|err| panic!("{err:#}"));
        let instr = read_u64(mem, frame + u64::from(layout.frame_lasti));
        let named = python_frame(&code, instr);
        let entry = layout.entry_marker == EntryMarker::IsEntry && marker != Some(0);
        frames.push((
            format!("{}:{}", named.function, named.line.unwrap_or(0)),
            entry,
        ));
        frame = next;
    }
    frames
}

fn live(python: &Path) {
    assert!(python.exists(), "{} is missing", python.display());
    let version = oracle(python);
    let layout = PythonLayout::for_version(version).expect("a table for this version");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/runtime/python/testdata/spin.py");
    let mut child = KillOnDrop(
        Command::new(python)
            .arg(&script)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", python.display())),
    );
    let pid = child.0.id();
    let mut lines = BufReader::new(child.0.stdout.take().expect("piped")).lines();
    let expected = lines.next().expect("LINES").expect("a line");
    let numbers: Vec<u32> = expected
        .split(' ')
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    let [loop_a, loop_b, outer_line, module_line] = numbers[..] else {
        panic!("{expected:?}");
    };
    let threads = lines.next().expect("THREADS").expect("a line");
    let numbers: Vec<u64> = threads
        .split(' ')
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    let [main_ident, sleeper_ident, sleeper_line] = numbers[..] else {
        panic!("{threads:?}");
    };
    assert_eq!(lines.next().expect("READY").expect("a line"), "READY");
    let mem = ProcessMemory::open(pid).expect("our child's memory");
    // The child may be between READY and the loop: walk until it is in it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let frames = loop {
        // Nobody holds the GIL while the child writes READY: not yet.
        let holder = gil_holder(&mem, &layout, pid, python);
        let frames = if holder == 0 {
            Vec::new()
        } else {
            walk(&mem, &layout, holder)
        };
        if frames.first().is_some_and(|(f, _)| f.starts_with("spin:"))
            || std::time::Instant::now() > deadline
        {
            break frames;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let spin_ok = [format!("spin:{loop_a}"), format!("spin:{loop_b}")];
    assert!(
        spin_ok.contains(&frames[0].0),
        "Python {version}: {frames:?}"
    );
    let names: Vec<&str> = frames[1..].iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("outer:{outer_line}"),
            format!("<module>:{module_line}")
        ],
        "Python {version}: {frames:?}"
    );
    let entries: Vec<bool> = frames.iter().map(|&(_, entry)| entry).collect();
    let want = match layout.entry_marker {
        EntryMarker::None => [false, false, false],
        _ => [false, false, true],
    };
    assert_eq!(entries, want, "Python {version}: entry markers");

    // The thread list holds the spinning thread's state (the GIL holder's)
    // under the main thread's ident, and the sleeping thread's under its
    // own, with its own frames.
    let holder = gil_holder(&mem, &layout, pid, python);
    let main = thread_state_of(&mem, &layout, pid, python, main_ident);
    assert_eq!(main, Some(holder), "Python {version}: the main thread");
    if layout.tstate_native_thread_id != super::layout::ABSENT {
        let tid = read_u64(&mem, holder + u64::from(layout.tstate_native_thread_id));
        assert_eq!(tid, u64::from(pid), "the main thread's tid");
    }
    let sleeper = thread_state_of(&mem, &layout, pid, python, sleeper_ident)
        .unwrap_or_else(|| panic!("Python {version}: no thread state for the sleeping thread"));
    assert_ne!(sleeper, holder);
    let frames = walk(&mem, &layout, sleeper);
    assert_eq!(
        frames.first().map(|(f, _)| f.as_str()),
        Some(format!("sleeper:{sleeper_line}").as_str()),
        "Python {version}: {frames:?}"
    );
    assert_eq!(
        thread_state_of(&mem, &layout, pid, python, 1),
        None,
        "Python {version}: an ident no thread has"
    );
}

#[test]
fn walk_2_7() {
    live(&pyenv("2.7.18"));
}

#[test]
fn walk_3_6() {
    live(&pyenv("3.6.15"));
}

#[test]
fn walk_3_7() {
    live(&pyenv("3.7.16"));
}

#[test]
fn walk_3_8() {
    live(&pyenv("3.8.18"));
}

#[test]
fn walk_3_9() {
    live(&pyenv("3.9.18"));
}

#[test]
fn walk_3_10() {
    live(&pyenv("3.10.13"));
}

#[test]
fn walk_3_11() {
    live(&pyenv("3.11.7"));
}

#[test]
fn walk_3_12() {
    live(&pyenv("3.12.1"));
}

#[test]
fn walk_3_13() {
    live(&pyenv("3.13.0"));
}

#[test]
fn walk_debian_python3_11() {
    live(Path::new(DEBIAN_PYTHON));
}
