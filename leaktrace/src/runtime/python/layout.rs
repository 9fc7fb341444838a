//! Where `CPython` keeps what a frame walker reads: the current thread
//! state, the frame chain, the instruction position, and in each code object
//! its name, file, first line and line table.
//!
//! Why a table per minor version: none of these structures is a stable ABI.
//! They change between minor releases (3.11 replaced frame objects with
//! `_PyInterpreterFrame`, 3.12 moved the thread state off `_PyRuntime`) but
//! not within one, so `(major, minor)` picks the table. Both halves use the
//! same numbers: the kernel walker follows pointers with them, userspace reads
//! code objects with them. Every offset was printed by `offsetof` against the
//! version's own headers, and a test recompiles that oracle for each installed
//! version (`layout_tests.rs`).
//!
//! An offset a version does not have is [`ABSENT`] (or [`ABSENT32`]), so the
//! struct stays plain numbers that can be copied into a kernel map as is.
use super::version::PythonVersion;

/// A `u16` offset this version does not have.
pub(crate) const ABSENT: u16 = u16::MAX;
/// A `u32` offset this version does not have.
pub(crate) const ABSENT32: u32 = u32::MAX;

/// Where the walker finds the GIL holder's thread state: its first guess
/// at the allocating thread's own, right whenever that thread runs Python
/// (it then holds the GIL). Otherwise (a thread in C code that released
/// the GIL, or one that never ran Python) the walker looks for the
/// thread's own in the interpreters' thread lists: `interp_head` (2.7,
/// 3.6, a LOCAL symbol) or `_PyRuntime` + `runtime_interpreters_head`
/// (3.7+), then `interp_tstate_head`, `tstate_next` and `interp_next`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ThreadStateSource {
    /// 2.7, 3.6: the global `_PyThreadState_Current` (a dynamic symbol)
    /// holds the thread state of the thread that holds the GIL.
    CurrentSymbol,
    /// 3.7–3.11: `_PyRuntime` + `runtime_tstate_current`
    /// (`gilstate.tstate_current`), the GIL holder's thread state.
    RuntimeTstateCurrent,
    /// 3.12, 3.13: nothing global names the current thread any more (the
    /// thread-local `_Py_tss_tstate` is a LOCAL TLS symbol, gone from
    /// stripped builds such as Debian's). The GIL's last holder stands in:
    /// `_PyRuntime` + `runtime_interpreters_main` is the main interpreter,
    /// and interpreter + `interp_gil_last_holder` is the thread state that
    /// took the GIL last (the interpreter's own `_gil`, which `ceval.gil`
    /// points to). It may be another thread's by now: the walker checks
    /// its `thread_id` against the current thread, as for every source.
    GilLastHolder,
}

/// What the thread state's frame field points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameChain {
    /// ≤3.10: `tstate->frame` is a `PyFrameObject`, chained by `f_back`.
    FrameObject,
    /// 3.11, 3.12: `tstate->cframe` is a `_PyCFrame`; its `current_frame`
    /// is a `_PyInterpreterFrame`, chained by `previous`.
    CFrame,
    /// 3.13: `tstate->current_frame` is the `_PyInterpreterFrame` itself.
    CurrentFrame,
}

/// How a walker sees where one native `_PyEval_EvalFrameDefault` call
/// starts in the frame chain (3.11+ runs several Python frames per call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryMarker {
    /// ≤3.10: one native eval call per frame, no marker needed.
    None,
    /// 3.11: the byte at `frame_entry` (`is_entry`) is nonzero on the
    /// outermost frame of each call: that frame is the entry frame.
    IsEntry,
    /// 3.12+: each call pushes a shim frame whose byte at `frame_entry`
    /// (`owner`) equals this value (`FRAME_OWNED_BY_CSTACK`). It is not a
    /// Python frame: the walker skips it and marks the frame before it
    /// (innermost side) as the entry frame.
    OwnerCstack(u8),
}

/// What the frame's instruction field holds, and how it becomes a byte
/// offset into the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InstrUnit {
    /// ≤3.9: `f_lasti` (int) counts bytes; -1 before the first instruction.
    LastiBytes,
    /// 3.10: `f_lasti` (int) counts 2-byte code units; -1 before the first.
    LastiCodeUnits,
    /// 3.11+: a pointer (`prev_instr`, `instr_ptr`) to the instruction being
    /// run, inside the code object's `co_code_adaptive`.
    Pointer,
}

/// Which encoding the code object's line table has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineTableFormat {
    /// ≤3.9 `co_lnotab`: (byte delta, line delta) pairs; line deltas are
    /// signed from 3.6 on.
    Lnotab { signed_lines: bool },
    /// 3.10 `co_linetable`: (byte delta, signed line delta) pairs, -128 = no line.
    Linetable310,
    /// 3.11+ location table: varint entries of code units and positions.
    Locations,
}

/// The offsets, in bytes, a frame walker and a code object reader need for
/// one minor version. Field names say what they hold across versions; each
/// doc says which C field that is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PythonLayout {
    pub major: u8,
    pub minor: u8,
    pub tstate_source: ThreadStateSource,
    /// 3.7–3.11: `_PyRuntimeState.gilstate.tstate_current`.
    pub runtime_tstate_current: u32,
    /// 3.12+: `_PyRuntimeState.interpreters.main`.
    pub runtime_interpreters_main: u32,
    /// 3.12+: `PyInterpreterState._gil.last_holder`.
    pub interp_gil_last_holder: u32,
    /// 3.7+: `_PyRuntimeState.interpreters.head`, the newest interpreter
    /// (2.7, 3.6: the static `interp_head` of pystate.c).
    pub runtime_interpreters_head: u32,
    /// `PyInterpreterState.next`.
    pub interp_next: u32,
    /// `PyInterpreterState.tstate_head` (≤3.10), `.threads.head` (3.11+):
    /// the newest thread state; the list goes on by `tstate_next`.
    pub interp_tstate_head: u32,
    pub frame_chain: FrameChain,
    /// `PyThreadState.frame` (≤3.10), `.cframe` (3.11, 3.12),
    /// `.current_frame` (3.13).
    pub tstate_frame: u16,
    /// `PyThreadState.thread_id` (`pthread_self()`).
    pub tstate_thread_id: u16,
    /// `PyThreadState.native_thread_id` (the kernel's tid): 3.11+ only.
    pub tstate_native_thread_id: u16,
    /// `PyThreadState.interp`.
    pub tstate_interp: u16,
    /// `PyThreadState.next`: the next older thread state of the interpreter.
    pub tstate_next: u16,
    /// `_PyCFrame.current_frame` (3.11, 3.12).
    pub cframe_current_frame: u16,
    /// `PyFrameObject.f_back` (≤3.10), `_PyInterpreterFrame.previous` (3.11+).
    pub frame_back: u16,
    /// `f_code` (≤3.12), `_PyInterpreterFrame.f_executable` (3.13).
    pub frame_code: u16,
    /// `f_lasti` (≤3.10, an int), `prev_instr` (3.11, 3.12), `instr_ptr`
    /// (3.13), pointers.
    pub frame_lasti: u16,
    /// `_PyInterpreterFrame.is_entry` (3.11), `.owner` (3.12+): one byte.
    pub frame_entry: u16,
    pub entry_marker: EntryMarker,
    pub instr_unit: InstrUnit,
    /// `PyCodeObject.co_name`, `co_filename`, `co_firstlineno` (an int).
    pub code_name: u16,
    pub code_filename: u16,
    pub code_firstlineno: u16,
    /// `co_lnotab` (≤3.9) or `co_linetable` (3.10+): a bytes object.
    pub code_line_table: u16,
    pub line_table_format: LineTableFormat,
    /// ≤3.10: `co_code`, a pointer to the bytes object of the bytecode.
    /// 3.11+: `co_code_adaptive`, the bytecode itself, inline in the code
    /// object: instruction pointers are relative to `code + code_code`.
    pub code_code: u16,
    /// Where a string's characters start: `PyStringObject.ob_sval` (2.7),
    /// `sizeof(PyASCIIObject)` for compact ASCII `str` (3.x).
    pub string_data: u16,
    /// `ob_size` (2.7), `PyASCIIObject.length` (3.x, in code points).
    pub string_length: u16,
    /// 3.x: `PyASCIIObject.state`: bits 2–4 kind, bit 5 compact, bit 6
    /// ascii (the same bits in 3.6–3.13).
    pub unicode_state: u16,
    /// 3.x: where a compact non-ASCII string's data starts
    /// (`sizeof(PyCompactUnicodeObject)`).
    pub unicode_compact_data: u16,
    /// 3.x: `PyCompactUnicodeObject.utf8` and `.utf8_length` (a cached
    /// UTF-8 copy, often NULL).
    pub unicode_utf8: u16,
    pub unicode_utf8_length: u16,
    /// `PyBytesObject.ob_sval` and `ob_size` (`PyStringObject` in 2.7).
    pub bytes_data: u16,
    pub bytes_size: u16,
}

/// The fields every 3.x table shares: compact strings and bytes objects.
const fn py3(major: u8, minor: u8) -> PythonLayout {
    let small_unicode = minor >= 12; // 3.12 dropped `wstr` and `ready`.
    PythonLayout {
        major,
        minor,
        tstate_source: ThreadStateSource::RuntimeTstateCurrent,
        runtime_tstate_current: ABSENT32,
        runtime_interpreters_main: ABSENT32,
        interp_gil_last_holder: ABSENT32,
        runtime_interpreters_head: ABSENT32,
        interp_next: 0,
        interp_tstate_head: 8,
        frame_chain: FrameChain::FrameObject,
        tstate_frame: 24,
        tstate_thread_id: 176,
        tstate_native_thread_id: ABSENT,
        tstate_interp: 16,
        tstate_next: 8,
        cframe_current_frame: ABSENT,
        frame_back: 24,
        frame_code: 32,
        frame_lasti: 104,
        frame_entry: ABSENT,
        entry_marker: EntryMarker::None,
        instr_unit: InstrUnit::LastiBytes,
        code_name: 112,
        code_filename: 104,
        code_firstlineno: 40,
        code_line_table: 120,
        line_table_format: LineTableFormat::Lnotab { signed_lines: true },
        code_code: 48,
        string_data: if small_unicode { 40 } else { 48 },
        string_length: 16,
        unicode_state: 32,
        unicode_compact_data: if small_unicode { 56 } else { 72 },
        unicode_utf8: if small_unicode { 48 } else { 56 },
        unicode_utf8_length: if small_unicode { 40 } else { 48 },
        bytes_data: 32,
        bytes_size: 16,
    }
}

const PY27: PythonLayout = PythonLayout {
    tstate_source: ThreadStateSource::CurrentSymbol,
    tstate_frame: 16,
    tstate_thread_id: 144,
    tstate_interp: 8,
    tstate_next: 0,
    frame_lasti: 120,
    code_name: 88,
    code_filename: 80,
    code_firstlineno: 96,
    code_line_table: 104,
    line_table_format: LineTableFormat::Lnotab {
        signed_lines: false,
    },
    code_code: 32,
    string_data: 36,
    string_length: 16,
    unicode_state: ABSENT,
    unicode_compact_data: ABSENT,
    unicode_utf8: ABSENT,
    unicode_utf8_length: ABSENT,
    bytes_data: 36,
    ..py3(2, 7)
};

const PY36: PythonLayout = PythonLayout {
    tstate_source: ThreadStateSource::CurrentSymbol,
    tstate_thread_id: 152,
    frame_lasti: 120,
    code_name: 104,
    code_filename: 96,
    code_firstlineno: 36,
    code_line_table: 112,
    code_code: 40,
    ..py3(3, 6)
};

const PY37: PythonLayout = PythonLayout {
    runtime_tstate_current: 1480,
    runtime_interpreters_head: 24,
    code_name: 104,
    code_filename: 96,
    code_firstlineno: 36,
    code_line_table: 112,
    code_code: 40,
    ..py3(3, 7)
};

const PY38: PythonLayout = PythonLayout {
    runtime_tstate_current: 1368,
    runtime_interpreters_head: 32,
    ..py3(3, 8)
};

const PY39: PythonLayout = PythonLayout {
    runtime_tstate_current: 568,
    runtime_interpreters_head: 32,
    ..py3(3, 9)
};

const PY310: PythonLayout = PythonLayout {
    runtime_tstate_current: 568,
    runtime_interpreters_head: 32,
    frame_lasti: 96,
    instr_unit: InstrUnit::LastiCodeUnits,
    line_table_format: LineTableFormat::Linetable310,
    ..py3(3, 10)
};

/// 3.11's frame and code fields (3.12 changes a few of them), with the
/// strings of `minor`.
const fn py311_frames(minor: u8) -> PythonLayout {
    PythonLayout {
        runtime_interpreters_head: 40,
        interp_tstate_head: 16,
        frame_chain: FrameChain::CFrame,
        tstate_frame: 56,
        tstate_thread_id: 152,
        tstate_native_thread_id: 160,
        cframe_current_frame: 8,
        frame_back: 48,
        frame_code: 32,
        frame_lasti: 56,
        frame_entry: 68,
        entry_marker: EntryMarker::IsEntry,
        instr_unit: InstrUnit::Pointer,
        code_name: 120,
        code_filename: 112,
        code_firstlineno: 72,
        code_line_table: 136,
        line_table_format: LineTableFormat::Locations,
        code_code: 184,
        ..py3(3, minor)
    }
}

const PY311: PythonLayout = PythonLayout {
    runtime_tstate_current: 576,
    ..py311_frames(11)
};

const PY312: PythonLayout = PythonLayout {
    tstate_source: ThreadStateSource::GilLastHolder,
    runtime_interpreters_main: 48,
    interp_gil_last_holder: 1048,
    interp_tstate_head: 72,
    tstate_thread_id: 136,
    tstate_native_thread_id: 144,
    cframe_current_frame: 0,
    frame_back: 8,
    frame_code: 0,
    frame_entry: 70,
    entry_marker: EntryMarker::OwnerCstack(3),
    code_firstlineno: 68,
    code_code: 192,
    ..py311_frames(12)
};

const PY313: PythonLayout = PythonLayout {
    runtime_interpreters_main: 640,
    runtime_interpreters_head: 632,
    interp_gil_last_holder: 7760,
    interp_next: 7264,
    interp_tstate_head: 7344,
    frame_chain: FrameChain::CurrentFrame,
    tstate_frame: 72,
    tstate_thread_id: 152,
    tstate_native_thread_id: 160,
    cframe_current_frame: ABSENT,
    code_code: 200,
    ..PY312
};

impl PythonLayout {
    /// The table for `version`'s minor release, or `None` for one this
    /// walker does not know (3.0–3.5, 3.14+): its frames stay native.
    pub(crate) fn for_version(version: PythonVersion) -> Option<PythonLayout> {
        let layout = match (version.major, version.minor) {
            (2, 7) => PY27,
            (3, 6) => PY36,
            (3, 7) => PY37,
            (3, 8) => PY38,
            (3, 9) => PY39,
            (3, 10) => PY310,
            (3, 11) => PY311,
            (3, 12) => PY312,
            (3, 13) => PY313,
            _ => return None,
        };
        Some(layout)
    }

    /// Strings are `PyStringObject` (2.7) rather than `PyUnicodeObject`.
    pub(crate) fn byte_strings(&self) -> bool {
        self.major == 2
    }

    /// Every offset this version has, named as the oracle prints them
    /// (`FRAME_OWNED_BY_CSTACK` included as `frame_owner_cstack`).
    #[cfg(test)]
    pub(crate) fn offsets(&self) -> Vec<(&'static str, u32)> {
        let wide = [
            ("runtime_tstate_current", self.runtime_tstate_current),
            ("runtime_interpreters_main", self.runtime_interpreters_main),
            ("interp_gil_last_holder", self.interp_gil_last_holder),
            ("runtime_interpreters_head", self.runtime_interpreters_head),
            ("interp_next", self.interp_next),
            ("interp_tstate_head", self.interp_tstate_head),
        ];
        let narrow = [
            ("tstate_frame", self.tstate_frame),
            ("tstate_thread_id", self.tstate_thread_id),
            ("tstate_native_thread_id", self.tstate_native_thread_id),
            ("tstate_interp", self.tstate_interp),
            ("tstate_next", self.tstate_next),
            ("cframe_current_frame", self.cframe_current_frame),
            ("frame_back", self.frame_back),
            ("frame_code", self.frame_code),
            ("frame_lasti", self.frame_lasti),
            ("frame_entry", self.frame_entry),
            ("code_name", self.code_name),
            ("code_filename", self.code_filename),
            ("code_firstlineno", self.code_firstlineno),
            ("code_line_table", self.code_line_table),
            ("code_code", self.code_code),
            ("string_data", self.string_data),
            ("string_length", self.string_length),
            ("unicode_state", self.unicode_state),
            ("unicode_compact_data", self.unicode_compact_data),
            ("unicode_utf8", self.unicode_utf8),
            ("unicode_utf8_length", self.unicode_utf8_length),
            ("bytes_data", self.bytes_data),
            ("bytes_size", self.bytes_size),
        ];
        let mut offsets: Vec<(&'static str, u32)> = wide
            .into_iter()
            .filter(|&(_, offset)| offset != ABSENT32)
            .chain(
                narrow
                    .into_iter()
                    .filter(|&(_, offset)| offset != ABSENT)
                    .map(|(name, offset)| (name, u32::from(offset))),
            )
            .collect();
        if let EntryMarker::OwnerCstack(owner) = self.entry_marker {
            offsets.push(("frame_owner_cstack", u32::from(owner)));
        }
        offsets
    }
}
