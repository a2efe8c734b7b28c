/*
 * fv_test_util.h: helpers shared by the C check programs fv_verbs_check.c,
 * fv_qp_types_check.c, fv_semi_check.c and fv_isolation_check.c (included by
 * all; every definition is static).
 *
 * Failure reporting (fail/fatal/EXPECT_*, "FAIL <case> [<step>]: ..."), the
 * watchdog, random fill and shadow-checked buffers, opening the device
 * (fv0, or FV_VERBS_DEVICE / FV_VERBS_GID_INDEX), PD/MR/CQ helpers, checked
 * destruction of every object, the RESET->INIT transition, QP state
 * queries, work-request building, completion description and polling for
 * "no completion", and the main() that runs one named case.
 *
 * A program may use only some of these helpers, so unused-function warnings
 * are silenced for this header only.
 */
#ifndef FV_TEST_UTIL_H
#define FV_TEST_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <infiniband/verbs.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"

#define POLL_TIMEOUT_S 10.0
#define WATCHDOG_S 50
#define MAX_REPORTED_FAILURES 40

/* ------------------------------------------------------------------------ */
/* Reporting                                                                 */

static const char *g_case = "?";
static const char *g_step = "start";
static char g_stepbuf[256];
static int g_failures;

static void set_step(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_step(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g_stepbuf, sizeof(g_stepbuf), fmt, ap);
	va_end(ap);
	g_step = g_stepbuf;
}

static void vreport(const char *fmt, va_list ap)
{
	fprintf(stderr, "FAIL %s [%s]: ", g_case, g_step);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	fflush(stderr);
}

/* A check failed; keep going (the case will exit non-zero). */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreport(fmt, ap);
	va_end(ap);
	if (++g_failures >= MAX_REPORTED_FAILURES) {
		fprintf(stderr, "FAIL %s: stopping after %d failures\n", g_case, g_failures);
		exit(1);
	}
}

/* A check failed and the case cannot meaningfully continue. */
static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreport(fmt, ap);
	va_end(ap);
	fprintf(stderr, "FAIL %s: aborted (%d earlier failures)\n", g_case, g_failures);
	exit(1);
}

static void on_alarm(int sig)
{
	static const char m1[] = "FAIL watchdog: case did not finish within the watchdog time; last step: ";
	(void)sig;
	if (write(2, m1, sizeof(m1) - 1) < 0 || write(2, g_step, strlen(g_step)) < 0 ||
	    write(2, "\n", 1) < 0) {
		/* nothing more we can do */
	}
	_exit(3);
}

#define EXPECT_EQ(what, got, exp)                                                       \
	do {                                                                            \
		unsigned long long g_ = (unsigned long long)(got);                      \
		unsigned long long e_ = (unsigned long long)(exp);                      \
		if (g_ != e_)                                                           \
			fail("%s: expected %llu (0x%llx), got %llu (0x%llx)", (what), e_, e_, \
			     g_, g_);                                                   \
	} while (0)

#define EXPECT_GE(what, got, min)                                                       \
	do {                                                                            \
		unsigned long long g_ = (unsigned long long)(got);                      \
		unsigned long long m_ = (unsigned long long)(min);                      \
		if (g_ < m_)                                                            \
			fail("%s: expected >= %llu, got %llu", (what), m_, g_);         \
	} while (0)

/* ------------------------------------------------------------------------ */
/* Utilities                                                                 */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ULL;

static uint64_t rnd64(void)
{
	/* xorshift64* */
	g_rng ^= g_rng >> 12;
	g_rng ^= g_rng << 25;
	g_rng ^= g_rng >> 27;
	return g_rng * 0x2545F4914F6CDD1DULL;
}

static void fill_random(void *p, size_t n)
{
	uint8_t *b = p;
	size_t i = 0;
	while (i + 8 <= n) {
		uint64_t v = rnd64();
		memcpy(b + i, &v, 8);
		i += 8;
	}
	if (i < n) {
		uint64_t v = rnd64();
		memcpy(b + i, &v, n - i);
	}
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n);
	if (!p)
		fatal("malloc(%zu) failed", n);
	return p;
}

/* Compares got against exp; reports the first difference. Returns 1 if equal. */
static int compare_bytes(const uint8_t *got, const uint8_t *exp, size_t n, const char *what)
{
	size_t first = SIZE_MAX, last = 0, cnt = 0;
	for (size_t i = 0; i < n; i++) {
		if (got[i] != exp[i]) {
			if (first == SIZE_MAX)
				first = i;
			last = i;
			cnt++;
		}
	}
	if (cnt) {
		fail("%s: %zu of %zu bytes differ; first at offset %zu (expected 0x%02x, got 0x%02x), "
		     "last at offset %zu (expected 0x%02x, got 0x%02x)",
		     what, cnt, n, first, exp[first], got[first], last, exp[last], got[last]);
		return 0;
	}
	return 1;
}

/*
 * A buffer with a shadow copy of what every byte must contain. buf_set is a
 * CPU write (both copies); buf_expect records what the device must write;
 * buf_accept declares a range undefined (it takes whatever is there).
 */
struct buf {
	uint8_t *p;
	uint8_t *exp;
	size_t n;
	const char *name;
	int owned; /* 1: malloc'd by buf_alloc */
};

static void buf_wrap(struct buf *b, void *mem, size_t n, const char *name)
{
	b->p = mem;
	b->n = n;
	b->name = name;
	b->owned = 0;
	b->exp = xmalloc(n);
	fill_random(b->p, n);
	memcpy(b->exp, b->p, n);
}

static struct buf *buf_alloc(size_t n, const char *name)
{
	struct buf *b = xmalloc(sizeof(*b));
	buf_wrap(b, xmalloc(n), n, name);
	b->owned = 1;
	return b;
}

static void buf_free(struct buf *b)
{
	free(b->exp);
	if (b->owned) {
		free(b->p);
		free(b);
	}
}

static void buf_set(struct buf *b, size_t off, const void *src, size_t len)
{
	memcpy(b->p + off, src, len);
	memcpy(b->exp + off, src, len);
}

static void buf_expect(struct buf *b, size_t off, const void *src, size_t len)
{
	memcpy(b->exp + off, src, len);
}

static void buf_accept(struct buf *b, size_t off, size_t len)
{
	memcpy(b->exp + off, b->p + off, len);
}

static int buf_check(struct buf *b, const char *what)
{
	char w[1024];
	snprintf(w, sizeof(w), "%s: buffer '%s' (%zu bytes, offsets relative to its start)", what,
		 b->name, b->n);
	return compare_bytes(b->p, b->exp, b->n, w);
}

static uint64_t addr_of(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

/* ------------------------------------------------------------------------ */
/* Device, PD, MR                                                            */

static struct {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	union ibv_gid gid;
	struct ibv_device_attr dev;
	struct ibv_port_attr port;
} E;

/*
 * The device is fv0. FV_VERBS_DEVICE / FV_VERBS_GID_INDEX override the device
 * name and the GID index only to validate these checks against a reference
 * implementation (e.g. rxe0 with GID index 1 in the Soft-RoCE VM).
 */
static const char *dev_name(void)
{
	const char *d = getenv("FV_VERBS_DEVICE");
	return d && *d ? d : "fv0";
}

static int gid_index(void)
{
	const char *g = getenv("FV_VERBS_GID_INDEX");
	return g && *g ? atoi(g) : 0;
}

static void env_open(void)
{
	int n = 0;
	set_step("open %s", dev_name());
	errno = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	if (!list)
		fatal("ibv_get_device_list returned NULL, errno %d (%s)", errno, strerror(errno));
	struct ibv_device *dev = NULL;
	char names[512] = "";
	for (int i = 0; i < n; i++) {
		const char *nm = ibv_get_device_name(list[i]);
		if (nm && strcmp(nm, dev_name()) == 0)
			dev = list[i];
		if (strlen(names) + strlen(nm ? nm : "(null)") + 3 < sizeof(names)) {
			strcat(names, " ");
			strcat(names, nm ? nm : "(null)");
		}
	}
	if (!dev)
		fatal("device %s not found; ibv_get_device_list returned %d devices:%s", dev_name(), n,
		      names);
	E.ctx = ibv_open_device(dev);
	if (!E.ctx)
		fatal("ibv_open_device(%s) returned NULL, errno %d (%s)", dev_name(), errno,
		      strerror(errno));
	ibv_free_device_list(list);
	E.pd = ibv_alloc_pd(E.ctx);
	if (!E.pd)
		fatal("ibv_alloc_pd returned NULL, errno %d (%s)", errno, strerror(errno));
	int rc = ibv_query_device(E.ctx, &E.dev);
	if (rc)
		fatal("ibv_query_device returned %d (%s)", rc, strerror(rc));
	rc = ibv_query_port(E.ctx, 1, &E.port);
	if (rc)
		fatal("ibv_query_port(1) returned %d (%s)", rc, strerror(rc));
	rc = ibv_query_gid(E.ctx, 1, gid_index(), &E.gid);
	if (rc)
		fatal("ibv_query_gid(port 1, index %d) returned %d, errno %d (%s)", gid_index(), rc,
		      errno, strerror(errno));
}

#define ACC_ALL                                                                          \
	(IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |     \
	 IBV_ACCESS_REMOTE_ATOMIC)

static struct ibv_mr *reg_pd(struct ibv_pd *pd, void *addr, size_t len, int access)
{
	errno = 0;
	struct ibv_mr *mr = ibv_reg_mr(pd, addr, len, access);
	if (!mr)
		fatal("ibv_reg_mr(%p, %zu, access 0x%x) returned NULL, errno %d (%s)", addr, len,
		      access, errno, strerror(errno));
	return mr;
}

static struct ibv_mr *reg(void *addr, size_t len, int access)
{
	return reg_pd(E.pd, addr, len, access);
}

static void dereg(struct ibv_mr *mr)
{
	int rc = ibv_dereg_mr(mr);
	if (rc)
		fatal("ibv_dereg_mr returned %d (%s)", rc, strerror(rc));
}

/*
 * Checked destruction: the verbs return 0 or an errno value. A failure is a
 * check failure (the case goes on); the return value is passed on. Where a
 * case expects a failure (EBUSY) it calls the verb itself and checks the
 * errno.
 */
static int destroy_rc(const char *verb, int rc)
{
	if (rc)
		fail("%s returned %d (%s)", verb, rc, strerror(rc > 0 ? rc : errno));
	return rc;
}

static int dealloc_pd(struct ibv_pd *pd)
{
	return destroy_rc("ibv_dealloc_pd", ibv_dealloc_pd(pd));
}

/* A key that is neither the lkey nor the rkey of any of the given MRs. */
static uint32_t unused_key(struct ibv_mr *const *mrs, int n)
{
	uint32_t k = 0x0badc0de;
	for (;;) {
		int clash = 0;
		for (int i = 0; i < n; i++)
			if (mrs[i] && (mrs[i]->lkey == k || mrs[i]->rkey == k))
				clash = 1;
		if (!clash)
			return k;
		k += 0x01010101;
	}
}

/* ------------------------------------------------------------------------ */
/* CQ, QP                                                                    */

static struct ibv_cq *cq_new(int cqe)
{
	errno = 0;
	struct ibv_cq *cq = ibv_create_cq(E.ctx, cqe, NULL, NULL, 0);
	if (!cq)
		fatal("ibv_create_cq(%d) returned NULL, errno %d (%s)", cqe, errno, strerror(errno));
	return cq;
}

static int destroy_cq(struct ibv_cq *cq)
{
	return destroy_rc("ibv_destroy_cq", ibv_destroy_cq(cq));
}

static int destroy_qp(struct ibv_qp *qp)
{
	char verb[64];
	snprintf(verb, sizeof(verb), "ibv_destroy_qp(qp 0x%x)", qp->qp_num);
	return destroy_rc(verb, ibv_destroy_qp(qp));
}

static int destroy_srq(struct ibv_srq *srq)
{
	return destroy_rc("ibv_destroy_srq", ibv_destroy_srq(srq));
}

static int destroy_ah(struct ibv_ah *ah)
{
	return destroy_rc("ibv_destroy_ah", ibv_destroy_ah(ah));
}

static int destroy_channel(struct ibv_comp_channel *ch)
{
	return destroy_rc("ibv_destroy_comp_channel", ibv_destroy_comp_channel(ch));
}

/*
 * RESET -> INIT with the masks of perftest. access: the qp_access_flags,
 * exactly as given (0 = no remote access). The one definition for every
 * check program. Returns ibv_modify_qp's result.
 */
static int qp_to_init(struct ibv_qp *qp, int access)
{
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_INIT;
	a.pkey_index = 0;
	a.port_num = 1;
	a.qp_access_flags = (unsigned)access;
	return ibv_modify_qp(qp, &a,
			     IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static enum ibv_qp_state qp_state(struct ibv_qp *qp)
{
	struct ibv_qp_attr a;
	struct ibv_qp_init_attr ia;
	memset(&a, 0, sizeof(a));
	int rc = ibv_query_qp(qp, &a, IBV_QP_STATE, &ia);
	if (rc)
		fatal("ibv_query_qp(qp 0x%x, IBV_QP_STATE) returned %d (%s)", qp->qp_num, rc,
		      strerror(rc));
	return a.qp_state;
}

static const char *state_str(int s)
{
	switch (s) {
	case IBV_QPS_RESET: return "RESET";
	case IBV_QPS_INIT: return "INIT";
	case IBV_QPS_RTR: return "RTR";
	case IBV_QPS_RTS: return "RTS";
	case IBV_QPS_SQD: return "SQD";
	case IBV_QPS_SQE: return "SQE";
	case IBV_QPS_ERR: return "ERR";
	default: return "?";
	}
}

static void expect_state(struct ibv_qp *qp, enum ibv_qp_state want, const char *what)
{
	enum ibv_qp_state s = qp_state(qp);
	if (s != want)
		fail("%s: ibv_query_qp state of qp 0x%x: expected IBV_QPS_%s, got IBV_QPS_%s (%d)",
		     what, qp->qp_num, state_str(want), state_str(s), (int)s);
}

/* ------------------------------------------------------------------------ */
/* Posting and polling                                                       */

static struct ibv_sge sge(const void *addr, uint32_t len, uint32_t lkey)
{
	struct ibv_sge s = { .addr = addr_of(addr), .length = len, .lkey = lkey };
	return s;
}

static void wr_init(struct ibv_send_wr *wr, uint64_t wr_id, enum ibv_wr_opcode op,
		    struct ibv_sge *sg, int n, unsigned flags)
{
	memset(wr, 0, sizeof(*wr));
	wr->wr_id = wr_id;
	wr->opcode = op;
	wr->sg_list = sg;
	wr->num_sge = n;
	wr->send_flags = flags;
}

static void expect_post_send_rc(struct ibv_qp *qp, struct ibv_send_wr *wr,
				struct ibv_send_wr *want_bad, int want_rc, const char *what)
{
	struct ibv_send_wr *badp = NULL;
	int rc = ibv_post_send(qp, wr, &badp);
	if (rc != want_rc)
		fail("%s: ibv_post_send: expected %d (%s), got %d (%s)", what, want_rc,
		     strerror(want_rc), rc, strerror(rc));
	if (want_bad && badp != want_bad)
		fail("%s: ibv_post_send: expected bad_wr = %p (the offending WR), got %p", what,
		     (void *)want_bad, (void *)badp);
}

static const char *wc_opcode_str(int op)
{
	switch (op) {
	case IBV_WC_SEND: return "IBV_WC_SEND";
	case IBV_WC_RDMA_WRITE: return "IBV_WC_RDMA_WRITE";
	case IBV_WC_RDMA_READ: return "IBV_WC_RDMA_READ";
	case IBV_WC_COMP_SWAP: return "IBV_WC_COMP_SWAP";
	case IBV_WC_FETCH_ADD: return "IBV_WC_FETCH_ADD";
	case IBV_WC_BIND_MW: return "IBV_WC_BIND_MW";
	case IBV_WC_LOCAL_INV: return "IBV_WC_LOCAL_INV";
	case IBV_WC_RECV: return "IBV_WC_RECV";
	case IBV_WC_RECV_RDMA_WITH_IMM: return "IBV_WC_RECV_RDMA_WITH_IMM";
	default: return "(unknown opcode)";
	}
}

static void describe_wc(const struct ibv_wc *wc, char *out, size_t n)
{
	snprintf(out, n,
		 "{wr_id 0x%" PRIx64 ", status %s (%d), opcode %s (%d), qp_num 0x%x, src_qp 0x%x, "
		 "byte_len %u, wc_flags 0x%x, imm_data 0x%08x, vendor_err 0x%x}",
		 wc->wr_id, ibv_wc_status_str(wc->status), (int)wc->status,
		 wc_opcode_str(wc->opcode), (int)wc->opcode, wc->qp_num, wc->src_qp, wc->byte_len,
		 wc->wc_flags, ntohl(wc->imm_data), wc->vendor_err);
}

/* Checks that no completion arrives on cq within ms milliseconds. */
static int expect_empty(struct ibv_cq *cq, unsigned ms, const char *what)
{
	double end = now_s() + ms / 1000.0;
	struct ibv_wc wc;
	do {
		memset(&wc, 0, sizeof(wc));
		int n = ibv_poll_cq(cq, 1, &wc);
		if (n < 0)
			fatal("%s: ibv_poll_cq returned %d", what, n);
		if (n > 0) {
			char d[400];
			describe_wc(&wc, d, sizeof(d));
			fail("%s: expected no completion, got %s", what, d);
			return 0;
		}
		usleep(200);
	} while (now_s() < end);
	return 1;
}

/* ------------------------------------------------------------------------ */
/* main                                                                      */

struct fv_case {
	const char *name;
	void (*fn)(void);
};

/*
 * The main() of a check program: "list" prints the case names; otherwise
 * runs the named case under the watchdog, then closes the device.
 * check_dealloc_pd: a failing ibv_dealloc_pd at the end (an object of the
 * PD was left behind: a QP, MR, SRQ or AH) is a check failure; otherwise
 * its result is ignored. Every check program passes 1; a case that cannot
 * destroy what it made (the router is gone) ends the process itself. CQs
 * and completion channels belong to the context, not the PD: a leaked one
 * is not caught here.
 */
static int fv_main(int argc, char **argv, const struct fv_case *cases, size_t n,
		   int check_dealloc_pd)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s <case>|list\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "list") == 0) {
		for (size_t i = 0; i < n; i++)
			printf("%s\n", cases[i].name);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(argv[1], cases[i].name) != 0)
			continue;
		g_case = cases[i].name;
		signal(SIGALRM, on_alarm);
		alarm(WATCHDOG_S);
		setvbuf(stdout, NULL, _IOLBF, 0);
		env_open();
		cases[i].fn();
		set_step("close");
		int rc = ibv_dealloc_pd(E.pd);
		if (rc && check_dealloc_pd)
			fail("ibv_dealloc_pd at the end returned %d (%s): an object was left behind", rc,
			     strerror(rc));
		ibv_close_device(E.ctx);
		if (g_failures) {
			fprintf(stderr, "FAIL %s: %d check(s) failed\n", g_case, g_failures);
			return 1;
		}
		printf("PASS %s\n", g_case);
		return 0;
	}
	fprintf(stderr, "unknown case '%s' (try 'list')\n", argv[1]);
	return 2;
}

#pragma GCC diagnostic pop

#endif /* FV_TEST_UTIL_H */
