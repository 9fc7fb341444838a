//! Splicing on made-up stacks shaped like the ones gdb shows for this
//! machine's interpreters (2.7, 3.6–3.10, 3.11+), and what happens when the
//! native and Python frames do not line up.
use anyhow::{Result, bail};

use super::{
    code_object::{CodeCache, Memory, PythonFrame},
    frames::{EvalStyle, RawPythonFrame, SentFrame, name_frames, splice},
    layout::PythonLayout,
    version::PythonVersion,
};
use crate::symbolize::{Frame, FrameKind};

const LIB: &str = "/usr/lib/libpython3.so";

fn native(function: &str) -> Frame {
    Frame {
        function: function.into(),
        file: None,
        line: None,
        module: LIB.into(),
        address: 0x7f00_0000_1000,
        inlined: false,
        fallback: false,
        kind: FrameKind::Native,
        python_unmatched: false,
    }
}

fn inlined(function: &str) -> Frame {
    Frame {
        inlined: true,
        ..native(function)
    }
}

fn py(function: &str, line: u32, entry: bool) -> SentFrame {
    SentFrame {
        frame: PythonFrame {
            function: function.into(),
            file: "app.py".into(),
            line: Some(line),
        },
        entry,
    }
}

/// The stack as `name` (python frames as `name:line`, unmatched eval
/// frames as `name!`).
fn names(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|frame| match (frame.kind, frame.python_unmatched) {
            (FrameKind::Python, _) => format!("{}:{}", frame.function, frame.line.unwrap()),
            (FrameKind::Native, true) => format!("{}!", frame.function),
            (FrameKind::Native, false) => frame.function.clone(),
        })
        .collect()
}

#[test]
fn python_2_7_one_eval_frame_per_python_frame() {
    let stack = [
        native("malloc"),
        native("PyString_FromStringAndSize"),
        native("PyEval_EvalFrameEx"),
        native("fast_function"),
        native("call_function"),
        native("PyEval_EvalFrameEx"),
        native("PyEval_EvalCodeEx"),
        native("main"),
    ];
    let python = [py("build", 7, false), py("<module>", 20, false)];
    let out = splice(&stack, &python, EvalStyle::PerFrame27);
    assert_eq!(
        names(&out),
        [
            "malloc",
            "PyString_FromStringAndSize",
            "build:7",
            "fast_function",
            "call_function",
            "<module>:20",
            "PyEval_EvalCodeEx",
            "main"
        ]
    );
    assert_eq!(out[2].module, LIB);
    assert_eq!(out[2].file.as_deref(), Some("app.py"));
}

#[test]
fn python_3_10_wrappers_go_with_their_eval_frame_and_extensions_stay() {
    let stack = [
        native("malloc"),
        native("ext_alloc"), // a C extension called from Python
        native("cfunction_vectorcall_O"),
        native("_PyEval_EvalFrameDefault"),
        inlined("_PyEval_EvalFrame"),
        native("_PyEval_Vector"),
        native("_PyEval_EvalFrameDefault.cold"),
        inlined("_PyEval_EvalFrame"),
        native("_PyEval_Vector"),
        native("PyEval_EvalCode"),
    ];
    let python = [py("inner", 3, false), py("<module>", 9, false)];
    let out = splice(&stack, &python, EvalStyle::PerFrame);
    assert_eq!(
        names(&out),
        [
            "malloc",
            "ext_alloc",
            "cfunction_vectorcall_O",
            "inner:3",
            "_PyEval_Vector",
            "<module>:9",
            "_PyEval_Vector",
            "PyEval_EvalCode"
        ]
    );
}

#[test]
fn python_3_11_one_eval_frame_runs_frames_up_to_its_entry() {
    let stack = [
        native("PyObject_Malloc"),
        native("list_append"),
        native("_PyEval_EvalFrameDefault"),
        inlined("_PyEval_EvalFrame"),
        native("_PyEval_Vector"),
        native("gen_send_ex2"),
        native("_PyEval_EvalFrameDefault"),
        native("PyEval_EvalCode"),
    ];
    let python = [
        py("c", 30, false),
        py("b", 20, false),
        py("a", 10, true),
        py("gen", 40, false),
        py("<module>", 50, true),
    ];
    let out = splice(&stack, &python, EvalStyle::Entries);
    assert_eq!(
        names(&out),
        [
            "PyObject_Malloc",
            "list_append",
            "c:30",
            "b:20",
            "a:10",
            "_PyEval_Vector",
            "gen_send_ex2",
            "gen:40",
            "<module>:50",
            "PyEval_EvalCode"
        ]
    );
}

#[test]
fn eval_frames_without_python_frames_stay_native_and_flagged() {
    let stack = [
        native("malloc"),
        native("_PyEval_EvalFrameDefault"),
        inlined("_PyEval_EvalFrame"),
        native("_PyEval_Vector"),
        native("_PyEval_EvalFrameDefault"),
        inlined("_PyEval_EvalFrame"),
        native("main"),
    ];
    // The kernel stopped after one frame.
    let out = splice(&stack, &[py("f", 1, false)], EvalStyle::PerFrame);
    assert_eq!(
        names(&out),
        [
            "malloc",
            "f:1",
            "_PyEval_Vector",
            "_PyEval_EvalFrameDefault!",
            "_PyEval_EvalFrame",
            "main"
        ]
    );
    // No Python frames at all: every eval frame says so.
    let out = splice(&stack, &[], EvalStyle::Entries);
    assert_eq!(out.iter().filter(|frame| frame.python_unmatched).count(), 2);
    assert!(out.iter().all(|frame| frame.kind == FrameKind::Native));
}

#[test]
fn python_frames_beyond_a_cut_native_stack_are_not_attached_elsewhere() {
    // The native stack ends inside the first eval call's caller.
    let stack = [
        native("malloc"),
        native("_PyEval_EvalFrameDefault"),
        native("_PyEval_Vector"),
    ];
    let python = [py("f", 1, true), py("g", 2, true), py("h", 3, true)];
    let out = splice(&stack, &python, EvalStyle::Entries);
    assert_eq!(names(&out), ["malloc", "f:1", "_PyEval_Vector"]);
}

#[test]
fn a_run_without_its_entry_frame_keeps_the_eval_frame_flagged() {
    let stack = [
        native("malloc"),
        native("_PyEval_EvalFrameDefault"),
        inlined("_PyEval_EvalFrame"),
        native("main"),
    ];
    // Read stopped before the entry frame of the only call.
    let python = [py("deep", 5, false), py("deeper", 6, false)];
    let out = splice(&stack, &python, EvalStyle::Entries);
    assert_eq!(
        names(&out),
        [
            "malloc",
            "deep:5",
            "deeper:6",
            "_PyEval_EvalFrameDefault!",
            "_PyEval_EvalFrame",
            "main"
        ]
    );
}

#[test]
fn a_wrapper_not_next_to_a_replaced_eval_frame_stays() {
    let stack = [
        native("PyEval_EvalFrameEx"),
        native("caller"),
        native("_PyEval_EvalFrameDefault.part.0"),
    ];
    let out = splice(&stack, &[py("f", 1, false)], EvalStyle::PerFrame);
    assert_eq!(names(&out), ["PyEval_EvalFrameEx", "caller", "f:1"]);
    // In 2.7 PyEval_EvalFrameEx is the loop itself.
    let out = splice(&stack, &[py("f", 1, false)], EvalStyle::PerFrame27);
    assert_eq!(
        names(&out),
        ["f:1", "caller", "_PyEval_EvalFrameDefault.part.0"]
    );
}

#[test]
fn styles_follow_the_layout() {
    let style = |major, minor| {
        EvalStyle::of(
            &PythonLayout::for_version(PythonVersion {
                major,
                minor,
                micro: 0,
            })
            .unwrap(),
        )
    };
    assert_eq!(style(2, 7), EvalStyle::PerFrame27);
    assert_eq!(style(3, 6), EvalStyle::PerFrame);
    assert_eq!(style(3, 10), EvalStyle::PerFrame);
    assert_eq!(style(3, 11), EvalStyle::Entries);
    assert_eq!(style(3, 13), EvalStyle::Entries);
}

struct Unmapped;

impl Memory for Unmapped {
    fn read(&self, addr: u64, _: &mut [u8]) -> Result<()> {
        bail!("unmapped {addr:#x}")
    }
}

#[test]
fn an_unreadable_code_object_keeps_its_place() {
    let layout = PythonLayout::for_version(PythonVersion {
        major: 3,
        minor: 12,
        micro: 1,
    })
    .unwrap();
    let raw = [
        RawPythonFrame {
            code: 0x1234,
            instr: 0,
            entry: false,
        },
        RawPythonFrame {
            code: 0x5678,
            instr: 0,
            entry: true,
        },
    ];
    let mut cache = CodeCache::default();
    let sent = name_frames(&mut cache, &Unmapped, &layout, 9, &raw);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].frame.function, "[python code 0x1234]");
    assert!(sent[1].entry);
    let out = splice(
        &[native("_PyEval_EvalFrameDefault")],
        &sent,
        EvalStyle::Entries,
    );
    assert_eq!(out.len(), 2);
    assert!(out[0].file.is_none());
    assert_eq!(out[0].kind, FrameKind::Python);
}
