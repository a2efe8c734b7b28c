/*
 * fv_test_util.h: helpers shared by the C programs of tests/c (included by
 * each; every definition is static). The check programs fv_verbs_check.c,
 * fv_qp_types_check.c, fv_semi_check.c and fv_isolation_check.c report
 * through it and run from fv_main. fv_send_one.c, fv_exec_attacker.c and
 * fv_limits_check.c report in their own way and do not call env_open: they
 * use only helpers that return an error instead of reporting one
 * (device_named, open_device_named, qp_try_create, rc_connect_local, and
 * fv_completions.h's post_and_wait); fv_xfer.c uses set_step and now_s.
 *
 * Failure reporting (fail/fatal/EXPECT_*, "FAIL <case> [<step>]: ..."), the
 * watchdog, random fill and shadow-checked buffers (optionally registered:
 * buf_reg), opening the device (fv0, or FV_VERBS_DEVICE /
 * FV_VERBS_GID_INDEX), PD/MR/CQ/SRQ helpers, checked destruction of every
 * object, QP creation, the RESET->INIT->RTR->RTS transitions, connected
 * pairs of QPs, QP state queries, work-request building and posting,
 * completion description and polling for "no completion", and the main()
 * that runs one named case. Waiting for and checking completions is in
 * fv_completions.h.
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
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

/*
 * The verdict of the case: "FAIL <case>: N check(s) failed" on stderr or
 * "PASS <case>" on stdout. Returns the exit status (1 or 0).
 */
static int fv_verdict(void)
{
	if (g_failures) {
		fprintf(stderr, "FAIL %s: %d check(s) failed\n", g_case, g_failures);
		return 1;
	}
	printf("PASS %s\n", g_case);
	return 0;
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

/* The value of an environment variable the test runner sets (fatal if unset). */
static const char *need_env(const char *name)
{
	const char *v = getenv(name);
	if (!v || !*v)
		fatal("environment variable %s is not set (the test runner sets it)", name);
	return v;
}

/* Makes fd (what names it) nonblocking; fatal on failure. */
static void set_nonblock(int fd, const char *what)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		fatal("fcntl(%s, O_NONBLOCK): %s", what, strerror(errno));
}

/* Creates (or truncates) the file path: a signal to the test runner. */
static void touch_file(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		fatal("creating %s: %s", path, strerror(errno));
	close(fd);
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

/* n bytes aligned to a page. */
static void *xmemalign(size_t n)
{
	void *p = NULL;
	if (posix_memalign(&p, 4096, n) != 0 || !p)
		fatal("posix_memalign(4096, %zu) failed", n);
	return p;
}

/* n bytes of fresh anonymous private memory (mmap). */
static uint8_t *map_anon(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		fatal("mmap(%zu, anonymous private) failed: %s", n, strerror(errno));
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
	int owned;         /* 1: malloc'd by buf_alloc */
	struct ibv_mr *mr; /* buf_reg: the MR of the whole buffer (buf_free deregisters it) */
};

static void dereg(struct ibv_mr *mr);

static void buf_wrap(struct buf *b, void *mem, size_t n, const char *name)
{
	b->p = mem;
	b->n = n;
	b->name = name;
	b->owned = 0;
	b->mr = NULL;
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
	if (b->mr)
		dereg(b->mr);
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

/* The device of list (n entries) named name, or NULL. */
static struct ibv_device *device_named(struct ibv_device **list, int n, const char *name)
{
	for (int i = 0; list && i < n; i++) {
		const char *nm = ibv_get_device_name(list[i]);
		if (nm && strcmp(nm, name) == 0)
			return list[i];
	}
	return NULL;
}

/* Opens the device named name: NULL (errno set) if there is none or it fails to open. */
static struct ibv_context *open_device_named(const char *name)
{
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	if (!list)
		return NULL;
	struct ibv_device *dev = device_named(list, n, name);
	struct ibv_context *ctx = dev ? ibv_open_device(dev) : NULL;
	int e = dev ? errno : ENODEV;
	ibv_free_device_list(list);
	if (!ctx)
		errno = e;
	return ctx;
}

static void env_open(void)
{
	int n = 0;
	set_step("open %s", dev_name());
	errno = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	if (!list)
		fatal("ibv_get_device_list returned NULL, errno %d (%s)", errno, strerror(errno));
	struct ibv_device *dev = device_named(list, n, dev_name());
	char names[512] = "";
	for (int i = 0; i < n; i++) {
		const char *nm = ibv_get_device_name(list[i]);
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

/* buf_alloc, registered whole with access (b->mr, deregistered by buf_free). */
static struct buf *buf_reg(size_t n, const char *name, int access)
{
	struct buf *b = buf_alloc(n, name);
	b->mr = reg(b->p, b->n, access);
	return b;
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

/*
 * A create verb (call, e.g. "ibv_create_qp", with what) that must refuse
 * with EINVAL: obj is what it returned, e the errno right after it. Reports
 * a failure otherwise; returns 1 if it made an object anyway (noun, e.g. "a
 * QP"), which the caller then destroys.
 */
static int made_despite_einval(const void *obj, int e, const char *call, const char *what,
			       const char *noun)
{
	if (obj) {
		fail("%s with %s: expected NULL with errno EINVAL, got %s", call, what, noun);
		return 1;
	}
	if (e != EINVAL)
		fail("%s with %s: expected errno EINVAL (%d), got %d (%s)", call, what, EINVAL, e,
		     strerror(e));
	return 0;
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

/* A CQ of cqe entries; ch: its completion channel (may be NULL), cq_ctx its cq_context. */
static struct ibv_cq *cq_new_ch(int cqe, struct ibv_comp_channel *ch, void *cq_ctx)
{
	errno = 0;
	struct ibv_cq *cq = ibv_create_cq(E.ctx, cqe, cq_ctx, ch, 0);
	if (!cq) {
		int e = errno;
		char c[64] = "";
		if (ch)
			snprintf(c, sizeof(c), ", completion channel fd %d", ch->fd);
		fatal("ibv_create_cq(%d%s) returned NULL, errno %d (%s)", cqe, c, e, strerror(e));
	}
	return cq;
}

static struct ibv_cq *cq_new(int cqe)
{
	return cq_new_ch(cqe, NULL, NULL);
}

static struct ibv_comp_channel *chan_new(void)
{
	errno = 0;
	struct ibv_comp_channel *ch = ibv_create_comp_channel(E.ctx);
	if (!ch)
		fatal("ibv_create_comp_channel returned NULL, errno %d (%s)", errno,
		      strerror(errno));
	return ch;
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
static void init_attr(struct ibv_qp_attr *a)
{
	memset(a, 0, sizeof(*a));
	a->qp_state = IBV_QPS_INIT;
	a->pkey_index = 0;
	a->port_num = 1;
}

static int qp_to_init(struct ibv_qp *qp, int access)
{
	struct ibv_qp_attr a;
	init_attr(&a);
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

/* ibv_query_qp(qp, mask) into *a (zeroed first); a failure (what names it) returns 0. */
static int query_qp_attr(struct ibv_qp *qp, int mask, struct ibv_qp_attr *a, const char *what)
{
	struct ibv_qp_init_attr ia;
	memset(a, 0, sizeof(*a));
	int rc = ibv_query_qp(qp, a, mask, &ia);
	if (rc)
		fail("%s returned %d (%s)", what, rc, strerror(rc));
	return rc == 0;
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

/* ibv_modify_qp(qp, a, mask), the transition what, must return EINVAL and leave qp in stays. */
static void expect_modify_einval(struct ibv_qp *qp, struct ibv_qp_attr *a, int mask,
				 enum ibv_qp_state stays, const char *what)
{
	char w[300];
	int rc = ibv_modify_qp(qp, a, mask);
	if (rc != EINVAL)
		fail("ibv_modify_qp %s: expected %d (EINVAL), got %d (%s)", what, EINVAL, rc,
		     strerror(rc));
	snprintf(w, sizeof(w), "after the rejected %s", what);
	expect_state(qp, stays, w);
}

/* ------------------------------------------------------------------------ */
/* Creating and connecting QPs                                               */

struct qp_cfg {
	uint32_t send_wr, recv_wr, send_sge, recv_sge, inline_sz;
	int sig_all;
	int access; /* qp_access_flags for INIT where a program connects by cfg (0 = none) */
};

#define CFG_DEFAULT                                                                      \
	{ .send_wr = 64, .recv_wr = 64, .send_sge = 4, .recv_sge = 4, .inline_sz = 0,   \
	  .sig_all = 1, .access = ACC_ALL }

static const char *qpt_str(enum ibv_qp_type t)
{
	switch (t) {
	case IBV_QPT_RC: return "RC";
	case IBV_QPT_UC: return "UC";
	case IBV_QPT_UD: return "UD";
	default: return "?";
	}
}

/* ibv_create_qp; NULL with errno set on failure. cap_out: the caps written back. */
static struct ibv_qp *qp_try_create(struct ibv_pd *pd, enum ibv_qp_type type, struct ibv_cq *scq,
				    struct ibv_cq *rcq, struct ibv_srq *srq,
				    const struct qp_cfg *c, struct ibv_qp_cap *cap_out)
{
	struct ibv_qp_init_attr ia;
	memset(&ia, 0, sizeof(ia));
	ia.send_cq = scq;
	ia.recv_cq = rcq;
	ia.srq = srq;
	ia.qp_type = type;
	ia.sq_sig_all = c->sig_all;
	ia.cap.max_send_wr = c->send_wr;
	ia.cap.max_recv_wr = c->recv_wr;
	ia.cap.max_send_sge = c->send_sge;
	ia.cap.max_recv_sge = c->recv_sge;
	ia.cap.max_inline_data = c->inline_sz;
	errno = 0;
	struct ibv_qp *qp = ibv_create_qp(pd, &ia);
	if (qp && cap_out)
		*cap_out = ia.cap;
	return qp;
}

/* A QP of E.pd; fatal if it cannot be made or has fewer send WRs than requested. */
static struct ibv_qp *qp_create_cap(enum ibv_qp_type type, struct ibv_cq *scq, struct ibv_cq *rcq,
				    struct ibv_srq *srq, const struct qp_cfg *c,
				    struct ibv_qp_cap *cap_out)
{
	struct ibv_qp_cap cap;
	struct ibv_qp *qp = qp_try_create(E.pd, type, scq, rcq, srq, c, &cap);
	if (!qp)
		fatal("ibv_create_qp(%s, send_wr %u recv_wr %u send_sge %u recv_sge %u inline "
		      "%u%s) returned NULL, errno %d (%s)",
		      qpt_str(type), c->send_wr, c->recv_wr, c->send_sge, c->recv_sge, c->inline_sz,
		      srq ? ", with an SRQ" : "", errno, strerror(errno));
	if (cap.max_send_wr < c->send_wr)
		fatal("ibv_create_qp(%s): returned cap.max_send_wr %u < requested %u",
		      qpt_str(type), cap.max_send_wr, c->send_wr);
	if (cap_out)
		*cap_out = cap;
	return qp;
}

static struct ibv_qp *qp_create(enum ibv_qp_type type, struct ibv_cq *scq, struct ibv_cq *rcq,
				struct ibv_srq *srq, const struct qp_cfg *c)
{
	return qp_create_cap(type, scq, rcq, srq, c, NULL);
}

/* An RC QP of E.pd configured by CFG_DEFAULT. */
static struct ibv_qp *rc_qp_new(struct ibv_cq *scq, struct ibv_cq *rcq)
{
	struct qp_cfg c = CFG_DEFAULT;
	return qp_create(IBV_QPT_RC, scq, rcq, NULL, &c);
}

static void qp_must(int rc, struct ibv_qp *qp, const char *what)
{
	if (rc)
		fatal("ibv_modify_qp(%s qp 0x%x, %s) returned %d (%s)", qpt_str(qp->qp_type),
		      qp->qp_num, what, rc, strerror(rc));
}

/* Moves qp to state (only IBV_QP_STATE); fatal on failure. */
static void qp_to_state(struct ibv_qp *qp, enum ibv_qp_state state, const char *what)
{
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof(a));
	a.qp_state = state;
	qp_must(ibv_modify_qp(qp, &a, IBV_QP_STATE), qp, what);
}

/* The masks of perftest. */
#define RC_RTR_MASK                                                                      \
	(IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |  \
	 IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)
#define RC_RTS_MASK                                                                      \
	(IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |              \
	 IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC)

/* How a connected QP reaches its peer (RTR) and retries (RTS). */
struct rc_path {
	/*
	 * 1: a GRH to this host's GID (E.gid, gid_index(), hop limit 1), the
	 * port's active MTU; 2 (for programs that do not call env_open): a
	 * GRH to GID 0 of the QP's own device, MTU 1024. fv0, like every
	 * RoCE device, refuses a path without a GRH.
	 */
	int grh;
	uint8_t rd_atomic; /* max_dest_rd_atomic (RTR) and max_rd_atomic (RTS) */
	uint8_t min_rnr_timer, retry_cnt, rnr_retry;
};

/*
 * The rd_atomic of this program's connections: 0 (the default) = the
 * device's max_qp_rd_atom, clamped to 1..16; a program may set it.
 */
static uint8_t g_rd_atomic;

static uint8_t rd_atom(void)
{
	if (g_rd_atomic)
		return g_rd_atomic;
	int n = E.dev.max_qp_rd_atom;
	return (uint8_t)(n < 1 ? 1 : (n > 16 ? 16 : n));
}

/* GRH, rd_atom(), min_rnr_timer 12 (0.64 ms), retry_cnt 7, rnr_retry 7 (a SEND waits for a
 * receive forever). */
static struct rc_path rc_path_default(void)
{
	struct rc_path p = { .grh = 1, .rd_atomic = rd_atom(), .min_rnr_timer = 12,
			     .retry_cnt = 7, .rnr_retry = 7 };
	return p;
}

static void rtr_attr_path(struct ibv_qp_attr *a, uint32_t dest_qpn, const struct rc_path *p)
{
	memset(a, 0, sizeof(*a));
	a->qp_state = IBV_QPS_RTR;
	a->path_mtu = (p->grh == 1 && E.port.active_mtu >= IBV_MTU_256 &&
		       E.port.active_mtu <= IBV_MTU_4096)
			      ? E.port.active_mtu
			      : IBV_MTU_1024;
	a->dest_qp_num = dest_qpn;
	a->rq_psn = 0;
	a->max_dest_rd_atomic = p->rd_atomic;
	a->min_rnr_timer = p->min_rnr_timer;
	if (p->grh == 1) {
		a->ah_attr.is_global = 1;
		a->ah_attr.grh.dgid = E.gid;
		a->ah_attr.grh.sgid_index = gid_index();
		a->ah_attr.grh.hop_limit = 1;
	}
	a->ah_attr.port_num = 1;
}

static void rts_attr_path(struct ibv_qp_attr *a, const struct rc_path *p)
{
	memset(a, 0, sizeof(*a));
	a->qp_state = IBV_QPS_RTS;
	a->sq_psn = 0;
	a->timeout = 14;
	a->retry_cnt = p->retry_cnt;
	a->rnr_retry = p->rnr_retry;
	a->max_rd_atomic = p->rd_atomic;
}

/* The RTR and RTS attributes of rc_path_default(). */
static void rtr_attr(struct ibv_qp_attr *a, uint32_t dest_qpn)
{
	struct rc_path p = rc_path_default();
	rtr_attr_path(a, dest_qpn, &p);
}

static void rts_attr(struct ibv_qp_attr *a)
{
	struct rc_path p = rc_path_default();
	rts_attr_path(a, &p);
}

/*
 * RC: RESET -> INIT (qp_access_flags access, as given; 0 = none) -> RTR ->
 * RTS, the masks of perftest. Returns 0, or what the failing ibv_modify_qp
 * returned with *failed naming the transition.
 */
static int rc_connect_path(struct ibv_qp *qp, uint32_t dest_qpn, int access,
			   const struct rc_path *p, const char **failed)
{
	struct ibv_qp_attr a;
	int rc = qp_to_init(qp, access);
	*failed = "RC RESET->INIT";
	if (rc)
		return rc;
	rtr_attr_path(&a, dest_qpn, p);
	if (p->grh == 2) {
		*failed = "ibv_query_gid(port 1, index 0)";
		if (ibv_query_gid(qp->context, 1, 0, &a.ah_attr.grh.dgid))
			return errno ? errno : EINVAL;
		a.ah_attr.is_global = 1;
		a.ah_attr.grh.hop_limit = 1;
	}
	rc = ibv_modify_qp(qp, &a, RC_RTR_MASK);
	*failed = "RC INIT->RTR";
	if (rc)
		return rc;
	rts_attr_path(&a, p);
	*failed = "RC RTR->RTS";
	return ibv_modify_qp(qp, &a, RC_RTS_MASK);
}

/*
 * For programs that do not call env_open: connects qp to dest_qpn on this
 * host (a GRH to its device's GID 0, MTU 1024, rd_atomic 1, min_rnr_timer 12), with
 * qp_access_flags access and retry_cnt = rnr_retry = retry. Returns as
 * rc_connect_path.
 */
static int rc_connect_local(struct ibv_qp *qp, uint32_t dest_qpn, int access, uint8_t retry,
			    const char **failed)
{
	struct rc_path p = { .grh = 2, .rd_atomic = 1, .min_rnr_timer = 12, .retry_cnt = retry,
			     .rnr_retry = retry };
	return rc_connect_path(qp, dest_qpn, access, &p, failed);
}

/* rc_connect with B's min_rnr_timer and A's rnr_retry as given. */
static void rc_connect_rnr(struct ibv_qp *qp, uint32_t dest_qpn, int access,
			   uint8_t min_rnr_timer, uint8_t rnr_retry)
{
	struct rc_path p = rc_path_default();
	const char *failed = "";
	p.min_rnr_timer = min_rnr_timer;
	p.rnr_retry = rnr_retry;
	int rc = rc_connect_path(qp, dest_qpn, access, &p, &failed);
	qp_must(rc, qp, failed);
}

/* RC: RESET -> INIT (access) -> RTR -> RTS to dest_qpn, rc_path_default(); fatal on failure. */
static void rc_connect(struct ibv_qp *qp, uint32_t dest_qpn, int access)
{
	rc_connect_rnr(qp, dest_qpn, access, 12, 7);
}

/* ibv_create_srq of E.pd; NULL with errno set on failure. out: the attributes written back. */
static struct ibv_srq *srq_try_create(uint32_t max_wr, uint32_t max_sge, void *ctx,
				      struct ibv_srq_attr *out)
{
	struct ibv_srq_init_attr ia;
	memset(&ia, 0, sizeof(ia));
	ia.srq_context = ctx;
	ia.attr.max_wr = max_wr;
	ia.attr.max_sge = max_sge;
	errno = 0;
	struct ibv_srq *srq = ibv_create_srq(E.pd, &ia);
	if (out)
		*out = ia.attr;
	return srq;
}

static struct ibv_srq *srq_create(uint32_t max_wr, uint32_t max_sge, struct ibv_srq_attr *out)
{
	struct ibv_srq_attr got;
	struct ibv_srq *srq = srq_try_create(max_wr, max_sge, NULL, &got);
	if (!srq)
		fatal("ibv_create_srq(max_wr %u, max_sge %u) returned NULL, errno %d (%s)", max_wr,
		      max_sge, errno, strerror(errno));
	if (got.max_wr < max_wr || got.max_sge < max_sge)
		fatal("ibv_create_srq(max_wr %u, max_sge %u) wrote back max_wr %u, max_sge %u",
		      max_wr, max_sge, got.max_wr, got.max_sge);
	if (out)
		*out = got;
	return srq;
}

/* Connects RC QPs a and b to each other, both with all remote access (rc_connect). */
static void rc_connect_both(struct ibv_qp *a, struct ibv_qp *b)
{
	rc_connect(a, b->qp_num, ACC_ALL);
	rc_connect(b, a->qp_num, ACC_ALL);
}

/* The index of the QP numbered qp_num among qps[0..n), or -1. */
static int qp_index(struct ibv_qp *const *qps, int n, uint32_t qp_num)
{
	for (int i = 0; i < n; i++)
		if (qps[i]->qp_num == qp_num)
			return i;
	return -1;
}

/* Two QPs of one type, each with its own send and recv CQ (1024 entries). */
struct pair {
	struct ibv_cq *a_scq, *a_rcq, *b_scq, *b_rcq;
	struct ibv_qp *a, *b;
	struct ibv_qp_cap a_cap, b_cap;
};

/* The CQs and the two QPs of a pair, in RESET; b_rcq_ch: B's receive CQ's channel (may be NULL). */
static void pair_create(struct pair *p, enum ibv_qp_type type, const struct qp_cfg *ca,
			const struct qp_cfg *cb, struct ibv_comp_channel *b_rcq_ch)
{
	p->a_scq = cq_new(1024);
	p->a_rcq = cq_new(1024);
	p->b_scq = cq_new(1024);
	p->b_rcq = cq_new_ch(1024, b_rcq_ch, NULL);
	p->a = qp_create_cap(type, p->a_scq, p->a_rcq, NULL, ca, &p->a_cap);
	p->b = qp_create_cap(type, p->b_scq, p->b_rcq, NULL, cb, &p->b_cap);
	if (p->a->qp_num == p->b->qp_num)
		fail("two QPs got the same qp_num 0x%x", p->a->qp_num);
}

/* An RC pair connected to each other: A with ca->access, B with cb->access. */
static void pair_new_rc(struct pair *p, const struct qp_cfg *ca, const struct qp_cfg *cb,
			struct ibv_comp_channel *b_rcq_ch)
{
	pair_create(p, IBV_QPT_RC, ca, cb, b_rcq_ch);
	rc_connect(p->a, p->b->qp_num, ca->access);
	rc_connect(p->b, p->a->qp_num, cb->access);
}

static void pair_free(struct pair *p)
{
	destroy_qp(p->a);
	destroy_qp(p->b);
	struct ibv_cq *cqs[4] = { p->a_scq, p->a_rcq, p->b_scq, p->b_rcq };
	for (int i = 0; i < 4; i++)
		destroy_cq(cqs[i]);
}

/* ------------------------------------------------------------------------ */
/* Posting and polling                                                       */

static struct ibv_sge sge(const void *addr, uint32_t len, uint32_t lkey)
{
	struct ibv_sge s = { .addr = addr_of(addr), .length = len, .lkey = lkey };
	return s;
}

/* An SGE of [off, off + len) of b, with the lkey of b->mr (see buf_reg). */
static struct ibv_sge buf_sge(const struct buf *b, size_t off, uint32_t len)
{
	return sge(b->p + off, len, b->mr->lkey);
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

static void rwr_init(struct ibv_recv_wr *wr, uint64_t wr_id, struct ibv_sge *sg, int n)
{
	memset(wr, 0, sizeof(*wr));
	wr->wr_id = wr_id;
	wr->sg_list = sg;
	wr->num_sge = n;
}

static int is_atomic(enum ibv_wr_opcode op)
{
	return op == IBV_WR_ATOMIC_FETCH_AND_ADD || op == IBV_WR_ATOMIC_CMP_AND_SWP;
}

/* The remote side of wr: wr.atomic (compare_add, swap) for an atomic opcode, else wr.rdma. */
static void wr_remote(struct ibv_send_wr *wr, uint64_t raddr, uint32_t rkey, uint64_t compare_add,
		      uint64_t swap)
{
	if (is_atomic(wr->opcode)) {
		wr->wr.atomic.remote_addr = raddr;
		wr->wr.atomic.rkey = rkey;
		wr->wr.atomic.compare_add = compare_add;
		wr->wr.atomic.swap = swap;
	} else {
		wr->wr.rdma.remote_addr = raddr;
		wr->wr.rdma.rkey = rkey;
	}
}

/* ibv_post_send of wr (a list, maybe); fatal on failure. */
static void post_send_ok(struct ibv_qp *qp, struct ibv_send_wr *wr, const char *what)
{
	struct ibv_send_wr *bad = NULL;
	int rc = ibv_post_send(qp, wr, &bad);
	if (rc)
		fatal("%s: ibv_post_send(%s qp 0x%x, wr_id 0x%" PRIx64 ") returned %d (%s)", what,
		      qpt_str(qp->qp_type), qp->qp_num, wr->wr_id, rc, strerror(rc));
}

/* Posts one send WR of opcode op (RDMA or send; raddr/rkey for RDMA, imm_host for _WITH_IMM). */
static void post_send1(struct ibv_qp *qp, uint64_t wr_id, enum ibv_wr_opcode op,
		       struct ibv_sge *sg, int n, unsigned flags, uint64_t raddr, uint32_t rkey,
		       uint32_t imm_host, const char *what)
{
	struct ibv_send_wr wr;
	wr_init(&wr, wr_id, op, sg, n, flags);
	wr.wr.rdma.remote_addr = raddr;
	wr.wr.rdma.rkey = rkey;
	wr.imm_data = htonl(imm_host);
	post_send_ok(qp, &wr, what);
}

/* post_send1, signaled. */
static void send1(struct ibv_qp *qp, uint64_t wr_id, enum ibv_wr_opcode op, struct ibv_sge *sg,
		  int n, uint64_t raddr, uint32_t rkey, uint32_t imm_host, const char *what)
{
	post_send1(qp, wr_id, op, sg, n, IBV_SEND_SIGNALED, raddr, rkey, imm_host, what);
}

static void recv1(struct ibv_qp *qp, uint64_t wr_id, struct ibv_sge *sg, int n, const char *what)
{
	struct ibv_recv_wr wr, *bad = NULL;
	rwr_init(&wr, wr_id, sg, n);
	int rc = ibv_post_recv(qp, &wr, &bad);
	if (rc)
		fatal("%s: ibv_post_recv(%s qp 0x%x, wr_id 0x%" PRIx64 ") returned %d (%s)", what,
		      qpt_str(qp->qp_type), qp->qp_num, wr_id, rc, strerror(rc));
}

static void srq_recv1(struct ibv_srq *srq, uint64_t wr_id, struct ibv_sge *sg, int n,
		      const char *what)
{
	struct ibv_recv_wr wr, *bad = NULL;
	rwr_init(&wr, wr_id, sg, n);
	int rc = ibv_post_srq_recv(srq, &wr, &bad);
	if (rc)
		fatal("%s: ibv_post_srq_recv(wr_id 0x%" PRIx64 ") returned %d (%s)", what, wr_id,
		      rc, strerror(rc));
}

/* Checks what ibv_post_<verb> returned: want_rc and, if want_bad, bad_wr = want_bad. */
static void check_post_rc(const char *verb, int rc, const void *badp, const void *want_bad,
			  int want_rc, const char *what)
{
	if (rc != want_rc)
		fail("%s: %s: expected %d (%s), got %d (%s)", what, verb, want_rc,
		     strerror(want_rc), rc, strerror(rc));
	if (want_bad && badp != want_bad)
		fail("%s: %s: expected bad_wr = %p (the offending WR), got %p", what, verb,
		     want_bad, badp);
}

/*
 * After posting to a queue (e.g. "send queue") of capacity cap (cap_name,
 * e.g. "cap.max_send_wr") WR after WR without polling until a post failed:
 * ok posts were accepted, the last one returned rc (0: none failed) and
 * bad_wr badp; want_bad is the WR it posted. A full queue must refuse with
 * ENOMEM, that WR as bad_wr, and not before cap posts were accepted.
 */
static void check_queue_full(const char *queue, const char *cap_name, uint32_t cap, uint32_t ok,
			     int rc, const void *badp, const void *want_bad)
{
	if (rc == 0) {
		fail("posted %u WRs to a %s with %s %u without polling: expected ENOMEM, every post "
		     "succeeded",
		     ok, queue, cap_name, cap);
		return;
	}
	if (rc != ENOMEM)
		fail("%s full (after %u posts, %s %u): expected %d (ENOMEM), got %d (%s)", queue, ok,
		     cap_name, cap, ENOMEM, rc, strerror(rc));
	if (badp != want_bad)
		fail("%s full: expected bad_wr = the rejected WR %p, got %p", queue, want_bad, badp);
	if (ok < cap)
		fail("%s full: only %u posts accepted, expected at least %s = %u", queue, ok, cap_name,
		     cap);
}

static void expect_post_send_rc(struct ibv_qp *qp, struct ibv_send_wr *wr,
				struct ibv_send_wr *want_bad, int want_rc, const char *what)
{
	struct ibv_send_wr *badp = NULL;
	int rc = ibv_post_send(qp, wr, &badp);
	check_post_rc("ibv_post_send", rc, badp, want_bad, want_rc, what);
}

static void expect_post_recv_rc(struct ibv_qp *qp, struct ibv_recv_wr *wr,
				struct ibv_recv_wr *want_bad, int want_rc, const char *what)
{
	struct ibv_recv_wr *badp = NULL;
	int rc = ibv_post_recv(qp, wr, &badp);
	check_post_rc("ibv_post_recv", rc, badp, want_bad, want_rc, what);
}

static void expect_post_srq_recv_rc(struct ibv_srq *srq, struct ibv_recv_wr *wr,
				    struct ibv_recv_wr *want_bad, int want_rc, const char *what)
{
	struct ibv_recv_wr *badp = NULL;
	int rc = ibv_post_srq_recv(srq, wr, &badp);
	check_post_rc("ibv_post_srq_recv", rc, badp, want_bad, want_rc, what);
}

static const char *wr_opcode_str(enum ibv_wr_opcode op)
{
	switch (op) {
	case IBV_WR_RDMA_WRITE: return "IBV_WR_RDMA_WRITE";
	case IBV_WR_RDMA_WRITE_WITH_IMM: return "IBV_WR_RDMA_WRITE_WITH_IMM";
	case IBV_WR_SEND: return "IBV_WR_SEND";
	case IBV_WR_SEND_WITH_IMM: return "IBV_WR_SEND_WITH_IMM";
	case IBV_WR_RDMA_READ: return "IBV_WR_RDMA_READ";
	case IBV_WR_ATOMIC_CMP_AND_SWP: return "IBV_WR_ATOMIC_CMP_AND_SWP";
	case IBV_WR_ATOMIC_FETCH_AND_ADD: return "IBV_WR_ATOMIC_FETCH_AND_ADD";
	default: return "(another opcode)";
	}
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
		return fv_verdict();
	}
	fprintf(stderr, "unknown case '%s' (try 'list')\n", argv[1]);
	return 2;
}

#pragma GCC diagnostic pop

#endif /* FV_TEST_UTIL_H */
