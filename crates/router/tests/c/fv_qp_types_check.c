/*
 * fv_qp_types_check: checks of shared receive queues, UD and UC QPs,
 * atomics under contention and fairness between QPs, for the flowverbs
 * device fv0.
 *
 * Usage: fv_qp_types_check <case>      (fv_qp_types_check list  prints the cases)
 *
 * Uses only the public libibverbs API, as an application would. Every case
 * opens fv0 and builds its QPs inside this process: RC and UC QPs connected
 * to each other, UD QPs addressed to each other through address handles
 * (loopback through the router). Each case checks one area against the man
 * pages and the InfiniBand specification, with the limits fv0 advertises.
 *
 * Exit status: 0 = every check passed; 1 = at least one check failed (each
 * failure is printed on stderr as "FAIL <case> [<step>]: ... expected ...,
 * got ..."); 2 = usage error; 3 = watchdog (the case hung).
 *
 * Conventions: ibv_post_send/ibv_post_recv/ibv_post_srq_recv/ibv_modify_qp/
 * ibv_modify_srq/ibv_destroy_srq return an errno value; ibv_create_* and
 * ibv_reg_mr return NULL and set errno. Completions are awaited with a
 * deadline (POLL_TIMEOUT_S); a missing completion is fatal. "Nothing
 * arrives" is checked by polling for DROP_WAIT_MS.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fv_test_util.h"
#include "fv_completions.h"

/* How long a message that must be dropped is given to show up anyway. */
#define DROP_WAIT_MS 300

/* ------------------------------------------------------------------------ */
/* RC and UC: connected                                                      */

#define UC_RTR_MASK                                                                      \
	(IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN)
#define UC_RTS_MASK (IBV_QP_STATE | IBV_QP_SQ_PSN)

/* UC: the masks of ibv_uc_pingpong (no RC-only attributes). */
static void uc_connect(struct ibv_qp *qp, uint32_t dest_qpn, int access)
{
	struct ibv_qp_attr a;
	qp_must(qp_to_init(qp, access), qp, "UC RESET->INIT");
	rtr_attr(&a, dest_qpn);
	qp_must(ibv_modify_qp(qp, &a, UC_RTR_MASK), qp, "UC INIT->RTR (STATE|AV|PATH_MTU|DEST_QPN|RQ_PSN)");
	rts_attr(&a);
	qp_must(ibv_modify_qp(qp, &a, UC_RTS_MASK), qp, "UC RTR->RTS (STATE|SQ_PSN)");
}

#define ACC_RW (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ)

/* Two connected QPs of one type (fv_test_util.h's pair); B grants access_b. */
static void pair_new(struct pair *p, enum ibv_qp_type type, int access_b)
{
	struct qp_cfg c = CFG_DEFAULT;
	pair_create(p, type, &c, &c, NULL);
	if (type == IBV_QPT_RC) {
		rc_connect(p->a, p->b->qp_num, ACC_ALL);
		rc_connect(p->b, p->a->qp_num, access_b);
	} else {
		uc_connect(p->a, p->b->qp_num, ACC_RW & ~IBV_ACCESS_REMOTE_READ);
		uc_connect(p->b, p->a->qp_num, access_b);
	}
}

/* --- UD ----------------------------------------------------------------- */

#define QKEY 0x11111111u

/* UD: INIT (PKEY|PORT|QKEY), RTR (STATE only), RTS (SQ_PSN), as ibv_ud_pingpong. */
static void ud_to_init(struct ibv_qp *qp, uint32_t qkey)
{
	struct ibv_qp_attr a;
	init_attr(&a);
	a.qkey = qkey;
	qp_must(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY),
		qp, "UD RESET->INIT (STATE|PKEY_INDEX|PORT|QKEY)");
}

static void ud_to_rtr(struct ibv_qp *qp)
{
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	qp_must(ibv_modify_qp(qp, &a, IBV_QP_STATE), qp, "UD INIT->RTR (STATE)");
}

static void ud_to_rts(struct ibv_qp *qp)
{
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.sq_psn = 0x123;
	qp_must(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN), qp, "UD RTR->RTS (STATE|SQ_PSN)");
}

static struct ibv_qp *ud_new(struct ibv_cq *scq, struct ibv_cq *rcq, uint32_t qkey)
{
	struct qp_cfg c = CFG_DEFAULT;
	struct ibv_qp *qp = qp_create(IBV_QPT_UD, scq, rcq, NULL, &c);
	ud_to_init(qp, qkey);
	ud_to_rtr(qp);
	ud_to_rts(qp);
	return qp;
}

/*
 * The hop limit of every AH made here; a RoCE v2 NIC sends it as the IPv4
 * TTL, and the receiver's GRH area holds that TTL (loopback: no router
 * decrements it). ibv_init_ah_from_wc turns the TTL back into the hop limit
 * of the reply's AH, so replies carry it too.
 */
#define UD_HOP_LIMIT 64

static void ah_attr_to(struct ibv_ah_attr *a, const union ibv_gid *dgid)
{
	memset(a, 0, sizeof(*a));
	a->is_global = 1;
	a->grh.dgid = *dgid;
	a->grh.sgid_index = gid_index();
	a->grh.hop_limit = UD_HOP_LIMIT;
	a->port_num = 1;
}

static struct ibv_ah *ah_new(const union ibv_gid *dgid)
{
	struct ibv_ah_attr a;
	ah_attr_to(&a, dgid);
	errno = 0;
	struct ibv_ah *ah = ibv_create_ah(E.pd, &a);
	if (!ah)
		fatal("ibv_create_ah(port 1, is_global 1, sgid_index %d) returned NULL, errno %d (%s)",
		      gid_index(), errno, strerror(errno));
	return ah;
}

static void gid_str(const uint8_t *g, char *out, size_t n)
{
	char b[INET6_ADDRSTRLEN];
	if (!inet_ntop(AF_INET6, g, b, sizeof(b)))
		snprintf(b, sizeof(b), "?");
	snprintf(out, n, "%s", b);
}

/* ------------------------------------------------------------------------ */
/* Posting                                                                   */

/* The UD address of wr. */
static void wr_ud(struct ibv_send_wr *wr, struct ibv_ah *ah, uint32_t rqpn, uint32_t rqkey)
{
	wr->wr.ud.ah = ah;
	wr->wr.ud.remote_qpn = rqpn;
	wr->wr.ud.remote_qkey = rqkey;
}

/* Posts a single UD send (SEND or SEND_WITH_IMM). */
static void ud_send1(struct ibv_qp *qp, uint64_t wr_id, enum ibv_wr_opcode op, struct ibv_sge *sg,
		     int n, struct ibv_ah *ah, uint32_t rqpn, uint32_t rqkey, uint32_t imm_host,
		     const char *what)
{
	struct ibv_send_wr wr;
	wr_init(&wr, wr_id, op, sg, n, IBV_SEND_SIGNALED);
	wr_ud(&wr, ah, rqpn, rqkey);
	wr.imm_data = htonl(imm_host);
	post_send_ok(qp, &wr, what);
}

/*
 * Each of the opcodes ops[0..n), which qp's type does not support, posted
 * alone on qp (one SGE s): refused with EINVAL, the WR as bad_wr. A UD WR is
 * addressed to ah and rqpn (Q_Key QKEY), another to raddr and rkey.
 */
static void expect_bad_opcodes(struct ibv_qp *qp, const enum ibv_wr_opcode *ops, size_t n,
			       struct ibv_sge *s, struct ibv_ah *ah, uint32_t rqpn, uint64_t raddr,
			       uint32_t rkey)
{
	char w[200];
	const char *qpt = qpt_str(qp->qp_type);
	for (size_t i = 0; i < n; i++) {
		struct ibv_send_wr wr;
		set_step("%s on a %s QP", wr_opcode_str(ops[i]), qpt);
		wr_init(&wr, 0x100 + i, ops[i], s, 1, IBV_SEND_SIGNALED);
		if (qp->qp_type == IBV_QPT_UD)
			wr_ud(&wr, ah, rqpn, QKEY);
		else
			wr_remote(&wr, raddr, rkey, 1, 0);
		snprintf(w, sizeof(w), "post_send of %s on a %s QP", wr_opcode_str(ops[i]), qpt);
		expect_post_send_rc(qp, &wr, &wr, EINVAL, w);
	}
}

/* ------------------------------------------------------------------------ */
/* SRQ                                                                       */

static struct ibv_srq_attr srq_query(struct ibv_srq *srq, const char *what)
{
	struct ibv_srq_attr a;
	memset(&a, 0xA5, sizeof(a));
	int rc = ibv_query_srq(srq, &a);
	if (rc)
		fatal("%s: ibv_query_srq returned %d (%s)", what, rc, strerror(rc));
	return a;
}

static void case_srq_attrs(void)
{
	struct ibv_srq_attr got, q;
	int marker;

	set_step("ibv_create_srq(max_wr 100, max_sge 3)");
	struct ibv_srq *srq = srq_try_create(100, 3, &marker, &got);
	if (!srq)
		fatal("ibv_create_srq(max_wr 100, max_sge 3) returned NULL, errno %d (%s)", errno,
		      strerror(errno));
	EXPECT_GE("written-back attr.max_wr (requested 100)", got.max_wr, 100);
	EXPECT_GE("written-back attr.max_sge (requested 3)", got.max_sge, 3);
	EXPECT_GE("device_attr.max_srq_wr >= written-back max_wr", E.dev.max_srq_wr, got.max_wr);
	if (srq->context != E.ctx || srq->pd != E.pd || srq->srq_context != &marker)
		fail("srq fields: expected context %p pd %p srq_context %p, got %p %p %p",
		     (void *)E.ctx, (void *)E.pd, (void *)&marker, (void *)srq->context,
		     (void *)srq->pd, srq->srq_context);

	set_step("ibv_query_srq of the new SRQ");
	q = srq_query(srq, "query");
	EXPECT_EQ("query_srq max_wr (= written back at create)", q.max_wr, got.max_wr);
	EXPECT_EQ("query_srq max_sge (= written back at create)", q.max_sge, got.max_sge);
	EXPECT_EQ("query_srq srq_limit (not armed)", q.srq_limit, 0);

	set_step("ibv_modify_srq(IBV_SRQ_LIMIT 10)");
	struct ibv_srq_attr m;
	memset(&m, 0, sizeof(m));
	m.srq_limit = 10;
	int rc = ibv_modify_srq(srq, &m, IBV_SRQ_LIMIT);
	EXPECT_EQ("ibv_modify_srq(IBV_SRQ_LIMIT 10) return value", rc, 0);
	q = srq_query(srq, "query after modify");
	EXPECT_EQ("query_srq srq_limit after IBV_SRQ_LIMIT 10", q.srq_limit, 10);
	EXPECT_EQ("query_srq max_wr unchanged by IBV_SRQ_LIMIT", q.max_wr, got.max_wr);

	set_step("ibv_modify_srq(IBV_SRQ_LIMIT max_wr + 1)");
	m.srq_limit = got.max_wr + 1;
	rc = ibv_modify_srq(srq, &m, IBV_SRQ_LIMIT);
	if (rc != EINVAL)
		fail("ibv_modify_srq(IBV_SRQ_LIMIT %u > max_wr %u): expected %d (EINVAL), got %d (%s)",
		     m.srq_limit, got.max_wr, EINVAL, rc, strerror(rc));
	q = srq_query(srq, "query after the rejected modify");
	EXPECT_EQ("query_srq srq_limit after a rejected IBV_SRQ_LIMIT (still 10)", q.srq_limit, 10);

	set_step("ibv_modify_srq(IBV_SRQ_LIMIT 0) disarms");
	m.srq_limit = 0;
	rc = ibv_modify_srq(srq, &m, IBV_SRQ_LIMIT);
	EXPECT_EQ("ibv_modify_srq(IBV_SRQ_LIMIT 0) return value", rc, 0);
	q = srq_query(srq, "query after limit 0");
	EXPECT_EQ("query_srq srq_limit after IBV_SRQ_LIMIT 0", q.srq_limit, 0);
	destroy_srq(srq);

	set_step("ibv_create_srq at the maxima (max_wr 16384, max_sge 16)");
	srq = srq_try_create(16384, 16, NULL, &got);
	if (!srq) {
		fail("ibv_create_srq(max_wr 16384, max_sge 16): expected an SRQ, got NULL, errno %d (%s)",
		     errno, strerror(errno));
	} else {
		EXPECT_GE("written-back attr.max_wr (requested 16384)", got.max_wr, 16384);
		EXPECT_GE("written-back attr.max_sge (requested 16)", got.max_sge, 16);
		destroy_srq(srq);
	}

	struct {
		const char *what;
		uint32_t wr, sge;
	} over[] = {
		{ "max_wr 16385", 16385, 1 },
		{ "max_wr 1000000", 1000000, 1 },
		{ "max_sge 17", 16, 17 },
	};
	for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++) {
		set_step("ibv_create_srq with %s", over[i].what);
		srq = srq_try_create(over[i].wr, over[i].sge, NULL, NULL);
		if (made_despite_einval(srq, errno, "ibv_create_srq", over[i].what, "an SRQ"))
			destroy_srq(srq);
	}

	set_step("ibv_post_srq_recv until full");
	srq = srq_create(16, 2, &got);
	struct buf *b = buf_reg(256, "recv buffer", IBV_ACCESS_LOCAL_WRITE);
	struct ibv_sge s = buf_sge(b, 0, 64);
	struct ibv_recv_wr rw, *bad;
	uint32_t ok = 0, limit = got.max_wr * 2 + 16;
	rc = 0;
	if (got.max_wr > 4096)
		fatal("ibv_create_srq(max_wr 16) wrote back max_wr %u: too large to test", got.max_wr);
	for (uint32_t i = 0; i < limit; i++) {
		rwr_init(&rw, i, &s, 1);
		bad = NULL;
		rc = ibv_post_srq_recv(srq, &rw, &bad);
		if (rc)
			break;
		ok++;
	}
	check_queue_full("SRQ", "max_wr", got.max_wr, ok, rc, bad, &rw);

	set_step("ibv_post_srq_recv with more SGEs than max_sge");
	struct ibv_sge many[40];
	for (int i = 0; i < 40; i++)
		many[i] = buf_sge(b, i, 1);
	if (got.max_sge + 1 > 40)
		fatal("written-back max_sge %u too large to test", got.max_sge);
	destroy_srq(srq);
	srq = srq_create(16, 2, &got);
	rwr_init(&rw, 0, many, (int)got.max_sge + 1);
	char w[100];
	snprintf(w, sizeof(w), "ibv_post_srq_recv with %u SGEs (max_sge %u)", got.max_sge + 1,
		 got.max_sge);
	expect_post_srq_recv_rc(srq, &rw, &rw, EINVAL, w);
	destroy_srq(srq);
	buf_free(b);
}

/*
 * Several RC pairs A[i] -> B[i]; every B[i] takes its receives from one SRQ
 * and completes them on one CQ.
 */
#define SRQ_PAIRS 4
#define SRQ_NMSG 24
#define SRQ_TOTAL (SRQ_PAIRS * SRQ_NMSG)
#define SRQ_SLOT 256
#define SRQ_TAG 0x5A5A0000u

static uint32_t srq_msg_len(int i, int j)
{
	return 100 + (uint32_t)((i * 37 + j * 13) % 101); /* 100..200 */
}

static void case_srq_shared(void)
{
	struct ibv_srq_attr sa;
	struct ibv_srq *srq = srq_create(SRQ_TOTAL + 8, 2, &sa);
	struct ibv_cq *a_scq = cq_new(1024), *a_rcq = cq_new(64);
	struct ibv_cq *b_scq = cq_new(64), *rcq = cq_new(1024);
	struct ibv_qp *a[SRQ_PAIRS], *b[SRQ_PAIRS];
	for (int i = 0; i < SRQ_PAIRS; i++) {
		a[i] = rc_qp_new(a_scq, a_rcq);
		struct qp_cfg cb = CFG_DEFAULT;
		if (i == 0)
			cb.recv_wr = cb.recv_sge = 0; /* ignored with an SRQ */
		b[i] = qp_create(IBV_QPT_RC, b_scq, rcq, srq, &cb);
		if (b[i]->srq != srq)
			fail("QP B%d: ibv_qp.srq expected %p, got %p", i, (void *)srq,
			     (void *)b[i]->srq);
	}
	for (int i = 0; i < SRQ_PAIRS; i++) {
		rc_connect_both(a[i], b[i]);
	}
	struct buf *src = buf_reg(SRQ_TOTAL * SRQ_SLOT, "send buffers", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(SRQ_TOTAL * SRQ_SLOT, "SRQ receive slots",
				  IBV_ACCESS_LOCAL_WRITE);

	/*
	 * Receive k uses slot k: even k one SGE [0, 256), odd k two SGEs
	 * [0, 80) and [128, 256) (bytes 80..127 must stay untouched). Posted
	 * as one chain.
	 */
	set_step("post %d receives to the SRQ (one chain)", SRQ_TOTAL);
	static struct ibv_recv_wr rw[SRQ_TOTAL];
	static struct ibv_sge rs[SRQ_TOTAL][2];
	for (int k = 0; k < SRQ_TOTAL; k++) {
		size_t slot = (size_t)k * SRQ_SLOT;
		if (k % 2 == 0) {
			rs[k][0] = buf_sge(dst, slot, SRQ_SLOT);
			rwr_init(&rw[k], 0x50000 + k, rs[k], 1);
		} else {
			rs[k][0] = buf_sge(dst, slot, 80);
			rs[k][1] = buf_sge(dst, slot + 128, 128);
			rwr_init(&rw[k], 0x50000 + k, rs[k], 2);
		}
		rw[k].next = k + 1 < SRQ_TOTAL ? &rw[k + 1] : NULL;
	}
	struct ibv_recv_wr *bad = NULL;
	int rc = ibv_post_srq_recv(srq, &rw[0], &bad);
	if (rc)
		fatal("ibv_post_srq_recv of a chain of %d: returned %d (%s), bad_wr %p (first %p)",
		      SRQ_TOTAL, rc, strerror(rc), (void *)bad, (void *)&rw[0]);

	/* Message (i, j) comes from src slot i*NMSG+j and starts with its tag. */
	set_step("SENDs on all %d pairs, interleaved", SRQ_PAIRS);
	for (int j = 0; j < SRQ_NMSG; j++)
		for (int i = 0; i < SRQ_PAIRS; i++) {
			uint8_t *m = src->p + (size_t)(i * SRQ_NMSG + j) * SRQ_SLOT;
			uint32_t tag = SRQ_TAG | (uint32_t)(i << 8) | (uint32_t)j;
			buf_set(src, m - src->p, &tag, 4);
			struct ibv_sge s = sge(m, srq_msg_len(i, j), src->mr->lkey);
			send1(a[i], ((uint64_t)i << 32) | (uint64_t)j, IBV_WR_SEND, &s, 1, 0, 0, 0,
			      "SEND");
		}

	set_step("send completions");
	int next_send[SRQ_PAIRS] = { 0 };
	for (int n = 0; n < SRQ_TOTAL; n++) {
		struct ibv_wc wc;
		poll1(a_scq, &wc, "send completion");
		int i = (int)(wc.wr_id >> 32);
		if (i < 0 || i >= SRQ_PAIRS) {
			char d[400];
			describe_wc(&wc, d, sizeof(d));
			fail("send completion with an unknown wr_id: %s", d);
			continue;
		}
		check_wc(&wc, "send completion (in order per QP)",
			 ((uint64_t)i << 32) | (uint64_t)next_send[i], IBV_WC_SUCCESS, IBV_WC_SEND,
			 a[i]);
		next_send[i]++;
	}

	set_step("receive completions on the shared CQ");
	int seen_slot[SRQ_TOTAL] = { 0 };
	int next_seq[SRQ_PAIRS] = { 0 };
	int per_qp[SRQ_PAIRS] = { 0 };
	for (int n = 0; n < SRQ_TOTAL; n++) {
		struct ibv_wc wc;
		char d[400];
		poll1(rcq, &wc, "receive completion");
		describe_wc(&wc, d, sizeof(d));
		if (wc.status != IBV_WC_SUCCESS || wc.opcode != IBV_WC_RECV) {
			fail("receive completion %d: expected status IBV_WC_SUCCESS, opcode IBV_WC_RECV, "
			     "got %s",
			     n, d);
			continue;
		}
		int64_t k = (int64_t)wc.wr_id - 0x50000;
		if (k < 0 || k >= SRQ_TOTAL || seen_slot[k]) {
			fail("receive completion %d: expected the wr_id of a posted, not yet completed "
			     "SRQ receive (0x50000..0x%x), got %s",
			     n, 0x50000 + SRQ_TOTAL - 1, d);
			continue;
		}
		seen_slot[k] = 1;
		uint8_t *slot = dst->p + (size_t)k * SRQ_SLOT;
		uint32_t tag;
		memcpy(&tag, slot, 4);
		int i = (int)((tag >> 8) & 0xff), j = (int)(tag & 0xff);
		if ((tag & 0xffff0000u) != SRQ_TAG || i >= SRQ_PAIRS || j >= SRQ_NMSG) {
			fail("receive completion %d (slot %" PRId64 "): the slot does not start with a "
			     "message tag (got 0x%08x); completion %s",
			     n, k, tag, d);
			continue;
		}
		per_qp[i]++;
		if (wc.qp_num != b[i]->qp_num)
			fail("receive of message (sender A%d, #%d) in slot %" PRId64
			     ": wc.qp_num expected 0x%x (B%d, the receiving QP), got 0x%x; completion %s",
			     i, j, k, b[i]->qp_num, i, wc.qp_num, d);
		if (wc.src_qp != a[i]->qp_num)
			fail("receive of message (A%d, #%d): wc.src_qp (flowverbs fills it for RC) "
			     "expected 0x%x, got 0x%x",
			     i, j, a[i]->qp_num, wc.src_qp);
		if (j != next_seq[i])
			fail("receive on B%d: expected message #%d next (RC delivers in order), got #%d",
			     i, next_seq[i], j);
		next_seq[i] = j + 1;
		uint32_t len = srq_msg_len(i, j);
		if (wc.byte_len != len)
			fail("receive of message (A%d, #%d): wc.byte_len expected %u, got %u", i, j,
			     len, wc.byte_len);
		const uint8_t *m = src->p + (size_t)(i * SRQ_NMSG + j) * SRQ_SLOT;
		if (k % 2 == 0) {
			buf_expect(dst, (size_t)k * SRQ_SLOT, m, len);
		} else {
			buf_expect(dst, (size_t)k * SRQ_SLOT, m, 80);
			buf_expect(dst, (size_t)k * SRQ_SLOT + 128, m + 80, len - 80);
		}
	}
	for (int i = 0; i < SRQ_PAIRS; i++)
		if (per_qp[i] != SRQ_NMSG)
			fail("B%d: expected %d receive completions, got %d", i, SRQ_NMSG, per_qp[i]);
	buf_check(dst, "SRQ receive slots (message data by wr_id; odd slots: bytes 80..127 "
		       "untouched; bytes after the message untouched)");
	expect_empty(rcq, 100, "shared receive CQ after all messages");
	expect_empty(b_scq, 10, "B send CQ");

	for (int i = 0; i < SRQ_PAIRS; i++) {
		destroy_qp(a[i]);
		destroy_qp(b[i]);
	}
	destroy_srq(srq);
	destroy_cq(a_scq);
	destroy_cq(a_rcq);
	destroy_cq(b_scq);
	destroy_cq(rcq);
	buf_free(src);
	buf_free(dst);
}

static void case_srq_misuse(void)
{
	struct ibv_srq *srq = srq_create(64, 1, NULL);
	struct ibv_cq *a_cq = cq_new(64), *b_cq = cq_new(64);
	struct qp_cfg c = CFG_DEFAULT;
	struct ibv_qp *a = qp_create(IBV_QPT_RC, a_cq, a_cq, NULL, &c);
	struct ibv_qp *b = qp_create(IBV_QPT_RC, b_cq, b_cq, srq, &c);
	rc_connect_both(a, b);
	struct buf *src = buf_reg(4096, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(4096, "receive buffers", IBV_ACCESS_LOCAL_WRITE);

	set_step("ibv_post_recv on a QP that has an SRQ");
	struct ibv_sge r = buf_sge(dst, 2048, 512);
	struct ibv_recv_wr rw;
	rwr_init(&rw, 0xBAD, &r, 1);
	expect_post_recv_rc(b, &rw, &rw, EINVAL, "ibv_post_recv on a QP with an SRQ");

	set_step("SEND to the QP: uses the SRQ receive, not the rejected one");
	struct ibv_sge rs = buf_sge(dst, 5, 300);
	srq_recv1(srq, 0x600, &rs, 1, "SRQ receive");
	struct ibv_sge ss = buf_sge(src, 3, 200);
	buf_expect(dst, 5, src->p + 3, 200);
	send1(a, 0x601, IBV_WR_SEND, &ss, 1, 0, 0, 0, "SEND");
	expect_wc(a_cq, "sender completion", 0x601, IBV_WC_SUCCESS, IBV_WC_SEND, a, NULL);
	expect_recv(b_cq, "receive from the SRQ", 0x600, b, 200, 0, 0, IBV_WC_RECV, NULL);
	buf_check(dst, "receive buffers (SRQ buffer filled; the rejected receive's untouched)");

	set_step("ibv_destroy_srq while a QP uses it");
	int rc = ibv_destroy_srq(srq);
	if (rc != EBUSY)
		fatal("ibv_destroy_srq while QP 0x%x is attached: expected %d (EBUSY), got %d (%s)",
		      b->qp_num, EBUSY, rc, strerror(rc));

	set_step("the SRQ still works after the refused destroy");
	rs = buf_sge(dst, 1000, 300);
	srq_recv1(srq, 0x602, &rs, 1, "SRQ receive");
	ss = buf_sge(src, 1000, 77);
	buf_expect(dst, 1000, src->p + 1000, 77);
	send1(a, 0x603, IBV_WR_SEND, &ss, 1, 0, 0, 0, "SEND");
	expect_wc(a_cq, "sender completion", 0x603, IBV_WC_SUCCESS, IBV_WC_SEND, a, NULL);
	expect_recv(b_cq, "receive from the SRQ", 0x602, b, 77, 0, 0, IBV_WC_RECV, NULL);
	buf_check(dst, "receive buffers");
	expect_empty(b_cq, 100, "receiver CQ (the rejected receive never completes)");

	set_step("ibv_destroy_srq after its QP is destroyed");
	destroy_qp(b);
	rc = ibv_destroy_srq(srq);
	if (rc)
		fail("ibv_destroy_srq after destroying its only QP: expected 0, got %d (%s)", rc,
		     strerror(rc));
	destroy_qp(a);
	destroy_cq(a_cq);
	destroy_cq(b_cq);
	buf_free(src);
	buf_free(dst);
}

static void case_srq_rnr(void)
{
	struct ibv_srq *srq = srq_create(16, 1, NULL);
	struct ibv_cq *scq = cq_new(64), *rcq = cq_new(64), *other = cq_new(64);
	struct qp_cfg c = CFG_DEFAULT;
	struct ibv_qp *a[2], *b[2];
	for (int i = 0; i < 2; i++) {
		a[i] = qp_create(IBV_QPT_RC, scq, other, NULL, &c);
		b[i] = qp_create(IBV_QPT_RC, other, rcq, srq, &c);
	}
	for (int i = 0; i < 2; i++) {
		rc_connect_both(a[i], b[i]);
	}
	struct buf *src = buf_reg(8192, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(8192, "receive buffers", IBV_ACCESS_LOCAL_WRITE);
	uint32_t len[2] = { 1500, 999 };
	size_t soff[2] = { 1, 4001 };

	set_step("SENDs from A0 and A1 while the SRQ is empty (rnr_retry 7)");
	for (int i = 0; i < 2; i++) {
		struct ibv_sge s = buf_sge(src, soff[i], len[i]);
		send1(a[i], 0x700 + i, IBV_WR_SEND, &s, 1, 0, 0, 0, "SEND");
	}
	expect_empty(scq, 200, "senders while no SRQ receive is posted");
	expect_empty(rcq, 10, "receivers while no SRQ receive is posted");

	int got_first = -1;
	for (int r = 0; r < 2; r++) {
		set_step("SRQ receive %d posted late", r);
		struct ibv_sge rs = buf_sge(dst, 3 + 4096 * r, 2000);
		srq_recv1(srq, 0x710 + r, &rs, 1, "late SRQ receive");
		struct ibv_wc wc;
		char d[400];
		poll1(rcq, &wc, "receive completion after posting an SRQ receive");
		describe_wc(&wc, d, sizeof(d));
		int i = qp_index(b, 2, wc.qp_num);
		if (i < 0 || i == got_first) {
			fail("receive %d: expected a completion on %s, got %s", r,
			     got_first < 0 ? "B0 or B1" : (got_first ? "B0" : "B1"), d);
			continue;
		}
		check_wc(&wc, "receive completion", 0x710 + r, IBV_WC_SUCCESS, IBV_WC_RECV, b[i]);
		EXPECT_EQ("receive completion byte_len", wc.byte_len, len[i]);
		buf_expect(dst, 3 + 4096 * r, src->p + soff[i], len[i]);
		buf_check(dst, "receive buffers");
		expect_wc(scq, "the matching sender's completion", 0x700 + i, IBV_WC_SUCCESS,
			  IBV_WC_SEND, a[i], NULL);
		if (r == 0) {
			expect_empty(scq, 200, "the other sender (still no receive for it)");
			expect_empty(rcq, 10, "no second receive completion");
		}
		got_first = i;
	}
	expect_empty(rcq, 50, "receive CQ at the end");

	for (int i = 0; i < 2; i++) {
		destroy_qp(a[i]);
		destroy_qp(b[i]);
	}
	destroy_srq(srq);
	destroy_cq(scq);
	destroy_cq(rcq);
	destroy_cq(other);
	buf_free(src);
	buf_free(dst);
}

/* ------------------------------------------------------------------------ */
/* UD                                                                        */

#define GRH 40
#define UD_MTU 4096

static void case_ud_ah(void)
{
	struct ibv_ah_attr a;

	set_step("ibv_create_ah(port 1, is_global 1, dgid = GID %d)", gid_index());
	ah_attr_to(&a, &E.gid);
	errno = 0;
	struct ibv_ah *ah = ibv_create_ah(E.pd, &a);
	if (!ah) {
		fail("ibv_create_ah(port 1, GRH to our GID): expected an AH, got NULL, errno %d (%s)",
		     errno, strerror(errno));
	} else {
		if (ah->context != E.ctx || ah->pd != E.pd)
			fail("ah fields: expected context %p pd %p, got %p %p", (void *)E.ctx,
			     (void *)E.pd, (void *)ah->context, (void *)ah->pd);
		destroy_ah(ah);
	}

	set_step("ibv_create_ah with port_num 2 (fv0 has one port)");
	ah_attr_to(&a, &E.gid);
	a.port_num = 2;
	errno = 0;
	ah = ibv_create_ah(E.pd, &a);
	if (ah) {
		fail("ibv_create_ah(port_num 2): expected NULL, got an AH");
		destroy_ah(ah);
	} else if (errno == 0) {
		fail("ibv_create_ah(port_num 2): returned NULL but errno is 0");
	}

	set_step("ibv_create_ah with sgid_index = gid_tbl_len (%d)", E.port.gid_tbl_len);
	ah_attr_to(&a, &E.gid);
	a.grh.sgid_index = (uint8_t)E.port.gid_tbl_len;
	errno = 0;
	ah = ibv_create_ah(E.pd, &a);
	if (ah) {
		fail("ibv_create_ah(sgid_index %d, beyond the GID table of length %d): expected NULL, "
		     "got an AH",
		     a.grh.sgid_index, E.port.gid_tbl_len);
		destroy_ah(ah);
	}
}

/* Whether a GID is IPv4-mapped (::ffff:a.b.c.d), i.e. a RoCE v2 IPv4 GID. */
static int gid_is_ipv4(const uint8_t *g)
{
	static const uint8_t prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	return memcmp(g, prefix, 12) == 0;
}

/*
 * The IPv4 total length of a RoCE v2 UD SEND (only, with immediate) of len
 * payload bytes, as a NIC sends it and writes it into the receiver's GRH
 * area: IPv4 header (20) + UDP (8) + BTH (12) + DETH (8) [+ ImmDt (4)] +
 * payload padded to a multiple of 4 (BTH PadCnt) + ICRC (4).
 */
static uint32_t roce_v2_ud_ip_len(uint32_t len, int with_imm)
{
	return 20 + 8 + 12 + 8 + (with_imm ? 4 : 0) + ((len + 3) & ~3u) + 4;
}

/*
 * The address at got (n = 4: an IPv4 address, 16: a GID) in a GRH area must
 * equal want (whose, e.g. "the sender's GID"; field: where it is).
 */
static int check_grh_addr(const uint8_t *got, const uint8_t *want, int n, const char *field,
			  const char *whose, const char *what)
{
	char e[64], g[64];
	int af = n == 4 ? AF_INET : AF_INET6;
	if (memcmp(got, want, (size_t)n) == 0)
		return 1;
	if (!inet_ntop(af, want, e, sizeof(e)))
		snprintf(e, sizeof(e), "?");
	if (!inet_ntop(af, got, g, sizeof(g)))
		snprintf(g, sizeof(g), "?");
	fail("%s: GRH %s: expected %s %s, got %s", what, field, whose, e, g);
	return 0;
}

/*
 * Checks the 40-byte GRH area of a UD receive of a len-byte SEND (with_imm:
 * SEND_WITH_IMM). For a RoCE v2 GID that is IPv4-mapped (fv0's GID 0 is
 * ::ffff:<host IPv4>), a NIC writes the packet's IPv4 header into bytes
 * 20..39 (bytes 0..19 undefined): this is the layout rdma-core's
 * ibv_init_ah_from_wc and kernel rxe/mlx5 use. Every field is checked
 * against what the NIC writes: version/IHL 0x45, TOS (tos: the sender's AH
 * traffic class), total length, TTL (ttl: the sender's AH hop limit),
 * protocol 17 (UDP), a header checksum that verifies, source = the
 * sender's GID's IPv4 address, destination = the receiver's.
 * (Identification and flags vary between NICs and are not checked.)
 * Otherwise the area is an IPv6-style GRH: version 6, SGID at 8..23, DGID
 * at 24..39. sgid is the sender's GID, dgid the receiver's.
 *
 * Not covered here: every QP of these cases is in this process on this
 * host, so sender and receiver have the same GID (fv0 has one, GID 0) and
 * sgid == dgid. A router that wrote the receiver's GID (or its own) as the
 * source, or swapped source and destination, passes these checks; only
 * UD between two network namespaces or hosts (different GIDs) can tell.
 */
static int check_grh(const uint8_t *grh, const uint8_t *sgid, const uint8_t *dgid,
		     uint32_t len, int with_imm, uint8_t ttl, uint8_t tos, const char *what)
{
	int ok = 1;
	if (gid_is_ipv4(sgid)) {
		const uint8_t *ip = grh + 20;
		if (ip[0] != 0x45) {
			fail("%s: GRH area byte 20 (IPv4 version/IHL for an IPv4-mapped RoCE v2 GID): "
			     "expected 0x45, got 0x%02x",
			     what, ip[0]);
			ok = 0;
		}
		if (ip[1] != tos) {
			fail("%s: GRH area byte 21 (IPv4 TOS = the sender's AH traffic class): expected "
			     "0x%02x, got 0x%02x",
			     what, tos, ip[1]);
			ok = 0;
		}
		uint32_t tot = (uint32_t)(ip[2] << 8 | ip[3]), want = roce_v2_ud_ip_len(len, with_imm);
		if (tot != want) {
			fail("%s: GRH area bytes 22..23 (IPv4 total length of a %u-byte UD SEND%s): "
			     "expected %u (20 IPv4 + 8 UDP + 12 BTH + 8 DETH%s + %u payload and pad + 4 "
			     "ICRC), got %u",
			     what, len, with_imm ? "_WITH_IMM" : "", want, with_imm ? " + 4 ImmDt" : "",
			     (len + 3) & ~3u, tot);
			ok = 0;
		}
		if (ip[8] != ttl) {
			fail("%s: GRH area byte 28 (IPv4 TTL = the sender's AH hop limit): expected %u, "
			     "got %u",
			     what, ttl, ip[8]);
			ok = 0;
		}
		if (ip[9] != 17) {
			fail("%s: GRH area byte 29 (IPv4 protocol): expected 17 (UDP), got %u", what,
			     ip[9]);
			ok = 0;
		}
		ok &= check_grh_addr(ip + 12, sgid + 12, 4, "area bytes 32..35 (IPv4 source)",
				     "the sender's address", what);
		ok &= check_grh_addr(ip + 16, dgid + 12, 4, "area bytes 36..39 (IPv4 destination)",
				     "the receiver's address", what);
		uint32_t sum = 0;
		for (int i = 0; i < 20; i += 2)
			sum += (uint32_t)(ip[i] << 8 | ip[i + 1]);
		while (sum >> 16)
			sum = (sum & 0xffff) + (sum >> 16);
		if (sum != 0xffff) {
			fail("%s: GRH area bytes 20..39: IPv4 header checksum does not verify (sum "
			     "0x%04x, expected 0xffff)",
			     what, sum);
			ok = 0;
		}
		return ok;
	}
	if ((grh[0] >> 4) != 6) {
		fail("%s: GRH byte 0: expected IP version 6 in the high nibble, got 0x%02x", what,
		     grh[0]);
		ok = 0;
	}
	ok &= check_grh_addr(grh + 8, sgid, 16, "bytes 8..23 (SGID)", "the sender's GID", what);
	ok &= check_grh_addr(grh + 24, dgid, 16, "bytes 24..39 (DGID)", "the receiver's GID", what);
	return ok;
}

/*
 * What a UD responder does to answer: ibv_init_ah_from_wc on the completion
 * and its GRH must give an address vector back to the sender's GID.
 */
static int check_ah_from_wc(const struct ibv_wc *wc, const uint8_t *grh, const char *what)
{
	struct ibv_ah_attr a;
	memset(&a, 0, sizeof(a));
	int rc = ibv_init_ah_from_wc(E.ctx, 1, (struct ibv_wc *)wc, (struct ibv_grh *)grh, &a);
	if (rc) {
		fail("%s: ibv_init_ah_from_wc(port 1) returned %d, errno %d (%s)", what, rc, errno,
		     strerror(errno));
		return 0;
	}
	int ok = 1;
	if (!a.is_global) {
		fail("%s: ibv_init_ah_from_wc: expected is_global 1, got 0", what);
		ok = 0;
	}
	if (memcmp(a.grh.dgid.raw, E.gid.raw, 16) != 0) {
		char e[64], g[64];
		gid_str(E.gid.raw, e, sizeof(e));
		gid_str(a.grh.dgid.raw, g, sizeof(g));
		fail("%s: ibv_init_ah_from_wc: grh.dgid expected the sender's GID %s, got %s", what, e,
		     g);
		ok = 0;
	}
	if (a.grh.sgid_index != gid_index()) {
		fail("%s: ibv_init_ah_from_wc: grh.sgid_index expected %d, got %u", what, gid_index(),
		     a.grh.sgid_index);
		ok = 0;
	}
	if (a.port_num != 1) {
		fail("%s: ibv_init_ah_from_wc: port_num expected 1, got %u", what, a.port_num);
		ok = 0;
	}
	return ok;
}

/*
 * Checks a UD receive completion and the GRH area in front of the payload,
 * of a message the sender sent through an AH with hop limit ttl and traffic
 * class tos.
 */
static int check_ud_recv_ah(const struct ibv_wc *wc, const char *what, uint64_t wr_id,
			    struct ibv_qp *rq, struct ibv_qp *sender, uint32_t len, int with_imm,
			    uint32_t imm_host, const uint8_t *grh, uint8_t ttl, uint8_t tos)
{
	int ok = check_wc(wc, what, wr_id, IBV_WC_SUCCESS, IBV_WC_RECV, rq);
	if (wc->status != IBV_WC_SUCCESS)
		return 0;
	if (wc->byte_len != len + GRH) {
		fail("%s: wc.byte_len: expected %u (payload %u + 40-byte GRH), got %u", what,
		     len + GRH, len, wc->byte_len);
		ok = 0;
	}
	if (!(wc->wc_flags & IBV_WC_GRH)) {
		fail("%s: wc.wc_flags: expected IBV_WC_GRH (0x%x) set, got 0x%x", what, IBV_WC_GRH,
		     wc->wc_flags);
		ok = 0;
	}
	if (wc->src_qp != sender->qp_num) {
		fail("%s: wc.src_qp: expected 0x%x (the sender's qp_num), got 0x%x", what,
		     sender->qp_num, wc->src_qp);
		ok = 0;
	}
	/* RoCE v2 over IPv4: wc.sl carries the network header type (2 = IPv4). */
	if (gid_is_ipv4(E.gid.raw) && wc->sl != 2) {
		fail("%s: wc.sl: expected 2 (the GRH area holds an IPv4 header), got %u", what,
		     wc->sl);
		ok = 0;
	}
	check_imm(wc, what, with_imm, imm_host);
	/* Sender and receiver are on this host: both GIDs are ours (see check_grh). */
	if (grh && !check_grh(grh, E.gid.raw, E.gid.raw, len, with_imm, ttl, tos, what))
		ok = 0;
	if (grh && (wc->wc_flags & IBV_WC_GRH) && !check_ah_from_wc(wc, grh, what))
		ok = 0;
	return ok;
}

/* As check_ud_recv_ah, for a message sent through an AH of ah_attr_to. */
static int check_ud_recv(const struct ibv_wc *wc, const char *what, uint64_t wr_id,
			 struct ibv_qp *rq, struct ibv_qp *sender, uint32_t len, int with_imm,
			 uint32_t imm_host, const uint8_t *grh)
{
	return check_ud_recv_ah(wc, what, wr_id, rq, sender, len, with_imm, imm_host, grh,
				UD_HOP_LIMIT, 0);
}

struct ud_env {
	struct ibv_cq *a_scq, *a_rcq, *b_scq, *b_rcq;
	struct ibv_qp *a, *b; /* sender, receiver (both can do both) */
	struct ibv_ah *ah;    /* to our own GID */
	struct buf *src, *dst; /* registered (buf_reg) */
};

static void ud_env_new(struct ud_env *u, size_t srcsz, size_t dstsz)
{
	u->a_scq = cq_new(256);
	u->a_rcq = cq_new(256);
	u->b_scq = cq_new(256);
	u->b_rcq = cq_new(256);
	u->a = ud_new(u->a_scq, u->a_rcq, QKEY);
	u->b = ud_new(u->b_scq, u->b_rcq, QKEY);
	u->ah = ah_new(&E.gid);
	u->src = buf_reg(srcsz, "send buffer", IBV_ACCESS_LOCAL_WRITE);
	u->dst = buf_reg(dstsz, "receive buffer", IBV_ACCESS_LOCAL_WRITE);
}

static void ud_env_free(struct ud_env *u)
{
	destroy_qp(u->a);
	destroy_qp(u->b);
	destroy_ah(u->ah);
	destroy_cq(u->a_scq);
	destroy_cq(u->a_rcq);
	destroy_cq(u->b_scq);
	destroy_cq(u->b_rcq);
	buf_free(u->src);
	buf_free(u->dst);
}

static void case_ud_send(void)
{
	struct ud_env u;
	ud_env_new(&u, 3 * 8192, 64 * 8192);
	struct ibv_wc wc;
	char what[200];
	static const uint32_t sizes[] = { 1, 2, 7, 64, 1000, 1500, 4095, 4096 };

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		for (int imm = 0; imm < 2; imm++) {
			uint32_t len = sizes[si];
			enum ibv_wr_opcode op = imm ? IBV_WR_SEND_WITH_IMM : IBV_WR_SEND;
			set_step("UD %s of %u bytes", imm ? "SEND_WITH_IMM" : "SEND", len);
			size_t roff = 3 + (si * 2 + imm) * 8192; /* unaligned */
			size_t soff = 1 + (size_t)imm * 8192 + si;
			struct ibv_sge rs = buf_sge(u.dst, roff, GRH + UD_MTU + 100);
			uint64_t rid = 0x1000 + si * 2 + imm;
			recv1(u.b, rid, &rs, 1, "UD receive");
			struct ibv_sge ss = buf_sge(u.src, soff, len);
			uint32_t immv = 0xC0DE0000u + (uint32_t)si;
			ud_send1(u.a, 0x2000 + si * 2 + imm, op, &ss, 1, u.ah, u.b->qp_num, QKEY, immv,
				 "UD send");
			expect_wc(u.a_scq, "sender completion", 0x2000 + si * 2 + imm, IBV_WC_SUCCESS,
				  IBV_WC_SEND, u.a, NULL);
			poll1(u.b_rcq, &wc, "receive completion");
			snprintf(what, sizeof(what), "receive of a %u-byte %s", len,
				 imm ? "SEND_WITH_IMM" : "SEND");
			check_ud_recv(&wc, what, rid, u.b, u.a, len, imm, immv, u.dst->p + roff);
			buf_accept(u.dst, roff, GRH); /* checked field by field above */
			buf_expect(u.dst, roff + GRH, u.src->p + soff, len);
			snprintf(what, sizeof(what),
				 "receive buffer after a %u-byte message (payload at offset 40 of the "
				 "receive, nothing after it)",
				 len);
			buf_check(u.dst, what);
		}
	}

	set_step("B answers A through ibv_create_ah_from_wc");
	{
		size_t roff_b = 23 * 8192 + 3, roff_a = 23 * 8192 + 4096 + 5;
		struct ibv_sge rs = buf_sge(u.dst, roff_b, GRH + 100);
		recv1(u.b, 0x1300, &rs, 1, "receive on B");
		struct ibv_sge ra = buf_sge(u.dst, roff_a, GRH + 100);
		recv1(u.a, 0x1301, &ra, 1, "receive on A");
		struct ibv_sge ss = buf_sge(u.src, 50, 90);
		ud_send1(u.a, 0x2300, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, QKEY, 0, "request");
		expect_wc(u.a_scq, "request sender completion", 0x2300, IBV_WC_SUCCESS, IBV_WC_SEND,
			  u.a, NULL);
		poll1(u.b_rcq, &wc, "request receive completion");
		check_ud_recv(&wc, "request", 0x1300, u.b, u.a, 90, 0, 0, u.dst->p + roff_b);
		errno = 0;
		struct ibv_ah *back =
			ibv_create_ah_from_wc(E.pd, &wc, (struct ibv_grh *)(u.dst->p + roff_b), 1);
		if (!back)
			fatal("ibv_create_ah_from_wc(request completion, its GRH, port 1) returned NULL, "
			      "errno %d (%s)",
			      errno, strerror(errno));
		struct ibv_sge sb = buf_sge(u.src, 500, 70);
		ud_send1(u.b, 0x2301, IBV_WR_SEND, &sb, 1, back, wc.src_qp, QKEY, 0, "reply");
		expect_wc(u.b_scq, "reply sender completion", 0x2301, IBV_WC_SUCCESS, IBV_WC_SEND,
			  u.b, NULL);
		poll1(u.a_rcq, &wc, "reply receive completion");
		check_ud_recv(&wc, "reply (AH from the request's completion)", 0x1301, u.a, u.b, 70, 0,
			      0, u.dst->p + roff_a);
		buf_accept(u.dst, roff_b, GRH);
		buf_accept(u.dst, roff_a, GRH);
		buf_expect(u.dst, roff_b + GRH, u.src->p + 50, 90);
		buf_expect(u.dst, roff_a + GRH, u.src->p + 500, 70);
		buf_check(u.dst, "receive buffers of request and reply");
		destroy_ah(back);
	}

	set_step("AH with hop limit 17 and traffic class 0x28: the IPv4 TTL and TOS in the GRH area");
	{
		struct ibv_ah_attr aa;
		ah_attr_to(&aa, &E.gid);
		aa.grh.hop_limit = 17;
		aa.grh.traffic_class = 0x28;
		errno = 0;
		struct ibv_ah *ah = ibv_create_ah(E.pd, &aa);
		if (!ah)
			fatal("ibv_create_ah(hop_limit 17, traffic_class 0x28) returned NULL, errno %d (%s)",
			      errno, strerror(errno));
		uint32_t len = 200;
		size_t roff = 16 * 8192 + 11;
		struct ibv_sge rs = buf_sge(u.dst, roff, GRH + 300);
		recv1(u.b, 0x1400, &rs, 1, "UD receive");
		struct ibv_sge ss = buf_sge(u.src, 300, len);
		ud_send1(u.a, 0x2400, IBV_WR_SEND, &ss, 1, ah, u.b->qp_num, QKEY, 0, "UD send");
		expect_wc(u.a_scq, "sender completion", 0x2400, IBV_WC_SUCCESS, IBV_WC_SEND, u.a,
			  NULL);
		poll1(u.b_rcq, &wc, "receive completion");
		check_ud_recv_ah(&wc, "receive of a SEND through an AH with hop limit 17, traffic "
				      "class 0x28",
				 0x1400, u.b, u.a, len, 0, 0, u.dst->p + roff, 17, 0x28);
		buf_accept(u.dst, roff, GRH);
		buf_expect(u.dst, roff + GRH, u.src->p + 300, len);
		buf_check(u.dst, "receive buffer");
		destroy_ah(ah);
	}

	set_step("receive with the GRH in its own 40-byte SGE");
	{
		uint32_t len = 3000;
		size_t goff = 20 * 8192 + 5, poff = 21 * 8192 + 9;
		struct ibv_sge rs[2] = { buf_sge(u.dst, goff, GRH), buf_sge(u.dst, poff, UD_MTU) };
		recv1(u.b, 0x1100, rs, 2, "receive with 2 SGEs");
		struct ibv_sge ss = buf_sge(u.src, 100, len);
		ud_send1(u.a, 0x2100, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, QKEY, 0, "UD send");
		expect_wc(u.a_scq, "sender completion", 0x2100, IBV_WC_SUCCESS, IBV_WC_SEND, u.a,
			  NULL);
		poll1(u.b_rcq, &wc, "receive completion");
		check_ud_recv(&wc, "receive into [GRH SGE, payload SGE]", 0x1100, u.b, u.a, len, 0, 0,
			      u.dst->p + goff);
		buf_accept(u.dst, goff, GRH);
		buf_expect(u.dst, poff, u.src->p + 100, len);
		buf_check(u.dst, "receive buffer (payload at the start of the second SGE)");
	}

	set_step("UD send to itself (A -> A)");
	{
		uint32_t len = 321;
		size_t roff = 22 * 8192 + 1;
		struct ibv_sge rs = buf_sge(u.dst, roff, GRH + len);
		recv1(u.a, 0x1200, &rs, 1, "receive on A");
		struct ibv_sge ss = buf_sge(u.src, 7, len);
		ud_send1(u.a, 0x2200, IBV_WR_SEND_WITH_IMM, &ss, 1, u.ah, u.a->qp_num, QKEY, 0x5E1F,
			 "UD send to self");
		expect_wc(u.a_scq, "sender completion", 0x2200, IBV_WC_SUCCESS, IBV_WC_SEND, u.a,
			  NULL);
		poll1(u.a_rcq, &wc, "receive completion on A");
		check_ud_recv(&wc, "receive of A's message to itself (receive exactly len + 40)",
			      0x1200, u.a, u.a, len, 1, 0x5E1F, u.dst->p + roff);
		buf_accept(u.dst, roff, GRH);
		buf_expect(u.dst, roff + GRH, u.src->p + 7, len);
		buf_check(u.dst, "receive buffer");
	}

	set_step("burst: 32 receives, 32 sends, then poll");
	{
		enum { N = 32 };
		int seen[N] = { 0 };
		for (int k = 0; k < N; k++) {
			struct ibv_sge rs = sge(u.dst->p + (size_t)(24 + k) * 8192, GRH + UD_MTU,
						u.dst->mr->lkey);
			recv1(u.b, 0x3000 + k, &rs, 1, "burst receive");
		}
		/* The messages overlap in the source: tag them all before posting. */
		for (int k = 0; k < N; k++) {
			uint32_t tag = 0xB0B00000u | (uint32_t)k;
			buf_set(u.src, 16384 + 64 * (size_t)k, &tag, 4);
		}
		for (int k = 0; k < N; k++) {
			uint32_t len = 8 + (uint32_t)(k * 127) % (UD_MTU - 8);
			uint8_t *m = u.src->p + 16384 + 64 * (size_t)k;
			struct ibv_sge ss = sge(m, len, u.src->mr->lkey);
			ud_send1(u.a, 0x4000 + k, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, QKEY, 0,
				 "burst send");
		}
		for (int k = 0; k < N; k++) {
			snprintf(what, sizeof(what), "burst sender completion %d (in order)", k);
			expect_wc(u.a_scq, what, 0x4000 + k, IBV_WC_SUCCESS, IBV_WC_SEND, u.a, NULL);
		}
		for (int n = 0; n < N; n++) {
			poll1(u.b_rcq, &wc, "burst receive completion");
			int64_t k = (int64_t)wc.wr_id - 0x3000;
			if (k < 0 || k >= N || seen[k] || wc.status != IBV_WC_SUCCESS) {
				char d[400];
				describe_wc(&wc, d, sizeof(d));
				fail("burst receive %d: expected a successful completion of a posted "
				     "receive, got %s",
				     n, d);
				continue;
			}
			seen[k] = 1;
			size_t roff = (size_t)(24 + k) * 8192;
			uint32_t tag;
			memcpy(&tag, u.dst->p + roff + GRH, 4);
			int m = (int)(tag & 0xffff);
			if ((tag & 0xffff0000u) != 0xB0B00000u || m >= N) {
				fail("burst receive %" PRId64 ": no message tag after the GRH (got 0x%08x)",
				     k, tag);
				continue;
			}
			uint32_t len = 8 + (uint32_t)(m * 127) % (UD_MTU - 8);
			snprintf(what, sizeof(what), "burst receive (slot %" PRId64 ", message %d)",
				 k, m);
			check_ud_recv(&wc, what, wc.wr_id, u.b, u.a, len, 0, 0, u.dst->p + roff);
			buf_accept(u.dst, roff, GRH);
			buf_expect(u.dst, roff + GRH, u.src->p + 16384 + 64 * (size_t)m, len);
		}
		buf_check(u.dst, "burst receive buffers");
	}
	expect_empty(u.b_rcq, 50, "receiver CQ at the end");
	expect_empty(u.a_rcq, 10, "A's receive CQ at the end");
	ud_env_free(&u);
}

static void case_ud_too_long(void)
{
	struct ud_env u;
	ud_env_new(&u, 16384, 16384);
	struct ibv_wc wc;

	set_step("UD SEND of %d bytes (MTU %d) to a receive of 8232 bytes", UD_MTU + 1, UD_MTU);
	struct ibv_sge rs = buf_sge(u.dst, 1, GRH + 8192);
	recv1(u.b, 0x1, &rs, 1, "large receive");
	struct ibv_sge ss = buf_sge(u.src, 0, UD_MTU + 1);
	ud_send1(u.a, 0x2, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, QKEY, 0, "UD send of MTU + 1");
	expect_wc(u.a_scq, "sender completion of a message larger than the MTU", 0x2,
		  IBV_WC_LOC_LEN_ERR, -1, u.a, NULL);
	expect_empty(u.b_rcq, DROP_WAIT_MS, "receiver (nothing is delivered)");
	buf_check(u.dst, "receive buffer untouched");
	/*
	 * A send completion error takes a UD QP out of RTS: to SQE per the IB
	 * specification (kernel rxe and others use ERR); either is accepted.
	 */
	enum ibv_qp_state st = qp_state(u.a);
	if (st != IBV_QPS_SQE && st != IBV_QPS_ERR)
		fail("UD sender after a LOC_LEN_ERR completion: expected IBV_QPS_SQE or IBV_QPS_ERR, "
		     "got IBV_QPS_%s (%d)",
		     state_str(st), (int)st);

	set_step("UD SEND of 100 bytes into a 100-byte receive (no room for the GRH)");
	/* The large receive is still posted on B: a fresh receiver. */
	struct ibv_cq *c_scq = cq_new(16), *c_rcq = cq_new(16);
	struct ibv_qp *c = ud_new(c_scq, c_rcq, QKEY);
	struct ibv_qp *a2 = ud_new(u.a_scq, u.a_rcq, QKEY);
	struct ibv_sge small = buf_sge(u.dst, 9000, 100);
	recv1(c, 0x3, &small, 1, "100-byte receive");
	ss = buf_sge(u.src, 5, 100);
	ud_send1(a2, 0x4, IBV_WR_SEND, &ss, 1, u.ah, c->qp_num, QKEY, 0, "UD send of 100 bytes");
	expect_wc(u.a_scq, "sender completion (UD: independent of the receiver)", 0x4,
		  IBV_WC_SUCCESS, IBV_WC_SEND, a2, NULL);
	poll1(c_rcq, &wc, "receiver completion");
	check_wc(&wc, "receive too small for GRH + payload", 0x3, IBV_WC_LOC_LEN_ERR, -1, c);

	destroy_qp(c);
	destroy_qp(a2);
	destroy_cq(c_scq);
	destroy_cq(c_rcq);
	ud_env_free(&u);
}

/* A send that must be dropped: the sender completes, nothing arrives. */
static void ud_expect_dropped(struct ibv_qp *sender, struct ibv_cq *scq, uint64_t wr_id,
			      struct ibv_cq *watch, const char *what)
{
	char w[300];
	snprintf(w, sizeof(w), "%s: sender completion (UD: success even if nothing is delivered)",
		 what);
	expect_wc(scq, w, wr_id, IBV_WC_SUCCESS, IBV_WC_SEND, sender, NULL);
	snprintf(w, sizeof(w), "%s: receiver (the datagram must be dropped)", what);
	expect_empty(watch, DROP_WAIT_MS, w);
}

/* Sends len bytes from src+soff and expects them in the receive at roff. */
static void ud_expect_delivered(struct ud_env *u, struct ibv_qp *sender, struct ibv_cq *scq,
				uint64_t wr_id, struct ibv_qp *rq, struct ibv_cq *rcq,
				uint64_t rwr_id, size_t roff, size_t soff, uint32_t len,
				const char *what)
{
	char w[300];
	struct ibv_wc wc;
	snprintf(w, sizeof(w), "%s: sender completion", what);
	expect_wc(scq, w, wr_id, IBV_WC_SUCCESS, IBV_WC_SEND, sender, NULL);
	snprintf(w, sizeof(w), "%s: receive completion", what);
	poll1(rcq, &wc, w);
	check_ud_recv(&wc, w, rwr_id, rq, sender, len, 0, 0, u->dst->p + roff);
	buf_accept(u->dst, roff, GRH);
	buf_expect(u->dst, roff + GRH, u->src->p + soff, len);
	snprintf(w, sizeof(w), "%s: receive buffer", what);
	buf_check(u->dst, w);
}

static void case_ud_qkey(void)
{
	struct ud_env u;
	ud_env_new(&u, 8192, 8192);
	struct ibv_sge rs, ss;

	set_step("wrong Q_Key (0x11111112 to a QP with 0x11111111)");
	rs = buf_sge(u.dst, 1, GRH + 200);
	recv1(u.b, 0x10, &rs, 1, "receive");
	ss = buf_sge(u.src, 0, 150);
	ud_send1(u.a, 0x20, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, QKEY + 1, 0, "send");
	ud_expect_dropped(u.a, u.a_scq, 0x20, u.b_rcq, "wrong Q_Key");
	buf_check(u.dst, "receive buffer untouched by the dropped datagram");

	set_step("right Q_Key: the receive still posted gets this message");
	ss = buf_sge(u.src, 1000, 120);
	ud_send1(u.a, 0x21, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, QKEY, 0, "send");
	ud_expect_delivered(&u, u.a, u.a_scq, 0x21, u.b, u.b_rcq, 0x10, 1, 1000, 120,
			    "right Q_Key after a wrong one");

	/* C: a UD QP whose own Q_Key differs from B's. */
	struct ibv_cq *c_scq = cq_new(16), *c_rcq = cq_new(16);
	struct ibv_qp *c = ud_new(c_scq, c_rcq, 0x22222222);

	set_step("remote_qkey 0x80000000 from C (own Q_Key 0x22222222 != B's)");
	rs = buf_sge(u.dst, 2001, GRH + 200);
	recv1(u.b, 0x11, &rs, 1, "receive");
	ss = buf_sge(u.src, 2000, 99);
	ud_send1(c, 0x30, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, 0x80000000u, 0, "send");
	ud_expect_dropped(c, c_scq, 0x30, u.b_rcq,
			  "high-bit remote_qkey from a QP whose own Q_Key is 0x22222222");
	set_step("remote_qkey 0x91111111 from C (high bit: C's own Q_Key, not the low bits)");
	ud_send1(c, 0x31, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, 0x91111111u, 0, "send");
	ud_expect_dropped(c, c_scq, 0x31, u.b_rcq,
			  "remote_qkey 0x91111111 from a QP whose own Q_Key is 0x22222222");
	buf_check(u.dst, "receive buffer untouched by the dropped datagrams");

	set_step("remote_qkey 0x80000000 from A (own Q_Key 0x11111111 = B's)");
	ss = buf_sge(u.src, 3000, 77);
	ud_send1(u.a, 0x22, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, 0x80000000u, 0, "send");
	ud_expect_delivered(&u, u.a, u.a_scq, 0x22, u.b, u.b_rcq, 0x11, 2001, 3000, 77,
			    "high-bit remote_qkey from a QP with the receiver's Q_Key");

	set_step("B's Q_Key changed to 0x33333333 (RTS->RTS with IBV_QP_QKEY)");
	struct ibv_qp_attr at;
	memset(&at, 0, sizeof(at));
	at.qp_state = IBV_QPS_RTS;
	at.qkey = 0x33333333;
	qp_must(ibv_modify_qp(u.b, &at, IBV_QP_STATE | IBV_QP_QKEY), u.b, "UD RTS->RTS (QKEY)");
	if (query_qp_attr(u.b, IBV_QP_QKEY, &at, "ibv_query_qp(IBV_QP_QKEY)"))
		EXPECT_EQ("ibv_query_qp qkey after the modify", at.qkey, 0x33333333);
	rs = buf_sge(u.dst, 4001, GRH + 200);
	recv1(u.b, 0x12, &rs, 1, "receive");
	ss = buf_sge(u.src, 4000, 55);
	ud_send1(u.a, 0x23, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, QKEY, 0, "send");
	ud_expect_dropped(u.a, u.a_scq, 0x23, u.b_rcq, "the old Q_Key after a change");
	ss = buf_sge(u.src, 5000, 66);
	ud_send1(u.a, 0x24, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, 0x33333333, 0, "send");
	ud_expect_delivered(&u, u.a, u.a_scq, 0x24, u.b, u.b_rcq, 0x12, 4001, 5000, 66,
			    "the new Q_Key");

	expect_empty(u.b_rcq, 50, "receiver CQ at the end");
	destroy_qp(c);
	destroy_cq(c_scq);
	destroy_cq(c_rcq);
	ud_env_free(&u);
}

static void case_ud_drop(void)
{
	struct ud_env u;
	ud_env_new(&u, 8192, 8192);
	struct ibv_sge rs, ss;

	set_step("unknown remote_qpn");
	rs = buf_sge(u.dst, 1, GRH + 500);
	recv1(u.b, 0x10, &rs, 1, "receive on B");
	struct ibv_sge ra = buf_sge(u.dst, 4001, GRH + 500);
	recv1(u.a, 0x90, &ra, 1, "receive on A");
	uint32_t unknown = (u.b->qp_num + 0x1234) & 0xffffff;
	if (unknown == u.a->qp_num || unknown == u.b->qp_num || unknown < 2)
		unknown = (unknown + 0x5000) & 0xffffff;
	ss = buf_sge(u.src, 0, 300);
	ud_send1(u.a, 0x20, IBV_WR_SEND, &ss, 1, u.ah, unknown, QKEY, 0, "send");
	ud_expect_dropped(u.a, u.a_scq, 0x20, u.b_rcq, "unknown remote_qpn");
	expect_empty(u.a_rcq, 10, "A's own receive CQ");

	set_step("AH to a GID that is not this host's");
	union ibv_gid other = E.gid;
	other.raw[15] ^= 0x5A;
	other.raw[14] ^= 0x01;
	struct ibv_ah *far = ah_new(&other);
	ud_send1(u.a, 0x21, IBV_WR_SEND, &ss, 1, far, u.b->qp_num, QKEY, 0, "send");
	ud_expect_dropped(u.a, u.a_scq, 0x21, u.b_rcq, "datagram addressed to another GID");
	destroy_ah(far);

	set_step("remote_qpn of an RC QP (in RTR, receive posted)");
	struct ibv_cq *d_cq = cq_new(16);
	struct qp_cfg cfg = CFG_DEFAULT;
	struct ibv_qp *d = qp_create(IBV_QPT_RC, d_cq, d_cq, NULL, &cfg);
	struct ibv_qp_attr at;
	qp_must(qp_to_init(d, ACC_ALL), d, "RC RESET->INIT");
	rtr_attr(&at, u.a->qp_num);
	qp_must(ibv_modify_qp(d, &at, RC_RTR_MASK), d, "RC INIT->RTR");
	struct ibv_sge rd = buf_sge(u.dst, 6001, GRH + 500);
	recv1(d, 0x40, &rd, 1, "receive on the RC QP");
	ud_send1(u.a, 0x22, IBV_WR_SEND, &ss, 1, u.ah, d->qp_num, QKEY, 0, "send");
	ud_expect_dropped(u.a, u.a_scq, 0x22, d_cq, "UD datagram to an RC QP");
	/* An RC QP has no Q_Key: 0 must not match either. */
	ud_send1(u.a, 0x26, IBV_WR_SEND, &ss, 1, u.ah, d->qp_num, 0, 0, "send");
	ud_expect_dropped(u.a, u.a_scq, 0x26, d_cq, "UD datagram with Q_Key 0 to an RC QP");
	expect_empty(u.b_rcq, 10, "B");

	set_step("UD QP still in INIT (receive posted)");
	struct ibv_cq *e_scq = cq_new(16), *e_rcq = cq_new(16);
	struct ibv_qp *e = qp_create(IBV_QPT_UD, e_scq, e_rcq, NULL, &cfg);
	ud_to_init(e, QKEY);
	struct ibv_sge re = buf_sge(u.dst, 2001, GRH + 500);
	recv1(e, 0x50, &re, 1, "receive on a UD QP in INIT");
	ud_send1(u.a, 0x23, IBV_WR_SEND, &ss, 1, u.ah, e->qp_num, QKEY, 0, "send");
	ud_expect_dropped(u.a, u.a_scq, 0x23, e_rcq, "datagram to a UD QP in INIT");
	buf_check(u.dst, "receive buffers untouched by all dropped datagrams");

	set_step("the same QP moved to RTR receives into the receive posted in INIT");
	ud_to_rtr(e);
	ss = buf_sge(u.src, 1000, 200);
	ud_send1(u.a, 0x24, IBV_WR_SEND, &ss, 1, u.ah, e->qp_num, QKEY, 0, "send");
	ud_expect_delivered(&u, u.a, u.a_scq, 0x24, e, e_rcq, 0x50, 2001, 1000, 200,
			    "datagram to a UD QP in RTR");

	set_step("B's receive is still there after all the drops");
	ss = buf_sge(u.src, 3000, 400);
	ud_send1(u.a, 0x25, IBV_WR_SEND, &ss, 1, u.ah, u.b->qp_num, QKEY, 0, "send");
	ud_expect_delivered(&u, u.a, u.a_scq, 0x25, u.b, u.b_rcq, 0x10, 1, 3000, 400,
			    "datagram to B");
	expect_empty(u.a_rcq, 10, "A's own receive CQ");
	expect_empty(d_cq, 10, "the RC QP's CQ");

	destroy_qp(d);
	destroy_qp(e);
	destroy_cq(d_cq);
	destroy_cq(e_scq);
	destroy_cq(e_rcq);
	ud_env_free(&u);
}

static void case_ud_bad_wr(void)
{
	struct ud_env u;
	ud_env_new(&u, 8192, 8192);
	struct ibv_sge ss = buf_sge(u.src, 0, 8);
	struct ibv_send_wr wr;
	static const enum ibv_wr_opcode bad_ops[] = {
		IBV_WR_RDMA_WRITE,	   IBV_WR_RDMA_WRITE_WITH_IMM,	 IBV_WR_RDMA_READ,
		IBV_WR_ATOMIC_CMP_AND_SWP, IBV_WR_ATOMIC_FETCH_AND_ADD,
	};
	expect_bad_opcodes(u.a, bad_ops, sizeof(bad_ops) / sizeof(bad_ops[0]), &ss, u.ah,
			   u.b->qp_num, 0, 0);

	set_step("UD SEND with a NULL ah");
	wr_init(&wr, 0x200, IBV_WR_SEND, &ss, 1, IBV_SEND_SIGNALED);
	wr_ud(&wr, NULL, u.b->qp_num, QKEY);
	expect_post_send_rc(u.a, &wr, &wr, EINVAL, "post_send of a UD SEND without an AH");
	expect_empty(u.a_scq, 100, "sender CQ: no completion for rejected WRs");
	expect_state(u.a, IBV_QPS_RTS, "UD QP after rejected posts");

	set_step("list [valid SEND, RDMA_WRITE]: bad_wr is the second, the first is delivered");
	struct ibv_sge rs = buf_sge(u.dst, 1, GRH + 100);
	recv1(u.b, 0x10, &rs, 1, "receive");
	struct ibv_send_wr two[2];
	struct ibv_sge s1 = buf_sge(u.src, 100, 60);
	wr_init(&two[0], 0x300, IBV_WR_SEND, &s1, 1, IBV_SEND_SIGNALED);
	wr_init(&two[1], 0x301, IBV_WR_RDMA_WRITE, &ss, 1, IBV_SEND_SIGNALED);
	for (int i = 0; i < 2; i++)
		wr_ud(&two[i], u.ah, u.b->qp_num, QKEY);
	two[0].next = &two[1];
	expect_post_send_rc(u.a, &two[0], &two[1], EINVAL, "post_send of [SEND, RDMA_WRITE]");
	ud_expect_delivered(&u, u.a, u.a_scq, 0x300, u.b, u.b_rcq, 0x10, 1, 100, 60,
			    "the valid first WR of the list");
	expect_empty(u.a_scq, 50, "sender CQ: no completion for the rejected second WR");
	ud_env_free(&u);
}

/* ------------------------------------------------------------------------ */
/* UC                                                                        */

static void case_uc_data(void)
{
	struct pair p;
	pair_new(&p, IBV_QPT_UC, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	expect_state(p.a, IBV_QPS_RTS, "UC A after connect");
	expect_state(p.b, IBV_QPS_RTS, "UC B after connect");
	size_t big = 1 << 20;
	struct buf *src = buf_reg(big + 8192, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(big + 8192, "receive buffer", IBV_ACCESS_LOCAL_WRITE);
	struct buf *tgt = buf_reg(big + 8192, "RDMA target",
				  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	static const uint32_t sizes[] = { 1, 333, 4096, 4097, 70000, 1 << 20 };
	char w[200];
	uint64_t id = 0x100;

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		uint32_t len = sizes[si];
		for (int imm = 0; imm < 2; imm++) {
			set_step("UC %s of %u bytes", imm ? "SEND_WITH_IMM" : "SEND", len);
			size_t soff = 1 + si * 3 + (size_t)imm, roff = 5 + si + (size_t)imm * 2;
			struct ibv_sge rs = buf_sge(dst, roff, len + 64);
			recv1(p.b, id, &rs, 1, "receive");
			struct ibv_sge ss = buf_sge(src, soff, len);
			uint32_t immv = 0xAB000000u | (uint32_t)id;
			send1(p.a, id + 1, imm ? IBV_WR_SEND_WITH_IMM : IBV_WR_SEND, &ss, 1, 0, 0, immv,
			      "send");
			expect_wc(p.a_scq, "sender completion", id + 1, IBV_WC_SUCCESS, IBV_WC_SEND,
				  p.a, NULL);
			snprintf(w, sizeof(w), "receive of a %u-byte UC %s", len,
				 imm ? "SEND_WITH_IMM" : "SEND");
			expect_recv(p.b_rcq, w, id, p.b, len, imm, immv, IBV_WC_RECV, NULL);
			buf_expect(dst, roff, src->p + soff, len);
			buf_check(dst, w);
			id += 2;
		}
	}

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		uint32_t len = sizes[si];
		set_step("UC RDMA_WRITE of %u bytes", len);
		size_t soff = 7 + si, toff = 3 + si * 5;
		struct ibv_sge ss = buf_sge(src, soff, len);
		send1(p.a, id, IBV_WR_RDMA_WRITE, &ss, 1, addr_of(tgt->p + toff), tgt->mr->rkey, 0,
		      "RDMA_WRITE");
		expect_wc(p.a_scq, "sender completion", id, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a,
			  NULL);
		buf_expect(tgt, toff, src->p + soff, len);
		snprintf(w, sizeof(w), "target after a %u-byte UC RDMA_WRITE", len);
		buf_check(tgt, w);
		expect_empty(p.b_rcq, 10, "receiver CQ (RDMA_WRITE consumes no receive)");
		id++;
	}

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		uint32_t len = sizes[si];
		set_step("UC RDMA_WRITE_WITH_IMM of %u bytes", len);
		size_t soff = 11 + si, toff = 9 + si * 3;
		struct buf *rb = buf_alloc(64, "receive buffer of RDMA_WRITE_WITH_IMM");
		struct ibv_mr *rmr = reg(rb->p, rb->n, IBV_ACCESS_LOCAL_WRITE);
		struct ibv_sge rs = sge(rb->p + 1, 32, rmr->lkey);
		recv1(p.b, id, &rs, 1, "receive");
		struct ibv_sge ss = buf_sge(src, soff, len);
		uint32_t immv = 0x1A000000u | (uint32_t)id;
		send1(p.a, id + 1, IBV_WR_RDMA_WRITE_WITH_IMM, &ss, 1, addr_of(tgt->p + toff),
		      tgt->mr->rkey, immv, "RDMA_WRITE_WITH_IMM");
		expect_wc(p.a_scq, "sender completion", id + 1, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE,
			  p.a, NULL);
		snprintf(w, sizeof(w), "receive completion of a %u-byte UC RDMA_WRITE_WITH_IMM", len);
		expect_recv(p.b_rcq, w, id, p.b, len, 1, immv, IBV_WC_RECV_RDMA_WITH_IMM, NULL);
		buf_expect(tgt, toff, src->p + soff, len);
		buf_check(tgt, w);
		buf_check(rb, "receive buffer untouched by RDMA_WRITE_WITH_IMM");
		dereg(rmr);
		buf_free(rb);
		id += 2;
	}
	expect_empty(p.b_rcq, 50, "receiver CQ at the end");
	expect_empty(p.a_rcq, 10, "A's receive CQ");

	pair_free(&p);
	buf_free(src);
	buf_free(dst);
	buf_free(tgt);
}

static void case_uc_bad_wr(void)
{
	struct buf *b = buf_reg(4096, "buffer", ACC_ALL);
	struct ibv_qp_attr at;

	set_step("UC INIT->RTR with the RC-only attributes (MAX_DEST_RD_ATOMIC, MIN_RNR_TIMER)");
	{
		struct ibv_cq *cq = cq_new(16);
		struct qp_cfg c = CFG_DEFAULT;
		struct ibv_qp *q = qp_create(IBV_QPT_UC, cq, cq, NULL, &c);
		qp_must(qp_to_init(q, IBV_ACCESS_REMOTE_WRITE), q, "UC RESET->INIT");
		rtr_attr(&at, 0x10);
		expect_modify_einval(q, &at, RC_RTR_MASK, IBV_QPS_INIT,
				     "UC INIT->RTR with the RC mask");
		rtr_attr(&at, 0x10);
		qp_must(ibv_modify_qp(q, &at, UC_RTR_MASK), q, "UC INIT->RTR");
		rts_attr(&at);
		expect_modify_einval(q, &at, RC_RTS_MASK, IBV_QPS_RTR,
				     "UC RTR->RTS with the RC mask (TIMEOUT, RETRY_CNT, RNR_RETRY, "
				     "MAX_QP_RD_ATOMIC)");
		destroy_qp(q);
		destroy_cq(cq);
	}

	struct pair p;
	pair_new(&p, IBV_QPT_UC, ACC_RW);
	struct ibv_sge a8 = buf_sge(b, 8, 8);
	static const enum ibv_wr_opcode bad_ops[] = {
		IBV_WR_RDMA_READ, IBV_WR_ATOMIC_CMP_AND_SWP, IBV_WR_ATOMIC_FETCH_AND_ADD,
	};
	expect_bad_opcodes(p.a, bad_ops, sizeof(bad_ops) / sizeof(bad_ops[0]), &a8, NULL, 0,
			   addr_of(b->p + 1024), b->mr->rkey);
	expect_empty(p.a_scq, 100, "sender CQ: no completion for rejected WRs");
	buf_check(b, "buffer untouched by rejected WRs");
	expect_state(p.a, IBV_QPS_RTS, "UC QP after rejected posts");

	set_step("a valid SEND after the rejected WRs");
	struct ibv_sge rs = buf_sge(b, 2001, 100);
	recv1(p.b, 0x10, &rs, 1, "receive");
	struct ibv_sge ss = buf_sge(b, 3001, 50);
	send1(p.a, 0x11, IBV_WR_SEND, &ss, 1, 0, 0, 0, "send");
	expect_wc(p.a_scq, "sender completion", 0x11, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receive", 0x10, p.b, 50, 0, 0, IBV_WC_RECV, NULL);
	buf_expect(b, 2001, b->p + 3001, 50);
	buf_check(b, "buffer");

	pair_free(&p);
	buf_free(b);
}

static void case_uc_drop(void)
{
	struct pair p;
	pair_new(&p, IBV_QPT_UC, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	struct buf *src = buf_reg(16384, "source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst = buf_reg(16384, "receive buffer", IBV_ACCESS_LOCAL_WRITE);
	struct buf *tgt = buf_reg(4096, "RDMA target",
				  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	struct ibv_sge ss, rs;

	set_step("UC SEND with no receive posted");
	ss = buf_sge(src, 1, 3000);
	send1(p.a, 0x20, IBV_WR_SEND, &ss, 1, 0, 0, 0, "SEND without a receive");
	expect_wc(p.a_scq, "sender completion of a dropped UC SEND (no ACK: success)", 0x20,
		  IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_empty(p.b_rcq, 50, "receiver CQ (nothing to receive into)");

	set_step("UC RDMA_WRITE_WITH_IMM with no receive posted");
	ss = buf_sge(src, 5000, 500);
	send1(p.a, 0x21, IBV_WR_RDMA_WRITE_WITH_IMM, &ss, 1, addr_of(tgt->p + 16), tgt->mr->rkey,
	      0x77, "RDMA_WRITE_WITH_IMM without a receive");
	expect_wc(p.a_scq, "sender completion of a dropped UC RDMA_WRITE_WITH_IMM", 0x21,
		  IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a, NULL);
	/* Whether the data of a dropped write-with-immediate lands is not specified. */
	buf_accept(tgt, 16, 500);

	set_step("a receive posted afterwards gets the next SEND, not the dropped ones");
	rs = buf_sge(dst, 3, 8192);
	recv1(p.b, 0x30, &rs, 1, "receive");
	expect_empty(p.b_rcq, DROP_WAIT_MS,
		     "receiver after posting a receive (the dropped messages must not arrive late)");
	ss = buf_sge(src, 9000, 1234);
	send1(p.a, 0x22, IBV_WR_SEND, &ss, 1, 0, 0, 0, "SEND");
	expect_wc(p.a_scq, "sender completion", 0x22, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receive of the SEND posted after the receive", 0x30, p.b, 1234, 0, 0,
		    IBV_WC_RECV, NULL);
	buf_expect(dst, 3, src->p + 9000, 1234);
	buf_check(dst, "receive buffer (only the last SEND's data)");

	set_step("UC RDMA_WRITE with an rkey the responder does not know");
	struct ibv_mr *mrs[3] = { src->mr, dst->mr, tgt->mr };
	uint32_t badkey = unused_key(mrs, 3);
	ss = buf_sge(src, 100, 200);
	send1(p.a, 0x23, IBV_WR_RDMA_WRITE, &ss, 1, addr_of(tgt->p + 1000), badkey, 0,
	      "RDMA_WRITE with a bad rkey");
	expect_wc(p.a_scq, "sender completion (UC: no NAK, success)", 0x23, IBV_WC_SUCCESS,
		  IBV_WC_RDMA_WRITE, p.a, NULL);
	set_step("UC RDMA_WRITE beyond the end of the target MR");
	send1(p.a, 0x24, IBV_WR_RDMA_WRITE, &ss, 1, addr_of(tgt->p + 4000), tgt->mr->rkey, 0,
	      "RDMA_WRITE out of bounds");
	expect_wc(p.a_scq, "sender completion (UC: no NAK, success)", 0x24, IBV_WC_SUCCESS,
		  IBV_WC_RDMA_WRITE, p.a, NULL);
	buf_check(tgt, "RDMA target untouched by the dropped writes");
	expect_empty(p.b_rcq, 50, "receiver CQ (a dropped RDMA_WRITE completes nothing)");
	expect_state(p.a, IBV_QPS_RTS, "UC requester after dropped writes");
	expect_state(p.b, IBV_QPS_RTS, "UC responder after dropped writes (silently dropped)");

	set_step("the connection still works after the dropped writes");
	ss = buf_sge(src, 200, 300);
	send1(p.a, 0x25, IBV_WR_RDMA_WRITE, &ss, 1, addr_of(tgt->p + 2000), tgt->mr->rkey, 0,
	      "RDMA_WRITE");
	expect_wc(p.a_scq, "sender completion", 0x25, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, p.a, NULL);
	buf_expect(tgt, 2000, src->p + 200, 300);
	buf_check(tgt, "RDMA target");
	rs = buf_sge(dst, 10000, 100);
	recv1(p.b, 0x31, &rs, 1, "receive");
	ss = buf_sge(src, 300, 100);
	send1(p.a, 0x26, IBV_WR_SEND, &ss, 1, 0, 0, 0, "SEND");
	expect_wc(p.a_scq, "sender completion", 0x26, IBV_WC_SUCCESS, IBV_WC_SEND, p.a, NULL);
	expect_recv(p.b_rcq, "receive", 0x31, p.b, 100, 0, 0, IBV_WC_RECV, NULL);
	buf_expect(dst, 10000, src->p + 300, 100);
	buf_check(dst, "receive buffer");

	pair_free(&p);
	buf_free(src);
	buf_free(dst);
	buf_free(tgt);
}

/* ------------------------------------------------------------------------ */
/* Atomics under contention                                                  */

#define AT_QPS 4
#define AT_FAA_N 500
#define AT_DEPTH 64
#define AT_SIG_EVERY 16
#define AT_BATCH 16
/*
 * No QP may post more than AT_WINDOW operations beyond the slowest QP's
 * completed ones: the QPs advance together, so their atomics interleave at
 * the counter whatever the scheduling (a QP cannot finish before another
 * one started).
 */
#define AT_WINDOW 48
#define AT_CAS_K 100

/* AT_QPS RC pairs A[i] -> B[i]; every A[i] completes on one send CQ. */
struct at_env {
	struct ibv_cq *scq, *other;
	struct ibv_qp *a[AT_QPS], *b[AT_QPS];
	struct buf *target; /* registered (buf_reg) */
	uint64_t *counter;
};

static void at_env_new(struct at_env *t, int sig_all)
{
	struct qp_cfg c = CFG_DEFAULT;
	c.send_wr = AT_DEPTH;
	c.sig_all = sig_all;
	t->scq = cq_new(1024);
	t->other = cq_new(1024);
	for (int i = 0; i < AT_QPS; i++) {
		t->a[i] = qp_create(IBV_QPT_RC, t->scq, t->other, NULL, &c);
		t->b[i] = qp_create(IBV_QPT_RC, t->other, t->other, NULL, &c);
	}
	for (int i = 0; i < AT_QPS; i++) {
		rc_connect_both(t->a[i], t->b[i]);
	}
	t->target = buf_reg(4096, "atomic target", ACC_ALL);
	t->counter = (uint64_t *)(void *)(t->target->p + 64);
	if (((uintptr_t)t->counter & 7) != 0)
		fatal("test bug: counter not 8-byte aligned");
	uint64_t zero = 0;
	buf_set(t->target, 64, &zero, 8);
}

static void at_env_free(struct at_env *t)
{
	for (int i = 0; i < AT_QPS; i++) {
		destroy_qp(t->a[i]);
		destroy_qp(t->b[i]);
	}
	destroy_cq(t->scq);
	destroy_cq(t->other);
	buf_free(t->target);
}

static int faa_signaled(int j)
{
	return j % AT_SIG_EVERY == AT_SIG_EVERY - 1 || j == AT_FAA_N - 1;
}

static void case_atomic_faa_contention(void)
{
	struct at_env t;
	at_env_new(&t, 0);
	size_t nres = (size_t)AT_QPS * AT_FAA_N;
	struct buf *res = buf_reg(nres * 8 + 64, "FETCH_AND_ADD results", IBV_ACCESS_LOCAL_WRITE);
	/* Result of op j of QP i: res + 8 + (i*N + j)*8. */
#define RES_AT(i, j) (res->p + 8 + ((size_t)(i) * AT_FAA_N + (size_t)(j)) * 8)
	int posted[AT_QPS] = { 0 }, done[AT_QPS] = { 0 };
	static struct ibv_send_wr wrs[AT_BATCH];
	static struct ibv_sge sges[AT_BATCH];

	set_step("%d QPs x %d FETCH_AND_ADD(1) on one counter, signaled every %d, in lockstep "
		 "(window %d)",
		 AT_QPS, AT_FAA_N, AT_SIG_EVERY, AT_WINDOW);
	double last_progress = now_s();
	for (;;) {
		int all = 1, min_done = AT_FAA_N;
		for (int i = 0; i < AT_QPS; i++)
			min_done = done[i] < min_done ? done[i] : min_done;
		for (int i = 0; i < AT_QPS; i++) {
			if (done[i] < AT_FAA_N)
				all = 0;
			int n = 0;
			while (n < AT_BATCH && posted[i] + n < AT_FAA_N &&
			       posted[i] + n - done[i] < AT_DEPTH &&
			       posted[i] + n < min_done + AT_WINDOW) {
				int j = posted[i] + n;
				sges[n] = sge(RES_AT(i, j), 8, res->mr->lkey);
				wr_init(&wrs[n], ((uint64_t)i << 32) | (uint64_t)j,
					IBV_WR_ATOMIC_FETCH_AND_ADD, &sges[n], 1,
					faa_signaled(j) ? IBV_SEND_SIGNALED : 0);
				wr_remote(&wrs[n], addr_of(t.counter), t.target->mr->rkey, 1, 0);
				wrs[n].next = NULL;
				if (n > 0)
					wrs[n - 1].next = &wrs[n];
				n++;
			}
			if (n > 0) {
				struct ibv_send_wr *bad = NULL;
				int rc = ibv_post_send(t.a[i], &wrs[0], &bad);
				if (rc)
					fatal("ibv_post_send of %d FETCH_AND_ADDs on A%d (posted %d, "
					      "completed %d) returned %d (%s)",
					      n, i, posted[i], done[i], rc, strerror(rc));
				posted[i] += n;
			}
		}
		if (all)
			break;
		struct ibv_wc wcs[32];
		int got = ibv_poll_cq(t.scq, 32, wcs);
		if (got < 0)
			fatal("ibv_poll_cq returned %d", got);
		for (int k = 0; k < got; k++) {
			char d[400];
			describe_wc(&wcs[k], d, sizeof(d));
			int i = qp_index(t.a, AT_QPS, wcs[k].qp_num);
			if (i < 0)
				fatal("completion with a qp_num of none of the A QPs: %s", d);
			int j = done[i];
			while (j < AT_FAA_N && !faa_signaled(j))
				j++;
			if (!check_wc(&wcs[k], "FETCH_AND_ADD completion (the next signaled WR of its QP)",
				      ((uint64_t)i << 32) | (uint64_t)j, IBV_WC_SUCCESS,
				      IBV_WC_FETCH_ADD, t.a[i]))
				fatal("cannot continue after a wrong completion");
			if (wcs[k].byte_len != 8)
				fail("FETCH_AND_ADD completion: wc.byte_len expected 8, got %u",
				     wcs[k].byte_len);
			done[i] = j + 1;
		}
		if (got > 0)
			last_progress = now_s();
		else if (now_s() - last_progress > POLL_TIMEOUT_S)
			fatal("no FETCH_AND_ADD completion for %.0f s; completed per QP: %d %d %d %d of "
			      "%d",
			      POLL_TIMEOUT_S, done[0], done[1], done[2], done[3], AT_FAA_N);
		else if (got == 0)
			sched_yield();
	}
	expect_empty(t.scq, 50, "send CQ after every signaled completion");

	set_step("final counter and returned values");
	uint64_t final = *(volatile uint64_t *)t.counter;
	EXPECT_EQ("counter after all FETCH_AND_ADDs (4 * N)", final, (uint64_t)nres);
	buf_expect(t.target, 64, &final, 8);
	buf_check(t.target, "atomic target (only the counter changed)");
	uint8_t *seen = calloc(nres, 1);
	int *owner = calloc(nres, sizeof(int));
	if (!seen || !owner)
		fatal("calloc failed");
	int bad_values = 0;
	for (int i = 0; i < AT_QPS; i++) {
		uint64_t prev = 0;
		for (int j = 0; j < AT_FAA_N; j++) {
			uint64_t v;
			memcpy(&v, RES_AT(i, j), 8);
			if (v >= nres || seen[v]) {
				if (bad_values++ < 10)
					fail("FETCH_AND_ADD #%d of A%d returned %" PRIu64
					     ": expected a value in 0..%zu not returned to any other "
					     "FETCH_AND_ADD (%s)",
					     j, i, v, nres - 1,
					     v >= nres ? "out of range" : "duplicate");
				continue;
			}
			seen[v] = 1;
			owner[v] = i;
			if (j > 0 && v <= prev && bad_values++ < 10)
				fail("FETCH_AND_ADD #%d of A%d returned %" PRIu64 " after #%d returned %" PRIu64
				     ": expected increasing values (one QP's atomics execute in order)",
				     j, i, v, j - 1, prev);
			prev = v;
		}
	}
	if (bad_values)
		fail("%d returned values were wrong in total", bad_values);
	size_t missing = 0;
	for (size_t v = 0; v < nres; v++)
		missing += !seen[v];
	if (missing)
		fail("returned old values: expected exactly {0..%zu}, %zu values missing", nres - 1,
		     missing);
	int switches = 0;
	for (size_t v = 1; v < nres; v++)
		switches += seen[v] && seen[v - 1] && owner[v] != owner[v - 1];
	printf("info: %d changes of QP along the counter's history (%d QPs)\n", switches, AT_QPS);
	if (!bad_values && switches <= AT_QPS - 1)
		fail("test validity: the QPs' atomics did not interleave (%d changes of QP along the "
		     "counter's history); expected contention",
		     switches);
	buf_accept(res, 8, nres * 8);
	buf_check(res, "results buffer outside the result slots");
#undef RES_AT
	free(seen);
	free(owner);
	buf_free(res);
	at_env_free(&t);
}

static void case_atomic_cas_contention(void)
{
	struct at_env t;
	at_env_new(&t, 1);
	struct buf *res = buf_reg(AT_QPS * 8 + 16, "CMP_AND_SWP results", IBV_ACCESS_LOCAL_WRITE);
	struct ibv_send_wr wr;
	struct ibv_sge s;
	struct ibv_wc wc;

	set_step("CMP_AND_SWP with a compare value that does not match");
	uint64_t seven = 7;
	buf_set(t.target, 64, &seven, 8);
	s = buf_sge(res, 8, 8);
	wr_init(&wr, 0x1, IBV_WR_ATOMIC_CMP_AND_SWP, &s, 1, IBV_SEND_SIGNALED);
	wr_remote(&wr, addr_of(t.counter), t.target->mr->rkey, 5, 99);
	post_send_ok(t.a[0], &wr, "CMP_AND_SWP(5 -> 99)");
	expect_wc(t.scq, "CMP_AND_SWP(5 -> 99) on 7", 0x1, IBV_WC_SUCCESS, IBV_WC_COMP_SWAP, t.a[0],
		  NULL);
	buf_expect(res, 8, &seven, 8);
	buf_check(res, "result of a failed CMP_AND_SWP (the current value, 7)");
	buf_check(t.target, "target after a failed CMP_AND_SWP (unchanged, 7)");
	uint64_t zero = 0;
	buf_set(t.target, 64, &zero, 8);

	set_step("%d QPs increment one counter by CMP_AND_SWP until each succeeded %d times",
		 AT_QPS, AT_CAS_K);
	uint64_t guess[AT_QPS] = { 0 }, seq[AT_QPS] = { 0 };
	int succ[AT_QPS] = { 0 }, fails[AT_QPS] = { 0 }, busy[AT_QPS] = { 0 };
	size_t total = (size_t)AT_QPS * AT_CAS_K;
	uint8_t *seen = calloc(total, 1);
	if (!seen)
		fatal("calloc failed");
	int bad_values = 0, remaining = AT_QPS;
	while (remaining > 0) {
		/* Post every idle QP before polling: all race for the same value. */
		for (int i = 0; i < AT_QPS; i++) {
			if (busy[i] || succ[i] >= AT_CAS_K)
				continue;
			s = buf_sge(res, 8 + 8 * i, 8);
			wr_init(&wr, ((uint64_t)i << 32) | seq[i], IBV_WR_ATOMIC_CMP_AND_SWP, &s, 1,
				IBV_SEND_SIGNALED);
			wr_remote(&wr, addr_of(t.counter), t.target->mr->rkey, guess[i], guess[i] + 1);
			post_send_ok(t.a[i], &wr, "CMP_AND_SWP");
			busy[i] = 1;
		}
		poll1(t.scq, &wc, "CMP_AND_SWP completion");
		int i = qp_index(t.a, AT_QPS, wc.qp_num);
		if (i < 0 || !busy[i]) {
			char d[400];
			describe_wc(&wc, d, sizeof(d));
			fatal("unexpected completion: %s", d);
		}
		if (!check_wc(&wc, "CMP_AND_SWP completion", ((uint64_t)i << 32) | seq[i],
			      IBV_WC_SUCCESS, IBV_WC_COMP_SWAP, t.a[i]))
			fatal("cannot continue after a wrong completion");
		busy[i] = 0;
		seq[i]++;
		uint64_t old;
		memcpy(&old, res->p + 8 + 8 * i, 8);
		if (old == guess[i]) {
			if (old >= total || seen[old]) {
				if (bad_values++ < 10)
					fail("successful CMP_AND_SWP(%" PRIu64 " -> %" PRIu64
					     ") of A%d: the value %" PRIu64 " was %s",
					     guess[i], guess[i] + 1, i, old,
					     old >= total ? "beyond the number of increments"
							  : "already swapped by another CMP_AND_SWP");
			} else {
				seen[old] = 1;
			}
			succ[i]++;
			guess[i] = old + 1;
			if (succ[i] == AT_CAS_K)
				remaining--;
		} else {
			fails[i]++;
			if (old > total && bad_values++ < 10)
				fail("failed CMP_AND_SWP of A%d returned %" PRIu64
				     ": expected the current counter (at most %zu)",
				     i, old, total);
			guess[i] = old;
		}
	}
	uint64_t final = *(volatile uint64_t *)t.counter;
	int nfails = 0;
	for (int i = 0; i < AT_QPS; i++)
		nfails += fails[i];
	printf("info: %zu successful and %d failed CMP_AND_SWPs (per QP: %d %d %d %d failed)\n",
	       total, nfails, fails[0], fails[1], fails[2], fails[3]);
	set_step("final counter");
	EXPECT_EQ("counter after the CMP_AND_SWP increments (total successes)", final, total);
	size_t missing = 0;
	for (size_t v = 0; v < total; v++)
		missing += !seen[v];
	if (missing)
		fail("values swapped by successful CMP_AND_SWPs: expected exactly {0..%zu}, %zu missing",
		     total - 1, missing);
	if (nfails < AT_QPS - 1)
		fail("expected at least %d failed CMP_AND_SWPs (the first round races %d QPs for the "
		     "value 0), got %d",
		     AT_QPS - 1, AT_QPS, nfails);
	buf_expect(t.target, 64, &final, 8);
	buf_check(t.target, "atomic target (only the counter changed)");
	buf_accept(res, 8, AT_QPS * 8);
	buf_check(res, "results buffer outside the result slots");
	free(seen);
	buf_free(res);
	at_env_free(&t);
}

/*
 * One atomic on a fresh RC pair whose responder grants access_b; expects
 * the requester completion status want (or alt, if >= 0) and the requester
 * QP in ERR. The target must stay untouched.
 */
static void atomic_error(const char *what, enum ibv_wr_opcode op, struct buf *tgt,
			 size_t off, int mr_access, int access_b, enum ibv_wc_status want,
			 int alt)
{
	struct pair p;
	set_step("%s", what);
	pair_new(&p, IBV_QPT_RC, access_b);
	struct ibv_mr *tmr = reg(tgt->p, tgt->n, mr_access);
	struct buf *loc = buf_reg(64, "local result", IBV_ACCESS_LOCAL_WRITE);
	struct ibv_sge s = buf_sge(loc, 8, 8);
	struct ibv_send_wr wr;
	uint64_t cur;
	memcpy(&cur, tgt->p + off, 8);
	wr_init(&wr, 0xE1, op, &s, 1, IBV_SEND_SIGNALED);
	wr_remote(&wr, addr_of(tgt->p + off), tmr->rkey,
		  op == IBV_WR_ATOMIC_CMP_AND_SWP ? cur : 1, 0x1234);
	post_send_ok(p.a, &wr, what);
	expect_wc_alt(p.a_scq, "requester completion", 0xE1, want, alt, p.a);
	buf_check(tgt, "atomic target untouched");
	buf_accept(loc, 8, 8); /* undefined after an error */
	buf_check(loc, "local buffer outside the result");
	expect_state(p.a, IBV_QPS_ERR, "RC requester after a remote error");
	expect_empty(p.b_rcq, 50, "responder receive CQ");
	pair_free(&p);
	buf_free(loc);
	dereg(tmr);
}

static void case_atomic_misaligned(void)
{
	struct buf *tgt = buf_alloc(4096, "atomic target");
	if (((uintptr_t)tgt->p & 7) != 0)
		fatal("test bug: buffer not 8-byte aligned");
	atomic_error("FETCH_AND_ADD at an address 4 bytes off 8-byte alignment",
		     IBV_WR_ATOMIC_FETCH_AND_ADD, tgt, 68, ACC_ALL, ACC_ALL, IBV_WC_REM_INV_REQ_ERR,
		     -1);
	atomic_error("CMP_AND_SWP at an address 1 byte off 8-byte alignment",
		     IBV_WR_ATOMIC_CMP_AND_SWP, tgt, 129, ACC_ALL, ACC_ALL, IBV_WC_REM_INV_REQ_ERR,
		     -1);
	buf_free(tgt);
}

static void case_atomic_no_access(void)
{
	struct buf *tgt = buf_alloc(4096, "atomic target");
	atomic_error("FETCH_AND_ADD on an MR without REMOTE_ATOMIC", IBV_WR_ATOMIC_FETCH_AND_ADD,
		     tgt, 64, ACC_RW, ACC_ALL, IBV_WC_REM_ACCESS_ERR, -1);
	atomic_error("CMP_AND_SWP on an MR without REMOTE_ATOMIC", IBV_WR_ATOMIC_CMP_AND_SWP, tgt,
		     128, ACC_RW, ACC_ALL, IBV_WC_REM_ACCESS_ERR, -1);
	/*
	 * The responder QP's access flags gate atomics too. Mellanox HCAs report
	 * REM_ACCESS_ERR, kernel rxe REM_INV_REQ_ERR; either is accepted.
	 */
	atomic_error("FETCH_AND_ADD to a responder QP without REMOTE_ATOMIC in qp_access_flags",
		     IBV_WR_ATOMIC_FETCH_AND_ADD, tgt, 64, ACC_ALL, ACC_RW, IBV_WC_REM_ACCESS_ERR,
		     IBV_WC_REM_INV_REQ_ERR);
	buf_free(tgt);
}

/* ------------------------------------------------------------------------ */
/* Fairness between QPs                                                      */

/*
 * QP0 streams FAIR_WRITE-byte RDMA_WRITEs, FAIR_DEPTH in flight and refilled
 * as they complete; after 2 * FAIR_DEPTH completions QP1, another connected
 * RC pair that has written once before, posts one small RDMA_WRITE. QP0 and
 * QP1 share their send CQ, so the order of its completions is the order in
 * which the device completed the two QPs' writes.
 *
 * A device that serves one QP's send queue until it is empty (starvation)
 * completes QP1's write only once QP0's queue runs dry: never while QP0
 * keeps streaming, and only after every write QP0 had queued. A fair one
 * completes it after a few of QP0's writes. The checks count completions
 * (order), never time: machines are shared and noisy.
 */
#define FAIR_WRITE (1u << 20)
#define FAIR_DEPTH 64
#define FAIR_SMALL 64
/* QP0 keeps streaming until this many of its writes completed after QP1's. */
#define FAIR_AFTER 8
/* ... or until this many completed after QP1 posted: QP1 was starved. */
#define FAIR_STARVED (4 * FAIR_DEPTH)
#define FAIR_QP1_WRID 0xF1F1F1F1ULL

struct fair {
	struct ibv_cq *scq;  /* send CQ of A0 and A1 */
	struct ibv_cq *rcq;  /* every other queue */
	struct ibv_qp *a0, *b0, *a1, *b1;
	struct buf *src0, *dst0, *src1, *dst1; /* registered (buf_reg) */
	uint64_t posted, done;  /* QP0 writes; wr_id = sequence number */
	int qp1;                /* QP1's completion was polled */
	uint64_t qp1_at;        /* QP0 completions polled before it */
};

/* Posts QP0 writes until FAIR_DEPTH are outstanding (one chained post). */
static void fair_refill(struct fair *f)
{
	static struct ibv_send_wr wrs[FAIR_DEPTH];
	static struct ibv_sge sges[FAIR_DEPTH];
	int n = 0;
	while (f->posted + n - f->done < FAIR_DEPTH) {
		uint64_t seq = f->posted + n;
		sges[n] = buf_sge(f->src0, 0, FAIR_WRITE);
		wr_init(&wrs[n], seq, IBV_WR_RDMA_WRITE, &sges[n], 1, IBV_SEND_SIGNALED);
		wr_remote(&wrs[n], addr_of(f->dst0->p), f->dst0->mr->rkey, 0, 0);
		if (n > 0)
			wrs[n - 1].next = &wrs[n];
		n++;
	}
	if (n == 0)
		return;
	struct ibv_send_wr *bad = NULL;
	int rc = ibv_post_send(f->a0, &wrs[0], &bad);
	if (rc)
		fatal("ibv_post_send of %d RDMA_WRITEs on QP0 (posted %" PRIu64 ", completed %" PRIu64
		      ") returned %d (%s)",
		      n, f->posted, f->done, rc, strerror(rc));
	f->posted += n;
}

/*
 * Polls the shared send CQ once; QP0's completions must come in order.
 * Returns the number of completions polled.
 */
static int fair_poll(struct fair *f)
{
	struct ibv_wc wcs[32];
	int got = ibv_poll_cq(f->scq, 32, wcs);
	if (got < 0)
		fatal("ibv_poll_cq returned %d", got);
	for (int k = 0; k < got; k++) {
		const struct ibv_wc *wc = &wcs[k];
		if (wc->qp_num == f->a1->qp_num) {
			if (f->qp1)
				fatal("a second completion for QP1's single write");
			if (!check_wc(wc, "QP1's small RDMA_WRITE", FAIR_QP1_WRID, IBV_WC_SUCCESS,
				      IBV_WC_RDMA_WRITE, f->a1))
				fatal("cannot continue after a wrong completion");
			f->qp1 = 1;
			f->qp1_at = f->done;
			continue;
		}
		if (!check_wc(wc, "QP0's RDMA_WRITE (the next one posted)", f->done, IBV_WC_SUCCESS,
			      IBV_WC_RDMA_WRITE, f->a0))
			fatal("cannot continue after a wrong completion");
		if (f->done >= f->posted)
			fatal("completion for a QP0 write that was never posted");
		f->done++;
	}
	return got;
}

static void fair_idle(unsigned *spins)
{
	if (++*spins > 200)
		usleep(50);
	else
		sched_yield();
}

/*
 * One huge work request does not hold the device: QP0 posts a single
 * HUGE_WRITE-byte RDMA_WRITE; once its first bytes have landed (the device
 * is moving it), QP1 posts a small one. Their shared send CQ must report
 * QP1's write first: a device that moved QP0's message in one go could take
 * QP1's request only after finishing it. Then QP0's data is checked whole.
 */
#define HUGE_WRITE (128u << 20)

static void case_huge_write_yields(void)
{
	struct ibv_cq *scq = cq_new(16), *rcq = cq_new(16);
	struct ibv_qp *a0 = rc_qp_new(scq, rcq);
	struct ibv_qp *b0 = rc_qp_new(rcq, rcq);
	struct ibv_qp *a1 = rc_qp_new(scq, rcq);
	struct ibv_qp *b1 = rc_qp_new(rcq, rcq);
	rc_connect_both(a0, b0);
	rc_connect_both(a1, b1);
	struct buf *src0 = buf_reg(HUGE_WRITE, "QP0 source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst0 = buf_reg(HUGE_WRITE, "QP0 target", ACC_RW);
	struct buf *src1 = buf_reg(FAIR_SMALL, "QP1 source", IBV_ACCESS_LOCAL_WRITE);
	struct buf *dst1 = buf_reg(4096, "QP1 target", ACC_RW);
	struct ibv_sge s0 = buf_sge(src0, 0, HUGE_WRITE);
	struct ibv_sge s1 = buf_sge(src1, 0, FAIR_SMALL);

	/* Both QPs have written once: what follows is not first use. */
	set_step("a small RDMA_WRITE on each QP, alone");
	send1(a0, 1, IBV_WR_RDMA_WRITE, &s1, 1, addr_of(dst0->p), dst0->mr->rkey, 0, "QP0 warm-up");
	expect_wc(scq, "QP0 warm-up", 1, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, a0, NULL);
	buf_expect(dst0, 0, src1->p, FAIR_SMALL);
	send1(a1, 2, IBV_WR_RDMA_WRITE, &s1, 1, addr_of(dst1->p), dst1->mr->rkey, 0, "QP1 warm-up");
	expect_wc(scq, "QP1 warm-up", 2, IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, a1, NULL);
	buf_expect(dst1, 0, src1->p, FAIR_SMALL);

	set_step("QP0 posts one %u MiB RDMA_WRITE; once it started, QP1 posts a %d-byte one",
		 HUGE_WRITE >> 20, FAIR_SMALL);
	send1(a0, 10, IBV_WR_RDMA_WRITE, &s0, 1, addr_of(dst0->p), dst0->mr->rkey, 0,
	      "QP0's huge RDMA_WRITE");
	/* Writes land in ascending order: the first bytes say it started. */
	double t0 = now_s();
	while (memcmp((const void *)dst0->p, src0->p, 64) != 0) {
		if (now_s() - t0 > POLL_TIMEOUT_S)
			fatal("QP0's huge write did not start within %.0f s", POLL_TIMEOUT_S);
		sched_yield();
	}
	send1(a1, 11, IBV_WR_RDMA_WRITE, &s1, 1, addr_of(dst1->p + 512), dst1->mr->rkey, 0,
	      "QP1's small RDMA_WRITE");
	buf_expect(dst0, 0, src0->p, HUGE_WRITE);
	buf_expect(dst1, 512, src1->p, FAIR_SMALL);
	struct ibv_wc first, second;
	poll1(scq, &first, "the first completion after both posts");
	poll1(scq, &second, "the second completion after both posts");
	if (first.qp_num != a1->qp_num)
		fail("QP0's %u MiB write completed before QP1's small one, posted once it had "
		     "started: the huge request held the device",
		     HUGE_WRITE >> 20);
	check_wc(first.qp_num == a1->qp_num ? &first : &second, "QP1's small RDMA_WRITE", 11,
		 IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, a1);
	check_wc(first.qp_num == a1->qp_num ? &second : &first, "QP0's huge RDMA_WRITE", 10,
		 IBV_WC_SUCCESS, IBV_WC_RDMA_WRITE, a0);
	buf_check(dst0, "QP0's target after the huge write");
	buf_check(dst1, "QP1's target");

	struct ibv_qp *qps[4] = { a0, b0, a1, b1 };
	for (int i = 0; i < 4; i++)
		destroy_qp(qps[i]);
	destroy_cq(scq);
	destroy_cq(rcq);
	struct buf *bufs[4] = { src0, dst0, src1, dst1 };
	for (int i = 0; i < 4; i++)
		buf_free(bufs[i]);
}

static void case_fairness(void)
{
	struct fair f;
	memset(&f, 0, sizeof(f));
	struct qp_cfg c = CFG_DEFAULT;
	c.send_wr = FAIR_DEPTH;
	f.scq = cq_new(1024);
	f.rcq = cq_new(1024);
	f.a0 = qp_create(IBV_QPT_RC, f.scq, f.rcq, NULL, &c);
	f.b0 = qp_create(IBV_QPT_RC, f.rcq, f.rcq, NULL, &c);
	f.a1 = qp_create(IBV_QPT_RC, f.scq, f.rcq, NULL, &c);
	f.b1 = qp_create(IBV_QPT_RC, f.rcq, f.rcq, NULL, &c);
	rc_connect_both(f.a0, f.b0);
	rc_connect_both(f.a1, f.b1);
	f.src0 = buf_reg(FAIR_WRITE, "QP0 source", IBV_ACCESS_LOCAL_WRITE);
	f.dst0 = buf_reg(FAIR_WRITE, "QP0 target", ACC_RW);
	f.src1 = buf_reg(FAIR_SMALL, "QP1 source", IBV_ACCESS_LOCAL_WRITE);
	f.dst1 = buf_reg(4096, "QP1 target", ACC_RW);
	unsigned spins = 0;

	/* QP1 writes once alone: what is timed below is waiting, not first use. */
	set_step("QP1's first RDMA_WRITE, alone");
	struct ibv_sge s1 = buf_sge(f.src1, 0, FAIR_SMALL);
	send1(f.a1, FAIR_QP1_WRID - 1, IBV_WR_RDMA_WRITE, &s1, 1, addr_of(f.dst1->p),
	      f.dst1->mr->rkey, 0, "QP1's first RDMA_WRITE");
	expect_wc(f.scq, "QP1's first RDMA_WRITE", FAIR_QP1_WRID - 1, IBV_WC_SUCCESS,
		  IBV_WC_RDMA_WRITE, f.a1, NULL);
	buf_expect(f.dst1, 0, f.src1->p, FAIR_SMALL);

	set_step("QP0 streams %u-byte RDMA_WRITEs, %d in flight, until %d completed", FAIR_WRITE,
		 FAIR_DEPTH, 2 * FAIR_DEPTH);
	double last = now_s();
	while (f.done < 2 * FAIR_DEPTH) {
		fair_refill(&f);
		if (fair_poll(&f) > 0)
			last = now_s(), spins = 0;
		else if (now_s() - last > POLL_TIMEOUT_S)
			fatal("no QP0 completion for %.0f s (%" PRIu64 " of %" PRIu64 " completed)",
			      POLL_TIMEOUT_S, f.done, f.posted);
		else
			fair_idle(&spins);
	}

	set_step("QP1 posts one %d-byte RDMA_WRITE while QP0 streams", FAIR_SMALL);
	/* Take what has completed and fill QP0's queue, then post: the QP0
	 * completions ahead of QP1's in the CQ from here on are the writes QP1
	 * waited behind (a starving device: all FAIR_DEPTH, and more). */
	while (fair_poll(&f) > 0)
		;
	fair_refill(&f);
	uint64_t done_at_post = f.done;
	buf_expect(f.dst1, 512, f.src1->p, FAIR_SMALL);
	send1(f.a1, FAIR_QP1_WRID, IBV_WR_RDMA_WRITE, &s1, 1, addr_of(f.dst1->p + 512),
	      f.dst1->mr->rkey, 0, "QP1's small RDMA_WRITE");
	/* QP0 keeps streaming until FAIR_AFTER of its writes completed after
	 * QP1's, or until FAIR_STARVED completed without QP1's. */
	last = now_s();
	for (;;) {
		if ((f.qp1 && f.done - f.qp1_at >= FAIR_AFTER) ||
		    (!f.qp1 && f.done - done_at_post >= FAIR_STARVED))
			break;
		fair_refill(&f);
		if (fair_poll(&f) > 0)
			last = now_s(), spins = 0;
		else if (now_s() - last > POLL_TIMEOUT_S)
			fatal("no completion for %.0f s (QP0: %" PRIu64 " of %" PRIu64 " completed)",
			      POLL_TIMEOUT_S, f.done, f.posted);
		else
			fair_idle(&spins);
	}
	int while_streaming = f.qp1;

	set_step("QP0 stops streaming; its %" PRIu64 " outstanding writes complete",
		 f.posted - f.done);
	last = now_s();
	while (f.done < f.posted || !f.qp1) {
		if (fair_poll(&f) > 0)
			last = now_s(), spins = 0;
		else if (now_s() - last > POLL_TIMEOUT_S)
			fatal("no completion for %.0f s after QP0 stopped (QP0: %" PRIu64 " of %" PRIu64
			      " completed; QP1's write %s)",
			      POLL_TIMEOUT_S, f.done, f.posted,
			      f.qp1 ? "completed" : "not completed");
		else
			fair_idle(&spins);
	}
	expect_empty(f.scq, 50, "shared send CQ after every write completed");

	uint64_t ahead = f.qp1_at - done_at_post;
	printf("info: QP1's write completed behind %" PRIu64 " of QP0's writes (QP0 had %d queued), "
	       "%s\n",
	       ahead, FAIR_DEPTH, while_streaming ? "while QP0 streamed" : "after QP0 stopped");

	set_step("QP1's write against QP0's stream");
	if (!while_streaming)
		fail("QP1's RDMA_WRITE did not complete while %d of QP0's writes completed after its "
		     "post: one busy QP starved another",
		     FAIR_STARVED);
	if (ahead >= FAIR_DEPTH / 2)
		fail("QP1's RDMA_WRITE completed behind %" PRIu64 " of QP0's RDMA_WRITEs (QP0 had %d "
		     "queued when QP1 posted): expected fewer than %d (a QP's write must not wait "
		     "for another QP's whole queue)",
		     ahead, FAIR_DEPTH, FAIR_DEPTH / 2);

	set_step("data");
	buf_check(f.dst1, "QP1 target (64 bytes written at offsets 0 and 512)");
	memcpy(f.dst0->exp, f.src0->p, FAIR_WRITE);
	buf_check(f.dst0, "QP0 target (the same source written over and over)");
	buf_check(f.src0, "QP0 source");
	buf_check(f.src1, "QP1 source");
	expect_empty(f.rcq, 50, "receive CQ of the four QPs (RDMA_WRITE consumes no receive)");

	struct ibv_qp *qps[4] = { f.a0, f.b0, f.a1, f.b1 };
	for (int i = 0; i < 4; i++)
		destroy_qp(qps[i]);
	destroy_cq(f.scq);
	destroy_cq(f.rcq);
	buf_free(f.src0);
	buf_free(f.dst0);
	buf_free(f.src1);
	buf_free(f.dst1);
}

/* ------------------------------------------------------------------------ */

static const struct fv_case cases[] = {
	{ "srq_attrs", case_srq_attrs },
	{ "srq_shared", case_srq_shared },
	{ "srq_misuse", case_srq_misuse },
	{ "srq_rnr", case_srq_rnr },
	{ "ud_ah", case_ud_ah },
	{ "ud_send", case_ud_send },
	{ "ud_too_long", case_ud_too_long },
	{ "ud_qkey", case_ud_qkey },
	{ "ud_drop", case_ud_drop },
	{ "ud_bad_wr", case_ud_bad_wr },
	{ "uc_data", case_uc_data },
	{ "uc_bad_wr", case_uc_bad_wr },
	{ "uc_drop", case_uc_drop },
	{ "atomic_faa_contention", case_atomic_faa_contention },
	{ "atomic_cas_contention", case_atomic_cas_contention },
	{ "atomic_misaligned", case_atomic_misaligned },
	{ "atomic_no_access", case_atomic_no_access },
	{ "fairness", case_fairness },
	{ "huge_write_yields", case_huge_write_yields },
};

int main(int argc, char **argv)
{
	return fv_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]), 1);
}
