/*
 * fv_isolation_check: isolation between two processes on fv0.
 *
 * Usage: fv_isolation_check target|attacker   (fv_isolation_check list prints both)
 *
 * Two processes, started by tests/isolation.rs against one router:
 *
 *   target (A)   registers memory and serves RC QPs, one fresh QP per request;
 *   attacker (B) connects a fresh RC QP pair to A for every attempt (an RC
 *                error moves both QPs to ERR) and tries to read and write A's
 *                memory outside what A's registrations grant.
 *
 * A and B talk over a Unix socket (FV_ISO_SOCK) only to exchange addresses,
 * rkeys and QP numbers; no memory is ever sent over it. A's memory:
 *
 *   P, 2 pages, anonymous private:  page 0 = canary [0,1000) MR1 [1000,2000)
 *                                   canary [2000,4096); page 1 never registered
 *   M, 1 page, memfd "fv-iso-a-mem" mapped shared: canary [0,512)
 *                                   MR_M [512,1536) canary [1536,4096)
 *   N, 1 page: MR [256,768) registered without any remote access
 *   Q, 1 page: MR [256,768) in a second PD (A's QPs are in the first)
 *   D, 1 page: MR [256,768) registered, then deregistered (its rkey kept)
 *
 * MR1 and MR_M hold the "granted" word G; everything else listed above (the
 * canaries, the unregistered page, N, Q, D) holds the "secret" word S, in
 * every 8-byte-aligned word. G and S come from the runner (FV_ISO_TAGS,
 * given to A only), which scans B's and the router's memory for them.
 *
 * After every attempt A compares all of its secret memory with a copy, byte
 * for byte. B checks each completion status, that its QP went to ERR after
 * an error, and that nothing in its own buffer pool changed except the local
 * target of the attempt. Each attempt reads into (or writes from) its own
 * slot of B's pool, never reused, so whatever B received stays there for the
 * runner's scan.
 *
 * At the end B keeps one connected QP pair (after a successful READ of MR_M)
 * with a receive posted whose wr_id is the word FV_ISO_PLANT (given to B
 * only: the runner's proof that its scan reaches what the router maps),
 * both write FV_ISO_READY (pid, regions) and A waits for FV_ISO_GO: meanwhile
 * the runner inspects /proc/<pid>/{maps,fd,mem} of A, B and the router.
 *
 * FV_ISO_LEAKY=1 (target): A registers all of P (both pages) under MR1's
 * rkey but advertises only [1000,2000): a deliberately broken grant, so that
 * the runner can show that these checks catch a leak.
 *
 * Exit status: 0 = every check passed; 1 = a check failed ("FAIL <role>
 * [<step>]: ..." on stderr); 2 = usage; 3 = watchdog.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fv_test_util.h"
#include "fv_completions.h"

/* The whole run (the pause included) must end within this. */
#define RUN_WATCHDOG_S 240
#define PAGE 4096

/* ------------------------------------------------------------------------ */
/* Control channel (addresses, keys, QP numbers; never memory contents)      */

enum { CMD_QP = 1, CMD_CHECK, CMD_PAUSE, CMD_END };

struct layout {
	uint64_t mr1_addr, page_addr, unreg_addr;
	uint32_t mr1_len, mr1_rkey;
	uint64_t mrm_addr;
	uint32_t mrm_len, mrm_rkey;
	uint64_t norem_addr;
	uint32_t norem_len, norem_rkey;
	uint64_t pd2_addr;
	uint32_t pd2_len, pd2_rkey;
	uint64_t dead_addr;
	uint32_t dead_len, dead_rkey;
};

struct req {
	uint32_t cmd;
	uint32_t qpn;
	char what[200];
};

struct resp {
	uint32_t qpn;
	int32_t bad;
};

static int g_sock = -1;

static void xsend(const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = send(g_sock, c, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			fatal("control socket: send failed: %s", strerror(errno));
		c += w;
		n -= (size_t)w;
	}
}

/* Returns 0 if the peer closed the connection before the first byte. */
static int xrecv(void *p, size_t n)
{
	char *c = p;
	size_t got = 0;
	while (got < n) {
		ssize_t r = recv(g_sock, c + got, n - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			fatal("control socket: recv failed: %s", strerror(errno));
		if (r == 0) {
			if (got == 0)
				return 0;
			fatal("control socket: peer closed in the middle of a message");
		}
		got += (size_t)r;
	}
	return 1;
}

static void sock_addr(struct sockaddr_un *a)
{
	const char *path = need_env("FV_ISO_SOCK");
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(a->sun_path))
		fatal("FV_ISO_SOCK is too long: %s", path);
	strcpy(a->sun_path, path);
}

/* Writes FV_ISO_READY atomically (a temporary file, then rename). */
static void write_ready(const char *body)
{
	const char *path = need_env("FV_ISO_READY");
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		fatal("creating %s: %s", tmp, strerror(errno));
	fprintf(f, "pid %d\n%s", (int)getpid(), body);
	if (fclose(f) != 0 || rename(tmp, path) != 0)
		fatal("writing %s: %s", path, strerror(errno));
}

/* ------------------------------------------------------------------------ */
/* RC QPs                                                                    */

/*
 * An RC QP of E.pd with room for a few single-SGE WRs, every WR signaled;
 * connected with rc_connect (all remote access, to this host's GID: A and B
 * share fv0 and the namespace; g_rd_atomic 1).
 */
static struct ibv_qp *rc_qp(struct ibv_cq *scq, struct ibv_cq *rcq)
{
	static const struct qp_cfg c = { .send_wr = 4, .recv_wr = 4, .send_sge = 1,
					 .recv_sge = 1, .sig_all = 1, .access = ACC_ALL };
	return qp_create(IBV_QPT_RC, scq, rcq, NULL, &c);
}

/* ------------------------------------------------------------------------ */
/* Target (A)                                                                */

struct region {
	uint8_t *p;
	size_t n;
	const char *name;
	uint8_t *copy;
};

#define MAX_REGIONS 8
static struct region g_regions[MAX_REGIONS];
static int g_nregions;

static void fill_words(uint8_t *p, size_t n, uint64_t word)
{
	for (size_t i = 0; i + 8 <= n; i += 8)
		memcpy(p + i, &word, 8);
}

/* A region of A's memory that B is never granted: filled with S, copied. */
static void protect(uint8_t *p, size_t n, const char *name, uint64_t secret)
{
	if (g_nregions == MAX_REGIONS)
		fatal("too many regions");
	struct region *r = &g_regions[g_nregions++];
	fill_words(p, n, secret);
	r->p = p;
	r->n = n;
	r->name = name;
	r->copy = xmalloc(n);
	memcpy(r->copy, p, n);
}

/*
 * Compares every secret region with its copy; returns how many differ. A
 * change is reported once: the copy then takes the region's new content.
 */
static int check_regions(const char *after)
{
	int bad = 0;
	char w[400];
	for (int i = 0; i < g_nregions; i++) {
		struct region *r = &g_regions[i];
		snprintf(w, sizeof(w), "after %s: A's %s (%zu bytes)", after, r->name, r->n);
		if (!compare_bytes(r->p, r->copy, r->n, w)) {
			bad++;
			memcpy(r->copy, r->p, r->n);
		}
	}
	return bad;
}

static int g_async_events;

/* Acknowledges the async events that have arrived (QP_ACCESS_ERR of the
 * responder QPs B's attempts moved to ERR); does not wait for any. */
static void drain_async(void)
{
	struct ibv_async_event ev;
	while (ibv_get_async_event(E.ctx, &ev) == 0) {
		g_async_events++;
		ibv_ack_async_event(&ev);
	}
}

static void case_target(void)
{
	alarm(RUN_WATCHDOG_S);
	set_step("setup");
	uint64_t secret, granted;
	const char *tags = need_env("FV_ISO_TAGS");
	if (sscanf(tags, "%" SCNx64 " %" SCNx64, &secret, &granted) != 2 || secret == granted)
		fatal("FV_ISO_TAGS must be two different hex words, got '%s'", tags);
	const char *leaky_env = getenv("FV_ISO_LEAKY");
	int leaky = leaky_env && strcmp(leaky_env, "1") == 0;
	set_nonblock(E.ctx->async_fd, "async_fd");

	uint8_t *P = map_anon(2 * PAGE);
	protect(P, 1000, "canary before MR1 (same page)", secret);
	fill_words(P + 1000, 1000, granted);
	protect(P + 2000, PAGE - 2000, "canary after MR1 (same page)", secret);
	protect(P + PAGE, PAGE, "never registered page after MR1's page", secret);

	int mfd = memfd_create("fv-iso-a-mem", MFD_CLOEXEC);
	if (mfd < 0 || ftruncate(mfd, PAGE) != 0)
		fatal("memfd_create/ftruncate failed: %s", strerror(errno));
	uint8_t *M = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (M == MAP_FAILED)
		fatal("mmap of the memfd failed: %s", strerror(errno));
	protect(M, 512, "canary before MR_M (memfd page)", secret);
	fill_words(M + 512, 1024, granted);
	protect(M + 1536, PAGE - 1536, "canary after MR_M (memfd page)", secret);

	uint8_t *N = map_anon(PAGE), *Q = map_anon(PAGE), *D = map_anon(PAGE);
	protect(N, PAGE, "page of the MR without remote access", secret);
	protect(Q, PAGE, "page of the MR in A's second PD", secret);
	protect(D, PAGE, "page of the deregistered MR", secret);

	struct ibv_mr *mr1 = leaky ? reg(P, 2 * PAGE, ACC_ALL) : reg(P + 1000, 1000, ACC_ALL);
	struct ibv_mr *mrm = reg(M + 512, 1024, ACC_ALL);
	struct ibv_mr *norem = reg(N + 256, 512, IBV_ACCESS_LOCAL_WRITE);
	struct ibv_pd *pd2 = ibv_alloc_pd(E.ctx);
	if (!pd2)
		fatal("ibv_alloc_pd (second PD) failed, errno %d", errno);
	struct ibv_mr *mpd2 = reg_pd(pd2, Q + 256, 512, ACC_ALL);
	struct ibv_mr *dead = reg(D + 256, 512, ACC_ALL);
	struct layout L = {
		.mr1_addr = addr_of(P + 1000), .mr1_len = 1000, .mr1_rkey = mr1->rkey,
		.page_addr = addr_of(P), .unreg_addr = addr_of(P + PAGE),
		.mrm_addr = addr_of(M + 512), .mrm_len = 1024, .mrm_rkey = mrm->rkey,
		.norem_addr = addr_of(N + 256), .norem_len = 512, .norem_rkey = norem->rkey,
		.pd2_addr = addr_of(Q + 256), .pd2_len = 512, .pd2_rkey = mpd2->rkey,
		.dead_addr = addr_of(D + 256), .dead_len = 512, .dead_rkey = dead->rkey,
	};
	dereg(dead);
	struct ibv_cq *cq = cq_new(16);

	set_step("waiting for the attacker on FV_ISO_SOCK");
	struct sockaddr_un sa;
	sock_addr(&sa);
	unlink(sa.sun_path);
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(ls, 1) != 0)
		fatal("listening on %s: %s", sa.sun_path, strerror(errno));
	g_sock = accept(ls, NULL, NULL);
	if (g_sock < 0)
		fatal("accept: %s", strerror(errno));
	close(ls);
	xsend(&L, sizeof(L));

	struct ibv_qp *cur = NULL;
	int checks = 0, bad_after = 0;
	struct req q;
	for (;;) {
		set_step("serving the attacker");
		if (!xrecv(&q, sizeof(q)))
			fatal("the attacker closed the control socket without CMD_END");
		q.what[sizeof(q.what) - 1] = 0;
		struct resp r = { 0, 0 };
		if (q.cmd == CMD_QP) {
			set_step("fresh QP for: %s", q.what);
			drain_async();
			if (cur)
				destroy_qp(cur);
			cur = rc_qp(cq, cq);
			rc_connect(cur, q.qpn, ACC_ALL);
			r.qpn = cur->qp_num;
		} else if (q.cmd == CMD_CHECK) {
			set_step("check after: %s", q.what);
			checks++;
			r.bad = check_regions(q.what);
			if (r.bad)
				bad_after++;
		} else if (q.cmd == CMD_PAUSE) {
			char body[4096];
			int o = 0;
			for (int i = 0; i < g_nregions; i++)
				o += snprintf(body + o, sizeof(body) - o, "region %" PRIx64 " %" PRIx64 " %s\n",
					      addr_of(g_regions[i].p), addr_of(g_regions[i].p + g_regions[i].n),
					      g_regions[i].name);
			o += snprintf(body + o, sizeof(body) - o, "mr %" PRIx64 " %" PRIx64 " MR1\n",
				      addr_of(P + 1000), addr_of(P + 2000));
			o += snprintf(body + o, sizeof(body) - o, "mr %" PRIx64 " %" PRIx64 " MR_M\n",
				      addr_of(M + 512), addr_of(M + 1536));
			if (o >= (int)sizeof(body))
				fatal("the ready file does not fit in %zu bytes", sizeof(body));
			set_step("paused (waiting for FV_ISO_GO)");
			alarm(RUN_WATCHDOG_S);
			write_ready(body);
			const char *go = need_env("FV_ISO_GO");
			while (access(go, F_OK) != 0)
				sleep_ms(10);
		} else if (q.cmd == CMD_END) {
			break;
		} else {
			fatal("unknown command %u", q.cmd);
		}
		xsend(&r, sizeof(r));
	}

	set_step("final check");
	if (check_regions("the last attempt"))
		bad_after++;
	drain_async();
	if (cur)
		destroy_qp(cur);
	dereg(mr1);
	dereg(mrm);
	dereg(norem);
	dereg(mpd2);
	dealloc_pd(pd2);
	destroy_cq(cq);
	close(g_sock);
	printf("target: %d checks of %d secret regions, %d with changes; %d async events\n", checks,
	       g_nregions, bad_after, g_async_events);
}

/* ------------------------------------------------------------------------ */
/* Attacker (B)                                                              */

#define SLOT 2048
#define SLOT_OFF 64 /* the local SGE starts this far into its slot */
#define NSLOTS 64

static struct layout L;
static struct buf g_pool;
static struct ibv_mr *g_pool_mr;
static struct ibv_cq *g_scq, *g_rcq;
static const char *g_slot_name[NSLOTS];
static int g_nslots;
static int g_refused;

static void ask_a(uint32_t cmd, uint32_t qpn, const char *what, struct resp *r)
{
	struct req q;
	memset(&q, 0, sizeof(q));
	q.cmd = cmd;
	q.qpn = qpn;
	snprintf(q.what, sizeof(q.what), "%s", what);
	xsend(&q, sizeof(q));
	if (r && !xrecv(r, sizeof(*r)))
		fatal("the target closed the control socket");
}

static uint8_t *slot_sge(int k)
{
	return g_pool.p + (size_t)k * SLOT + SLOT_OFF;
}

/*
 * One attempt on a fresh QP pair: op of len bytes at A's raddr with rkey,
 * expecting status want. The local side is slot k of B's pool (returned in
 * *slot). keep: leave the pair connected and return B's QP (else NULL).
 */
static struct ibv_qp *attempt(const char *name, enum ibv_wr_opcode op, uint32_t len,
			      uint64_t raddr, uint32_t rkey, enum ibv_wc_status want, int keep,
			      int *slot)
{
	set_step("%s", name);
	if (g_nslots == NSLOTS)
		fatal("out of slots");
	int k = g_nslots++;
	g_slot_name[k] = name;
	if (slot)
		*slot = k;

	struct ibv_qp *qp = rc_qp(g_scq, g_rcq);
	struct resp r;
	ask_a(CMD_QP, qp->qp_num, name, &r);
	rc_connect(qp, r.qpn, ACC_ALL);

	int atomic = is_atomic(op);
	struct ibv_sge s = sge(slot_sge(k), atomic ? 8 : len, g_pool_mr->lkey);
	struct ibv_send_wr wr;
	wr_init(&wr, 0x150 + (uint64_t)k, op, &s, 1, IBV_SEND_SIGNALED);
	wr_remote(&wr, raddr, rkey, 1, 0x5157415053574150ULL);
	post_send_ok(qp, &wr, name);
	/* A bound against a hang, not a timing check. */
	struct ibv_wc wc;
	poll1_within(g_scq, &wc, "the attempt's completion", 60);
	char d[400];
	describe_wc(&wc, d, sizeof(d));
	if (wc.wr_id != wr.wr_id || wc.status != want)
		fail("expected wr_id 0x%" PRIx64 " with status %s (%d), got %s", wr.wr_id,
		     ibv_wc_status_str(want), (int)want, d);
	else if (want != IBV_WC_SUCCESS)
		g_refused++;
	if (wc.status != IBV_WC_SUCCESS)
		expect_state(qp, IBV_QPS_ERR, "requester QP after an error completion");

	/* The local target of a READ or atomic may change (it is undefined after
	 * an error); nothing else in B's pool may. */
	if (op == IBV_WR_RDMA_READ || atomic)
		buf_accept(&g_pool, (size_t)(slot_sge(k) - g_pool.p), s.length);
	buf_check(&g_pool, "B's buffer pool outside this attempt's local target");

	ask_a(CMD_CHECK, 0, name, &r);
	if (r.bad)
		fail("the target reports %d of its secret regions changed (see its stderr)", r.bad);
	if (keep)
		return qp;
	destroy_qp(qp);
	return NULL;
}

static void refused(const char *name, enum ibv_wr_opcode op, uint32_t len, uint64_t raddr,
		    uint32_t rkey)
{
	attempt(name, op, len, raddr, rkey, IBV_WC_REM_ACCESS_ERR, 0, NULL);
}

static void case_attacker(void)
{
	alarm(RUN_WATCHDOG_S);
	set_step("connecting to the target");
	struct sockaddr_un sa;
	sock_addr(&sa);
	double end = now_s() + 60;
	for (;;) {
		g_sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (g_sock < 0)
			fatal("socket: %s", strerror(errno));
		if (connect(g_sock, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		close(g_sock);
		if (now_s() > end)
			fatal("could not connect to %s within 60 s: %s", sa.sun_path, strerror(errno));
		sleep_ms(20);
	}
	if (!xrecv(&L, sizeof(L)))
		fatal("the target closed the control socket before sending its layout");

	set_step("setup");
	buf_wrap(&g_pool, map_anon((size_t)NSLOTS * SLOT), (size_t)NSLOTS * SLOT, "B's pool");
	g_pool_mr = reg(g_pool.p, g_pool.n, IBV_ACCESS_LOCAL_WRITE);
	g_scq = cq_new(16);
	g_rcq = cq_new(16);

	const uint64_t m = L.mr1_addr, e = L.mr1_addr + L.mr1_len;
	const uint32_t k1 = L.mr1_rkey;
	const enum ibv_wr_opcode R = IBV_WR_RDMA_READ, W = IBV_WR_RDMA_WRITE;
	const enum ibv_wr_opcode FA = IBV_WR_ATOMIC_FETCH_AND_ADD, CS = IBV_WR_ATOMIC_CMP_AND_SWP;

	/* Controls: what MR1 grants works, across the two processes. */
	attempt("READ of all of MR1", R, L.mr1_len, m, k1, IBV_WC_SUCCESS, 0, NULL);
	int ws, rs;
	attempt("WRITE of all of MR1", W, L.mr1_len, m, k1, IBV_WC_SUCCESS, 0, &ws);
	attempt("READ of all of MR1 after the WRITE", R, L.mr1_len, m, k1, IBV_WC_SUCCESS, 0, &rs);
	compare_bytes(slot_sge(rs), slot_sge(ws), L.mr1_len, "MR1 read back: what B wrote");

	/* Around MR1, in the same page. */
	refused("READ 16 B ending at MR1's start", R, 16, m - 16, k1);
	refused("READ 16 B straddling MR1's start", R, 16, m - 8, k1);
	refused("READ 16 B at MR1's end", R, 16, e, k1);
	refused("READ 16 B straddling MR1's end", R, 16, e - 8, k1);
	refused("READ of MR1's length + 1 at its start", R, L.mr1_len + 1, m, k1);
	refused("READ 16 B at the start of MR1's page", R, 16, L.page_addr, k1);
	refused("WRITE 16 B ending at MR1's start", W, 16, m - 16, k1);
	refused("WRITE 16 B straddling MR1's start", W, 16, m - 8, k1);
	refused("WRITE 16 B at MR1's end", W, 16, e, k1);
	refused("WRITE 16 B straddling MR1's end", W, 16, e - 8, k1);
	refused("WRITE of MR1's length + 1 at its start", W, L.mr1_len + 1, m, k1);

	/* Memory A never registered, with a valid rkey. */
	refused("READ 64 B of the unregistered page with MR1's rkey", R, 64, L.unreg_addr + 128, k1);
	refused("WRITE 64 B to the unregistered page with MR1's rkey", W, 64, L.unreg_addr + 128, k1);

	/* Keys that grant nothing to this QP. */
	refused("READ with the rkey of A's deregistered MR", R, 64, L.dead_addr, L.dead_rkey);
	refused("WRITE with the rkey of A's deregistered MR", W, 64, L.dead_addr, L.dead_rkey);
	refused("READ with the rkey of an MR in A's other PD", R, 64, L.pd2_addr, L.pd2_rkey);
	refused("WRITE with the rkey of an MR in A's other PD", W, 64, L.pd2_addr, L.pd2_rkey);
	refused("READ from A's MR without remote access", R, 64, L.norem_addr, L.norem_rkey);
	refused("WRITE to A's MR without remote access", W, 64, L.norem_addr, L.norem_rkey);

	/* Atomics outside what is granted. */
	refused("FETCH_ADD on the word before MR1", FA, 8, m - 8, k1);
	refused("FETCH_ADD on the word after MR1", FA, 8, e, k1);
	refused("CMP_SWAP on the word before MR1", CS, 8, m - 8, k1);
	refused("CMP_SWAP on the word after MR1", CS, 8, e, k1);
	refused("FETCH_ADD on the unregistered page with MR1's rkey", FA, 8, L.unreg_addr, k1);
	refused("FETCH_ADD with the rkey of A's deregistered MR", FA, 8, L.dead_addr, L.dead_rkey);
	refused("FETCH_ADD with the rkey of an MR in A's other PD", FA, 8, L.pd2_addr, L.pd2_rkey);
	refused("FETCH_ADD on A's MR without remote access", FA, 8, L.norem_addr, L.norem_rkey);

	/* The memfd-backed MR: the same rules. */
	const uint64_t mm = L.mrm_addr, me = L.mrm_addr + L.mrm_len;
	refused("READ 16 B straddling MR_M's end", R, 16, me - 8, L.mrm_rkey);
	refused("WRITE 16 B straddling MR_M's start", W, 16, mm - 8, L.mrm_rkey);

	/* A connection that stays up while the runner inspects the processes. */
	struct ibv_qp *kept = attempt("READ of all of MR_M (pair kept for the pause)", R, L.mrm_len,
				      mm, L.mrm_rkey, IBV_WC_SUCCESS, 1, NULL);

	/*
	 * The runner's control that its scan reaches the router: a receive
	 * whose wr_id is the word FV_ISO_PLANT stays posted on the kept QP
	 * during the pause, so the word is in B's receive ring, a segment the
	 * router maps.
	 */
	set_step("plant FV_ISO_PLANT in the kept QP's receive ring");
	uint64_t plant;
	if (sscanf(need_env("FV_ISO_PLANT"), "%" SCNx64, &plant) != 1)
		fatal("FV_ISO_PLANT must be a hex word, got '%s'", getenv("FV_ISO_PLANT"));
	recv1(kept, plant, NULL, 0, "the receive with wr_id FV_ISO_PLANT, no SGE, on the kept QP");

	set_step("pause");
	char body[8192];
	int o = 0;
	for (int k = 0; k < g_nslots; k++)
		o += snprintf(body + o, sizeof(body) - o, "slot %" PRIx64 " %" PRIx64 " %s\n",
			      addr_of(g_pool.p + (size_t)k * SLOT),
			      addr_of(g_pool.p + (size_t)(k + 1) * SLOT), g_slot_name[k]);
	/* It holds what each READ brought, too (buf_accept). */
	o += snprintf(body + o, sizeof(body) - o, "shadow %" PRIx64 " %" PRIx64 " %s\n",
		      addr_of(g_pool.exp), addr_of(g_pool.exp + g_pool.n), "B's copy of its pool");
	if (o >= (int)sizeof(body))
		fatal("the ready file does not fit in %zu bytes", sizeof(body));
	write_ready(body);
	struct resp r;
	ask_a(CMD_PAUSE, 0, "pause", &r);
	alarm(RUN_WATCHDOG_S);

	set_step("end");
	destroy_qp(kept);
	ask_a(CMD_END, 0, "end", NULL);
	close(g_sock);
	dereg(g_pool_mr);
	destroy_cq(g_scq);
	destroy_cq(g_rcq);
	printf("attacker: %d attempts, %d refused with the expected status\n", g_nslots, g_refused);
}

static const struct fv_case cases[] = {
	{ "target", case_target },
	{ "attacker", case_attacker },
};

int main(int argc, char **argv)
{
	g_rd_atomic = 1; /* max_rd_atomic and max_dest_rd_atomic of every connection */
	return fv_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]), 1);
}
