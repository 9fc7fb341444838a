/*
 * The demo's leaking "service": handles requests on a few worker threads.
 * Most memory is temporary and freed; two bugs keep some of it forever:
 *  - every 10th request's session is put in a cache that is never evicted
 *    (remember_session: 10 000 requests -> 1000 sessions of 256 bytes);
 *  - an error path forgets to free its copy of the request line
 *    (log_bad_request: every 50th request, 200 x 64 bytes).
 * Build: cc -O1 -g -fno-omit-frame-pointer -fno-inline -pthread
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKERS 4
#define REQUESTS_PER_WORKER 2500

struct session { char user[200]; long id; char pad[48]; };

/* Global and read at exit, so the compiler cannot drop the leaking stores. */
struct session *cache[WORKERS][REQUESTS_PER_WORKER];
char *bad_lines[WORKERS][REQUESTS_PER_WORKER];

__attribute__((noinline)) static struct session *new_session(long id) {
    struct session *s = malloc(sizeof *s);
    snprintf(s->user, sizeof s->user, "user-%ld", id);
    s->id = id;
    return s;
}

__attribute__((noinline)) static void remember_session(int worker, int n, struct session *s) {
    cache[worker][n] = s; /* never evicted: the leak */
}

__attribute__((noinline)) static void log_bad_request(int worker, int n, const char *line) {
    char *copy = malloc(64);
    strncpy(copy, line, 63);
    copy[63] = 0;
    bad_lines[worker][n] = copy; /* forgot free(copy) */
}

__attribute__((noinline)) static void handle_request(int worker, int n) {
    char *body = malloc(4096); /* temporary, freed below */
    snprintf(body, 4096, "GET /item/%d HTTP/1.1", n);
    struct session *s = new_session((long)worker * REQUESTS_PER_WORKER + n);
    if (n % 10 == 0)
        remember_session(worker, n, s);
    else
        free(s);
    if (n % 50 == 0)
        log_bad_request(worker, n, body);
    free(body);
}

static void *worker_main(void *arg) {
    int worker = (int)(long)arg;
    for (int n = 0; n < REQUESTS_PER_WORKER; n++)
        handle_request(worker, n);
    return NULL;
}

int main(void) {
    pthread_t threads[WORKERS];
    for (long i = 0; i < WORKERS; i++)
        pthread_create(&threads[i], NULL, worker_main, (void *)i);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);
    int cached = 0, bad = 0;
    for (int w = 0; w < WORKERS; w++)
        for (int n = 0; n < REQUESTS_PER_WORKER; n++) {
            cached += cache[w][n] != NULL;
            bad += bad_lines[w][n] != NULL;
        }
    printf("served %d requests, %d sessions cached, %d bad requests logged\n",
           WORKERS * REQUESTS_PER_WORKER, cached, bad);
    return 0;
}
