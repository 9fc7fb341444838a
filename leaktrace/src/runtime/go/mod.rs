//! Go: programs with no malloc/free to trace. The runtime maps its heap with
//! raw syscalls and frees by garbage collection, and a uretprobe on Go code
//! crashes it (goroutine stacks move). What is read instead, from outside:
//! which Go release built a binary, its functions and lines from
//! `.gopclntab` (kept even in stripped binaries), its goroutines from the
//! runtime's own tables, and its heap through the runtime's profile buckets
//! or growth mode's page faults.
