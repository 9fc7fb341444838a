//! The expected leaks of `tests/fixtures/leaky.c`: one row per leaking call
//! site (function, accepted allocator names, bytes, count, caller, heap or
//! mapped), the functions that must never appear in a report, and the
//! variant of the table for runs without pvalloc.

/// Heap block (malloc family, valgrind sees it) or mapped region (mmap,
/// valgrind does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Memory {
    Heap,
    Mapped,
}

/// One leaking call site of `leaky`: the function that calls the allocator
/// (`frames[0]`), the allocator names accepted for the site, the bytes and
/// allocations outstanding at exit, and the function that calls it
/// (`frames[1]`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Leak {
    pub function: &'static str,
    pub allocators: &'static [&'static str],
    pub bytes: u64,
    pub count: u64,
    pub caller: &'static str,
    pub memory: Memory,
}

const fn leak(
    function: &'static str,
    allocators: &'static [&'static str],
    bytes: u64,
    count: u64,
    caller: &'static str,
    memory: Memory,
) -> Leak {
    Leak {
        function,
        allocators,
        bytes,
        count,
        caller,
        memory,
    }
}

pub(crate) const PAGE: u64 = 4096;

/// What `leaky` leaves outstanding, per call site, derived from
/// tests/fixtures/leaky.c (whose header carries the same table) and
/// confirmed for every heap row by valgrind memcheck 3.19
/// (`valgrind_confirms_expected_table` redoes that check on every run).
/// The mmap rows are checked by reasoning: valgrind does not track mmap.
pub(crate) const EXPECTED_LEAKS: &[Leak] = &[
    // 4 x malloc(1111)
    leak(
        "leak_malloc",
        &["malloc"],
        4 * 1111,
        4,
        "main",
        Memory::Heap,
    ),
    // 3 x calloc(7, 111)
    leak(
        "leak_calloc",
        &["calloc"],
        3 * 7 * 111,
        3,
        "main",
        Memory::Heap,
    ),
    // malloc(200) moved by realloc(p, 50000): the realloc site, new size
    leak(
        "leak_realloc_move",
        &["realloc"],
        50000,
        1,
        "main",
        Memory::Heap,
    ),
    // malloc(3333), then realloc(p, SIZE_MAX/2) fails: p stays at the malloc site
    leak(
        "leak_realloc_fail",
        &["malloc"],
        3333,
        1,
        "main",
        Memory::Heap,
    ),
    // 2 x realloc(NULL, 1234): a malloc, through realloc
    leak(
        "leak_realloc_null",
        &["realloc"],
        2 * 1234,
        2,
        "main",
        Memory::Heap,
    ),
    // 2 x reallocarray(NULL, 9, 123)
    leak(
        "leak_reallocarray",
        &["reallocarray"],
        2 * 9 * 123,
        2,
        "main",
        Memory::Heap,
    ),
    // 2 x posix_memalign(&p, 64, 1600)
    leak(
        "leak_posix_memalign",
        &["posix_memalign"],
        2 * 1600,
        2,
        "main",
        Memory::Heap,
    ),
    // aligned_alloc(128, 1280)
    leak(
        "leak_aligned_alloc",
        &["aligned_alloc", "memalign"],
        1280,
        1,
        "main",
        Memory::Heap,
    ),
    // memalign(256, 2560): glibc's memalign and aligned_alloc share an address
    leak(
        "leak_memalign",
        &["memalign", "aligned_alloc"],
        2560,
        1,
        "main",
        Memory::Heap,
    ),
    // valloc(4000)
    leak("leak_valloc", &["valloc"], 4000, 1, "main", Memory::Heap),
    // pvalloc(5000): glibc hands out 8192, the request (5000) is reported
    leak("leak_pvalloc", &["pvalloc"], 5000, 1, "main", Memory::Heap),
    // mmap of 16 pages, munmap of pages 6..9: 12 pages in two pieces, one allocation
    leak(
        "leak_mmap_partial",
        &["mmap"],
        12 * PAGE,
        1,
        "main",
        Memory::Mapped,
    ),
    // mmap(3 pages + 100 bytes): rounded up to 4 pages
    leak(
        "leak_mmap_round",
        &["mmap"],
        4 * PAGE,
        1,
        "main",
        Memory::Mapped,
    ),
    // 4 threads x 5 x malloc(333): one site (same stack in every thread)
    leak(
        "leak_in_thread",
        &["malloc"],
        4 * 5 * 333,
        20,
        "thread_main",
        Memory::Heap,
    ),
];

/// Functions of `leaky` whose allocations are all freed (or failed): they
/// must not appear in any frame of any reported site.
pub(crate) const TEMPORARY_FUNCTIONS: &[&str] = &[
    "churn_temporaries",
    "realloc_to_zero",
    "free_null",
    "overflowing_calls",
    "thread_temporary",
];

/// Environment variable that makes `leaky` skip every pvalloc call
/// (valgrind 3.19 aborts the program at the first pvalloc).
pub(crate) const SKIP_PVALLOC: &str = "LEAKY_SKIP_PVALLOC";

/// The table without the rows `leaky` does not produce when run with
/// `LEAKY_SKIP_PVALLOC=1`.
pub(crate) fn expected_without_pvalloc() -> Vec<Leak> {
    EXPECTED_LEAKS
        .iter()
        .copied()
        .filter(|l| l.function != "leak_pvalloc")
        .collect()
}
