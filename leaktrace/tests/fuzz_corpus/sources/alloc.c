/* A made-up allocator: the symbols leaktrace probes, each starting the
 * way real ones do (a flags-only test, a push, a jump), so the ELF seed
 * goes through symbol reading, placement and the branch scan. */
typedef unsigned long size_t;
static char arena[4096];
static size_t used;

int __libc_start_main(void) { return 0; }

void *malloc(size_t n) {
    if (n > sizeof arena - used) return 0;
    used += n;
    return arena + used - n;
}
void free(void *p) {
    if (!p) return;
    used = 0;
}
void *calloc(size_t n, size_t m) { return malloc(n * m); }
void *realloc(void *p, size_t n) { free(p); return malloc(n); }
void *mmap64(void *a, size_t l, int p, int f, int fd, long o) { return a ? a : malloc(l); }
void *aligned_alloc(size_t a, size_t n) { return malloc(n + a); }
void *memalign(size_t a, size_t n) __attribute__((alias("aligned_alloc")));
int posix_memalign(void **out, size_t a, size_t n) { *out = malloc(n + a); return 0; }
static void *_PyObject_Malloc(void *ctx, size_t n) { return malloc(n); }
void *(*PyObject_Malloc)(void *, size_t) = _PyObject_Malloc;
