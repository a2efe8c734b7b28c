/*
 * fv_semi_check: checks of the semi mode of the flowverbs router
 * (`flowverbs router --mode semi`), for the flowverbs device fv0.
 *
 * Usage: fv_semi_check <case>      (fv_semi_check list  prints the cases)
 *
 * In semi mode the router only connects QPs: for an RC or UC QP whose peer
 * is a QP of the same host without an SRQ, the sender's provider executes
 * the work requests itself (it copies straight into the peer's registered
 * memory, takes the peer's receive WQEs and writes the peer's CQ). These
 * cases check what follows from that, with two RC QPs of this process
 * connected to each other, using only the public libibverbs API:
 *
 *   frozen_router   every opcode completes while the router is stopped
 *                   (SIGSTOP by the runner, see FV_READY_FILE/FV_GO_FILE);
 *   spin_on_memory  an RDMA WRITE lands in ascending address order without
 *                   the target calling any verb (a thread spins on the last
 *                   8 bytes of the destination);
 *   rnr_no_polling  a SEND waiting for a receive (RNR) completes when the
 *                   receive is posted although the sender calls no verb;
 *                   the responder learns it from its completion channel;
 *   dereg_revokes   deregistering an MR revokes its rkey for a sender that
 *                   already used it (IBV_WC_REM_ACCESS_ERR, QP in ERR).
 *
 * The runner checks the router's counters afterwards: the requests moved
 * on the semi path, none on the router's.
 *
 * Exit status: 0 = every check passed; 1 = at least one check failed (each
 * failure is printed on stderr as "FAIL <case> [<step>]: ... expected ...,
 * got ..."); 2 = usage error; 3 = watchdog (the case hung).
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fv_test_util.h"
#include "fv_completions.h"

/* ------------------------------------------------------------------------ */
/* Two RC QPs of this process connected to each other                        */

/*
 * A and B (fv_test_util.h's pair: CFG_DEFAULT, all access), each with its
 * own send and receive CQ; B's receive CQ uses the channel ch (may be NULL).
 */
static void pair_new(struct pair *p, struct ibv_comp_channel *ch)
{
	struct qp_cfg c = CFG_DEFAULT;
	set_step("create and connect two RC QPs");
	pair_new_rc(p, &c, &c, ch);
}

/* ------------------------------------------------------------------------ */
/* Small utilities                                                           */

/* Random bytes at [off, off + len) of b, as a CPU write of its owner. */
static void buf_randomize(struct buf *b, size_t off, size_t len)
{
	fill_random(b->p + off, len);
	memcpy(b->exp + off, b->p + off, len);
}

/* A uniformly random value in [lo, hi]. */
static size_t rnd_range(size_t lo, size_t hi)
{
	return lo + (size_t)(rnd64() % (uint64_t)(hi - lo + 1));
}

/* A size in [lo, hi], log-uniformly distributed (as many small as large). */
static size_t rnd_size(size_t lo, size_t hi)
{
	int bits = 0;
	while (bits < 40 && ((size_t)1 << bits) < hi)
		bits++;
	for (;;) {
		int b = (int)rnd_range(0, (size_t)bits);
		size_t top = (size_t)1 << b;
		size_t v = rnd_range(top / 2, top);
		if (v >= lo && v <= hi)
			return v;
	}
}

static void wait_file(const char *path, double secs)
{
	double end = now_s() + secs;
	struct stat st;
	while (stat(path, &st) != 0) {
		if (now_s() > end)
			fatal("%s did not appear within %.0f s", path, secs);
		sleep_ms(10);
	}
}

/* ------------------------------------------------------------------------ */
/* frozen_router                                                             */

#define FZ_BIG (1u << 20)
#define FZ_SLACK 4096u
#define FZ_MAX_SEND (64u * 1024u)
/* The last line of frozen_router (the runner then continues the router). */
#define FZ_FINISHED "frozen_router: finished with the router stopped"

/*
 * A sends to B. A's memory: src (what A sends and writes), lres (where
 * RDMA READs land), ares (atomic results). B's memory: rbuf (receive
 * buffers), tgt (RDMA WRITE target), rsrc (RDMA READ source), atom (atomic
 * targets). Every MR has its own key.
 */
struct fz {
	struct pair p;
	struct buf *src, *lres, *ares;
	struct buf *rbuf, *tgt, *rsrc, *atom;
	uint64_t id;
	unsigned ops;
};

/* A SEND (or SEND_WITH_IMM) of len random bytes, checked end to end. */
static void fz_send(struct fz *f, size_t len, int with_imm)
{
	char w[200];
	size_t soff = rnd_range(0, f->src->n - len);
	size_t room = len + rnd_range(0, 64);
	size_t roff = rnd_range(0, f->rbuf->n - room);
	uint32_t imm = (uint32_t)rnd64();
	uint64_t id = f->id;
	f->id += 2;
	buf_randomize(f->src, soff, len);
	struct ibv_sge rs = buf_sge(f->rbuf, roff, (uint32_t)room);
	recv1(f->p.b, id, &rs, 1, "receive");
	struct ibv_sge ss = buf_sge(f->src, soff, (uint32_t)len);
	send1(f->p.a, id + 1, with_imm ? IBV_WR_SEND_WITH_IMM : IBV_WR_SEND, &ss, 1, 0, 0, imm,
	      with_imm ? "SEND_WITH_IMM" : "SEND");
	snprintf(w, sizeof(w), "sender completion of a %zu-byte %s", len,
		 with_imm ? "SEND_WITH_IMM" : "SEND");
	expect_wc(f->p.a_scq, w, id + 1, IBV_WC_SUCCESS, IBV_WC_SEND, f->p.a, NULL);
	snprintf(w, sizeof(w), "receive completion of a %zu-byte %s into a %zu-byte buffer", len,
		 with_imm ? "SEND_WITH_IMM" : "SEND", room);
	expect_recv_from(f->p.b_rcq, w, id, f->p.b, f->p.a, (uint32_t)len, with_imm, imm,
			 IBV_WC_RECV);
	buf_expect(f->rbuf, roff, f->src->p + soff, len);
	snprintf(w, sizeof(w), "receive buffer after a %zu-byte %s", len,
		 with_imm ? "SEND_WITH_IMM" : "SEND");
	buf_check(f->rbuf, w);
	f->ops++;
}

/* An RDMA_WRITE (or RDMA_WRITE_WITH_IMM) of len random bytes. */
static void fz_write(struct fz *f, size_t len, int with_imm)
{
	char w[200];
	size_t soff = rnd_range(0, f->src->n - len);
	size_t toff = rnd_range(0, f->tgt->n - len);
	uint32_t imm = (uint32_t)rnd64();
	uint64_t id = f->id;
	f->id += 2;
	buf_randomize(f->src, soff, len);
	if (with_imm) {
		/* Consumes a receive but writes nothing into its buffer. */
		struct ibv_sge rs = buf_sge(f->rbuf, 8, 64);
		recv1(f->p.b, id, &rs, 1, "receive for RDMA_WRITE_WITH_IMM");
	}
	struct ibv_sge ss = buf_sge(f->src, soff, (uint32_t)len);
	send1(f->p.a, id + 1, with_imm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE, &ss, 1,
	      addr_of(f->tgt->p + toff), f->tgt->mr->rkey, imm,
	      with_imm ? "RDMA_WRITE_WITH_IMM" : "RDMA_WRITE");
	snprintf(w, sizeof(w), "sender completion of a %zu-byte %s", len,
		 with_imm ? "RDMA_WRITE_WITH_IMM" : "RDMA_WRITE");
	expect_wc(f->p.a_scq, w, id + 1, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, f->p.a, NULL);
	if (with_imm) {
		snprintf(w, sizeof(w), "receive completion of a %zu-byte RDMA_WRITE_WITH_IMM", len);
		expect_recv_from(f->p.b_rcq, w, id, f->p.b, f->p.a, (uint32_t)len, 1, imm,
			    IBV_WC_RECV_RDMA_WITH_IMM);
		buf_check(f->rbuf, "receive buffer untouched by RDMA_WRITE_WITH_IMM");
	}
	buf_expect(f->tgt, toff, f->src->p + soff, len);
	snprintf(w, sizeof(w), "target after a %zu-byte %s at offset %zu", len,
		 with_imm ? "RDMA_WRITE_WITH_IMM" : "RDMA_WRITE", toff);
	buf_check(f->tgt, w);
	f->ops++;
}

/* An RDMA_READ of len bytes that B has just changed. */
static void fz_read(struct fz *f, size_t len)
{
	char w[200];
	size_t roff = rnd_range(0, f->rsrc->n - len);
	size_t loff = rnd_range(0, f->lres->n - len);
	uint64_t id = f->id++;
	buf_randomize(f->rsrc, roff, len);
	struct ibv_sge ls = buf_sge(f->lres, loff, (uint32_t)len);
	send1(f->p.a, id, IBV_WR_RDMA_READ, &ls, 1, addr_of(f->rsrc->p + roff), f->rsrc->mr->rkey,
	      0, "RDMA_READ");
	snprintf(w, sizeof(w), "completion of a %zu-byte RDMA_READ", len);
	expect_wc_len(f->p.a_scq, w, id, IBV_WC_RDMA_READ, f->p.a, (uint32_t)len);
	buf_expect(f->lres, loff, f->rsrc->p + roff, len);
	snprintf(w, sizeof(w), "local buffer after a %zu-byte RDMA_READ from offset %zu", len,
		 roff);
	buf_check(f->lres, w);
	buf_check(f->rsrc, "RDMA_READ source untouched");
	f->ops++;
}

/* FETCH_AND_ADD (cas = 0) or CMP_AND_SWP (cas = 1; hit: compare matches). */
static void fz_atomic(struct fz *f, int cas, int hit)
{
	char w[200];
	size_t k = rnd_range(0, f->atom->n / 8 - 1), j = rnd_range(0, f->ares->n / 8 - 1);
	uint64_t old, add = rnd64(), swap = rnd64(), now_v, res;
	uint64_t id = f->id++;
	memcpy(&old, f->atom->p + 8 * k, 8);
	struct ibv_sge s = buf_sge(f->ares, 8 * j, 8);
	struct ibv_send_wr wr;
	wr_init(&wr, id, cas ? IBV_WR_ATOMIC_CMP_AND_SWP : IBV_WR_ATOMIC_FETCH_AND_ADD, &s, 1,
		IBV_SEND_SIGNALED);
	wr_remote(&wr, addr_of(f->atom->p + 8 * k), f->atom->mr->rkey,
		  cas ? (hit ? old : old ^ 0x0101010101010101ULL) : add, swap);
	snprintf(w, sizeof(w), "%s%s on target word %zu",
		 cas ? "CMP_AND_SWP" : "FETCH_AND_ADD",
		 cas ? (hit ? " (compare matches)" : " (compare differs)") : "", k);
	post_send_ok(f->p.a, &wr, w);
	expect_wc_len(f->p.a_scq, w, id, cas ? IBV_WC_COMP_SWAP : IBV_WC_FETCH_ADD, f->p.a, 8);
	memcpy(&res, f->ares->p + 8 * j, 8);
	if (res != old)
		fail("%s: original value returned: expected 0x%016" PRIx64 ", got 0x%016" PRIx64, w,
		     old, res);
	buf_expect(f->ares, 8 * j, &old, 8);
	now_v = cas ? (hit ? swap : old) : old + add;
	buf_expect(f->atom, 8 * k, &now_v, 8);
	buf_check(f->atom, w);
	buf_check(f->ares, w);
	f->ops++;
}

static void fz_new(struct fz *f)
{
	memset(f, 0, sizeof(*f));
	pair_new(&f->p, NULL);
	set_step("register the buffers");
	f->src = buf_reg(FZ_BIG + FZ_SLACK, "A: source", IBV_ACCESS_LOCAL_WRITE);
	f->lres = buf_reg(FZ_BIG + FZ_SLACK, "A: RDMA_READ destination", IBV_ACCESS_LOCAL_WRITE);
	f->ares = buf_reg(64, "A: atomic results", IBV_ACCESS_LOCAL_WRITE);
	f->rbuf = buf_reg(FZ_MAX_SEND + 256, "B: receive buffers", IBV_ACCESS_LOCAL_WRITE);
	f->tgt = buf_reg(FZ_BIG + FZ_SLACK, "B: RDMA_WRITE target",
			 IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	f->rsrc = buf_reg(FZ_BIG + FZ_SLACK, "B: RDMA_READ source",
			  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
	f->atom = buf_reg(64, "B: atomic targets",
			  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_ATOMIC);
	if (((uintptr_t)f->atom->p & 7) != 0)
		fatal("test bug: atomic targets not 8-byte aligned");
	f->id = 0x1000;
}

/*
 * Once each opcode and each of B's keys (rmr through a SEND's receive,
 * tmr, qmr, xmr): the first use of a key asks the router.
 */
/*
 * The operations of frozen_router, in the order it runs them: the warm-up
 * does each once with warm_len bytes (CMP_AND_SWP twice: the compare
 * matching, then not); with the router stopped, each runs n times with
 * fz_size(i, max) bytes (atomics: 8 bytes, CMP_AND_SWP's compare matching
 * every other time).
 */
enum fz_op { FZ_SEND, FZ_SEND_IMM, FZ_WRITE, FZ_WRITE_IMM, FZ_READ, FZ_FAA, FZ_CAS };
static const struct {
	enum fz_op op;
	const char *name;
	size_t warm_len;
	int n;
	size_t max; /* 0: an atomic */
} fz_plan[] = {
	{ FZ_SEND, "SEND", 100, 500, FZ_MAX_SEND },
	{ FZ_SEND_IMM, "SEND_WITH_IMM", 200, 40, FZ_MAX_SEND },
	{ FZ_WRITE, "RDMA_WRITE", 1000, 200, FZ_BIG },
	{ FZ_WRITE_IMM, "RDMA_WRITE_WITH_IMM", 2000, 40, FZ_BIG },
	{ FZ_READ, "RDMA_READ", 3000, 200, FZ_BIG },
	{ FZ_FAA, "FETCH_AND_ADD", 0, 50, 0 },
	{ FZ_CAS, "CMP_AND_SWP", 0, 50, 0 },
};

/* Operation op of len bytes; hit: whether a CMP_AND_SWP's compare matches. */
static void fz_do(struct fz *f, enum fz_op op, size_t len, int hit)
{
	switch (op) {
	case FZ_SEND: fz_send(f, len, 0); break;
	case FZ_SEND_IMM: fz_send(f, len, 1); break;
	case FZ_WRITE: fz_write(f, len, 0); break;
	case FZ_WRITE_IMM: fz_write(f, len, 1); break;
	case FZ_READ: fz_read(f, len); break;
	case FZ_FAA: fz_atomic(f, 0, 0); break;
	case FZ_CAS: fz_atomic(f, 1, hit); break;
	}
}

static void fz_warm_up(struct fz *f)
{
	for (size_t k = 0; k < sizeof(fz_plan) / sizeof(fz_plan[0]); k++) {
		set_step("warm-up (router running): %s", fz_plan[k].name);
		fz_do(f, fz_plan[k].op, fz_plan[k].warm_len, 1);
	}
	fz_do(f, FZ_CAS, 0, 0);
}

/* Sizes every data test goes through, besides random ones. */
static const size_t fz_edge_sizes[] = { 1,     2,     3,     7,     8,     9,     63,
					64,    65,    255,   4095,  4096,  4097,  8191,
					65535, 65536, 65537, 262144, 1048575, FZ_BIG };

static size_t fz_size(int i, size_t max)
{
	size_t n = sizeof(fz_edge_sizes) / sizeof(fz_edge_sizes[0]);
	if ((size_t)i < n && fz_edge_sizes[i] <= max)
		return fz_edge_sizes[i];
	return rnd_size(1, max);
}

static void case_frozen_router(void)
{
	struct fz f;
	const char *ready = need_env("FV_READY_FILE");
	const char *go = need_env("FV_GO_FILE");

	fz_new(&f);
	fz_warm_up(&f);
	if (g_failures)
		fatal("the warm-up with the router running failed already");

	set_step("create the ready file %s", ready);
	printf("warm-up done; waiting for the router to be stopped\n");
	fflush(stdout);
	touch_file(ready);
	set_step("wait (at most 30 s) for the go file %s", go);
	wait_file(go, 30.0);

	/* From here on the router is stopped (SIGSTOP): nothing may need it. */
	double t0 = now_s();
	unsigned ops0 = f.ops;
	for (size_t k = 0; k < sizeof(fz_plan) / sizeof(fz_plan[0]); k++) {
		const char *name = fz_plan[k].name;
		int n = fz_plan[k].n;
		for (int i = 0; i < n; i++) {
			size_t len = fz_plan[k].max ? fz_size(i, fz_plan[k].max) : 0;
			if (len)
				set_step("router stopped: %s %d of %d (%zu bytes)", name, i + 1, n, len);
			else if (fz_plan[k].op == FZ_CAS)
				set_step("router stopped: %s %d of %d (%s)", name, i + 1, n,
					 i % 2 ? "compare differs" : "compare matches");
			else
				set_step("router stopped: %s %d of %d", name, i + 1, n);
			fz_do(&f, fz_plan[k].op, len, i % 2 == 0);
		}
	}
	set_step("router stopped: no stray completions");
	expect_empty(f.p.b_rcq, 20, "B's receive CQ at the end");
	expect_empty(f.p.a_rcq, 5, "A's receive CQ");
	expect_empty(f.p.b_scq, 5, "B's send CQ");
	expect_empty(f.p.a_scq, 5, "A's send CQ at the end");
	printf("router stopped: %u operations checked in %.2f s\n", f.ops - ops0, now_s() - t0);

	/*
	 * Exit without closing anything: destroying, deregistering and closing
	 * ask the router, which is still stopped. Even so the exit completes
	 * only once the router runs again (the kernel's close of fv0's device
	 * file, a file of the router's FUSE mount, waits for the router), so
	 * the last line tells the runner to continue the router.
	 */
	set_step("exit with the router stopped");
	int failed = fv_verdict();
	fflush(stderr);
	printf("%s\n", FZ_FINISHED);
	fflush(stdout);
	_exit(failed);
}

/* ------------------------------------------------------------------------ */
/* spin_on_memory                                                            */

#define SP_MAX (4u << 20)
#define SP_N (SP_MAX + 4096u)
#define SP_ROUNDS 100
#define SP_GUARD 64

/*
 * The main thread (A) writes [SP_N - size, SP_N) of B's buffer dst with
 * the round's pattern and the round's marker in the last 8 bytes; the
 * reader thread spins on those 8 bytes and, once the marker is there,
 * checks every byte before it.
 */
static struct {
	uint8_t *dst;
	size_t size;   /* this round's write size (set before round_req) */
	int round_req; /* the round the reader must wait for; -2: quit */
	int armed;     /* the reader spins for this round */
	int done;      /* the reader has checked this round */
	/* the reader's findings for the round */
	int timed_out;
	size_t bad_count, bad_first;
	uint8_t bad_exp, bad_got;
	unsigned long spins;
} SP;

/* Differs from the previous round's byte at every offset (37 mod 256 != 0). */
static inline uint8_t sp_pat(int r, size_t off)
{
	return (uint8_t)(off * 7u + (off >> 8) * 3u + (unsigned)r * 37u + 1u);
}

static uint64_t sp_marker(int r)
{
	return 0xC0FFEE0000000000ULL | ((uint64_t)(r + 1) << 8) | 0x5AULL;
}

static uint64_t *sp_marker_slot(void)
{
	return (uint64_t *)(void *)(SP.dst + SP_N - 8);
}

static void *sp_reader(void *arg)
{
	int last = -1;
	(void)arg;
	for (;;) {
		int r;
		while ((r = __atomic_load_n(&SP.round_req, __ATOMIC_ACQUIRE)) == last)
			sched_yield();
		if (r < 0)
			return NULL;
		last = r;
		size_t size = SP.size;
		uint64_t want = sp_marker(r);
		SP.timed_out = 0;
		SP.bad_count = 0;
		SP.spins = 0;
		__atomic_store_n(&SP.armed, r, __ATOMIC_RELEASE);
		double end = now_s() + 10.0;
		unsigned long spins = 0;
		while (__atomic_load_n(sp_marker_slot(), __ATOMIC_ACQUIRE) != want) {
			if ((++spins & 0xfffff) == 0 && now_s() > end) {
				SP.timed_out = 1;
				break;
			}
		}
		SP.spins = spins;
		if (!SP.timed_out) {
			size_t start = SP_N - size;
			for (size_t off = start; off < SP_N - 8; off++) {
				uint8_t got = SP.dst[off], exp = sp_pat(r, off);
				if (got != exp) {
					if (SP.bad_count++ == 0) {
						SP.bad_first = off - start;
						SP.bad_exp = exp;
						SP.bad_got = got;
					}
				}
			}
		}
		__atomic_store_n(&SP.done, r, __ATOMIC_RELEASE);
	}
}

static void sp_wait_flag(int *flag, int r, const char *what)
{
	double end = now_s() + 20.0;
	while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != r) {
		if (now_s() > end)
			fatal("round %d: the reader thread did not %s within 20 s", r, what);
		sched_yield();
	}
}

static void case_spin_on_memory(void)
{
	struct pair p;
	char w[300];
	pair_new(&p, NULL);
	set_step("register the buffers");
	uint8_t *src = xmemalign(SP_N);
	memset(src, 0, SP_N);
	SP.dst = xmemalign(SP_N);
	fill_random(SP.dst, SP_N);
	memset(SP.dst + SP_N - 8, 0, 8);
	struct ibv_mr *smr = reg(src, SP_N, IBV_ACCESS_LOCAL_WRITE);
	struct ibv_mr *tmr = reg(SP.dst, SP_N, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);

	size_t sizes[SP_ROUNDS];
	static const size_t edge[] = { 8,     9,     15,    16,    64,     65,      100,
				       4095,  4096,  4097,  65535, 65536,  65537,   65600,
				       131075, 1 << 20, SP_MAX };
	for (int r = 0; r < SP_ROUNDS; r++) {
		if ((size_t)r < sizeof(edge) / sizeof(edge[0]))
			sizes[r] = edge[r];
		else if (r % 10 == 9)
			sizes[r] = SP_MAX;
		else
			sizes[r] = rnd_size(8, SP_MAX);
	}

	SP.round_req = -1;
	SP.armed = -1;
	SP.done = -1;
	pthread_t th;
	int rc = pthread_create(&th, NULL, sp_reader, NULL);
	if (rc)
		fatal("pthread_create returned %d (%s)", rc, strerror(rc));

	int late = 0;
	unsigned long spun = 0;
	for (int r = 0; r < SP_ROUNDS; r++) {
		size_t size = sizes[r], start = SP_N - size;
		uint64_t mk = sp_marker(r);
		uint8_t guard[SP_GUARD];
		size_t gl = start < SP_GUARD ? start : SP_GUARD;
		set_step("round %d: RDMA_WRITE of %zu bytes ending at the end of B's buffer", r, size);

		/* The source: the round's pattern, the marker in the last 8 bytes. */
		for (size_t off = start; off < SP_N - 8; off++)
			src[off] = sp_pat(r, off);
		memcpy(src + SP_N - 8, &mk, 8);
		/* The target (CPU writes of its owner): not the pattern, no marker. */
		for (size_t off = start; off < SP_N - 8; off++)
			SP.dst[off] = (uint8_t)(sp_pat(r, off) ^ 0xFF);
		__atomic_store_n(sp_marker_slot(), 0, __ATOMIC_RELEASE);
		memcpy(guard, SP.dst + start - gl, gl);

		SP.size = size;
		__atomic_store_n(&SP.round_req, r, __ATOMIC_RELEASE);
		sp_wait_flag(&SP.armed, r, "start spinning");

		struct ibv_sge s = sge(src + start, (uint32_t)size, smr->lkey);
		send1(p.a, 0x5000 + (uint64_t)r, IBV_WR_RDMA_WRITE, &s, 1, addr_of(SP.dst + start),
		      tmr->rkey, 0, "RDMA_WRITE");
		/* Only the sender polls (its own send CQ); B calls no verb. */
		snprintf(w, sizeof(w), "round %d: sender completion of a %zu-byte RDMA_WRITE", r,
			 size);
		expect_wc(p.a_scq, w, 0x5000 + (uint64_t)r, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a,
			  NULL);
		sp_wait_flag(&SP.done, r, "see the marker and check the bytes before it");

		if (SP.timed_out) {
			uint64_t v = __atomic_load_n(sp_marker_slot(), __ATOMIC_ACQUIRE);
			fail("round %d (%zu bytes): the reader never saw the marker 0x%016" PRIx64
			     " in the last 8 bytes of B's buffer (within 10 s; they hold 0x%016" PRIx64
			     ") although the sender's completion arrived",
			     r, size, mk, v);
		} else if (SP.bad_count) {
			fail("round %d (%zu bytes): the reader saw the marker in the last 8 bytes while "
			     "%zu of the %zu bytes before it did not hold the written data yet; first "
			     "at offset %zu of the write (expected 0x%02x, got 0x%02x): the write did "
			     "not land in ascending address order",
			     r, size, SP.bad_count, size - 8, SP.bad_first, SP.bad_exp, SP.bad_got);
		}
		if (SP.spins > 0) {
			late++;
			spun += SP.spins;
		}
		snprintf(w, sizeof(w), "round %d: B's buffer after the %zu-byte RDMA_WRITE", r, size);
		compare_bytes(SP.dst + start, src + start, size, w);
		snprintf(w, sizeof(w),
			 "round %d: the %zu bytes before the %zu-byte RDMA_WRITE (must be untouched)",
			 r, gl, size);
		compare_bytes(SP.dst + start - gl, guard, gl, w);
	}
	printf("spin_on_memory: %d rounds; in %d of them the reader spun before the marker "
	       "appeared (%lu spins in all)\n",
	       SP_ROUNDS, late, spun);

	set_step("stop the reader thread");
	__atomic_store_n(&SP.round_req, -2, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	set_step("B's CQs after the rounds");
	expect_empty(p.b_rcq, 20, "B's receive CQ (RDMA_WRITE consumes no receive)");
	expect_empty(p.b_scq, 5, "B's send CQ");
	pair_free(&p);
	dereg(smr);
	dereg(tmr);
	free(src);
	free(SP.dst);
}

/* ------------------------------------------------------------------------ */
/* rnr_no_polling                                                            */

#define RNR_LEN 3000u
#define RNR_TIMEOUT_S 10

static struct {
	struct ibv_qp *b;
	struct ibv_sge s;
	double posted_at;
} RN;

static void on_event_timeout(int sig)
{
	static const char m[] = "FAIL rnr_no_polling [blocked in ibv_get_cq_event on B's receive "
				"CQ's channel]: no completion event within 10 s: the SEND that "
				"waited for a receive (RNR) did not complete after the receive "
				"was posted, with the sender calling no verb\n";
	(void)sig;
	if (write(2, m, sizeof(m) - 1) < 0) {
		/* nothing more we can do */
	}
	_exit(1);
}

/* Posts B's receive after 100 ms (and nothing else). */
static void *rnr_poster(void *arg)
{
	(void)arg;
	sleep_ms(100);
	RN.posted_at = now_s();
	recv1(RN.b, 0xB0, &RN.s, 1, "B's receive, posted by the second thread");
	return NULL;
}

static void case_rnr_no_polling(void)
{
	struct pair p;
	set_step("ibv_create_comp_channel");
	struct ibv_comp_channel *ch = chan_new();
	pair_new(&p, ch);
	set_step("register the buffers");
	struct buf *src = buf_reg(RNR_LEN + 64, "A: source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(RNR_LEN + 256, "B: receive buffer", IBV_ACCESS_LOCAL_WRITE);

	set_step("ibv_req_notify_cq(B's receive CQ, solicited_only 0)");
	int rc = ibv_req_notify_cq(p.b_rcq, 0);
	if (rc)
		fatal("ibv_req_notify_cq returned %d (%s)", rc, strerror(rc));

	set_step("SEND of %u bytes from A while B has no receive posted (rnr_retry 7)", RNR_LEN);
	struct ibv_sge ss = buf_sge(src, 7, RNR_LEN);
	send1(p.a, 0xA0, IBV_WR_SEND, &ss, 1, 0, 0, 0, "SEND");

	RN.b = p.b;
	RN.s = buf_sge(dst, 16, RNR_LEN + 100);
	RN.posted_at = 0;
	pthread_t th;
	rc = pthread_create(&th, NULL, rnr_poster, NULL);
	if (rc)
		fatal("pthread_create returned %d (%s)", rc, strerror(rc));

	/* This thread calls no verb of A (no poll, no post) until the event. */
	set_step("blocked in ibv_get_cq_event on B's receive CQ's channel");
	struct ibv_cq *ev_cq = NULL;
	void *ev_ctx = NULL;
	double t0 = now_s();
	signal(SIGALRM, on_event_timeout);
	alarm(RNR_TIMEOUT_S);
	rc = ibv_get_cq_event(ch, &ev_cq, &ev_ctx);
	alarm(0);
	signal(SIGALRM, on_alarm);
	alarm(WATCHDOG_S - RNR_TIMEOUT_S);
	double t1 = now_s();
	if (rc)
		fatal("ibv_get_cq_event returned %d, errno %d (%s)", rc, errno, strerror(errno));
	pthread_join(th, NULL);
	if (ev_cq != p.b_rcq)
		fail("ibv_get_cq_event: expected the event of B's receive CQ %p, got CQ %p",
		     (void *)p.b_rcq, (void *)ev_cq);
	if (t1 < RN.posted_at)
		fail("the completion event arrived %.3f s before the receive was posted",
		     RN.posted_at - t1);
	printf("rnr_no_polling: the event arrived %.3f s after the SEND was posted, %.3f s after "
	       "the receive\n",
	       t1 - t0, t1 - RN.posted_at);
	if (ev_cq)
		ibv_ack_cq_events(ev_cq, 1);

	set_step("poll B's receive CQ after the event");
	expect_recv_from(p.b_rcq, "B's receive completion", 0xB0, p.b, p.a, RNR_LEN, 0, 0,
			 IBV_WC_RECV);
	buf_expect(dst, 16, src->p + 7, RNR_LEN);
	buf_check(dst, "B's receive buffer");
	set_step("poll A's send CQ afterwards");
	expect_wc(p.a_scq, "A's SEND completion", 0xA0, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_empty(p.b_rcq, 20, "B's receive CQ after the one receive");
	expect_empty(p.a_scq, 5, "A's send CQ after the one SEND");

	set_step("clean up");
	pair_free(&p);
	buf_free(src);
	buf_free(dst);
	destroy_channel(ch);
}

/* ------------------------------------------------------------------------ */
/* dereg_revokes                                                             */

static void case_dereg_revokes(void)
{
	struct pair p;
	pair_new(&p, NULL);
	set_step("register the buffers");
	struct buf *src = buf_reg(16384, "A: source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *m2buf = buf_alloc(16384, "B: memory of m2");
	struct ibv_mr *m2 =
		reg(m2buf->p, m2buf->n, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	uint32_t rkey = m2->rkey;

	for (int i = 0; i < 2; i++) {
		size_t len = i ? 9000 : 5000, soff = 3 + (size_t)i * 100, toff = 100 + (size_t)i * 11;
		set_step("RDMA_WRITE %d of %zu bytes to B's m2 (registered)", i + 1, len);
		buf_randomize(src, soff, len);
		struct ibv_sge s = buf_sge(src, soff, (uint32_t)len);
		send1(p.a, 0xD0 + (uint64_t)i, IBV_WR_RDMA_WRITE, &s, 1, addr_of(m2buf->p + toff), rkey,
		      0, "RDMA_WRITE");
		if (!expect_wc(p.a_scq, "completion of the RDMA_WRITE to a registered MR",
			       0xD0 + (uint64_t)i, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a, NULL))
			fatal("the RDMA_WRITE to a registered MR must succeed");
		buf_expect(m2buf, toff, src->p + soff, len);
		buf_check(m2buf, "m2 after the RDMA_WRITE");
	}

	set_step("B deregisters m2");
	dereg(m2);

	set_step("RDMA_WRITE with m2's old rkey 0x%x after B deregistered it", rkey);
	buf_randomize(src, 0, 4096);
	struct ibv_sge s = buf_sge(src, 0, 4096);
	send1(p.a, 0xDD, IBV_WR_RDMA_WRITE, &s, 1, addr_of(m2buf->p + 200), rkey, 0,
	      "RDMA_WRITE with a revoked rkey");
	expect_wc(p.a_scq, "completion of the RDMA_WRITE with the revoked rkey", 0xDD,
		  IBV_WC_REM_ACCESS_ERR, -1, p.a, NULL);
	buf_check(m2buf, "B's memory (formerly m2) after the RDMA_WRITE with the revoked rkey");
	expect_state(p.a, IBV_QPS_ERR, "A after a remote access error");
	expect_empty(p.b_rcq, 20, "B's receive CQ");
	expect_empty(p.a_scq, 5, "A's send CQ after the failed RDMA_WRITE");

	set_step("clean up");
	pair_free(&p);
	buf_free(src);
	buf_free(m2buf);
}

/* ------------------------------------------------------------------------ */
/* reregister_fresh_memory                                                   */

/* Bytes of pages the arena (this process's memfd "fv-arena") holds, from
 * its descriptor in /proc/self/fd; -1 if there is none. */
static long long arena_bytes(void)
{
	char path[64], target[256];
	for (int fd = 0; fd < 4096; fd++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = 0;
		if (strstr(target, "memfd:fv-arena")) {
			struct stat st;
			if (fstat(fd, &st) != 0)
				fatal("fstat of the arena: %s", strerror(errno));
			return (long long)st.st_blocks * 512;
		}
	}
	return -1;
}

#define FRESH_ROUNDS 96
#define FRESH_SIZE (4u << 20)
#define FRESH_LIMIT (128ll << 20)

/* What UCX's registration cache and NetPIPE do: memory is mapped, registered,
 * written by the peer, deregistered and unmapped, over and over, the kernel
 * handing out the same addresses again. Every RDMA_WRITE must land in the
 * memory the application sees now, and the arena must not keep every
 * buffer ever registered (96 x 4 MiB). */
static void case_reregister_fresh_memory(void)
{
	struct pair p;
	pair_new(&p, NULL);
	struct buf *src = buf_reg(8192, "A: source", IBV_ACCESS_LOCAL_WRITE);
	long long most = 0;
	for (int i = 0; i < FRESH_ROUNDS; i++) {
		set_step("round %d: fresh %u B mapping, registered, written by A", i, FRESH_SIZE);
		uint8_t *m = map_anon(FRESH_SIZE);
		memset(m, 0xEE, FRESH_SIZE);
		struct ibv_mr *mr =
			reg(m, FRESH_SIZE, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
		size_t off = ((size_t)i * 40961) % (FRESH_SIZE - 8192);
		buf_randomize(src, 0, 8192);
		struct ibv_sge s = buf_sge(src, 0, 8192);
		send1(p.a, 0xF000 + (uint64_t)i, IBV_WR_RDMA_WRITE, &s, 1, addr_of(m + off), mr->rkey, 0,
		      "RDMA_WRITE into the fresh mapping");
		if (!expect_wc(p.a_scq, "completion of the RDMA_WRITE", 0xF000 + (uint64_t)i,
			       IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a, NULL))
			fatal("the RDMA_WRITE must succeed");
		if (!compare_bytes(m + off, src->p, 8192, "the fresh mapping after the RDMA_WRITE"))
			fatal("round %d at %p: the write did not land in the memory the application sees",
			      i, (void *)m);
		dereg(mr);
		if (munmap(m, FRESH_SIZE) != 0)
			fatal("munmap: %s", strerror(errno));
		long long held = arena_bytes();
		if (held > most)
			most = held;
	}
	set_step("the arena after %d rounds", FRESH_ROUNDS);
	printf("arena held at most %lld bytes over %d rounds of %u B\n", most, FRESH_ROUNDS,
	       FRESH_SIZE);
	if (most < 0)
		fail("no arena found: the registrations were not shared");
	else if (most > FRESH_LIMIT)
		fail("the arena held %lld bytes (limit %lld): unmapped, deregistered buffers are kept",
		     most, FRESH_LIMIT);
	pair_free(&p);
	buf_free(src);
}

/* ------------------------------------------------------------------------ */

static const struct fv_case cases[] = {
	{ "frozen_router", case_frozen_router },
	{ "spin_on_memory", case_spin_on_memory },
	{ "rnr_no_polling", case_rnr_no_polling },
	{ "dereg_revokes", case_dereg_revokes },
	{ "reregister_fresh_memory", case_reregister_fresh_memory },
};

int main(int argc, char **argv)
{
	return fv_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]), 1);
}
