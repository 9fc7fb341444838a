/*
 * The benchmark loop: N pairs of malloc(64) + free, timed inside the
 * process (startup and attach are not counted). Prints ns per pair.
 * Usage: pairs N
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void *volatile sink; /* keeps the compiler from eliding the pair */

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < n; i++) {
        sink = malloc(64);
        free(sink);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.1f\n", ns / n);
    return 0;
}
