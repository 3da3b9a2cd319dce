/*
 * mallinfo-shim: preloaded into a soak, it writes each `percore serve` process's memory once a
 * second to $MISHIM_DIR/PID.tsv (first line: the command line): VmRSS and RssAnon (KiB) and
 * glibc's mallinfo2(): arena (bytes the arenas hold from the system), uordblks (in use),
 * fordblks (free inside the arenas), hblkhd (mapped blocks), keepcost (releasable top).
 * It tells the engine's heap in use from free memory the arenas keep
 * (bench/results/2026-12-02-direct-send.md, section 3). Other processes are left alone.
 *
 *   gcc -O2 -shared -fPIC -o mishim.so scripts/mallinfo-shim.c -lpthread
 *   MISHIM_DIR=/tmp/mi LD_PRELOAD=$PWD/mishim.so ./target/release/percore soak --minutes 1 --backends epoll
 *
 * Its own thread adds one small arena (constant). mallinfo2 takes each arena's lock once a
 * second: not for timing runs.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
static char g_cmd[4096]; static size_t g_n;
static void *loop(void *arg) {
    (void)arg;
    char path[256];
    snprintf(path, sizeof path, "%s/%d.tsv", getenv("MISHIM_DIR") ? getenv("MISHIM_DIR") : "/tmp", getpid());
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fprintf(f, "#");
    for (size_t i = 0; i < g_n; i += strlen(g_cmd + i) + 1) fprintf(f, " %s", g_cmd + i);
    fprintf(f, "\n");
    fprintf(f, "t\trss_kib\tanon_kib\tarena\tuord\tford\thblkhd\tkeepcost\n");
    struct timespec t0; clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct mallinfo2 m = mallinfo2();
        long rss = -1, anon = -1;
        FILE *s = fopen("/proc/self/status", "r");
        char line[256];
        while (s && fgets(line, sizeof line, s)) {
            if (!strncmp(line, "VmRSS:", 6)) rss = atol(line + 6);
            if (!strncmp(line, "RssAnon:", 8)) anon = atol(line + 8);
        }
        if (s) fclose(s);
        struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
        fprintf(f, "%.1f\t%ld\t%ld\t%zu\t%zu\t%zu\t%zu\t%zu\n", (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9,
                rss, anon, m.arena, m.uordblks, m.fordblks, m.hblkhd, m.keepcost);
        fflush(f);
        sleep(1);
    }
    return NULL;
}
__attribute__((constructor)) static void init(void) {
    char cmd[4096] = {0};
    FILE *c = fopen("/proc/self/cmdline", "r");
    if (!c) return;
    size_t n = fread(cmd, 1, sizeof cmd - 1, c); fclose(c);
    int serve = 0;
    for (size_t i = 0; i < n; i += strlen(cmd + i) + 1) if (!strcmp(cmd + i, "serve")) serve = 1;
    if (!serve) return;
    memcpy(g_cmd, cmd, n); g_n = n;
    pthread_t th; pthread_create(&th, NULL, loop, NULL); pthread_detach(th);
}
