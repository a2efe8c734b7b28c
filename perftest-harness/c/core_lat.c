/* One-way cross-core shared-memory latency: two threads, pinned to CPU_A and
 * CPU_B, ping-pong one 64-byte-aligned cache line. Thread A writes an odd
 * sequence number and spins until B has answered with the next even one.
 * One-way latency = round trip / 2.
 *
 * usage: core_lat CPU_A CPU_B ROUNDS TRIALS
 *
 * One warm-up trial is discarded. Output (nanoseconds, one line):
 *   <trials> <median one-way ns> <min one-way ns> <max one-way ns>
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The ping-pong line, alone in its cache line. */
static struct {
    _Alignas(64) _Atomic unsigned long v;
    char pad[64 - sizeof(unsigned long)];
} line_;
#define line (line_.v)
static long rounds;
static int trials;
static int cpu_b;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int e = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (e != 0) {
        fprintf(stderr, "pthread_setaffinity_np(cpu %d) failed: %d\n", cpu, e);
        exit(1);
    }
}

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *ponger(void *arg)
{
    (void)arg;
    pin(cpu_b);
    unsigned long total = (unsigned long)rounds * (trials + 1);
    for (unsigned long i = 0; i < total; i++) {
        unsigned long want = 2 * i + 1;
        while (atomic_load_explicit(&line, memory_order_acquire) != want)
            relax();
        atomic_store_explicit(&line, want + 1, memory_order_release);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s CPU_A CPU_B ROUNDS TRIALS\n", argv[0]);
        return 2;
    }
    int cpu_a = atoi(argv[1]);
    cpu_b = atoi(argv[2]);
    rounds = atol(argv[3]);
    trials = atoi(argv[4]);
    if (rounds < 1 || trials < 1) {
        fprintf(stderr, "bad ROUNDS or TRIALS\n");
        return 2;
    }
    pin(cpu_a);
    pthread_t t;
    if (pthread_create(&t, NULL, ponger, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    double *ns = calloc(trials, sizeof *ns);
    unsigned long seq = 0;
    for (int tr = -1; tr < trials; tr++) {
        double t0 = now();
        for (long r = 0; r < rounds; r++, seq++) {
            atomic_store_explicit(&line, 2 * seq + 1, memory_order_release);
            while (atomic_load_explicit(&line, memory_order_acquire) != 2 * seq + 2)
                relax();
        }
        double dt = now() - t0;
        if (tr >= 0)
            ns[tr] = dt / rounds / 2 * 1e9;
    }
    pthread_join(t, NULL);
    qsort(ns, trials, sizeof *ns, cmp_double);
    printf("%d %.3f %.3f %.3f\n", trials, ns[trials / 2], ns[0], ns[trials - 1]);
    return 0;
}
