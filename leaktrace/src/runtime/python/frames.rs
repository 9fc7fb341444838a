//! Putting Python frames into a native stack: each native eval-loop frame
//! of the interpreter is replaced by the Python frames it was running.
//!
//! Why by position: the kernel reads the allocating thread's Python frame
//! chain (innermost first) next to its native stack (innermost first), and
//! the two are in the same order. Up to 3.10 each Python frame has a native
//! eval-loop call of its own; from 3.11 one call runs Python frames until
//! the frame marked as its entry. So the n-th eval-loop frame ran the n-th
//! Python frame (≤3.10) or the n-th run of frames ending at an entry frame
//! (3.11+). What stacks show, read with gdb on this machine's builds: 2.7
//! one `PyEval_EvalFrameEx` per Python frame; 3.6 one
//! `_PyEval_EvalFrameDefault` per frame (`PyEval_EvalFrameEx` is a tail
//! call, gone from stacks); 3.10–3.13 `_PyEval_EvalFrameDefault` followed
//! by the inline wrapper `_PyEval_EvalFrame` (an inlined frame of the
//! caller); Debian's python3.11 `_PyEval_EvalFrameDefault` alone. Wrappers
//! next to a replaced eval frame go with it.
//!
//! When the two do not line up (the native stack was cut, the kernel
//! stopped reading Python frames, a run has no entry frame), the innermost
//! pairs are still right; what is left over stays native and is flagged
//! `python_unmatched`, and no Python frame is moved onto another eval frame.
//! This relies on every eval-loop frame being named: an eval frame left
//! unsymbolized would shift the pairs after it.
use super::code_object::{CodeCache, Memory, PythonFrame, python_frame, read_code};
use super::layout::{EntryMarker, PythonLayout};
use crate::symbolize::{Frame, FrameKind};

/// One Python frame as the kernel sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawPythonFrame {
    /// The code object's address in the process.
    pub code: u64,
    /// `f_lasti` (≤3.10) or the instruction pointer (3.11+).
    pub instr: u64,
    /// 3.11+: the outermost frame of one native eval-loop call.
    pub entry: bool,
}

/// A Python frame named, with its entry marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SentFrame {
    pub frame: PythonFrame,
    pub entry: bool,
}

/// Names the kernel's frames of process `pid` through `cache` (each code
/// object read once). A code object that cannot be read keeps its place,
/// named `[python code 0x…]`, so the frames after it stay matched.
pub(crate) fn name_frames(
    cache: &mut CodeCache,
    mem: &dyn Memory,
    layout: &PythonLayout,
    pid: u32,
    raw: &[RawPythonFrame],
) -> Vec<SentFrame> {
    raw.iter()
        .map(|sent| {
            let frame = match cache.get(pid, sent.code, || read_code(mem, layout, sent.code)) {
                Ok(code) => python_frame(&code, sent.instr),
                Err(_) => PythonFrame {
                    function: format!("[python code {:#x}]", sent.code),
                    file: String::new(),
                    line: None,
                },
            };
            SentFrame {
                frame,
                entry: sent.entry,
            }
        })
        .collect()
}

/// Which native functions are the eval loop, and how Python frames map
/// onto them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EvalStyle {
    /// 2.7: `PyEval_EvalFrameEx` is the loop, one call per frame.
    PerFrame27,
    /// 3.6–3.10: `_PyEval_EvalFrameDefault`, one call per frame.
    PerFrame,
    /// 3.11+: `_PyEval_EvalFrameDefault`, one call per run of frames
    /// ending at an entry frame.
    Entries,
}

impl EvalStyle {
    pub(crate) fn of(layout: &PythonLayout) -> EvalStyle {
        match (layout.major, layout.entry_marker) {
            (2, _) => EvalStyle::PerFrame27,
            (_, EntryMarker::None) => EvalStyle::PerFrame,
            _ => EvalStyle::Entries,
        }
    }

    fn is_eval_loop(self, name: &str) -> bool {
        match self {
            EvalStyle::PerFrame27 => name == "PyEval_EvalFrameEx",
            EvalStyle::PerFrame | EvalStyle::Entries => name == "_PyEval_EvalFrameDefault",
        }
    }

    fn is_wrapper(self, name: &str) -> bool {
        match self {
            EvalStyle::PerFrame27 => name == "PyEval_EvalFrame",
            EvalStyle::PerFrame | EvalStyle::Entries => {
                matches!(
                    name,
                    "_PyEval_EvalFrame" | "PyEval_EvalFrame" | "PyEval_EvalFrameEx"
                )
            }
        }
    }
}

/// A C function's name without the suffix GCC gives its split-off parts
/// and clones (`.cold`, `.part.0`, `.isra.0`, `.constprop.0`).
fn base_name(function: &str) -> &str {
    match function.split_once('.') {
        Some((base, suffix))
            if ["cold", "part", "isra", "constprop", "lto_priv"]
                .iter()
                .any(|clone| suffix.starts_with(clone)) =>
        {
            base
        }
        _ => function,
    }
}

/// The Python frames each eval-loop call ran, innermost call first; the
/// bool says the run is whole (it ends at its entry frame, or is one
/// frame up to 3.10).
fn runs(python: &[SentFrame], style: EvalStyle) -> Vec<(&[SentFrame], bool)> {
    if style != EvalStyle::Entries {
        return python.chunks(1).map(|run| (run, true)).collect();
    }
    let mut runs = Vec::new();
    let mut rest = python;
    while let Some(entry) = rest.iter().position(|sent| sent.entry) {
        runs.push((&rest[..=entry], true));
        rest = &rest[entry + 1..];
    }
    if !rest.is_empty() {
        runs.push((rest, false));
    }
    runs
}

fn as_frame(sent: &SentFrame, eval: &Frame) -> Frame {
    Frame {
        function: sent.frame.function.clone(),
        file: (!sent.frame.file.is_empty()).then(|| sent.frame.file.clone()),
        line: sent.frame.line,
        module: eval.module.clone(),
        address: eval.address,
        inlined: false,
        fallback: eval.fallback,
        kind: FrameKind::Python,
        python_unmatched: false,
    }
}

/// `native` (innermost first) with each eval-loop frame replaced by the
/// Python frames it ran, taken from `python` (innermost first).
pub(crate) fn splice(native: &[Frame], python: &[SentFrame], style: EvalStyle) -> Vec<Frame> {
    let runs = runs(python, style);
    let mut runs = runs.into_iter();
    let mut out = Vec::with_capacity(native.len() + python.len());
    // The last native frame was an eval frame replaced by Python frames:
    // the wrappers that follow it go with it.
    let mut after_replaced = false;
    for frame in native {
        let name = base_name(&frame.function);
        if frame.kind == FrameKind::Native && !frame.inlined && style.is_eval_loop(name) {
            after_replaced = false;
            match runs.next() {
                Some((run, whole)) => {
                    out.extend(run.iter().map(|sent| as_frame(sent, frame)));
                    if whole {
                        after_replaced = true;
                    } else {
                        // The outer frames of this call were not read.
                        out.push(Frame {
                            python_unmatched: true,
                            ..frame.clone()
                        });
                    }
                }
                None => out.push(Frame {
                    python_unmatched: true,
                    ..frame.clone()
                }),
            }
        } else if after_replaced && style.is_wrapper(name) {
            // `_PyEval_EvalFrame` and friends: part of the call replaced.
        } else {
            after_replaced = false;
            out.push(frame.clone());
        }
    }
    out
}
