//! The function a goroutine really starts. A `go` statement that passes
//! arguments (`go check(i, ch)`) starts a closure the compiler generates at
//! the statement (`main.round.gowrap1` since 1.22, `main.round.func1`
//! before), which calls the function named in the statement: that callee,
//! not the wrapper, is what a reader looks for (the runtime's own stack
//! dumps show it as the goroutine's first frame).
//!
//! A wrapper is recognized by its name and its position (declared at the
//! `go` statement's own file and line); its callee is its first direct
//! call to code outside package `runtime` (the prologue's stack check calls
//! `runtime.morestack_noctxt`).
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction};

/// Code bytes read from a wrapper's entry: they are 40 to 80 bytes long.
pub(crate) const WRAPPER_CODE: usize = 160;

/// Whether a function named `name` may be a compiler-generated `go`
/// wrapper: `X.gowrapN`, or `X.funcN` (before 1.22) when it is declared
/// at the `go` statement itself (`at_go_statement`).
pub(crate) fn may_be_wrapper(name: &str, at_go_statement: bool) -> bool {
    let Some((_, last)) = name.rsplit_once('.') else {
        return false;
    };
    let numbered = |prefix: &str| {
        last.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    at_go_statement && (numbered("gowrap") || numbered("func"))
}

/// The targets of the direct calls in `code` (at `address`), in order,
/// up to its first return.
pub(crate) fn call_targets(code: &[u8], address: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut targets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        match instruction.flow_control() {
            FlowControl::Call if instruction.near_branch_target() != 0 => {
                targets.push(instruction.near_branch_target());
            }
            FlowControl::Return => break,
            _ => {}
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrappers_are_named_and_placed_as_the_compiler_makes_them() {
        assert!(may_be_wrapper("main.round.gowrap1", true));
        assert!(may_be_wrapper("main.round.func12", true));
        assert!(!may_be_wrapper("main.round.func1", false));
        assert!(!may_be_wrapper("main.check", true));
        assert!(!may_be_wrapper("main.round.gowrap", true));
        assert!(!may_be_wrapper("gowrap1", true));
    }

    #[test]
    fn calls_are_read_in_order_until_the_return() {
        // call +0x10; nop; call -0x20; ret; call +0
        let code = [
            0xe8, 0x10, 0, 0, 0, 0x90, 0xe8, 0xe0, 0xff, 0xff, 0xff, 0xc3, 0xe8, 0, 0, 0, 0,
        ];
        let targets = call_targets(&code, 0x1000);
        assert_eq!(targets, [0x1000 + 5 + 0x10, 0x1000 + 11 - 0x20]);
    }
}
