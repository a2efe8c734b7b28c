/* Single-core memcpy bandwidth, one line per message size.
 *
 * usage: memcpy_bw CPU MIN_TRIAL_SECONDS TRIALS SIZE...
 *
 * For each SIZE: two page-aligned buffers of SIZE bytes, both written once
 * (so no page faults are timed), a short warm-up, then TRIALS timed trials
 * of N back-to-back memcpy(dst, src, SIZE) calls, N calibrated so that one
 * trial lasts at least MIN_TRIAL_SECONDS. The process is pinned to CPU.
 * Nothing is flushed between copies: small sizes run from L1/L2, large ones
 * from L3 or DRAM, exactly as a repeated copy of that size would on this
 * machine. GB/s = SIZE * N / seconds / 1e9 (bytes copied, not read+written).
 *
 * Output, one line per size:
 *   <size> <trials> <median GB/s> <min GB/s> <max GB/s> <copies per trial>
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void *(*volatile copy_fn)(void *, const void *, size_t) = memcpy;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double run(char *dst, const char *src, size_t size, long n)
{
    double t0 = now();
    for (long i = 0; i < n; i++) {
        copy_fn(dst, src, size);
        __asm__ volatile("" ::: "memory");
    }
    return now() - t0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s CPU MIN_TRIAL_SECONDS TRIALS SIZE...\n", argv[0]);
        return 2;
    }
    int cpu = atoi(argv[1]);
    double min_s = atof(argv[2]);
    int trials = atoi(argv[3]);
    if (trials < 1 || trials > 1000 || min_s <= 0) {
        fprintf(stderr, "bad TRIALS or MIN_TRIAL_SECONDS\n");
        return 2;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        perror("sched_setaffinity (continuing unpinned)");

    double *gbps = calloc(trials, sizeof *gbps);
    for (int a = 4; a < argc; a++) {
        size_t size = strtoull(argv[a], NULL, 0);
        if (size == 0) {
            fprintf(stderr, "bad size %s\n", argv[a]);
            return 2;
        }
        size_t alloc = (size + 4095) & ~(size_t)4095;
        char *src, *dst;
        if (posix_memalign((void **)&src, 4096, alloc) || posix_memalign((void **)&dst, 4096, alloc)) {
            fprintf(stderr, "out of memory for %zu\n", size);
            return 1;
        }
        memset(src, 0x5a, alloc);
        memset(dst, 0xa5, alloc);
        /* Calibrate: double n until one trial takes >= min_s / 4, then scale. */
        long n = 1;
        double t;
        for (;;) {
            t = run(dst, src, size, n);
            if (t >= min_s / 4 || n > (1L << 40))
                break;
            n *= 2;
        }
        n = (long)(n * (min_s / t)) + 1;
        run(dst, src, size, n / 4 + 1); /* warm-up */
        for (int i = 0; i < trials; i++) {
            t = run(dst, src, size, n);
            gbps[i] = (double)size * n / t / 1e9;
        }
        qsort(gbps, trials, sizeof *gbps, cmp_double);
        printf("%zu %d %.6f %.6f %.6f %ld\n", size, trials, gbps[trials / 2], gbps[0],
               gbps[trials - 1], n);
        fflush(stdout);
        free(src);
        free(dst);
    }
    free(gbps);
    return 0;
}
