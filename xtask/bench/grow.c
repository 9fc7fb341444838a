/*
 * The worst case for growth mode: a process that does nothing but grow.
 * Allocates MIB blocks of 1 MiB, writes each (256 new pages), keeps them;
 * timed inside the process. Prints ns per MiB grown.
 * Usage: grow MIB
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 200;
    char **kept = calloc(mib, sizeof *kept);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < mib; i++) {
        kept[i] = malloc(1 << 20);
        memset(kept[i], 0x5a, 1 << 20);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.1f\n", ns / mib);
    return kept[mib - 1][0] == 0x5a ? 0 : 1;
}
