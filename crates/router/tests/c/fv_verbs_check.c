/*
 * fv_verbs_check: verbs-semantics checks for the flowverbs device fv0.
 *
 * Usage: fv_verbs_check <case>      (fv_verbs_check list  prints the cases)
 *
 * Uses only the public libibverbs API, as an application would. Every case
 * opens fv0, builds RC QPs connected to each other inside this process
 * (loopback through the router) and checks one area of verbs semantics
 * against the man pages and the InfiniBand specification.
 *
 * Exit status: 0 = every check passed; 1 = at least one check failed (each
 * failure is printed on stderr as "FAIL <case> [<step>]: ... expected ...,
 * got ..."); 2 = usage error; 3 = watchdog (the case hung).
 *
 * Conventions: ibv_post_send/ibv_post_recv/ibv_modify_qp return an errno
 * value; ibv_create_qp/ibv_reg_mr return NULL and set errno. Completions are
 * awaited with a deadline (POLL_TIMEOUT_S); a missing completion is fatal.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fv_test_util.h"
#include "fv_completions.h"

/* Two RC QPs connected to each other (fv_test_util.h's pair), both configured by c (NULL:
 * CFG_DEFAULT). */
static void pair_new(struct pair *p, const struct qp_cfg *c)
{
	struct qp_cfg d = CFG_DEFAULT;
	pair_new_rc(p, c ? c : &d, c ? c : &d, NULL);
}

/* ------------------------------------------------------------------------ */
/* Case: device                                                              */

static void case_device(void)
{
	set_step("ibv_query_device");
	EXPECT_EQ("device_attr.max_sge", E.dev.max_sge, 16);
	EXPECT_EQ("device_attr.max_qp_wr", E.dev.max_qp_wr, 16384);
	EXPECT_GE("device_attr.max_cqe", E.dev.max_cqe, 65535);
	EXPECT_GE("device_attr.max_qp_rd_atom", E.dev.max_qp_rd_atom, 1);
	EXPECT_EQ("device_attr.atomic_cap (IBV_ATOMIC_HCA=1)", E.dev.atomic_cap, IBV_ATOMIC_HCA);
	EXPECT_EQ("device_attr.phys_port_cnt", E.dev.phys_port_cnt, 1);

	set_step("ibv_query_port(1)");
	EXPECT_EQ("port_attr.state (IBV_PORT_ACTIVE=4)", E.port.state, IBV_PORT_ACTIVE);
	EXPECT_EQ("port_attr.link_layer (IBV_LINK_LAYER_ETHERNET=2)", E.port.link_layer,
		  IBV_LINK_LAYER_ETHERNET);
	EXPECT_EQ("port_attr.active_mtu (IBV_MTU_4096=5)", E.port.active_mtu, IBV_MTU_4096);
	EXPECT_EQ("port_attr.gid_tbl_len", E.port.gid_tbl_len, 1);

	set_step("ibv_query_gid(1, 0)");
	const uint8_t *g = E.gid.raw;
	int mapped = 1, zero_v4 = 1;
	for (int i = 0; i < 10; i++)
		if (g[i])
			mapped = 0;
	if (g[10] != 0xff || g[11] != 0xff)
		mapped = 0;
	for (int i = 12; i < 16; i++)
		if (g[i])
			zero_v4 = 0;
	char gs[64];
	snprintf(gs, sizeof(gs), "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x",
		 g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12],
		 g[13], g[14], g[15]);
	if (!mapped)
		fail("GID 0: expected an IPv4-mapped address ::ffff:a.b.c.d, got %s", gs);
	else if (zero_v4)
		fail("GID 0: expected a non-zero IPv4 address in ::ffff:a.b.c.d, got %s", gs);

	set_step("ibv_query_port(2)");
	struct ibv_port_attr pa;
	int rc = ibv_query_port(E.ctx, 2, &pa);
	if (rc == 0)
		fail("ibv_query_port(port 2) on a 1-port device: expected an error, got 0");
}

/* ------------------------------------------------------------------------ */
/* Case: qp_caps                                                             */

static void case_qp_caps(void)
{
	struct ibv_cq *cq = cq_new(1024);
	struct qp_cfg max = { 16384, 16384, 16, 16, 256, 1, 0 };
	struct ibv_qp_cap cap;

	set_step("create_qp at the advertised maxima");
	struct ibv_qp *qp = qp_create_cap(IBV_QPT_RC, cq, cq, NULL, &max, &cap);
	EXPECT_GE("returned cap.max_send_wr", cap.max_send_wr, 16384);
	EXPECT_GE("returned cap.max_recv_wr", cap.max_recv_wr, 16384);
	EXPECT_GE("returned cap.max_send_sge", cap.max_send_sge, 16);
	EXPECT_GE("returned cap.max_recv_sge", cap.max_recv_sge, 16);
	EXPECT_GE("returned cap.max_inline_data", cap.max_inline_data, 256);
	destroy_qp(qp);

	set_step("create_qp small");
	struct qp_cfg small = { 5, 3, 1, 1, 10, 1, 0 };
	qp = qp_create_cap(IBV_QPT_RC, cq, cq, NULL, &small, &cap);
	EXPECT_GE("returned cap.max_send_wr", cap.max_send_wr, 5);
	EXPECT_GE("returned cap.max_recv_wr", cap.max_recv_wr, 3);
	EXPECT_GE("returned cap.max_send_sge", cap.max_send_sge, 1);
	EXPECT_GE("returned cap.max_recv_sge", cap.max_recv_sge, 1);
	EXPECT_GE("returned cap.max_inline_data", cap.max_inline_data, 10);
	EXPECT_EQ("new QP state", qp_state(qp), IBV_QPS_RESET);
	destroy_qp(qp);

	struct {
		const char *what;
		struct qp_cfg c;
	} over[] = {
		{ "max_send_sge 17", { 16, 16, 17, 1, 0, 1, 0 } },
		{ "max_recv_sge 17", { 16, 16, 1, 17, 0, 1, 0 } },
		{ "max_inline_data 257", { 16, 16, 1, 1, 257, 1, 0 } },
		{ "max_send_wr 16385", { 16385, 16, 1, 1, 0, 1, 0 } },
		{ "max_recv_wr 16385", { 16, 16385, 1, 1, 0, 1, 0 } },
	};
	for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++) {
		set_step("create_qp with %s", over[i].what);
		qp = qp_try_create(E.pd, IBV_QPT_RC, cq, cq, NULL, &over[i].c, NULL);
		if (made_despite_einval(qp, errno, "ibv_create_qp", over[i].what, "a QP"))
			destroy_qp(qp);
	}
	destroy_cq(cq);
}

/* ------------------------------------------------------------------------ */
/* Case: mr_neighbours                                                       */

struct mrt {
	struct pair p;
	uint8_t *scratch;
	struct ibv_mr *smr;
	size_t ssize;
};

/*
 * Traffic through the region [off, off+len) of b, which mr covers:
 * a CPU write after registration must be seen by an RDMA_READ, and an
 * RDMA_WRITE must be seen by the CPU; the rest of b must stay intact.
 */
static void mr_traffic(struct mrt *t, struct buf *b, size_t off, size_t len, struct ibv_mr *mr,
		       const char *what)
{
	char w[300];
	if (len > t->ssize)
		fatal("mr_traffic: len %zu > scratch %zu", len, t->ssize);
	uint8_t *tmp = xmalloc(len);
	fill_random(tmp, len);
	buf_set(b, off, tmp, len);
	memset(t->scratch, 0, len);
	struct ibv_sge s = sge(t->scratch, len, t->smr->lkey);
	snprintf(w, sizeof(w), "%s: RDMA_READ of [%zu,%zu) written by the CPU after ibv_reg_mr", what,
		 off, off + len);
	send1(t->p.a, 0x5EAD, IBV_WR_RDMA_READ, &s, 1, addr_of(b->p + off), mr->rkey, 0, w);
	expect_wc(t->p.a_scq, w, 0x5EAD, IBV_WC_SUCCESS, IBV_WC_RDMA_READ, t->p.a, NULL);
	compare_bytes(t->scratch, tmp, len, w);
	buf_check(b, w);

	fill_random(t->scratch, len);
	buf_expect(b, off, t->scratch, len);
	snprintf(w, sizeof(w), "%s: RDMA_WRITE into [%zu,%zu), read by the CPU", what, off,
		 off + len);
	send1(t->p.a, 0x3817E, IBV_WR_RDMA_WRITE, &s, 1, addr_of(b->p + off), mr->rkey, 0, w);
	expect_wc(t->p.a_scq, w, 0x3817E, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, t->p.a, NULL);
	buf_check(b, w);
	free(tmp);
}

static void case_mr_neighbours(void)
{
	struct mrt t;
	struct qp_cfg c = CFG_DEFAULT;
	const int acc = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
	pair_new(&t.p, &c);
	t.ssize = 65536;
	t.scratch = xmalloc(t.ssize);
	t.smr = reg(t.scratch, t.ssize, IBV_ACCESS_LOCAL_WRITE);

	/* 1. malloc'd buffer, unaligned sub-range [13, 5013), neighbours are live data. */
	set_step("malloc'd buffer, sub-range [13,5013)");
	struct buf *before = buf_alloc(200, "malloc(200) before");
	struct buf *b = buf_alloc(16384, "malloc(16384)");
	struct buf *after = buf_alloc(200, "malloc(200) after");
	struct ibv_mr *mr = reg(b->p + 13, 5000, acc);
	if (mr->addr != (void *)(b->p + 13) || mr->length != 5000)
		fail("ibv_reg_mr(buf+13, 5000): expected mr->addr %p length 5000, got %p length %zu",
		     (void *)(b->p + 13), mr->addr, mr->length);
	buf_check(b, "right after ibv_reg_mr");
	mr_traffic(&t, b, 13, 5000, mr, "sub-range");
	/* The neighbours stay ordinary writable memory while registered. */
	uint8_t nb[16384];
	fill_random(nb, sizeof(nb));
	buf_set(b, 0, nb, 13);
	buf_set(b, 5013, nb + 5013, 16384 - 5013);
	buf_check(b, "after CPU writes to the neighbours of the registered range");
	mr_traffic(&t, b, 13, 5000, mr, "sub-range (after neighbour writes)");
	mr_traffic(&t, b, 13 + 4000, 1000, mr, "sub-range tail");
	dereg(mr);
	buf_check(b, "after ibv_dereg_mr");
	fill_random(nb, sizeof(nb));
	buf_set(b, 0, nb, sizeof(nb));
	buf_check(b, "CPU write of the whole buffer after ibv_dereg_mr");
	buf_check(before, "neighbouring heap block");
	buf_check(after, "neighbouring heap block");
	buf_free(b);
	buf_free(before);
	buf_free(after);
	/* The heap is still sound (glibc aborts on corrupted chunk headers). */
	void *probe = xmalloc(50000);
	free(probe);

	/* 2. Page-aligned posix_memalign region. */
	set_step("posix_memalign(4096, 12288) region");
	void *al = xmemalign(3 * 4096);
	struct buf ab;
	buf_wrap(&ab, al, 3 * 4096, "posix_memalign(4096, 12288)");
	mr = reg(ab.p, ab.n, acc);
	buf_check(&ab, "right after ibv_reg_mr");
	mr_traffic(&t, &ab, 0, ab.n, mr, "page-aligned, whole");
	mr_traffic(&t, &ab, 4095, 4098, mr, "page-aligned, across page boundaries");
	dereg(mr);
	buf_check(&ab, "after ibv_dereg_mr");
	buf_free(&ab);
	free(al);

	/* 3. mmap(MAP_PRIVATE|MAP_ANONYMOUS) region, registered partially then wholly. */
	set_step("mmap(MAP_PRIVATE|MAP_ANONYMOUS) 4 pages");
	size_t ml = 4 * 4096;
	void *m = map_anon(ml);
	struct buf mb;
	buf_wrap(&mb, m, ml, "mmap 4 pages");
	mr = reg(mb.p + 100, 9000, acc);
	buf_check(&mb, "right after ibv_reg_mr([100,9100))");
	mr_traffic(&t, &mb, 100, 9000, mr, "mmap sub-range");
	fill_random(nb, sizeof(nb));
	buf_set(&mb, 0, nb, 100);
	buf_set(&mb, 9100, nb, ml - 9100);
	dereg(mr);
	buf_check(&mb, "after ibv_dereg_mr([100,9100))");
	mr = reg(mb.p, ml, acc);
	buf_check(&mb, "right after ibv_reg_mr(whole mapping)");
	mr_traffic(&t, &mb, 0, ml, mr, "mmap whole");
	dereg(mr);
	buf_check(&mb, "after ibv_dereg_mr(whole mapping)");
	fill_random(nb, sizeof(nb));
	buf_set(&mb, 0, nb, ml);
	buf_check(&mb, "CPU write after ibv_dereg_mr");
	buf_free(&mb);
	munmap(m, ml);

	/* 4. Two registrations of the same range, plus a partially overlapping one. */
	set_step("overlapping registrations");
	b = buf_alloc(20000, "malloc(20000)");
	struct ibv_mr *m1 = reg(b->p + 100, 6000, acc);
	struct ibv_mr *m2 = reg(b->p + 100, 6000, acc);
	struct ibv_mr *m3 = reg(b->p + 3000, 6000, acc);
	buf_check(b, "right after three overlapping ibv_reg_mr");
	if (m1->lkey == m2->lkey || m1->rkey == m2->rkey)
		fail("two registrations of the same range: expected distinct keys, got lkey 0x%x/0x%x "
		     "rkey 0x%x/0x%x",
		     m1->lkey, m2->lkey, m1->rkey, m2->rkey);
	mr_traffic(&t, b, 100, 6000, m1, "via first registration");
	mr_traffic(&t, b, 100, 6000, m2, "via second registration");
	mr_traffic(&t, b, 3000, 6000, m3, "via overlapping registration");
	dereg(m1);
	buf_check(b, "after deregistering the first of two identical registrations");
	mr_traffic(&t, b, 100, 6000, m2, "via second registration after the first is gone");
	mr_traffic(&t, b, 3000, 6000, m3, "via overlapping registration after the first is gone");
	dereg(m2);
	mr_traffic(&t, b, 3000, 6000, m3, "via overlapping registration after both others are gone");
	dereg(m3);
	buf_check(b, "after all deregistrations");
	buf_free(b);

	/* 5. Access flag rules (man ibv_reg_mr). */
	set_step("ibv_reg_mr access flags");
	uint8_t *x = xmalloc(4096);
	struct {
		const char *what;
		int acc;
	} bad[] = {
		{ "REMOTE_WRITE without LOCAL_WRITE", IBV_ACCESS_REMOTE_WRITE },
		{ "REMOTE_ATOMIC without LOCAL_WRITE", IBV_ACCESS_REMOTE_ATOMIC },
		{ "REMOTE_WRITE|REMOTE_READ without LOCAL_WRITE",
		  IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		errno = 0;
		struct ibv_mr *r = ibv_reg_mr(E.pd, x, 4096, bad[i].acc);
		if (made_despite_einval(r, errno, "ibv_reg_mr", bad[i].what, "an MR"))
			dereg(r);
	}
	errno = 0;
	struct ibv_mr *r = ibv_reg_mr(E.pd, x, 4096, IBV_ACCESS_REMOTE_READ);
	if (!r)
		fail("ibv_reg_mr with REMOTE_READ only (valid): expected an MR, got NULL, errno %d (%s)",
		     errno, strerror(errno));
	else
		dereg(r);
	free(x);

	dereg(t.smr);
	free(t.scratch);
	pair_free(&t.p);
}

/* ------------------------------------------------------------------------ */
/* Case: send                                                                */

static void case_send(void)
{
	struct pair p;
	pair_new(&p, NULL);
	struct buf *src = buf_reg(8192, "send source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(8192, "recv destination", IBV_ACCESS_LOCAL_WRITE);

	/* 3 send SGEs (17 + 1000 + 2500 = 3517) into 2 recv SGEs of 2000 each. */
	set_step("SEND 3 SGEs -> 2 recv SGEs");
	struct ibv_sge rs[2] = { buf_sge(dst, 5, 2000), buf_sge(dst, 4099, 2000) };
	recv1(p.b, 0x5EC0, rs, 2, "recv");
	struct ibv_sge ss[3] = { buf_sge(src, 3, 17), buf_sge(src, 1111, 1000),
				 buf_sge(src, 3001, 2500) };
	uint8_t msg[3517];
	memcpy(msg, src->p + 3, 17);
	memcpy(msg + 17, src->p + 1111, 1000);
	memcpy(msg + 1017, src->p + 3001, 2500);
	buf_expect(dst, 5, msg, 2000);
	buf_expect(dst, 4099, msg + 2000, 1517);
	send1(p.a, 0x5E0D, IBV_WR_SEND, ss, 3, 0, 0, 0, "send");
	expect_wc(p.a_scq, "sender completion", 0x5E0D, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receiver completion", 0x5EC0, p.b, 3517, 0, 0, IBV_WC_RECV, NULL);
	buf_check(dst, "destination (2000 bytes at 5, 1517 at 4099, rest untouched)");
	buf_check(src, "source unchanged");

	/* Exactly filling both recv SGEs. */
	set_step("SEND 4000 bytes exactly filling 2 recv SGEs");
	recv1(p.b, 0x5EC1, rs, 2, "recv");
	struct ibv_sge s1 = buf_sge(src, 4001, 4000);
	buf_expect(dst, 5, src->p + 4001, 2000);
	buf_expect(dst, 4099, src->p + 6001, 2000);
	send1(p.a, 0x5E1D, IBV_WR_SEND, &s1, 1, 0, 0, 0, "send");
	expect_wc(p.a_scq, "sender completion", 0x5E1D, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receiver completion", 0x5EC1, p.b, 4000, 0, 0, IBV_WC_RECV, NULL);
	buf_check(dst, "destination");

	/* Zero-length SEND. */
	set_step("zero-length SEND");
	recv1(p.b, 0x5EC2, rs, 2, "recv");
	send1(p.a, 0x5E2D, IBV_WR_SEND, NULL, 0, 0, 0, 0, "send");
	expect_wc(p.a_scq, "sender completion", 0x5E2D, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receiver completion", 0x5EC2, p.b, 0, 0, 0, IBV_WC_RECV, NULL);
	buf_check(dst, "destination untouched by a zero-length SEND");

	expect_empty(p.a_scq, 100, "no further sender completions");
	expect_empty(p.b_rcq, 100, "no further receiver completions");
	pair_free(&p);
	buf_free(src);
	buf_free(dst);
}

/* ------------------------------------------------------------------------ */
/* Case: send_imm                                                            */

static void case_send_imm(void)
{
	struct pair p;
	pair_new(&p, NULL);
	struct buf *src = buf_reg(4096, "send source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(4096, "recv destination", IBV_ACCESS_LOCAL_WRITE);

	set_step("SEND_WITH_IMM 777 bytes");
	struct ibv_sge rs = buf_sge(dst, 3, 1000);
	recv1(p.b, 0x1111, &rs, 1, "recv");
	struct ibv_sge ss = buf_sge(src, 9, 777);
	buf_expect(dst, 3, src->p + 9, 777);
	send1(p.a, 0x2222, IBV_WR_SEND_WITH_IMM, &ss, 1, 0, 0, 0xDEADBEEF, "send_with_imm");
	expect_wc(p.a_scq, "sender completion", 0x2222, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receiver completion", 0x1111, p.b, 777, 1, 0xDEADBEEF, IBV_WC_RECV,
		    NULL);
	buf_check(dst, "destination");

	set_step("zero-length SEND_WITH_IMM into a recv without SGEs");
	recv1(p.b, 0x1112, NULL, 0, "recv");
	send1(p.a, 0x2223, IBV_WR_SEND_WITH_IMM, NULL, 0, 0, 0, 0x00C0FFEE, "send_with_imm");
	expect_wc(p.a_scq, "sender completion", 0x2223, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receiver completion", 0x1112, p.b, 0, 1, 0x00C0FFEE, IBV_WC_RECV,
		    NULL);
	buf_check(dst, "destination");

	pair_free(&p);
	buf_free(src);
	buf_free(dst);
}

/* ------------------------------------------------------------------------ */
/* Case: write                                                               */

static void case_write(void)
{
	struct pair p;
	pair_new(&p, NULL);
	struct buf *src = buf_reg(8192, "write source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_alloc(8192, "write target");
	struct buf *rb = buf_reg(256, "posted recv buffer", IBV_ACCESS_LOCAL_WRITE);
	/* The target MR is the sub-range [16, 16+4096) of dst. */
	struct ibv_mr *dmr = reg(dst->p + 16, 4096, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);

	/* A posted receive must not be consumed by a plain RDMA_WRITE. */
	struct ibv_sge rs = buf_sge(rb, 1, 64);
	recv1(p.b, 0x7777, &rs, 1, "recv");

	set_step("RDMA_WRITE 3 SGEs (100+3000+33) to target+17");
	struct ibv_sge ss[3] = { buf_sge(src, 1, 100), buf_sge(src, 2000, 3000),
				 buf_sge(src, 7000, 33) };
	buf_expect(dst, 16 + 17, src->p + 1, 100);
	buf_expect(dst, 16 + 117, src->p + 2000, 3000);
	buf_expect(dst, 16 + 3117, src->p + 7000, 33);
	send1(p.a, 0x3001, IBV_WR_RDMA_WRITE, ss, 3, addr_of(dst->p + 16 + 17), dmr->rkey, 0,
	      "write");
	expect_wc(p.a_scq, "requester completion", 0x3001, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a,
		  NULL);
	buf_check(dst, "target");
	buf_check(src, "source unchanged");

	set_step("RDMA_WRITE of 7 bytes ending exactly at the end of the MR");
	struct ibv_sge s1 = buf_sge(src, 5000, 7);
	buf_expect(dst, 16 + 4096 - 7, src->p + 5000, 7);
	send1(p.a, 0x3002, IBV_WR_RDMA_WRITE, &s1, 1, addr_of(dst->p + 16 + 4096 - 7), dmr->rkey, 0,
	      "write");
	expect_wc(p.a_scq, "requester completion", 0x3002, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a,
		  NULL);
	buf_check(dst, "target (bytes after the MR untouched)");

	set_step("RDMA_WRITE consumes no receive");
	expect_empty(p.b_rcq, 200, "responder recv CQ after RDMA_WRITEs");
	buf_check(rb, "posted recv buffer untouched by RDMA_WRITE");
	expect_empty(p.b_scq, 10, "responder send CQ");

	pair_free(&p);
	dereg(dmr);
	buf_free(src);
	buf_free(dst);
	buf_free(rb);
}

/* ------------------------------------------------------------------------ */
/* Case: write_imm                                                           */

static void case_write_imm(void)
{
	struct pair p;
	pair_new(&p, NULL);
	struct buf *src = buf_reg(8192, "write source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(8192, "write target",
				  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	struct buf *rb = buf_reg(256, "posted recv buffer", IBV_ACCESS_LOCAL_WRITE);

	set_step("RDMA_WRITE_WITH_IMM 2049 bytes, recv with a 64-byte SGE");
	struct ibv_sge rs = buf_sge(rb, 1, 64);
	recv1(p.b, 0xA, &rs, 1, "recv");
	struct ibv_sge ss[2] = { buf_sge(src, 7, 1024), buf_sge(src, 3000, 1025) };
	buf_expect(dst, 33, src->p + 7, 1024);
	buf_expect(dst, 33 + 1024, src->p + 3000, 1025);
	send1(p.a, 0x4001, IBV_WR_RDMA_WRITE_WITH_IMM, ss, 2, addr_of(dst->p + 33), dst->mr->rkey,
	      0x01020304, "write_with_imm");
	expect_wc(p.a_scq, "requester completion", 0x4001, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a,
		  NULL);
	expect_recv(p.b_rcq, "responder completion", 0xA, p.b, 2049, 1, 0x01020304,
		    IBV_WC_RECV_RDMA_WITH_IMM, NULL);
	buf_check(dst, "target");
	buf_check(rb, "recv buffer untouched by RDMA_WRITE_WITH_IMM");

	set_step("RDMA_WRITE_WITH_IMM 100 bytes, recv without SGEs");
	recv1(p.b, 0xB, NULL, 0, "recv");
	struct ibv_sge s1 = buf_sge(src, 6001, 100);
	buf_expect(dst, 5001, src->p + 6001, 100);
	send1(p.a, 0x4002, IBV_WR_RDMA_WRITE_WITH_IMM, &s1, 1, addr_of(dst->p + 5001), dst->mr->rkey,
	      0xFEDCBA98, "write_with_imm");
	expect_wc(p.a_scq, "requester completion", 0x4002, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a,
		  NULL);
	expect_recv(p.b_rcq, "responder completion", 0xB, p.b, 100, 1, 0xFEDCBA98,
		    IBV_WC_RECV_RDMA_WITH_IMM, NULL);
	buf_check(dst, "target");
	expect_empty(p.b_rcq, 100, "no further responder completions");

	pair_free(&p);
	buf_free(src);
	buf_free(dst);
	buf_free(rb);
}

/* ------------------------------------------------------------------------ */
/* Case: read                                                                */

static void case_read(void)
{
	struct pair p;
	pair_new(&p, NULL);
	struct buf *remote = buf_reg(8192, "read source (remote)",
				     IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
	struct buf *local = buf_reg(8192, "read destination (local)", IBV_ACCESS_LOCAL_WRITE);

	set_step("RDMA_READ 3345 bytes from remote+111 into 2 local SGEs");
	struct ibv_sge ls[2] = { buf_sge(local, 3, 1000), buf_sge(local, 2001, 2345) };
	buf_expect(local, 3, remote->p + 111, 1000);
	buf_expect(local, 2001, remote->p + 1111, 2345);
	send1(p.a, 0x6001, IBV_WR_RDMA_READ, ls, 2, addr_of(remote->p + 111), remote->mr->rkey, 0,
	      "read");
	expect_wc_len(p.a_scq, "requester completion", 0x6001, IBV_WC_RDMA_READ, p.a, 3345);
	buf_check(local, "local destination");
	buf_check(remote, "remote source unchanged");

	set_step("RDMA_READ 1 byte from the last byte of the MR");
	struct ibv_sge l1 = buf_sge(local, 7000, 1);
	buf_expect(local, 7000, remote->p + 8191, 1);
	send1(p.a, 0x6002, IBV_WR_RDMA_READ, &l1, 1, addr_of(remote->p + 8191), remote->mr->rkey, 0,
	      "read");
	expect_wc_len(p.a_scq, "requester completion", 0x6002, IBV_WC_RDMA_READ, p.a, 1);
	buf_check(local, "local destination");

	expect_empty(p.b_rcq, 50, "responder recv CQ");
	expect_empty(p.b_scq, 10, "responder send CQ");
	pair_free(&p);
	buf_free(remote);
	buf_free(local);
}

/* ------------------------------------------------------------------------ */
/* Case: atomics                                                             */

static void atomic1(struct pair *p, uint64_t wr_id, enum ibv_wr_opcode op, struct ibv_sge *ls,
		    uint64_t raddr, uint32_t rkey, uint64_t compare_add, uint64_t swap,
		    int wc_opcode, const char *what)
{
	struct ibv_send_wr wr;
	wr_init(&wr, wr_id, op, ls, 1, IBV_SEND_SIGNALED);
	wr_remote(&wr, raddr, rkey, compare_add, swap);
	post_send_ok(p->a, &wr, what);
	expect_wc_len(p->a_scq, what, wr_id, wc_opcode, p->a, 8);
}

static void case_atomics(void)
{
	struct pair p;
	pair_new(&p, NULL);
	struct buf *remote = buf_reg(4096, "atomic target (remote)", ACC_ALL);
	struct buf *local = buf_reg(256, "atomic result (local)", IBV_ACCESS_LOCAL_WRITE);
	uint8_t *t = remote->p + 64; /* 8-byte aligned (malloc gives 16) */
	if (((uintptr_t)t & 7) != 0)
		fatal("test bug: target not 8-byte aligned");
	uint64_t v0 = 0x0102030405060708ULL, v, res;
	struct ibv_sge ls = buf_sge(local, 24, 8);

	set_step("FETCH_AND_ADD");
	buf_set(remote, 64, &v0, 8);
	v = v0 + 0x1111;
	buf_expect(remote, 64, &v, 8);
	buf_expect(local, 24, &v0, 8);
	atomic1(&p, 0x8001, IBV_WR_ATOMIC_FETCH_AND_ADD, &ls, addr_of(t), remote->mr->rkey, 0x1111,
		0, IBV_WC_FETCH_ADD, "FETCH_AND_ADD +0x1111");
	buf_check(remote, "remote after FETCH_AND_ADD (target = original + 0x1111)");
	buf_check(local, "local after FETCH_AND_ADD (result = original value)");

	set_step("CMP_AND_SWP (equal)");
	uint64_t s1 = 0xA5A5A5A55A5A5A5AULL;
	res = v;
	buf_expect(remote, 64, &s1, 8);
	buf_expect(local, 24, &res, 8);
	atomic1(&p, 0x8002, IBV_WR_ATOMIC_CMP_AND_SWP, &ls, addr_of(t), remote->mr->rkey, v, s1,
		IBV_WC_COMP_SWAP, "CMP_AND_SWP (compare matches)");
	buf_check(remote, "remote after matching CMP_AND_SWP (target = swap)");
	buf_check(local, "local after matching CMP_AND_SWP (result = original value)");

	set_step("CMP_AND_SWP (not equal)");
	buf_expect(local, 24, &s1, 8);
	atomic1(&p, 0x8003, IBV_WR_ATOMIC_CMP_AND_SWP, &ls, addr_of(t), remote->mr->rkey, 0x5555,
		0x1234567812345678ULL, IBV_WC_COMP_SWAP, "CMP_AND_SWP (compare differs)");
	buf_check(remote, "remote after failed CMP_AND_SWP (unchanged)");
	buf_check(local, "local after failed CMP_AND_SWP (result = current value)");

	set_step("FETCH_AND_ADD wrap-around");
	uint64_t mx = UINT64_MAX, one = 1;
	buf_set(remote, 64, &mx, 8);
	buf_expect(remote, 64, &one, 8);
	buf_expect(local, 24, &mx, 8);
	atomic1(&p, 0x8004, IBV_WR_ATOMIC_FETCH_AND_ADD, &ls, addr_of(t), remote->mr->rkey, 2, 0,
		IBV_WC_FETCH_ADD, "FETCH_AND_ADD 2 to UINT64_MAX");
	buf_check(remote, "remote after wrapping FETCH_AND_ADD (target = 1)");
	buf_check(local, "local after wrapping FETCH_AND_ADD");

	set_step("FETCH_AND_ADD at the last 8 bytes of the MR");
	uint64_t w0, w1;
	memcpy(&w0, remote->p + 4088, 8);
	w1 = w0 + 7;
	buf_expect(remote, 4088, &w1, 8);
	buf_expect(local, 24, &w0, 8);
	atomic1(&p, 0x8005, IBV_WR_ATOMIC_FETCH_AND_ADD, &ls, addr_of(remote->p + 4088),
		remote->mr->rkey, 7, 0, IBV_WC_FETCH_ADD, "FETCH_AND_ADD at MR end - 8");
	buf_check(remote, "remote");
	buf_check(local, "local");

	pair_free(&p);
	buf_free(remote);
	buf_free(local);
}

/* ------------------------------------------------------------------------ */
/* Case: inline                                                              */

static void case_inline(void)
{
	struct pair p;
	struct qp_cfg c = CFG_DEFAULT;
	c.inline_sz = 256;
	c.recv_wr = 300;
	pair_new(&p, &c);
	EXPECT_GE("QP A cap.max_inline_data", p.a_cap.max_inline_data, 256);

	const size_t stride = 301;
	struct buf *dst = buf_reg(5 + 258 * stride, "recv slots",
				  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	uint8_t *src = xmalloc(512); /* never registered */
	uint8_t data[512];

	set_step("post 257 receives");
	for (int n = 1; n <= 257; n++) {
		struct ibv_sge rs = buf_sge(dst, 5 + (size_t)(n - 1) * stride, 300);
		recv1(p.b, 1000 + n, &rs, 1, "recv");
	}
	for (int n = 1; n <= 256; n++) {
		set_step("inline SEND of %d bytes (unregistered source, lkey 0)", n);
		fill_random(data, n);
		memcpy(src, data, n);
		buf_expect(dst, 5 + (size_t)(n - 1) * stride, data, n);
		struct ibv_sge ss = sge(src, n, 0);
		post_send1(p.a, 2000 + n, IBV_WR_SEND, &ss, 1, IBV_SEND_SIGNALED | IBV_SEND_INLINE,
			   0, 0, 0, "inline send");
		memset(src, 0xEE, 512); /* the data was copied at post time */
		expect_wc(p.a_scq, "inline send completion", 2000 + n, IBV_WC_SUCCESS, IBV_WC_SEND,
			  p.a, NULL);
	}
	set_step("inline SEND of 3 unregistered SGEs (100+56+100)");
	uint8_t *s1 = xmalloc(100), *s2 = xmalloc(56), *s3 = xmalloc(100);
	fill_random(data, 256);
	memcpy(s1, data, 100);
	memcpy(s2, data + 100, 56);
	memcpy(s3, data + 156, 100);
	buf_expect(dst, 5 + 256 * stride, data, 256);
	struct ibv_sge ms[3] = { sge(s1, 100, 0), sge(s2, 56, 0), sge(s3, 100, 0) };
	post_send1(p.a, 2257, IBV_WR_SEND, ms, 3, IBV_SEND_SIGNALED | IBV_SEND_INLINE, 0, 0, 0,
		   "inline send");
	memset(s1, 0xEE, 100);
	memset(s2, 0xEE, 56);
	memset(s3, 0xEE, 100);
	expect_wc(p.a_scq, "inline send completion", 2257, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);

	set_step("receive completions of the inline sends");
	for (int n = 1; n <= 257; n++) {
		char w[64];
		snprintf(w, sizeof(w), "recv of inline message %d", n);
		expect_recv(p.b_rcq, w, 1000 + n, p.b, n <= 256 ? (uint32_t)n : 256, 0, 0,
			    IBV_WC_RECV, NULL);
	}
	buf_check(dst, "recv slots (each slot holds its message, the rest untouched)");

	set_step("inline RDMA_WRITE of 200 bytes");
	fill_random(data, 200);
	memcpy(src, data, 200);
	buf_expect(dst, 7, data, 200);
	struct ibv_sge ws = sge(src, 200, 0);
	post_send1(p.a, 0x1A1, IBV_WR_RDMA_WRITE, &ws, 1, IBV_SEND_SIGNALED | IBV_SEND_INLINE,
		   addr_of(dst->p + 7), dst->mr->rkey, 0, "inline write");
	memset(src, 0xEE, 512);
	expect_wc(p.a_scq, "inline write completion", 0x1A1, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a,
		  NULL);
	buf_check(dst, "after inline RDMA_WRITE");

	pair_free(&p);
	buf_free(dst);
	free(src);
	free(s1);
	free(s2);
	free(s3);
}

/* ------------------------------------------------------------------------ */
/* Case: large                                                               */

static void case_large(void)
{
	const size_t L = 4u << 20;
	struct pair p;
	pair_new(&p, NULL);
	struct buf *src = buf_reg(L + 64, "4 MiB source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(L + 64, "4 MiB destination",
				  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	if (E.port.max_msg_sz < L)
		fail("port_attr.max_msg_sz: expected >= %zu, got %u", L, E.port.max_msg_sz);

	set_step("4 MiB SEND");
	struct ibv_sge rs = buf_sge(dst, 5, L);
	recv1(p.b, 0x4E, &rs, 1, "recv");
	struct ibv_sge ss = buf_sge(src, 7, L);
	buf_expect(dst, 5, src->p + 7, L);
	send1(p.a, 0x45, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
	expect_wc(p.a_scq, "sender completion", 0x45, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receiver completion", 0x4E, p.b, L, 0, 0, IBV_WC_RECV, NULL);
	buf_check(dst, "destination after 4 MiB SEND");

	set_step("4 MiB RDMA_WRITE");
	uint8_t *fresh = xmalloc(L);
	fill_random(fresh, L);
	buf_set(src, 3, fresh, L);
	free(fresh);
	ss = buf_sge(src, 3, L);
	buf_expect(dst, 11, src->p + 3, L);
	send1(p.a, 0x46, IBV_WR_RDMA_WRITE, &ss, 1, addr_of(dst->p + 11), dst->mr->rkey, 0,
	      "write");
	expect_wc(p.a_scq, "requester completion", 0x46, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a, NULL);
	buf_check(dst, "destination after 4 MiB RDMA_WRITE");
	buf_check(src, "source unchanged");

	pair_free(&p);
	buf_free(src);
	buf_free(dst);
}

/* ------------------------------------------------------------------------ */
/* Case: unsignaled                                                          */

static void case_unsignaled(void)
{
	struct pair p;
	struct qp_cfg c = CFG_DEFAULT;
	c.sig_all = 0;
	c.send_wr = 16;
	pair_new(&p, &c);
	struct buf *src = buf_reg(4096, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(16 * 128, "recv slots", IBV_ACCESS_LOCAL_WRITE);

	set_step("sq_sig_all=0: 10 unsignaled SENDs + 1 signaled");
	for (int i = 1; i <= 11; i++) {
		struct ibv_sge rs = buf_sge(dst, i * 128, 100);
		recv1(p.b, 0x100 + i, &rs, 1, "recv");
	}
	for (int i = 1; i <= 11; i++) {
		struct ibv_sge ss = buf_sge(src, i * 200, 20 + i);
		buf_expect(dst, (size_t)i * 128, src->p + i * 200, 20 + i);
		post_send1(p.a, i, IBV_WR_SEND, &ss, 1, i == 11 ? IBV_SEND_SIGNALED : 0, 0, 0, 0,
			   "send");
	}
	expect_wc(p.a_scq, "the only send completion", 11, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	for (int i = 1; i <= 11; i++) {
		char w[64];
		snprintf(w, sizeof(w), "receive %d", i);
		expect_recv(p.b_rcq, w, 0x100 + i, p.b, 20 + i, 0, 0, IBV_WC_RECV, NULL);
	}
	expect_empty(p.a_scq, 300, "send CQ after the signaled completion (unsignaled WRs must not complete)");
	buf_check(dst, "recv slots");

	set_step("unsignaled WRs keep the send queue usable (3 rounds of 16)");
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 16; i++) {
			struct ibv_sge rs = buf_sge(dst, i * 128, 100);
			recv1(p.b, 0x200 + i, &rs, 1, "recv");
		}
		for (int i = 0; i < 16; i++) {
			struct ibv_sge ss = buf_sge(src, i * 10, 10);
			post_send1(p.a, 0x300 + i, IBV_WR_SEND, &ss, 1,
				   i == 15 ? IBV_SEND_SIGNALED : 0, 0, 0, 0, "send");
		}
		expect_wc(p.a_scq, "signaled send completion", 0x30F, IBV_WC_SUCCESS, IBV_WC_SEND,
			  p.a, NULL);
		for (int i = 0; i < 16; i++)
			expect_recv(p.b_rcq, "receive", 0x200 + i, p.b, 10, 0, 0, IBV_WC_RECV,
				    NULL);
	}
	expect_empty(p.a_scq, 100, "send CQ");
	pair_free(&p);

	set_step("sq_sig_all=1: WRs without IBV_SEND_SIGNALED all complete");
	c.sig_all = 1;
	pair_new(&p, &c);
	for (int i = 0; i < 3; i++) {
		struct ibv_sge rs = buf_sge(dst, i * 128, 100);
		recv1(p.b, 0x400 + i, &rs, 1, "recv");
	}
	for (int i = 0; i < 3; i++) {
		struct ibv_sge ss = buf_sge(src, 0, 5);
		post_send1(p.a, 21 + i, IBV_WR_SEND, &ss, 1, 0, 0, 0, 0, "send");
	}
	for (int i = 0; i < 3; i++)
		expect_wc(p.a_scq, "send completion (sq_sig_all=1)", 21 + i, IBV_WC_SUCCESS,
			  IBV_WC_SEND, p.a, NULL);
	expect_empty(p.a_scq, 100, "send CQ");
	pair_free(&p);
	buf_free(src);
	buf_free(dst);
}

/* ------------------------------------------------------------------------ */
/* Case: completion_fields                                                   */

/* Polls n completions from cq into out (any order). */
static void poll_n(struct ibv_cq *cq, struct ibv_wc *out, int n, const char *what)
{
	for (int i = 0; i < n; i++)
		poll1(cq, &out[i], what);
}

static const struct ibv_wc *find_wc(const struct ibv_wc *wcs, int n, uint64_t wr_id,
				    const char *what)
{
	for (int i = 0; i < n; i++)
		if (wcs[i].wr_id == wr_id)
			return &wcs[i];
	char d[400] = "";
	if (n > 0)
		describe_wc(&wcs[0], d, sizeof(d));
	fail("%s: expected a completion with wr_id 0x%" PRIx64 ", none among %d polled (first: %s)",
	     what, wr_id, n, d);
	return NULL;
}

/*
 * Among wcs[0..n): the completions of from's SEND send_id and of to's
 * receive recv_id (len bytes, src_qp = from), in any order.
 */
static void check_send_recv(const struct ibv_wc *wcs, int n, struct ibv_qp *from,
			    const char *from_name, uint64_t send_id, struct ibv_qp *to,
			    const char *to_name, uint64_t recv_id, uint32_t len)
{
	char w[100], f[200];
	const struct ibv_wc *wc;
	snprintf(w, sizeof(w), "%s's send completion", from_name);
	if ((wc = find_wc(wcs, n, send_id, w)))
		check_wc(wc, w, send_id, IBV_WC_SUCCESS, IBV_WC_SEND, from);
	snprintf(w, sizeof(w), "%s's recv completion", to_name);
	if ((wc = find_wc(wcs, n, recv_id, w))) {
		check_wc(wc, w, recv_id, IBV_WC_SUCCESS, IBV_WC_RECV, to);
		snprintf(f, sizeof(f), "%s: wc.src_qp (= %s's qp_num)", w, from_name);
		EXPECT_EQ(f, wc->src_qp, from->qp_num);
		snprintf(f, sizeof(f), "%s: wc.byte_len", w);
		EXPECT_EQ(f, wc->byte_len, len);
	}
}

static void case_completion_fields(void)
{
	/* Both QPs share one CQ for sends and receives. */
	struct ibv_cq *cq = cq_new(256);
	struct ibv_qp *a = rc_qp_new(cq, cq);
	struct ibv_qp *b = rc_qp_new(cq, cq);
	rc_connect_both(a, b);
	struct buf *buf = buf_reg(8192, "buffer", ACC_ALL);
	struct ibv_wc wcs[2];

	set_step("A SENDs 123 bytes to B");
	struct ibv_sge rb = buf_sge(buf, 4000, 500);
	recv1(b, 0xB0, &rb, 1, "recv on B");
	struct ibv_sge ra = buf_sge(buf, 5000, 500);
	recv1(a, 0xA0, &ra, 1, "recv on A");
	struct ibv_sge s = buf_sge(buf, 1, 123);
	send1(a, 0xA1, IBV_WR_SEND, &s, 1, 0, 0, 0, "send A->B");
	poll_n(cq, wcs, 2, "A->B completions");
	check_send_recv(wcs, 2, a, "A", 0xA1, b, "B", 0xB0, 123);

	set_step("B SENDs 321 bytes to A");
	s = buf_sge(buf, 201, 321);
	send1(b, 0xB1, IBV_WR_SEND, &s, 1, 0, 0, 0, "send B->A");
	poll_n(cq, wcs, 2, "B->A completions");
	check_send_recv(wcs, 2, b, "B", 0xB1, a, "A", 0xA0, 321);

	set_step("A RDMA_WRITE, B RDMA_READ");
	s = buf_sge(buf, 600, 50);
	send1(a, 0xA2, IBV_WR_RDMA_WRITE, &s, 1, addr_of(buf->p + 7000), buf->mr->rkey, 0,
	      "write A");
	expect_wc(cq, "A's RDMA_WRITE completion", 0xA2, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, a, NULL);
	s = buf_sge(buf, 700, 60);
	send1(b, 0xB2, IBV_WR_RDMA_READ, &s, 1, addr_of(buf->p + 7100), buf->mr->rkey, 0, "read B");
	expect_wc_len(cq, "B's RDMA_READ completion", 0xB2, IBV_WC_RDMA_READ, b, 60);

	set_step("polling several completions at once");
	struct ibv_sge r2 = buf_sge(buf, 4000, 500);
	recv1(b, 0xB3, &r2, 1, "recv on B");
	s = buf_sge(buf, 1, 10);
	send1(a, 0xA3, IBV_WR_SEND, &s, 1, 0, 0, 0, "send A->B");
	struct ibv_wc many[8];
	int got = 0;
	double end = now_s() + POLL_TIMEOUT_S;
	while (got < 2 && now_s() < end) {
		int n = ibv_poll_cq(cq, 8 - got, many + got);
		if (n < 0)
			fatal("ibv_poll_cq(8) returned %d", n);
		got += n;
		if (got < 2)
			usleep(100);
	}
	if (got != 2)
		fail("expected exactly 2 completions (A's send, B's recv), got %d", got);
	else
		check_send_recv(many, 2, a, "A", 0xA3, b, "B", 0xB3, 10);
	expect_empty(cq, 100, "shared CQ at the end");

	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq);
	buf_free(buf);
}

/* ------------------------------------------------------------------------ */
/* Error cases                                                               */

/*
 * A SEND from a fresh pair whose local SGE ss must fail the lkey check
 * (IBV_WC_LOC_PROT_ERR); nothing may arrive in B's receive (all of dst).
 */
static void bad_lkey_send(const char *what, struct ibv_sge ss, struct buf *dst, uint64_t recv_id,
			  uint64_t send_id)
{
	struct pair p;
	set_step("%s", what);
	pair_new(&p, NULL);
	struct ibv_sge rs = buf_sge(dst, 0, 4096);
	recv1(p.b, recv_id, &rs, 1, "recv");
	send1(p.a, send_id, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
	expect_wc(p.a_scq, "requester completion", send_id, IBV_WC_LOC_PROT_ERR, -1, p.a, NULL);
	expect_empty(p.b_rcq, 200, "responder: nothing must arrive");
	buf_check(dst, "recv buffer untouched");
	pair_free(&p);
}

static void case_bad_lkey(void)
{
	struct pair p;
	struct buf *src = buf_reg(4096, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(4096, "recv buffer", IBV_ACCESS_LOCAL_WRITE);
	struct ibv_mr *mrs[2] = { src->mr, dst->mr };

	bad_lkey_send("SEND with an lkey that does not exist", sge(src->p, 64, unused_key(mrs, 2)),
		      dst, 0xB0, 0xBAD1);
	bad_lkey_send("SEND with a valid lkey but an SGE beyond the end of its MR",
		      buf_sge(src, 4096 - 10, 64), dst, 0xB1, 0xBAD2);
	bad_lkey_send("SEND with a valid lkey and an SGE whose end wraps past the top of the "
		      "address space",
		      sge((void *)(uintptr_t)(UINT64_MAX - 10), 100, src->mr->lkey), dst, 0xB3, 0xBAD4);

	struct ibv_pd *pd2 = ibv_alloc_pd(E.ctx);
	if (!pd2)
		fatal("ibv_alloc_pd (second) failed: errno %d", errno);
	struct ibv_mr *omr = reg_pd(pd2, src->p, src->n, IBV_ACCESS_LOCAL_WRITE);
	bad_lkey_send("SEND with the lkey of an MR of another PD", sge(src->p, 64, omr->lkey), dst,
		      0xB2, 0xBAD3);
	dereg(omr);
	dealloc_pd(pd2);

	set_step("RDMA_READ into a local SGE with an lkey that does not exist");
	struct ibv_mr *rmr = reg(dst->p, dst->n, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
	struct ibv_mr *mrs3[3] = { src->mr, dst->mr, rmr };
	pair_new(&p, NULL);
	struct ibv_sge ss = sge(src->p, 64, unused_key(mrs3, 3));
	send1(p.a, 0xBAD4, IBV_WR_RDMA_READ, &ss, 1, addr_of(dst->p), rmr->rkey, 0, "read");
	expect_wc(p.a_scq, "requester completion", 0xBAD4, IBV_WC_LOC_PROT_ERR, -1, p.a, NULL);
	buf_check(src, "source buffer (never a valid target) untouched");
	pair_free(&p);
	dereg(rmr);

	buf_free(src);
	buf_free(dst);
}

/* One requester error scenario: a fresh pair, one WR, one expected status. */
static void remote_error2(const char *what, enum ibv_wr_opcode op, struct ibv_sge *ls,
			  uint64_t raddr, uint32_t rkey, enum ibv_wc_status want,
			  const struct qp_cfg *cb, int alt);

static void remote_error(const char *what, enum ibv_wr_opcode op, struct ibv_sge *ls,
			 uint64_t raddr, uint32_t rkey, enum ibv_wc_status want,
			 const struct qp_cfg *cb)
{
	remote_error2(what, op, ls, raddr, rkey, want, cb, -1);
}

/* As remote_error; alt >= 0 is a second acceptable status. */
static void remote_error2(const char *what, enum ibv_wr_opcode op, struct ibv_sge *ls,
			  uint64_t raddr, uint32_t rkey, enum ibv_wc_status want,
			  const struct qp_cfg *cb, int alt)
{
	struct pair p;
	struct qp_cfg c = CFG_DEFAULT;
	set_step("%s", what);
	pair_new_rc(&p, &c, cb ? cb : &c, NULL);
	struct ibv_send_wr wr;
	wr_init(&wr, 0xE1, op, ls, 1, IBV_SEND_SIGNALED);
	wr_remote(&wr, raddr, rkey, 1, 0);
	post_send_ok(p.a, &wr, what);
	expect_wc_alt(p.a_scq, "requester completion", 0xE1, want, alt, p.a);
	expect_empty(p.b_rcq, 50, "responder recv CQ");
	pair_free(&p);
}

static void case_bad_rkey(void)
{
	struct buf *loc = buf_reg(4096, "local buffer", IBV_ACCESS_LOCAL_WRITE);
	struct buf *tgt = buf_reg(4096, "remote buffer", ACC_ALL);
	struct ibv_mr *mrs[2] = { loc->mr, tgt->mr };
	uint32_t bogus = unused_key(mrs, 2);
	struct ibv_sge ls = buf_sge(loc, 8, 64);

	remote_error("RDMA_WRITE with an rkey that does not exist", IBV_WR_RDMA_WRITE, &ls,
		     addr_of(tgt->p + 8), bogus, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_check(tgt, "remote buffer untouched");
	remote_error("RDMA_READ with an rkey that does not exist", IBV_WR_RDMA_READ, &ls,
		     addr_of(tgt->p + 8), bogus, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(loc, 8, 64); /* local target of a failed READ is undefined */
	buf_check(loc, "local buffer outside the READ's SGE untouched");

	/* The rkey of a deregistered MR is no longer valid. */
	struct buf *gone = buf_alloc(4096, "deregistered buffer");
	struct ibv_mr *gmr = reg(gone->p, gone->n, ACC_ALL);
	uint32_t stale = gmr->rkey;
	dereg(gmr);
	if (stale == tgt->mr->rkey || stale == loc->mr->rkey)
		fail("a deregistered MR's rkey 0x%x equals a live MR's key", stale);
	remote_error("RDMA_WRITE with the rkey of a deregistered MR", IBV_WR_RDMA_WRITE, &ls,
		     addr_of(gone->p + 8), stale, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_check(gone, "deregistered buffer untouched");

	/* A valid rkey used with an address in another MR's range. */
	remote_error("RDMA_WRITE with a valid rkey and the address of another buffer",
		     IBV_WR_RDMA_WRITE, &ls, addr_of(gone->p + 8), tgt->mr->rkey,
		     IBV_WC_REM_ACCESS_ERR, NULL);
	buf_check(gone, "other buffer untouched");
	buf_check(tgt, "remote buffer untouched");

	buf_free(loc);
	buf_free(tgt);
	buf_free(gone);
}

static void case_remote_oob(void)
{
	struct buf *loc = buf_reg(8192, "local buffer", IBV_ACCESS_LOCAL_WRITE);
	struct buf *tgt = buf_alloc(8192, "remote buffer");
	/* The remote MR is [1000, 5096) of the remote buffer. */
	struct ibv_mr *tmr = reg(tgt->p + 1000, 4096, ACC_ALL);
	struct ibv_sge ls = buf_sge(loc, 8, 16);
	uint8_t *end = tgt->p + 1000 + 4096;

	remote_error("RDMA_WRITE of 16 bytes at MR end - 8", IBV_WR_RDMA_WRITE, &ls,
		     addr_of(end - 8), tmr->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(tgt, 5096 - 8, 8); /* inside the MR: undefined after a failed WR */
	buf_check(tgt, "remote buffer outside the MR untouched");

	remote_error("RDMA_WRITE of 16 bytes at MR end", IBV_WR_RDMA_WRITE, &ls, addr_of(end),
		     tmr->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_check(tgt, "remote buffer untouched");

	remote_error("RDMA_WRITE of 16 bytes at MR start - 8", IBV_WR_RDMA_WRITE, &ls,
		     addr_of(tgt->p + 1000 - 8), tmr->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(tgt, 1000, 8);
	buf_check(tgt, "remote buffer outside the MR untouched");

	struct ibv_sge big = buf_sge(loc, 0, 4097);
	remote_error("RDMA_WRITE of MR length + 1 at MR start", IBV_WR_RDMA_WRITE, &big,
		     addr_of(tgt->p + 1000), tmr->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(tgt, 1000, 4096);
	buf_check(tgt, "remote buffer outside the MR untouched");

	remote_error("RDMA_WRITE at an address that wraps around (UINT64_MAX - 7, 16 bytes)",
		     IBV_WR_RDMA_WRITE, &ls, UINT64_MAX - 7, tmr->rkey, IBV_WC_REM_ACCESS_ERR,
		     NULL);
	buf_check(tgt, "remote buffer untouched");

	remote_error("RDMA_READ of 16 bytes at MR end - 8", IBV_WR_RDMA_READ, &ls, addr_of(end - 8),
		     tmr->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(loc, 8, 16);
	buf_check(loc, "local buffer outside the READ's SGE untouched");
	buf_check(tgt, "remote buffer untouched by READ");

	remote_error("RDMA_READ of 16 bytes at MR start - 1", IBV_WR_RDMA_READ, &ls,
		     addr_of(tgt->p + 999), tmr->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(loc, 8, 16);
	buf_check(loc, "local buffer outside the READ's SGE untouched");

	struct ibv_sge a8 = buf_sge(loc, 64, 8);
	remote_error("FETCH_AND_ADD at MR end (8 bytes past the last valid)", IBV_WR_ATOMIC_FETCH_AND_ADD,
		     &a8, addr_of(end), tmr->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(loc, 64, 8);
	buf_check(tgt, "remote buffer untouched");

	dereg(tmr);
	buf_free(loc);
	buf_free(tgt);
}

static void case_remote_access(void)
{
	struct buf *loc = buf_reg(4096, "local buffer", IBV_ACCESS_LOCAL_WRITE);
	struct buf *tgt = buf_alloc(4096, "remote buffer");
	struct ibv_sge ls = buf_sge(loc, 8, 64);
	struct ibv_sge a8 = buf_sge(loc, 128, 8);
	struct ibv_mr *m;

	m = reg(tgt->p, tgt->n, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ |
					IBV_ACCESS_REMOTE_ATOMIC);
	remote_error("RDMA_WRITE into an MR without REMOTE_WRITE", IBV_WR_RDMA_WRITE, &ls,
		     addr_of(tgt->p + 8), m->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_check(tgt, "remote buffer untouched");
	dereg(m);

	m = reg(tgt->p, tgt->n, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
					IBV_ACCESS_REMOTE_ATOMIC);
	remote_error("RDMA_READ from an MR without REMOTE_READ", IBV_WR_RDMA_READ, &ls,
		     addr_of(tgt->p + 8), m->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(loc, 8, 64);
	buf_check(loc, "local buffer outside the READ's SGE untouched");
	dereg(m);

	m = reg(tgt->p, tgt->n, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
					IBV_ACCESS_REMOTE_READ);
	remote_error("FETCH_AND_ADD on an MR without REMOTE_ATOMIC", IBV_WR_ATOMIC_FETCH_AND_ADD, &a8,
		     addr_of(tgt->p + 64), m->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(loc, 128, 8);
	buf_check(tgt, "remote buffer untouched");
	dereg(m);

	set_step("MR of another PD");
	struct ibv_pd *pd2 = ibv_alloc_pd(E.ctx);
	if (!pd2)
		fatal("ibv_alloc_pd (second) failed: errno %d", errno);
	m = reg_pd(pd2, tgt->p, tgt->n, ACC_ALL);
	remote_error("RDMA_WRITE into an MR of a PD other than the responder QP's", IBV_WR_RDMA_WRITE,
		     &ls, addr_of(tgt->p + 8), m->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_check(tgt, "remote buffer untouched");
	remote_error("RDMA_READ from an MR of a PD other than the responder QP's", IBV_WR_RDMA_READ,
		     &ls, addr_of(tgt->p + 8), m->rkey, IBV_WC_REM_ACCESS_ERR, NULL);
	buf_accept(loc, 8, 64);
	buf_check(loc, "local buffer outside the READ's SGE untouched");
	dereg(m);
	dealloc_pd(pd2);

	/*
	 * The responder QP's own access flags gate incoming RDMA. Mellanox HCAs
	 * report REM_ACCESS_ERR, kernel rxe reports REM_INV_REQ_ERR (a NAK
	 * "invalid request"); either is accepted. What matters is that nothing
	 * is written or read.
	 */
	m = reg(tgt->p, tgt->n, ACC_ALL);
	struct qp_cfg nowrite = CFG_DEFAULT;
	nowrite.access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
	remote_error2("RDMA_WRITE to a responder QP without REMOTE_WRITE in qp_access_flags",
		     IBV_WR_RDMA_WRITE, &ls, addr_of(tgt->p + 8), m->rkey, IBV_WC_REM_ACCESS_ERR,
		     &nowrite, IBV_WC_REM_INV_REQ_ERR);
	buf_check(tgt, "remote buffer untouched");
	struct qp_cfg noread = CFG_DEFAULT;
	noread.access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC;
	remote_error2("RDMA_READ from a responder QP without REMOTE_READ in qp_access_flags",
		     IBV_WR_RDMA_READ, &ls, addr_of(tgt->p + 8), m->rkey, IBV_WC_REM_ACCESS_ERR,
		     &noread, IBV_WC_REM_INV_REQ_ERR);
	buf_accept(loc, 8, 64);
	buf_check(loc, "local buffer outside the READ's SGE untouched");
	/* qp_access_flags 0 grants no remote access at all (not "all"). */
	struct qp_cfg none = CFG_DEFAULT;
	none.access = 0;
	remote_error2("RDMA_WRITE to a responder QP with qp_access_flags 0", IBV_WR_RDMA_WRITE, &ls,
		      addr_of(tgt->p + 8), m->rkey, IBV_WC_REM_ACCESS_ERR, &none,
		      IBV_WC_REM_INV_REQ_ERR);
	buf_check(tgt, "remote buffer untouched");
	remote_error2("RDMA_READ from a responder QP with qp_access_flags 0", IBV_WR_RDMA_READ, &ls,
		      addr_of(tgt->p + 8), m->rkey, IBV_WC_REM_ACCESS_ERR, &none,
		      IBV_WC_REM_INV_REQ_ERR);
	buf_accept(loc, 8, 64);
	buf_check(loc, "local buffer outside the READ's SGE untouched");
	remote_error2("FETCH_AND_ADD on a responder QP with qp_access_flags 0",
		      IBV_WR_ATOMIC_FETCH_AND_ADD, &a8, addr_of(tgt->p + 64), m->rkey,
		      IBV_WC_REM_ACCESS_ERR, &none, IBV_WC_REM_INV_REQ_ERR);
	buf_accept(loc, 128, 8);
	buf_check(tgt, "remote buffer untouched");
	dereg(m);

	buf_free(loc);
	buf_free(tgt);
}

static void case_recv_too_small(void)
{
	struct pair p;
	pair_new(&p, NULL);
	struct buf *src = buf_reg(2000, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(2000, "recv buffer", IBV_ACCESS_LOCAL_WRITE);

	set_step("SEND 1000 bytes into a 100-byte receive");
	struct ibv_sge rs = buf_sge(dst, 50, 100);
	recv1(p.b, 0xB0, &rs, 1, "recv");
	struct ibv_sge ss = buf_sge(src, 3, 1000);
	send1(p.a, 0xA0, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
	expect_wc(p.b_rcq, "receiver completion", 0xB0, IBV_WC_LOC_LEN_ERR, -1, p.b, NULL);
	expect_wc(p.a_scq, "requester completion", 0xA0, IBV_WC_REM_INV_REQ_ERR, -1, p.a, NULL);
	buf_accept(dst, 50, 100); /* the receive buffer's content is undefined */
	buf_check(dst, "bytes outside the 100-byte receive untouched");
	buf_check(src, "source unchanged");

	pair_free(&p);
	buf_free(src);
	buf_free(dst);
}

/*
 * Case: message_too_long. A SEND of 16 SGEs of 136 MiB each (all on one
 * MR: 2176 MiB in all) exceeds the device's maximum message size (2 GiB):
 * the requester completes it with LOC_LEN_ERR and nothing arrives. (Semi
 * mode once had no such check and tried to deliver it.)
 */
static void case_message_too_long(void)
{
	const size_t piece = 136u << 20;
	struct pair p;
	struct qp_cfg c = CFG_DEFAULT;
	c.send_sge = 16;
	pair_new(&p, &c);
	void *big = map_anon(piece);
	struct buf *dst = buf_reg(4096, "recv buffer", IBV_ACCESS_LOCAL_WRITE);
	struct ibv_mr *smr = reg(big, piece, IBV_ACCESS_LOCAL_WRITE);

	set_step("SEND of 16 x %zu MiB = %zu MiB (more than 2048 MiB)", piece >> 20,
		 (16 * piece) >> 20);
	struct ibv_sge rs = buf_sge(dst, 0, 4096);
	recv1(p.b, 0xB0, &rs, 1, "recv");
	struct ibv_sge ss[16];
	for (int i = 0; i < 16; i++)
		ss[i] = sge(big, (uint32_t)piece, smr->lkey);
	send1(p.a, 0xA0, IBV_WR_SEND, ss, 16, 0, 0, 0, "send");
	expect_wc(p.a_scq, "requester completion", 0xA0, IBV_WC_LOC_LEN_ERR, -1, p.a, NULL);
	expect_empty(p.b_rcq, 200, "responder: nothing must arrive");
	buf_check(dst, "recv buffer untouched");

	pair_free(&p);
	dereg(smr);
	munmap(big, piece);
	buf_free(dst);
}

/* ------------------------------------------------------------------------ */
/* Case: flush                                                               */

static void expect_flushes(struct ibv_cq *cq, struct ibv_qp *qp, uint64_t first, int n,
			   const char *what)
{
	for (int i = 0; i < n; i++) {
		char w[200];
		snprintf(w, sizeof(w), "%s (wr_id 0x%" PRIx64 ")", what, first + i);
		expect_wc(cq, w, first + i, IBV_WC_WR_FLUSH_ERR, -1, qp, NULL);
	}
}

static void case_flush(void)
{
	struct pair p;
	struct buf *b = buf_reg(8192, "buffer", ACC_ALL);
	struct ibv_mr *mrs[1] = { b->mr };
	struct ibv_sge s64 = buf_sge(b, 100, 64);
	struct ibv_sge r = buf_sge(b, 4096, 1024);
	g_soft_timeouts = 1; /* each step uses a fresh pair: report all missing flushes */

	/* 1. Explicit transition to ERR flushes the outstanding receives. */
	set_step("ibv_modify_qp(IBV_QPS_ERR) with 3 posted receives");
	pair_new(&p, NULL);
	for (int i = 0; i < 3; i++)
		recv1(p.b, 0xF1 + i, &r, 1, "recv");
	qp_to_state(p.b, IBV_QPS_ERR, "-> ERR");
	expect_state(p.b, IBV_QPS_ERR, "after modify to ERR");
	expect_flushes(p.b_rcq, p.b, 0xF1, 3, "posted receive flushed by modify(ERR)");
	set_step("posting to a QP in ERR");
	recv1(p.b, 0xF4, &r, 1, "recv in ERR");
	expect_flushes(p.b_rcq, p.b, 0xF4, 1, "receive posted in ERR");
	send1(p.b, 0xF5, IBV_WR_SEND, &s64, 1, 0, 0, 0, "send in ERR");
	expect_flushes(p.b_scq, p.b, 0xF5, 1, "send posted in ERR");
	expect_empty(p.b_rcq, 50, "B recv CQ");
	pair_free(&p);

	/* 2. A local protection error moves the requester to ERR. */
	set_step("bad lkey: requester state and flushes");
	pair_new(&p, NULL);
	recv1(p.a, 0xA1, &r, 1, "recv on A");
	recv1(p.a, 0xA2, &r, 1, "recv on A");
	recv1(p.b, 0xB1, &r, 1, "recv on B");
	struct ibv_sge bad = sge(b->p, 64, unused_key(mrs, 1));
	struct ibv_send_wr w[2];
	wr_init(&w[0], 0xBAD, IBV_WR_SEND, &bad, 1, IBV_SEND_SIGNALED);
	wr_init(&w[1], 0xC0, IBV_WR_SEND, &s64, 1, IBV_SEND_SIGNALED);
	w[0].next = &w[1];
	post_send_ok(p.a, &w[0], "[bad lkey SEND, good SEND]");
	expect_wc(p.a_scq, "failing SEND", 0xBAD, IBV_WC_LOC_PROT_ERR, -1, p.a, NULL);
	expect_flushes(p.a_scq, p.a, 0xC0, 1, "SEND queued behind the failing one");
	expect_state(p.a, IBV_QPS_ERR, "requester after LOC_PROT_ERR");
	send1(p.a, 0xC1, IBV_WR_SEND, &s64, 1, 0, 0, 0, "send after error");
	send1(p.a, 0xC2, IBV_WR_RDMA_WRITE, &s64, 1, addr_of(b->p + 6000), b->mr->rkey, 0,
	      "write after error");
	expect_flushes(p.a_scq, p.a, 0xC1, 2, "WR posted after the error");
	expect_flushes(p.a_rcq, p.a, 0xA1, 2, "receive posted on the requester before the error");
	expect_empty(p.b_rcq, 100, "B received nothing");
	pair_free(&p);

	/* 3. A remote access error moves the requester to ERR. */
	set_step("bad rkey: requester state and flushes");
	pair_new(&p, NULL);
	recv1(p.a, 0xA3, &r, 1, "recv on A");
	send1(p.a, 0xE2, IBV_WR_RDMA_WRITE, &s64, 1, addr_of(b->p + 6000), unused_key(mrs, 1), 0,
	      "write with bad rkey");
	expect_wc(p.a_scq, "failing RDMA_WRITE", 0xE2, IBV_WC_REM_ACCESS_ERR, -1, p.a, NULL);
	expect_state(p.a, IBV_QPS_ERR, "requester after REM_ACCESS_ERR");
	send1(p.a, 0xC3, IBV_WR_SEND, &s64, 1, 0, 0, 0, "send after error");
	expect_flushes(p.a_scq, p.a, 0xC3, 1, "WR posted after the error");
	expect_flushes(p.a_rcq, p.a, 0xA3, 1, "receive posted on the requester before the error");
	pair_free(&p);

	/* 4. Receive too small: both sides get an error and go to ERR. */
	set_step("recv too small: both QPs in ERR, remaining receives flushed");
	pair_new(&p, NULL);
	struct ibv_sge small = buf_sge(b, 4096, 10);
	recv1(p.b, 0xB5, &small, 1, "small recv on B");
	recv1(p.b, 0xB6, &r, 1, "recv on B");
	recv1(p.b, 0xB7, &r, 1, "recv on B");
	send1(p.a, 0xE3, IBV_WR_SEND, &s64, 1, 0, 0, 0, "64-byte send");
	expect_wc(p.b_rcq, "too-small receive", 0xB5, IBV_WC_LOC_LEN_ERR, -1, p.b, NULL);
	expect_flushes(p.b_rcq, p.b, 0xB6, 2, "receive behind the failed one");
	expect_wc(p.a_scq, "requester", 0xE3, IBV_WC_REM_INV_REQ_ERR, -1, p.a, NULL);
	expect_state(p.b, IBV_QPS_ERR, "responder after LOC_LEN_ERR");
	expect_state(p.a, IBV_QPS_ERR, "requester after REM_INV_REQ_ERR");
	send1(p.a, 0xC4, IBV_WR_SEND, &s64, 1, 0, 0, 0, "send after error");
	expect_flushes(p.a_scq, p.a, 0xC4, 1, "WR posted after the error");
	pair_free(&p);

	/* 5. Back to RESET and reconnect: the QP is usable again. */
	set_step("ERR -> RESET -> INIT -> RTR -> RTS reuses the QP pair");
	pair_new(&p, NULL);
	qp_to_state(p.a, IBV_QPS_ERR, "A -> ERR");
	qp_to_state(p.b, IBV_QPS_ERR, "B -> ERR");
	qp_to_state(p.a, IBV_QPS_RESET, "A -> RESET");
	qp_to_state(p.b, IBV_QPS_RESET, "B -> RESET");
	expect_state(p.a, IBV_QPS_RESET, "after modify to RESET");
	rc_connect_both(p.a, p.b);
	recv1(p.b, 0xB8, &r, 1, "recv on B");
	send1(p.a, 0xC5, IBV_WR_SEND, &s64, 1, 0, 0, 0, "send after reconnect");
	expect_wc(p.a_scq, "send after reconnect", 0xC5, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "recv after reconnect", 0xB8, p.b, 64, 0, 0, IBV_WC_RECV, NULL);
	pair_free(&p);

	buf_free(b);
}

/* ------------------------------------------------------------------------ */
/* Case: wrong_state                                                         */

static void case_wrong_state(void)
{
	struct qp_cfg c = CFG_DEFAULT;
	struct ibv_cq *cq_a = cq_new(4096), *cq_b = cq_new(4096);
	struct ibv_qp_cap cap_a, cap_b;
	struct ibv_qp *a = qp_create_cap(IBV_QPT_RC, cq_a, cq_a, NULL, &c, &cap_a);
	struct ibv_qp *b = qp_create_cap(IBV_QPT_RC, cq_b, cq_b, NULL, &c, &cap_b);
	struct buf *buf = buf_reg(8192, "buffer", ACC_ALL);
	struct ibv_sge s = buf_sge(buf, 10, 32);
	struct ibv_sge r = buf_sge(buf, 4096, 512);
	struct ibv_send_wr wr;
	struct ibv_recv_wr rwr;
	struct ibv_qp_attr at;

	rwr_init(&rwr, 0x1717, &r, 1);

	set_step("QP in RESET");
	expect_state(a, IBV_QPS_RESET, "new QP");
	wr_init(&wr, 0x51, IBV_WR_SEND, &s, 1, IBV_SEND_SIGNALED);
	expect_post_send_rc(a, &wr, &wr, EINVAL, "post_send in RESET");
	expect_post_recv_rc(b, &rwr, &rwr, EINVAL, "post_recv in RESET");
	rtr_attr(&at, b->qp_num);
	expect_modify_einval(a, &at, RC_RTR_MASK, IBV_QPS_RESET, "RESET->RTR");
	rts_attr(&at);
	expect_modify_einval(a, &at, RC_RTS_MASK, IBV_QPS_RESET, "RESET->RTS");

	set_step("QP in INIT");
	qp_must(qp_to_init(a, ACC_ALL), a, "RESET->INIT");
	qp_must(qp_to_init(b, ACC_ALL), b, "RESET->INIT");
	expect_state(a, IBV_QPS_INIT, "after RESET->INIT");
	wr_init(&wr, 0x52, IBV_WR_SEND, &s, 1, IBV_SEND_SIGNALED);
	expect_post_send_rc(a, &wr, &wr, EINVAL, "post_send in INIT");
	expect_post_recv_rc(b, &rwr, NULL, 0, "post_recv in INIT (allowed)");
	rtr_attr(&at, b->qp_num);
	expect_modify_einval(a, &at, RC_RTR_MASK & ~IBV_QP_DEST_QPN, IBV_QPS_INIT,
			     "INIT->RTR without IBV_QP_DEST_QPN");

	set_step("QP in RTR");
	rtr_attr(&at, b->qp_num);
	qp_must(ibv_modify_qp(a, &at, RC_RTR_MASK), a, "INIT->RTR");
	rtr_attr(&at, a->qp_num);
	qp_must(ibv_modify_qp(b, &at, RC_RTR_MASK), b, "INIT->RTR");
	expect_state(a, IBV_QPS_RTR, "after INIT->RTR");
	wr_init(&wr, 0x53, IBV_WR_SEND, &s, 1, IBV_SEND_SIGNALED);
	expect_post_send_rc(a, &wr, &wr, EINVAL, "post_send in RTR");
	rts_attr(&at);
	qp_must(ibv_modify_qp(a, &at, RC_RTS_MASK), a, "RTR->RTS");
	qp_must(ibv_modify_qp(b, &at, RC_RTS_MASK), b, "RTR->RTS");
	expect_state(a, IBV_QPS_RTS, "after RTR->RTS");

	set_step("RTS: the receive posted in INIT is used");
	wr_init(&wr, 0x54, IBV_WR_SEND, &s, 1, IBV_SEND_SIGNALED);
	post_send_ok(a, &wr, "send in RTS");
	expect_wc(cq_a, "send in RTS", 0x54, IBV_WC_SUCCESS, IBV_WC_SEND, a, NULL);
	expect_recv(cq_b, "receive posted in INIT", 0x1717, b, 32, 0, 0, IBV_WC_RECV, NULL);
	expect_empty(cq_a, 50, "no completions for rejected WRs (A)");
	expect_empty(cq_b, 50, "no completions for rejected WRs (B)");

	set_step("too many SGEs");
	struct ibv_sge many[64];
	uint32_t ns = cap_a.max_send_sge + 1, nr = cap_b.max_recv_sge + 1;
	if (ns > 64 || nr > 64)
		fatal("returned caps too large to test (max_send_sge %u, max_recv_sge %u)",
		      cap_a.max_send_sge, cap_b.max_recv_sge);
	for (int i = 0; i < 64; i++)
		many[i] = buf_sge(buf, i * 8, 4);
	wr_init(&wr, 0x55, IBV_WR_SEND, many, ns, IBV_SEND_SIGNALED);
	char what[128];
	snprintf(what, sizeof(what), "post_send with %u SGEs (cap.max_send_sge %u)", ns,
		 cap_a.max_send_sge);
	expect_post_send_rc(a, &wr, &wr, EINVAL, what);
	struct ibv_recv_wr rw2;
	rwr_init(&rw2, 0x56, many, nr);
	snprintf(what, sizeof(what), "post_recv with %u SGEs (cap.max_recv_sge %u)", nr,
		 cap_b.max_recv_sge);
	expect_post_recv_rc(b, &rw2, &rw2, EINVAL, what);
	expect_empty(cq_a, 50, "no completion for the rejected send");

	set_step("list [valid, too many SGEs]: bad_wr is the second, the first is posted");
	rwr.wr_id = 0x1818;
	expect_post_recv_rc(b, &rwr, NULL, 0, "post_recv");
	struct ibv_send_wr two[2];
	wr_init(&two[0], 0x57, IBV_WR_SEND, &s, 1, IBV_SEND_SIGNALED);
	wr_init(&two[1], 0x58, IBV_WR_SEND, many, ns, IBV_SEND_SIGNALED);
	two[0].next = &two[1];
	expect_post_send_rc(a, &two[0], &two[1], EINVAL, "post_send of [valid, invalid]");
	expect_wc(cq_a, "the valid first WR of the list", 0x57, IBV_WC_SUCCESS, IBV_WC_SEND, a, NULL);
	expect_recv(cq_b, "its receive", 0x1818, b, 32, 0, 0, IBV_WC_RECV, NULL);
	expect_empty(cq_a, 50, "no completion for the rejected second WR");

	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq_a);
	destroy_cq(cq_b);

	set_step("send queue full: ENOMEM without polling");
	struct pair p;
	struct qp_cfg sc = CFG_DEFAULT;
	sc.send_wr = 8;
	pair_new(&p, &sc);
	uint32_t capw = p.a_cap.max_send_wr;
	uint32_t limit = capw * 4 + 64;
	uint32_t ok = 0;
	int got_rc = 0;
	struct ibv_send_wr *badp = NULL;
	struct ibv_send_wr fw;
	struct ibv_sge f8 = buf_sge(buf, 0, 8);
	if (limit > 1000)
		fatal("returned cap.max_send_wr %u for a request of 8: too large to test", capw);
	for (uint32_t i = 0; i < limit; i++) {
		wr_init(&fw, 0x9000 + i, IBV_WR_RDMA_WRITE, &f8, 1, IBV_SEND_SIGNALED);
		wr_remote(&fw, addr_of(buf->p + 2048), buf->mr->rkey, 0, 0);
		badp = NULL;
		got_rc = ibv_post_send(p.a, &fw, &badp);
		if (got_rc)
			break;
		ok++;
	}
	check_queue_full("send queue", "cap.max_send_wr", capw, ok, got_rc, badp, &fw);
	for (uint32_t i = 0; i < ok; i++) {
		char w[80];
		snprintf(w, sizeof(w), "completion %u of %u accepted WRs", i + 1, ok);
		expect_wc(p.a_scq, w, 0x9000 + i, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a, NULL);
	}
	expect_empty(p.a_scq, 50, "no completion for the rejected WR");
	wr_init(&fw, 0x9999, IBV_WR_RDMA_WRITE, &f8, 1, IBV_SEND_SIGNALED);
	wr_remote(&fw, addr_of(buf->p + 2048), buf->mr->rkey, 0, 0);
	expect_post_send_rc(p.a, &fw, NULL, 0, "post_send after draining the CQ");
	expect_wc(p.a_scq, "post after draining", 0x9999, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a, NULL);

	set_step("send queue kept full: each polled completion frees its slot at once");
	uint32_t kept = 0;
	for (uint32_t i = 0; i < capw; i++) {
		wr_init(&fw, i, IBV_WR_RDMA_WRITE, &f8, 1, IBV_SEND_SIGNALED);
		wr_remote(&fw, addr_of(buf->p + 2048), buf->mr->rkey, 0, 0);
		expect_post_send_rc(p.a, &fw, NULL, 0, "post_send filling the queue");
	}
	for (uint32_t i = 0; i < 5000; i++) {
		char w[80];
		snprintf(w, sizeof(w), "completion %u of a full queue", i);
		expect_wc(p.a_scq, w, i, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a, NULL);
		wr_init(&fw, capw + i, IBV_WR_RDMA_WRITE, &f8, 1, IBV_SEND_SIGNALED);
		wr_remote(&fw, addr_of(buf->p + 2048), buf->mr->rkey, 0, 0);
		snprintf(w, sizeof(w), "post_send right after completion %u was polled", i);
		int rc = ibv_post_send(p.a, &fw, &badp);
		if (rc != 0) {
			fail("%s: ibv_post_send returned %d (%s), expected 0", w, rc, strerror(rc));
			break;
		}
		kept++;
	}
	for (uint32_t i = 5000; kept == 5000 && i < 5000 + capw; i++)
		expect_wc(p.a_scq, "the last completions", i, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a,
			  NULL);
	pair_free(&p);

	buf_free(buf);
}

/* ------------------------------------------------------------------------ */
/* Case: rnr_wait                                                            */

static void case_rnr_wait(void)
{
	struct pair p;
	pair_new(&p, NULL);
	struct buf *src = buf_reg(4096, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(4096, "recv buffer", IBV_ACCESS_LOCAL_WRITE);

	set_step("SEND before the peer posted a receive (rnr_retry 7)");
	struct ibv_sge ss = buf_sge(src, 1, 1500);
	send1(p.a, 0x7A, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
	expect_empty(p.a_scq, 200, "requester while no receive is posted");
	struct ibv_sge rs = buf_sge(dst, 2, 2000);
	buf_expect(dst, 2, src->p + 1, 1500);
	recv1(p.b, 0x7B, &rs, 1, "late recv");
	expect_wc(p.a_scq, "requester completion", 0x7A, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receiver completion", 0x7B, p.b, 1500, 0, 0, IBV_WC_RECV, NULL);
	buf_check(dst, "recv buffer");

	set_step("3 SENDs before receives, receives posted one by one");
	for (int i = 0; i < 3; i++) {
		ss = buf_sge(src, 100 * i, 50 + i);
		send1(p.a, 0x80 + i, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
	}
	for (int i = 0; i < 3; i++) {
		sleep_ms(50);
		rs = buf_sge(dst, 1000 * i + 7, 200);
		buf_expect(dst, 1000 * i + 7, src->p + 100 * i, 50 + i);
		recv1(p.b, 0x90 + i, &rs, 1, "late recv");
		expect_recv(p.b_rcq, "receiver completion", 0x90 + i, p.b, 50 + i, 0, 0,
			    IBV_WC_RECV, NULL);
		expect_wc(p.a_scq, "requester completion", 0x80 + i, IBV_WC_SUCCESS, IBV_WC_SEND, p.a,
			  NULL);
	}
	buf_check(dst, "recv buffer");

	pair_free(&p);
	buf_free(src);
	buf_free(dst);
}

/* ------------------------------------------------------------------------ */
/* Case: rnr_exceeded                                                        */

#define RNR_X_RETRY 1 /* A's rnr_retry: one retry after the first RNR NAK */
#define RNR_X_TIMER 1 /* B's min_rnr_timer: code 1 = 0.01 ms */

/*
 * A SEND to a responder that never posts a receive, from a requester with
 * a finite rnr_retry: once the retries are used up the SEND completes with
 * IBV_WC_RNR_RETRY_EXC_ERR (not success, not a wait forever), the requester
 * goes to ERR and flushes everything else; the responder is not in error
 * (an RNR NAK is no error on its side) and never gets the message.
 */
static void case_rnr_exceeded(void)
{
	struct pair p;
	struct qp_cfg c = CFG_DEFAULT;
	struct buf *src = buf_reg(4096, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(4096, "receive buffers", ACC_ALL);

	set_step("connect A (rnr_retry %d) and B (min_rnr_timer %d)", RNR_X_RETRY, RNR_X_TIMER);
	pair_create(&p, IBV_QPT_RC, &c, &c, NULL);
	rc_connect_rnr(p.a, p.b->qp_num, ACC_ALL, 12, RNR_X_RETRY);
	rc_connect_rnr(p.b, p.a->qp_num, ACC_ALL, RNR_X_TIMER, 7);
	struct ibv_qp_attr qa;
	if (query_qp_attr(p.a, IBV_QP_RNR_RETRY, &qa, "ibv_query_qp(A, IBV_QP_RNR_RETRY)"))
		EXPECT_EQ("A's rnr_retry (ibv_query_qp)", qa.rnr_retry, RNR_X_RETRY);
	if (query_qp_attr(p.b, IBV_QP_MIN_RNR_TIMER, &qa, "ibv_query_qp(B, IBV_QP_MIN_RNR_TIMER)"))
		EXPECT_EQ("B's min_rnr_timer (ibv_query_qp)", qa.min_rnr_timer, RNR_X_TIMER);

	set_step("A: a receive posted; SEND to B (no receive posted), an RDMA_WRITE behind it");
	struct ibv_sge ra = buf_sge(dst, 3000, 500);
	recv1(p.a, 0xA1, &ra, 1, "receive on A");
	struct ibv_sge ss = buf_sge(src, 5, 700);
	struct ibv_sge ws = buf_sge(src, 1000, 64);
	struct ibv_send_wr w[2];
	wr_init(&w[0], 0x51, IBV_WR_SEND, &ss, 1, IBV_SEND_SIGNALED);
	wr_init(&w[1], 0x52, IBV_WR_RDMA_WRITE, &ws, 1, IBV_SEND_SIGNALED);
	wr_remote(&w[1], addr_of(dst->p + 2000), dst->mr->rkey, 0, 0);
	w[0].next = &w[1];
	post_send_ok(p.a, &w[0], "[SEND, RDMA_WRITE]");
	expect_wc(p.a_scq, "the SEND nobody receives (rnr_retry used up)", 0x51,
		  IBV_WC_RNR_RETRY_EXC_ERR, -1, p.a, NULL);
	expect_flushes(p.a_scq, p.a, 0x52, 1, "RDMA_WRITE queued behind the failed SEND");
	expect_state(p.a, IBV_QPS_ERR, "requester after RNR_RETRY_EXC_ERR");
	expect_flushes(p.a_rcq, p.a, 0xA1, 1, "receive posted on the requester before the error");

	set_step("posts on the requester in ERR are flushed");
	send1(p.a, 0x53, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send after the error");
	expect_flushes(p.a_scq, p.a, 0x53, 1, "SEND posted after the error");
	recv1(p.a, 0xA2, &ra, 1, "receive on A after the error");
	expect_flushes(p.a_rcq, p.a, 0xA2, 1, "receive posted after the error");

	set_step("the responder: not in error, and the failed SEND never arrives");
	expect_state(p.b, IBV_QPS_RTS, "responder after sending RNR NAKs");
	struct ibv_sge rb = buf_sge(dst, 7, 1000);
	recv1(p.b, 0xB1, &rb, 1, "late receive on B");
	expect_empty(p.b_rcq, 200, "B's receive CQ (the SEND failed: it must not be delivered late)");
	buf_check(dst, "receive buffers and RDMA_WRITE target untouched");
	expect_empty(p.a_scq, 10, "A's send CQ at the end");

	pair_free(&p);
	buf_free(src);
	buf_free(dst);
}

/* ------------------------------------------------------------------------ */
/* Case: many_qps                                                            */

#define NPAIRS 8
#define NQPS (2 * NPAIRS)
#define NMSG 4
#define MSGLEN 200
#define SLOT 256

/*
 * Polls one completion from the kind ("send" or "recv") CQ that all of qp
 * share; returns the index of the QP it names, or -1 (a failure) if none.
 */
static int poll_shared(struct ibv_cq *cq, struct ibv_qp *const *qp, struct ibv_wc *wc,
		       const char *kind)
{
	char w[80], d[400];
	snprintf(w, sizeof(w), "%s completion on the shared %s CQ", kind, kind);
	poll1(cq, wc, w);
	int q = qp_index(qp, NQPS, wc->qp_num);
	if (q < 0) {
		describe_wc(wc, d, sizeof(d));
		fail("%s completion with a qp_num of none of our QPs: %s", kind, d);
	}
	return q;
}

static void case_many_qps(void)
{
	struct ibv_cq *scq = cq_new(1024), *rcq = cq_new(1024);
	struct ibv_qp *qp[NQPS];
	/* qp[2i] and qp[2i+1] are connected to each other. */
	set_step("create and connect %d QPs sharing one send CQ and one recv CQ", NQPS);
	for (int i = 0; i < NQPS; i++)
		qp[i] = rc_qp_new(scq, rcq);
	for (int i = 0; i < NQPS; i++)
		for (int j = i + 1; j < NQPS; j++)
			if (qp[i]->qp_num == qp[j]->qp_num)
				fail("QP %d and QP %d have the same qp_num 0x%x", i, j, qp[i]->qp_num);
	for (int i = 0; i < NQPS; i++)
		rc_connect(qp[i], qp[i ^ 1]->qp_num, ACC_ALL);

	static uint8_t msgs[NQPS][NMSG][MSGLEN]; /* msgs[sender][seq] */
	struct buf *src = buf_reg(NQPS * NMSG * MSGLEN, "send buffers", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(NQPS * NMSG * SLOT, "recv slots", IBV_ACCESS_LOCAL_WRITE);

	set_step("post receives and sends on all QPs");
	for (int q = 0; q < NQPS; q++)
		for (int m = 0; m < NMSG; m++) {
			struct ibv_sge rs = buf_sge(dst, (size_t)(q * NMSG + m) * SLOT, SLOT);
			recv1(qp[q], 0x10000 | (q << 8) | m, &rs, 1, "recv");
		}
	for (int q = 0; q < NQPS; q++)
		for (int m = 0; m < NMSG; m++) {
			uint8_t *mp = msgs[q][m];
			fill_random(mp, MSGLEN);
			mp[0] = (uint8_t)q;
			mp[1] = (uint8_t)m;
			size_t off = (size_t)(q * NMSG + m) * MSGLEN;
			buf_set(src, off, mp, MSGLEN);
			/* peer q^1 receives message m from q into its slot m */
			buf_expect(dst, (size_t)((q ^ 1) * NMSG + m) * SLOT, mp, MSGLEN);
			struct ibv_sge ss = buf_sge(src, off, MSGLEN);
			send1(qp[q], 0x20000 | (q << 8) | m, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
		}

	set_step("send completions");
	int next_send[NQPS] = { 0 }, next_recv[NQPS] = { 0 }, src_qp_reported[NQPS] = { 0 };
	for (int i = 0; i < NQPS * NMSG; i++) {
		struct ibv_wc wc;
		int q = poll_shared(scq, qp, &wc, "send");
		if (q < 0)
			continue;
		uint64_t want = 0x20000 | (q << 8) | next_send[q];
		check_wc(&wc, "send completion (wr_id must belong to the QP named by qp_num, in order)",
			 want, IBV_WC_SUCCESS, IBV_WC_SEND, qp[q]);
		next_send[q]++;
	}
	set_step("recv completions");
	for (int i = 0; i < NQPS * NMSG; i++) {
		struct ibv_wc wc;
		int q = poll_shared(rcq, qp, &wc, "recv");
		if (q < 0)
			continue;
		uint64_t want = 0x10000 | (q << 8) | next_recv[q];
		if (check_wc(&wc, "recv completion (wr_id must belong to the QP named by qp_num, in order)",
			     want, IBV_WC_SUCCESS, IBV_WC_RECV, qp[q])) {
			if (wc.src_qp != qp[q ^ 1]->qp_num && !src_qp_reported[q]) {
				src_qp_reported[q] = 1; /* once per QP */
				fail("recv completion on QP %d: wc.src_qp expected 0x%x (its peer), got 0x%x",
				     q, qp[q ^ 1]->qp_num, wc.src_qp);
			}
			if (wc.byte_len != MSGLEN)
				fail("recv completion on QP %d: wc.byte_len expected %d, got %u", q,
				     MSGLEN, wc.byte_len);
		}
		next_recv[q]++;
	}
	for (int q = 0; q < NQPS; q++) {
		if (next_send[q] != NMSG)
			fail("QP %d: expected %d send completions, got %d", q, NMSG, next_send[q]);
		if (next_recv[q] != NMSG)
			fail("QP %d: expected %d recv completions, got %d", q, NMSG, next_recv[q]);
	}
	expect_empty(scq, 100, "shared send CQ after all completions");
	expect_empty(rcq, 10, "shared recv CQ after all completions");
	buf_check(dst, "recv slots (each holds the message from its peer, in order)");

	for (int i = 0; i < NQPS; i++)
		destroy_qp(qp[i]);
	destroy_cq(scq);
	destroy_cq(rcq);
	buf_free(src);
	buf_free(dst);
}

/* ------------------------------------------------------------------------ */
/* Completion channels and asynchronous events                               */

static void arm(struct ibv_cq *cq, int solicited_only)
{
	int rc = ibv_req_notify_cq(cq, solicited_only);
	if (rc)
		fatal("ibv_req_notify_cq(solicited_only %d) returned %d", solicited_only, rc);
}

/* Waits up to ms for the channel's fd to become readable; 1 if it did. */
static int fd_ready(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	for (;;) {
		int r = poll(&p, 1, ms);
		if (r >= 0)
			return r > 0;
		if (errno != EINTR)
			fatal("poll(fd %d) failed: %s", fd, strerror(errno));
	}
}

/*
 * Waits up to ms for a completion event on ch; returns 1 and acknowledges it
 * (checking it names want_cq and want_ctx) or 0 on timeout.
 */
static int cq_event(struct ibv_comp_channel *ch, int ms, struct ibv_cq *want_cq, void *want_ctx,
		    const char *what)
{
	if (!fd_ready(ch->fd, ms))
		return 0;
	struct ibv_cq *cq = NULL;
	void *ctx = NULL;
	if (ibv_get_cq_event(ch, &cq, &ctx))
		fatal("%s: ibv_get_cq_event on a readable channel failed, errno %d (%s)", what,
		      errno, strerror(errno));
	if (want_cq && cq != want_cq)
		fail("%s: ibv_get_cq_event returned cq %p, expected %p", what, (void *)cq,
		     (void *)want_cq);
	if (want_ctx && ctx != want_ctx)
		fail("%s: ibv_get_cq_event returned cq_context %p, expected %p", what, ctx, want_ctx);
	ibv_ack_cq_events(cq, 1);
	return 1;
}

static void expect_cq_event(struct ibv_comp_channel *ch, struct ibv_cq *cq, void *ctx,
			    const char *what)
{
	if (!cq_event(ch, (int)(POLL_TIMEOUT_S * 1000), cq, ctx, what))
		fatal("%s: expected a completion event, got none within %.0f s", what,
		      POLL_TIMEOUT_S);
}

static void expect_no_cq_event(struct ibv_comp_channel *ch, int ms, const char *what)
{
	if (cq_event(ch, ms, NULL, NULL, what))
		fail("%s: expected no completion event within %d ms, got one", what, ms);
}

/* Polls exactly one completion (and nothing more) from cq, checking its status. */
static void expect_one_wc(struct ibv_cq *cq, enum ibv_wc_status status, const char *what)
{
	struct ibv_wc wc;
	poll1(cq, &wc, what);
	check_wc(&wc, what, wc.wr_id, status, -1, NULL);
	expect_empty(cq, 1, what);
}

/* Waits up to ms for an async event; 1 and *ev if one came. */
static int async_event(int ms, struct ibv_async_event *ev)
{
	if (!fd_ready(E.ctx->async_fd, ms))
		return 0;
	if (ibv_get_async_event(E.ctx, ev))
		fatal("ibv_get_async_event on a readable async_fd failed, errno %d (%s)", errno,
		      strerror(errno));
	return 1;
}

static void expect_port_active(void)
{
	struct ibv_async_event ev;
	set_step("IBV_EVENT_PORT_ACTIVE at open");
	if (!async_event(5000, &ev))
		fatal("no async event within 5 s of ibv_open_device (expected PORT_ACTIVE)");
	EXPECT_EQ("event_type (IBV_EVENT_PORT_ACTIVE)", ev.event_type, IBV_EVENT_PORT_ACTIVE);
	EXPECT_EQ("element.port_num", ev.element.port_num, 1);
	ibv_ack_async_event(&ev);
}

/* A SEND of one byte from qp (signaled), with extra send flags. */
static void send_byte(struct ibv_qp *qp, struct ibv_sge *sg, uint64_t wr_id, unsigned flags)
{
	post_send1(qp, wr_id, IBV_WR_SEND, sg, 1, IBV_SEND_SIGNALED | flags, 0, 0, 0, "send");
}

/* ---- events_flood ---- */

#define FLOOD_MSGS 20000
#define FLOOD_RECVS 512

static struct {
	struct ibv_comp_channel *ch;
	struct ibv_cq *rcq;
	struct ibv_qp *b;
	struct ibv_sge rs;
	long got, arms, events, waits;
	int ctx_tag;
} F;

static void flood_repost(uint64_t wr_id)
{
	recv1(F.b, wr_id, &F.rs, 1, "repost receive");
}

static void *flood_receiver(void *arg)
{
	(void)arg;
	struct ibv_wc wc[32];
	while (F.got < FLOOD_MSGS) {
		int n = ibv_poll_cq(F.rcq, 32, wc);
		if (n < 0)
			fatal("ibv_poll_cq returned %d", n);
		if (n == 0) {
			/* Empty: arm, look once more, then sleep on the channel. */
			arm(F.rcq, 0);
			F.arms++;
			n = ibv_poll_cq(F.rcq, 32, wc);
			if (n < 0)
				fatal("ibv_poll_cq returned %d", n);
			if (n == 0) {
				F.waits++;
				if (!cq_event(F.ch, 10000, F.rcq, &F.ctx_tag, "flood"))
					fatal("lost wake-up: CQ armed and empty, no event within 10 s "
					      "after %ld of %d receives (%ld arms, %ld events)",
					      F.got, FLOOD_MSGS, F.arms, F.events);
				F.events++;
				continue;
			}
		}
		for (int i = 0; i < n; i++) {
			if (wc[i].status != IBV_WC_SUCCESS)
				fatal("receive completion %ld: status %s", F.got,
				      ibv_wc_status_str(wc[i].status));
			flood_repost(wc[i].wr_id);
		}
		F.got += n;
	}
	return NULL;
}

static void case_events_flood(void)
{
	struct buf *src = buf_reg(64, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(64 * FLOOD_RECVS, "receive buffers", IBV_ACCESS_LOCAL_WRITE);
	struct qp_cfg ca = CFG_DEFAULT, cb = CFG_DEFAULT;
	ca.send_wr = 256;
	cb.recv_wr = FLOOD_RECVS;

	set_step("setup");
	F.ch = chan_new();
	F.rcq = cq_new_ch(FLOOD_RECVS, F.ch, &F.ctx_tag);
	struct ibv_cq *scq = cq_new(256);
	struct ibv_qp *a = qp_create(IBV_QPT_RC, scq, scq, NULL, &ca);
	F.b = qp_create(IBV_QPT_RC, scq, F.rcq, NULL, &cb);
	rc_connect_both(a, F.b);
	F.rs = buf_sge(dst, 0, 64);
	for (int i = 0; i < FLOOD_RECVS; i++)
		flood_repost(i);

	set_step("flood of %d sends, receiver sleeping on the channel", FLOOD_MSGS);
	pthread_t t;
	if (pthread_create(&t, NULL, flood_receiver, NULL))
		fatal("pthread_create failed");
	struct ibv_sge ss = buf_sge(src, 0, 8);
	long sent = 0, done = 0;
	struct ibv_wc wc[32];
	while (sent < FLOOD_MSGS) {
		long burst = 1 + (long)(rnd64() % 32);
		if (burst > FLOOD_MSGS - sent)
			burst = FLOOD_MSGS - sent;
		/* At most 128 sends in flight (the receiver keeps 512 receives posted). */
		while (sent + burst - done > 128) {
			int n = ibv_poll_cq(scq, 32, wc);
			if (n < 0)
				fatal("ibv_poll_cq(send CQ) returned %d", n);
			for (int i = 0; i < n; i++)
				if (wc[i].status != IBV_WC_SUCCESS)
					fatal("send completion: status %s",
					      ibv_wc_status_str(wc[i].status));
			done += n;
			if (n == 0)
				sched_yield();
		}
		for (long i = 0; i < burst; i++)
			send1(a, sent + i, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
		sent += burst;
		if (rnd64() % 4 == 0)
			usleep(rnd64() % 200);
	}
	while (done < sent) {
		int n = ibv_poll_cq(scq, 32, wc);
		if (n < 0)
			fatal("ibv_poll_cq(send CQ) returned %d", n);
		done += n;
	}
	pthread_join(t, NULL);
	printf("flood: %ld receives, %ld arms, %ld sleeps, %ld events\n", F.got, F.arms, F.waits,
	       F.events);

	set_step("events vs arms");
	/* Events still queued on the channel belong to arms made above. */
	long late = 0;
	while (cq_event(F.ch, 0, F.rcq, &F.ctx_tag, "late event"))
		late++;
	if (F.events + late > F.arms)
		fail("%ld events for %ld arms: a spurious or doubled wake-up", F.events + late,
		     F.arms);
	if (F.got != FLOOD_MSGS)
		fail("received %ld of %d messages", F.got, FLOOD_MSGS);

	set_step("armed, nothing sent: no event");
	arm(F.rcq, 0);
	expect_no_cq_event(F.ch, 300, "idle armed CQ");
	set_step("armed, one send: exactly one event");
	send1(a, 1, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
	expect_cq_event(F.ch, F.rcq, &F.ctx_tag, "one send");
	expect_one_wc(F.rcq, IBV_WC_SUCCESS, "the one receive");
	expect_one_wc(scq, IBV_WC_SUCCESS, "the one send");
	expect_no_cq_event(F.ch, 200, "after the one event");
	set_step("not re-armed: no event");
	flood_repost(0);
	send1(a, 2, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
	expect_one_wc(F.rcq, IBV_WC_SUCCESS, "receive while disarmed");
	expect_no_cq_event(F.ch, 200, "disarmed CQ");
	expect_one_wc(scq, IBV_WC_SUCCESS, "send while disarmed");

	set_step("teardown");
	destroy_qp(a);
	destroy_qp(F.b);
	destroy_cq(F.rcq);
	destroy_cq(scq);
	destroy_channel(F.ch);
	buf_free(src);
	buf_free(dst);
}

/* ---- events_channels: several channels, several CQs per channel ---- */

static void case_events_channels(void)
{
	struct buf *bx = buf_reg(4096, "x buffer", IBV_ACCESS_LOCAL_WRITE);
	struct buf *by = buf_reg(4096, "y buffer", IBV_ACCESS_LOCAL_WRITE);
	struct ibv_sge sx = buf_sge(bx, 0, 64), rx = buf_sge(bx, 1024, 64);
	struct ibv_sge sy = buf_sge(by, 0, 64), ry = buf_sge(by, 1024, 64);
	static int t1a, t1b, t2, t3;

	set_step("three channels");
	struct ibv_comp_channel *ch1 = chan_new(), *ch2 = chan_new(), *ch3 = chan_new();
	if (ch1->fd == ch2->fd || ch2->fd == ch3->fd || ch1->fd == ch3->fd || ch1->fd < 0)
		fail("channel fds not distinct: %d %d %d", ch1->fd, ch2->fd, ch3->fd);
	if (ch1->fd == E.ctx->async_fd || ch1->fd == E.ctx->cmd_fd)
		fail("channel fd %d is the context's async_fd or cmd_fd", ch1->fd);
	struct ibv_cq *cq1a = cq_new_ch(16, ch1, &t1a), *cq1b = cq_new_ch(16, ch1, &t1b);
	struct ibv_cq *cq2 = cq_new_ch(16, ch2, &t2), *cq3 = cq_new_ch(16, ch3, &t3);
	/* x: send CQ cq2, recv CQ cq1a; y: send CQ cq3, recv CQ cq1b. */
	struct ibv_qp *x = rc_qp_new(cq2, cq1a);
	struct ibv_qp *y = rc_qp_new(cq3, cq1b);
	rc_connect_both(x, y);

	set_step("x sends to y; cq1a, cq1b, cq2 armed");
	arm(cq1a, 0);
	arm(cq1b, 0);
	arm(cq2, 0);
	recv1(y, 0xB, &ry, 1, "y recv");
	send1(x, 0xA, IBV_WR_SEND, &sx, 1, 0, 0, 0, "x send");
	expect_cq_event(ch1, cq1b, &t1b, "y's receive on ch1");
	expect_cq_event(ch2, cq2, &t2, "x's send completion on ch2");
	expect_no_cq_event(ch1, 100, "nothing more on ch1");
	expect_no_cq_event(ch3, 100, "nothing on ch3");
	expect_one_wc(cq1b, IBV_WC_SUCCESS, "y's receive");
	expect_one_wc(cq2, IBV_WC_SUCCESS, "x's send");

	set_step("y sends to x; cq1a armed (still), cq3 not armed");
	recv1(x, 0xC, &rx, 1, "x recv");
	send1(y, 0xD, IBV_WR_SEND, &sy, 1, 0, 0, 0, "y send");
	expect_cq_event(ch1, cq1a, &t1a, "x's receive on ch1");
	expect_one_wc(cq1a, IBV_WC_SUCCESS, "x's receive");
	expect_one_wc(cq3, IBV_WC_SUCCESS, "y's send");
	expect_no_cq_event(ch3, 100, "unarmed cq3");
	expect_no_cq_event(ch1, 100, "nothing more on ch1");

	set_step("ibv_destroy_comp_channel while CQs use it");
	int rc = ibv_destroy_comp_channel(ch1);
	EXPECT_EQ("ibv_destroy_comp_channel(channel with 2 CQs)", rc, EBUSY);
	destroy_qp(x);
	destroy_qp(y);
	destroy_cq(cq1a);
	rc = ibv_destroy_comp_channel(ch1);
	EXPECT_EQ("ibv_destroy_comp_channel(channel with 1 CQ)", rc, EBUSY);
	destroy_cq(cq1b);
	destroy_cq(cq2);
	destroy_cq(cq3);
	struct ibv_comp_channel *chs[3] = { ch1, ch2, ch3 };
	for (int i = 0; i < 3; i++)
		destroy_channel(chs[i]);

	set_step("a new channel after destroying three");
	struct ibv_comp_channel *ch4 = chan_new();
	struct ibv_cq *cq4 = cq_new_ch(4, ch4, NULL);
	destroy_cq(cq4);
	destroy_channel(ch4);
	buf_free(bx);
	buf_free(by);
}

/* ---- events_solicited ---- */

static void case_events_solicited(void)
{
	struct buf *bs = buf_reg(4096, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *bd = buf_reg(4096, "destination", ACC_ALL);
	struct ibv_sge ss = buf_sge(bs, 0, 16), rs = buf_sge(bd, 0, 64);

	set_step("setup");
	struct ibv_comp_channel *ch = chan_new();
	struct ibv_cq *rcq = cq_new_ch(64, ch, NULL);
	struct ibv_cq *scq = cq_new(64);
	struct ibv_qp *a = rc_qp_new(scq, scq);
	struct ibv_qp *b = rc_qp_new(scq, rcq);
	rc_connect_both(a, b);
	for (int i = 0; i < 8; i++)
		recv1(b, 100 + i, &rs, 1, "recv");

	set_step("solicited-only, unsolicited SEND");
	arm(rcq, 1);
	send_byte(a, &ss, 1, 0);
	expect_one_wc(scq, IBV_WC_SUCCESS, "send");
	expect_one_wc(rcq, IBV_WC_SUCCESS, "receive of an unsolicited SEND");
	expect_no_cq_event(ch, 300, "unsolicited SEND with solicited-only arm");

	set_step("solicited-only (still armed), SEND with IBV_SEND_SOLICITED");
	send_byte(a, &ss, 2, IBV_SEND_SOLICITED);
	expect_cq_event(ch, rcq, NULL, "solicited SEND");
	expect_one_wc(rcq, IBV_WC_SUCCESS, "receive of a solicited SEND");
	expect_one_wc(scq, IBV_WC_SUCCESS, "send");

	set_step("solicited-only, RDMA_WRITE_WITH_IMM with IBV_SEND_SOLICITED");
	arm(rcq, 1);
	post_send1(a, 3, IBV_WR_RDMA_WRITE_WITH_IMM, &ss, 1, IBV_SEND_SIGNALED | IBV_SEND_SOLICITED,
		   addr_of(bd->p + 2048), bd->mr->rkey, 0x1234, "write with imm");
	expect_cq_event(ch, rcq, NULL, "solicited RDMA_WRITE_WITH_IMM");
	expect_one_wc(rcq, IBV_WC_SUCCESS, "receive of the write's immediate");
	expect_one_wc(scq, IBV_WC_SUCCESS, "write");

	set_step("armed for any, then for solicited: stays armed for any");
	arm(rcq, 0);
	arm(rcq, 1);
	send_byte(a, &ss, 4, 0);
	expect_cq_event(ch, rcq, NULL, "unsolicited SEND with an any-arm");
	expect_one_wc(rcq, IBV_WC_SUCCESS, "receive");
	expect_one_wc(scq, IBV_WC_SUCCESS, "send");

	set_step("solicited-only: an error completion counts as solicited");
	arm(rcq, 1);
	qp_to_state(b, IBV_QPS_ERR, "->ERR");
	expect_cq_event(ch, rcq, NULL, "flushed receive");
	struct ibv_wc wc;
	poll1(rcq, &wc, "flushed receive");
	check_wc(&wc, "flushed receive", wc.wr_id, IBV_WC_WR_FLUSH_ERR, -1, b);
	while (ibv_poll_cq(rcq, 1, &wc) > 0)
		;

	set_step("teardown");
	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(rcq);
	destroy_cq(scq);
	destroy_channel(ch);
	buf_free(bs);
	buf_free(bd);
}

/* ---- events_epoll: a nonblocking channel fd in epoll ---- */

static void case_events_epoll(void)
{
	struct buf *bs = buf_reg(4096, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *bd = buf_reg(4096, "destination", IBV_ACCESS_LOCAL_WRITE);
	struct ibv_sge ss = buf_sge(bs, 0, 16), rs = buf_sge(bd, 0, 64);

	set_step("setup");
	struct ibv_comp_channel *ch = chan_new();
	set_nonblock(ch->fd, "channel fd");
	struct ibv_cq *cq = cq_new_ch(64, ch, NULL);
	struct ibv_qp *a = rc_qp_new(cq, cq);
	struct ibv_qp *b = rc_qp_new(cq, cq);
	rc_connect_both(a, b);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 77 }, out[4];
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ch->fd, &ev))
		fatal("epoll on the channel fd: %s", strerror(errno));

	set_step("empty nonblocking channel");
	struct ibv_cq *got = NULL;
	void *ctx = NULL;
	errno = 0;
	int rc = ibv_get_cq_event(ch, &got, &ctx);
	EXPECT_EQ("ibv_get_cq_event on an empty O_NONBLOCK channel", rc, -1);
	EXPECT_EQ("errno (EAGAIN)", errno, EAGAIN);
	EXPECT_EQ("epoll_wait(0) on an empty channel", epoll_wait(ep, out, 4, 0), 0);

	for (int round = 0; round < 3; round++) {
		set_step("round %d: armed, one SEND, epoll_wait", round);
		arm(cq, 0);
		recv1(b, 10 + round, &rs, 1, "recv");
		send_byte(a, &ss, 20 + round, 0);
		int n = epoll_wait(ep, out, 4, (int)(POLL_TIMEOUT_S * 1000));
		EXPECT_EQ("epoll_wait: ready fds", n, 1);
		if (n == 1)
			EXPECT_EQ("epoll data", out[0].data.u64, 77);
		rc = ibv_get_cq_event(ch, &got, &ctx);
		EXPECT_EQ("ibv_get_cq_event after epoll", rc, 0);
		if (rc == 0) {
			if (got != cq)
				fail("ibv_get_cq_event returned cq %p, expected %p", (void *)got,
				     (void *)cq);
			ibv_ack_cq_events(got, 1);
		}
		EXPECT_EQ("epoll_wait(0) after reading the event", epoll_wait(ep, out, 4, 0), 0);
		struct ibv_wc wc;
		poll1(cq, &wc, "first completion");
		poll1(cq, &wc, "second completion");
		expect_empty(cq, 1, "CQ after two completions");
	}

	set_step("teardown");
	close(ep);
	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq);
	destroy_channel(ch);
	buf_free(bs);
	buf_free(bd);
}

/* ---- events_pipe_full: events that do not fit the channel's pipe ---- */

/*
 * A completion event is 8 bytes (the CQ's handle) in the channel's pipe;
 * the pipe holds 64 KiB (README: 8192 completion events); the router drops
 * what does not fit. No ibv_get_cq_event is called until the pipe is full
 * and PF_OVERFLOW more events were due.
 */
#define PF_EVENT_BYTES 8
#define PF_MAX_EVENTS 8192
#define PF_OVERFLOW 800

static struct {
	struct ibv_comp_channel *ch, *bch; /* under test; barrier */
	struct ibv_cq *rcq, *scq;          /* B's receive CQ (ch); A's send CQ (bch) */
	struct ibv_cq *a_rcq, *b_scq;
	struct ibv_qp *a, *b;
	struct ibv_sge ss, rs;
	uint64_t id;
	int tag, btag;
} PF;

/* Bytes waiting in a pipe (FIONREAD). */
static int pipe_bytes(int fd)
{
	int n = -1;
	if (ioctl(fd, FIONREAD, &n) != 0)
		fatal("ioctl(channel fd %d, FIONREAD) failed: %s", fd, strerror(errno));
	return n;
}

/*
 * One SEND from A to B (a receive posted): arm_rcq/arm_scq arm B's receive
 * CQ (channel under test) / A's send CQ (barrier channel) first. Both
 * completions are polled and must succeed.
 */
static void pf_round(int arm_rcq, int arm_scq)
{
	uint64_t id = PF.id++;
	recv1(PF.b, 0x100000 + id, &PF.rs, 1, "receive on B");
	if (arm_rcq)
		arm(PF.rcq, 0);
	if (arm_scq)
		arm(PF.scq, 0);
	send1(PF.a, id, IBV_WR_SEND, &PF.ss, 1, 0, 0, 0, "send");
	expect_wc(PF.scq, "A's send completion", id, IBV_WC_SUCCESS, IBV_WC_SEND, PF.a, NULL);
	expect_recv(PF.rcq, "B's receive completion", 0x100000 + id, PF.b, 8, 0, 0, IBV_WC_RECV,
		    NULL);
}

static void case_events_pipe_full(void)
{
	struct buf *src = buf_reg(64, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(64, "receive buffer", IBV_ACCESS_LOCAL_WRITE);

	set_step("setup");
	PF.ch = chan_new();
	PF.bch = chan_new();
	PF.rcq = cq_new_ch(64, PF.ch, &PF.tag);
	PF.scq = cq_new_ch(64, PF.bch, &PF.btag);
	PF.a_rcq = cq_new(16);
	PF.b_scq = cq_new(16);
	PF.a = rc_qp_new(PF.scq, PF.a_rcq);
	PF.b = rc_qp_new(PF.b_scq, PF.rcq);
	rc_connect_both(PF.a, PF.b);
	PF.ss = buf_sge(src, 0, 8);
	PF.rs = buf_sge(dst, 0, 64);
	int fd = PF.ch->fd;
	int cap = fcntl(fd, F_GETPIPE_SZ);
	if (cap <= 0)
		fatal("fcntl(channel fd, F_GETPIPE_SZ) returned %d: %s", cap, strerror(errno));
	int fit = cap / PF_EVENT_BYTES;
	printf("events_pipe_full: the channel's pipe holds %d bytes (%d events)\n", cap, fit);
	if (fit > PF_MAX_EVENTS)
		fatal("the channel's pipe holds %d bytes: room for %d events, expected at most %d "
		      "(README: 64 KiB)",
		      cap, fit, PF_MAX_EVENTS);

	set_step("fill the pipe: %d rounds of arm + one completion, no ibv_get_cq_event", fit);
	for (int i = 0; i < fit; i++) {
		pf_round(1, 0);
		/* The event is written when (isolated) or soon after (semi) the
		 * completion is: wait until it is in the pipe. */
		int want = (i + 1) * PF_EVENT_BYTES, have;
		double end = now_s() + POLL_TIMEOUT_S;
		while ((have = pipe_bytes(fd)) < want) {
			if (now_s() > end)
				fatal("round %d: %d bytes in the channel's pipe %.0f s after an armed "
				      "completion, expected %d (one event per round)",
				      i, have, POLL_TIMEOUT_S, want);
			sched_yield();
		}
		if (have != want)
			fatal("round %d: %d bytes in the channel's pipe, expected %d (one event per "
			      "arm)",
			      i, have, want);
	}

	set_step("%d more rounds with the pipe full: their events are dropped", PF_OVERFLOW);
	for (int i = 0; i < PF_OVERFLOW; i++)
		pf_round(1, 0);
	/*
	 * Barrier: the events of the rounds above are all written or dropped
	 * before the pipe is read. Isolated mode: the router writes an event as
	 * it publishes the completion, in order, so any later completion will
	 * do. Semi mode: the provider that pushes an armed completion flags the
	 * CQ and the router writes the event at the start of one of its passes
	 * (all flagged CQs, then their events); the barrier CQ's event of the
	 * third round below is written in a pass that starts after the pass
	 * that took the last flag of the channel under test has ended.
	 */
	for (int i = 0; i < 3; i++) {
		pf_round(0, 1);
		expect_cq_event(PF.bch, PF.scq, &PF.btag, "barrier event (A's send CQ)");
	}
	EXPECT_EQ("bytes in the full pipe after the dropped events", pipe_bytes(fd), cap);

	set_step("read every event (nonblocking) until EAGAIN");
	set_nonblock(fd, "channel fd");
	int got = 0, wrong = 0, e = 0;
	for (;;) {
		struct ibv_cq *cq = NULL;
		void *ctx = NULL;
		errno = 0;
		if (ibv_get_cq_event(PF.ch, &cq, &ctx) != 0) {
			e = errno;
			break;
		}
		if ((cq != PF.rcq || ctx != &PF.tag) && wrong++ == 0)
			fail("event %d: ibv_get_cq_event returned cq %p, cq_context %p; expected %p, %p",
			     got, (void *)cq, ctx, (void *)PF.rcq, (void *)&PF.tag);
		got++;
		if (got > fit + PF_OVERFLOW + 3)
			fatal("more than %d events read: the pipe does not run dry", got);
	}
	printf("events_pipe_full: %d events read of %d armed completions\n", got, fit + PF_OVERFLOW);
	EXPECT_EQ("errno of ibv_get_cq_event on the drained nonblocking channel (EAGAIN)", e,
		  EAGAIN);
	if (got <= 0 || got > PF_MAX_EVENTS)
		fail("events read from the full channel: expected 1..%d, got %d", PF_MAX_EVENTS, got);
	EXPECT_EQ("events read (what filled the pipe; the dropped ones are nowhere)", got, fit);
	if (wrong)
		fail("%d events did not name the CQ and its context", wrong);
	if (got > 0)
		ibv_ack_cq_events(PF.rcq, (unsigned)got);
	expect_no_cq_event(PF.ch, 200, "the drained channel");

	set_step("the channel works again: arm + one completion, exactly one event");
	pf_round(1, 0);
	expect_cq_event(PF.ch, PF.rcq, &PF.tag, "event after the pipe was drained");
	expect_no_cq_event(PF.ch, 200, "a second event for one arm");

	set_step("teardown (every event acknowledged: destroying the CQ must not wait)");
	destroy_qp(PF.a);
	destroy_qp(PF.b);
	destroy_cq(PF.rcq);
	destroy_cq(PF.scq);
	destroy_cq(PF.a_rcq);
	destroy_cq(PF.b_scq);
	destroy_channel(PF.ch);
	destroy_channel(PF.bch);
	buf_free(src);
	buf_free(dst);
}

/* ---- async_qp_error: affiliated events of a responder that fails ---- */

static void expect_qp_event(struct ibv_qp *qp, enum ibv_event_type type, const char *name)
{
	struct ibv_async_event ev;
	if (!async_event((int)(POLL_TIMEOUT_S * 1000), &ev)) {
		fail("expected async event %s for qp 0x%x, got none", name, qp->qp_num);
		return;
	}
	EXPECT_EQ(name, ev.event_type, type);
	if (ev.event_type == type && ev.element.qp != qp)
		fail("%s: element.qp %p, expected %p", name, (void *)ev.element.qp, (void *)qp);
	ibv_ack_async_event(&ev);
}

static void expect_no_async_event(int ms, const char *what)
{
	struct ibv_async_event ev;
	if (async_event(ms, &ev)) {
		fail("%s: expected no async event, got type %d (%s)", what, (int)ev.event_type,
		     ibv_event_type_str(ev.event_type));
		ibv_ack_async_event(&ev);
	}
}

static void case_async_qp_error(void)
{
	struct buf *loc = buf_reg(4096, "local buffer", IBV_ACCESS_LOCAL_WRITE);
	struct buf *tgt = buf_reg(4096, "remote buffer", ACC_ALL);
	struct ibv_mr *mrs[2] = { loc->mr, tgt->mr };
	struct pair p;

	expect_port_active();
	expect_no_async_event(100, "after PORT_ACTIVE");

	set_step("RDMA_WRITE with a bad rkey: QP_ACCESS_ERR at the responder");
	pair_new(&p, NULL);
	struct ibv_sge ls = buf_sge(loc, 0, 64);
	send1(p.a, 1, IBV_WR_RDMA_WRITE, &ls, 1, addr_of(tgt->p), unused_key(mrs, 2), 0, "write");
	expect_wc(p.a_scq, "requester completion", 1, IBV_WC_REM_ACCESS_ERR, -1, p.a, NULL);
	expect_qp_event(p.b, IBV_EVENT_QP_ACCESS_ERR, "IBV_EVENT_QP_ACCESS_ERR");
	expect_state(p.b, IBV_QPS_ERR, "responder after the access error");
	expect_no_async_event(200, "no event for the requester (its completion reports it)");
	pair_free(&p);

	set_step("misaligned atomic: QP_REQ_ERR at the responder");
	pair_new(&p, NULL);
	struct ibv_sge a8 = buf_sge(loc, 128, 8);
	struct ibv_send_wr wr;
	wr_init(&wr, 2, IBV_WR_ATOMIC_FETCH_AND_ADD, &a8, 1, IBV_SEND_SIGNALED);
	wr_remote(&wr, addr_of(tgt->p + 4), tgt->mr->rkey, 1, 0);
	post_send_ok(p.a, &wr, "misaligned atomic");
	expect_wc(p.a_scq, "requester completion", 2, IBV_WC_REM_INV_REQ_ERR, -1, p.a, NULL);
	expect_qp_event(p.b, IBV_EVENT_QP_REQ_ERR, "IBV_EVENT_QP_REQ_ERR");
	expect_no_async_event(200, "nothing more");
	pair_free(&p);

	buf_free(loc);
	buf_free(tgt);
}

/* ---- async_srq: SRQ_LIMIT_REACHED and QP_LAST_WQE_REACHED ---- */

static void expect_srq_event(struct ibv_srq *srq, const char *name)
{
	struct ibv_async_event ev;
	if (!async_event((int)(POLL_TIMEOUT_S * 1000), &ev)) {
		fail("expected async event %s, got none", name);
		return;
	}
	EXPECT_EQ(name, ev.event_type, IBV_EVENT_SRQ_LIMIT_REACHED);
	if (ev.event_type == IBV_EVENT_SRQ_LIMIT_REACHED && ev.element.srq != srq)
		fail("%s: element.srq %p, expected %p", name, (void *)ev.element.srq, (void *)srq);
	ibv_ack_async_event(&ev);
}

static void case_async_srq(void)
{
	struct buf *bs = buf_reg(4096, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *bd = buf_reg(4096, "destination", IBV_ACCESS_LOCAL_WRITE);
	struct ibv_sge ss = buf_sge(bs, 0, 16), rs = buf_sge(bd, 0, 64);

	expect_port_active();
	set_step("setup: B receives from an SRQ");
	struct ibv_srq *srq = srq_create(16, 1, NULL);
	struct ibv_cq *cq = cq_new(64);
	struct ibv_qp *a = rc_qp_new(cq, cq);
	struct qp_cfg cb = { .send_wr = 16, .send_sge = 1, .sig_all = 1 }; /* receives: the SRQ's */
	struct ibv_qp *b = qp_create(IBV_QPT_RC, cq, cq, srq, &cb);
	rc_connect_both(a, b);
	for (int i = 0; i < 4; i++)
		srq_recv1(srq, 50 + i, &rs, 1, "SRQ receive");
	struct ibv_srq_attr sa = { .srq_limit = 2 };
	int rc = ibv_modify_srq(srq, &sa, IBV_SRQ_LIMIT);
	if (rc)
		fatal("ibv_modify_srq(IBV_SRQ_LIMIT 2) returned %d", rc);

	set_step("4 receives posted, limit 2: 2 SENDs, no event; the 3rd, SRQ_LIMIT_REACHED");
	struct ibv_wc wc;
	for (int i = 0; i < 2; i++) {
		send_byte(a, &ss, i, 0);
		poll1(cq, &wc, "completion");
		poll1(cq, &wc, "completion");
	}
	expect_no_async_event(200, "2 receives left, limit 2");
	send_byte(a, &ss, 3, 0);
	poll1(cq, &wc, "completion");
	poll1(cq, &wc, "completion");
	expect_srq_event(srq, "IBV_EVENT_SRQ_LIMIT_REACHED");
	set_step("the limit is disarmed after the event");
	send_byte(a, &ss, 4, 0);
	poll1(cq, &wc, "completion");
	poll1(cq, &wc, "completion");
	expect_no_async_event(200, "limit disarmed");

	set_step("B to ERR: QP_LAST_WQE_REACHED");
	qp_to_state(b, IBV_QPS_ERR, "->ERR");
	expect_qp_event(b, IBV_EVENT_QP_LAST_WQE_REACHED, "IBV_EVENT_QP_LAST_WQE_REACHED");

	set_step("teardown");
	destroy_qp(a);
	destroy_qp(b);
	destroy_srq(srq);
	destroy_cq(cq);
	buf_free(bs);
	buf_free(bd);
}

/* ---- device_fatal: the test kills (or stops) the router ---- */

static struct ibv_comp_channel *g_fatal_ch;
static volatile int g_fatal_get_rc = 1;

static void *fatal_cq_waiter(void *arg)
{
	(void)arg;
	struct ibv_cq *cq;
	void *ctx;
	g_fatal_get_rc = ibv_get_cq_event(g_fatal_ch, &cq, &ctx);
	return NULL;
}

/*
 * Waits, blocked in ibv_get_async_event, for the router to go away; the test
 * runner kills or stops it once FV_READY_FILE exists. DEVICE_FATAL must
 * arrive exactly once, and a thread blocked in ibv_get_cq_event must return.
 * Then, as a NIC's driver does after a fatal error, every work request the
 * router had not completed, and every one posted since, completes with
 * IBV_WC_WR_FLUSH_ERR, in order: a SEND stalled on a peer without receives
 * (infinite RNR retries) and receives of a QP in INIT.
 */
static void case_device_fatal(void)
{
	expect_port_active();
	set_step("setup");
	g_fatal_ch = chan_new();
	struct ibv_cq *cq = cq_new_ch(16, g_fatal_ch, NULL);
	arm(cq, 0);
	struct ibv_cq *pcq = cq_new(16);
	struct ibv_qp *a = rc_qp_new(pcq, pcq), *b = rc_qp_new(pcq, pcq), *c = rc_qp_new(pcq, pcq);
	rc_connect(a, b->qp_num, 0);
	rc_connect(b, a->qp_num, 0);
	struct ibv_send_wr swr;
	wr_init(&swr, 0xa1, IBV_WR_SEND, NULL, 0, IBV_SEND_SIGNALED);
	post_send_ok(a, &swr, "a SEND that waits for a receive forever");
	qp_must(qp_to_init(c, 0), c, "INIT");
	for (uint64_t id = 0xc1; id <= 0xc2; id++) {
		struct ibv_recv_wr rwr, *bad = NULL;
		rwr_init(&rwr, id, NULL, 0);
		if (ibv_post_recv(c, &rwr, &bad))
			fatal("ibv_post_recv before the router went away failed");
	}
	struct ibv_wc early;
	sleep_ms(200);
	EXPECT_EQ("completions before the router went away", ibv_poll_cq(pcq, 1, &early), 0);
	pthread_t t;
	if (pthread_create(&t, NULL, fatal_cq_waiter, NULL))
		fatal("pthread_create failed");
	/* The test runner stops the router once FV_READY_FILE exists. */
	touch_file(need_env("FV_READY_FILE"));

	set_step("blocked in ibv_get_async_event until the router goes away");
	struct ibv_async_event ev;
	if (ibv_get_async_event(E.ctx, &ev))
		fatal("ibv_get_async_event failed, errno %d (%s)", errno, strerror(errno));
	EXPECT_EQ("event_type (IBV_EVENT_DEVICE_FATAL)", ev.event_type, IBV_EVENT_DEVICE_FATAL);
	ibv_ack_async_event(&ev);

	set_step("exactly one DEVICE_FATAL");
	/* The router is gone: a failure here shows as a blocked read (the watchdog). */
	int fl = fcntl(E.ctx->async_fd, F_GETFL);
	fcntl(E.ctx->async_fd, F_SETFL, fl | O_NONBLOCK);
	uint8_t rec[16];
	usleep(300 * 1000);
	ssize_t n = read(E.ctx->async_fd, rec, sizeof(rec));
	if (n > 0)
		fail("a second async event (%zd bytes) after DEVICE_FATAL", n);

	set_step("a thread blocked in ibv_get_cq_event returns");
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	if (pthread_timedjoin_np(t, NULL, &until))
		fatal("ibv_get_cq_event still blocked 10 s after the router went away");
	EXPECT_EQ("ibv_get_cq_event on a dead router's channel", g_fatal_get_rc, -1);
	printf("device_fatal: DEVICE_FATAL received\n");

	set_step("outstanding work completes with IBV_WC_WR_FLUSH_ERR");
	struct ibv_recv_wr late, *bad = NULL;
	rwr_init(&late, 0xc3, NULL, 0);
	EXPECT_EQ("ibv_post_recv after the router went away", ibv_post_recv(c, &late, &bad), 0);
	const struct {
		uint64_t wr_id;
		struct ibv_qp *qp;
		enum ibv_wc_opcode opcode;
	} want[] = { { 0xa1, a, IBV_WC_SEND }, { 0xc1, c, IBV_WC_RECV }, { 0xc2, c, IBV_WC_RECV },
		     { 0xc3, c, IBV_WC_RECV } };
	struct ibv_wc got[8];
	int got_n = 0;
	for (int tries = 0; tries < 100 && got_n < 4; tries++) {
		int k = ibv_poll_cq(pcq, 8 - got_n, got + got_n);
		if (k < 0)
			fatal("ibv_poll_cq after the router went away returned %d", k);
		got_n += k;
		if (!k)
			sleep_ms(20);
	}
	EXPECT_EQ("flush completions", got_n, 4);
	/* The send queue's and the receive queue's may interleave; each in order. */
	for (int i = 0, s = 0, r = 1; i < got_n && i < 4; i++) {
		int k = got[i].qp_num == a->qp_num ? s++ : r++;
		if (k >= 4 || got[i].qp_num != want[k].qp->qp_num) {
			fail("flush completion %d: wr_id 0x%" PRIx64 " of qp 0x%x out of order", i,
			     got[i].wr_id, got[i].qp_num);
			continue;
		}
		EXPECT_EQ("flushed wr_id", got[i].wr_id, want[k].wr_id);
		EXPECT_EQ("flushed status", got[i].status, IBV_WC_WR_FLUSH_ERR);
		EXPECT_EQ("flushed opcode", got[i].opcode, want[k].opcode);
	}
	EXPECT_EQ("completions after the flush", ibv_poll_cq(pcq, 8, got), 0);
	printf("device_fatal: %d work requests flushed\n", got_n);

	/*
	 * The router is gone: what this case made (the CQ, the channel, the
	 * PD) cannot be destroyed, so fv_main's end-of-case check (the PD can
	 * be deallocated: nothing was left behind) does not apply. End here.
	 */
	set_step("exit with the router gone");
	exit(fv_verdict());
}

/* ------------------------------------------------------------------------ */

static const struct fv_case cases[] = {
	{ "device", case_device },
	{ "qp_caps", case_qp_caps },
	{ "mr_neighbours", case_mr_neighbours },
	{ "send", case_send },
	{ "send_imm", case_send_imm },
	{ "write", case_write },
	{ "write_imm", case_write_imm },
	{ "read", case_read },
	{ "atomics", case_atomics },
	{ "inline", case_inline },
	{ "large", case_large },
	{ "unsignaled", case_unsignaled },
	{ "completion_fields", case_completion_fields },
	{ "bad_lkey", case_bad_lkey },
	{ "bad_rkey", case_bad_rkey },
	{ "remote_oob", case_remote_oob },
	{ "remote_access", case_remote_access },
	{ "recv_too_small", case_recv_too_small },
	{ "message_too_long", case_message_too_long },
	{ "flush", case_flush },
	{ "wrong_state", case_wrong_state },
	{ "rnr_wait", case_rnr_wait },
	{ "rnr_exceeded", case_rnr_exceeded },
	{ "many_qps", case_many_qps },
	{ "events_flood", case_events_flood },
	{ "events_channels", case_events_channels },
	{ "events_solicited", case_events_solicited },
	{ "events_epoll", case_events_epoll },
	{ "events_pipe_full", case_events_pipe_full },
	{ "async_qp_error", case_async_qp_error },
	{ "async_srq", case_async_srq },
	{ "device_fatal", case_device_fatal },
};

int main(int argc, char **argv)
{
	g_rd_atomic = 1; /* max_rd_atomic and max_dest_rd_atomic of every connection */
	return fv_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]), 1);
}
