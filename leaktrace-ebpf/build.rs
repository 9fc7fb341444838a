//! Rebuild when bpf-linker changes: the eBPF object is linked by it, and a
//! new linker can change the object without any source change.
fn main() {
    let bpf_linker = which::which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` (it installs the pinned version)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
