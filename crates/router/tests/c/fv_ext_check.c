/*
 * fv_ext_check: the extended verbs API on a device given by name (fv0 by
 * default; FV_VERBS_DEVICE / FV_VERBS_GID_INDEX for a reference device such
 * as rxe0 in the Soft-RoCE VM).
 *
 * Usage: fv_ext_check <case>      (fv_ext_check list  prints the cases)
 *
 * Each case checks its scenario against the man pages (FAIL lines on
 * stderr, exit 1) and prints what the device answered as canonical lines
 * on stdout ("= <what>: <result>"): return values, errno names, completion
 * statuses, opcodes, byte counts and flags, never addresses, keys or QP
 * numbers. The differential test runs the same case on fv0 and on rxe0
 * and compares those lines.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fv_test_util.h"
#include "fv_completions.h"

/* One canonical result line. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("= ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
}

static const char *errno_name(int e)
{
	switch (e) {
	case 0: return "0";
	case EINVAL: return "EINVAL";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ENOENT: return "ENOENT";
	case ENOMEM: return "ENOMEM";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case EBUSY: return "EBUSY";
	case ENOSYS: return "ENOSYS";
	default: return "another errno";
	}
}

/* ibv_create_cq_ex with these wc_flags and comp_mask/flags; NULL on failure (errno set). */
static struct ibv_cq_ex *cq_ex_try(int cqe, uint64_t wc_flags, uint32_t comp_mask, uint32_t flags,
				   struct ibv_comp_channel *ch)
{
	struct ibv_cq_init_attr_ex a = {
		.cqe = cqe,
		.cq_context = NULL,
		.channel = ch,
		.comp_vector = 0,
		.wc_flags = wc_flags,
		.comp_mask = comp_mask,
		.flags = flags,
	};
	errno = 0;
	return ibv_create_cq_ex(E.ctx, &a);
}

/* Creates with the given attributes and says whether that worked (destroys it again). */
static void cq_ex_attempt(const char *what, uint64_t wc_flags, uint32_t comp_mask, uint32_t flags,
			  int want_ok, int want_errno)
{
	set_step("ibv_create_cq_ex with %s", what);
	struct ibv_cq_ex *cq = cq_ex_try(16, wc_flags, comp_mask, flags, NULL);
	int e = cq ? 0 : errno;
	say("create_cq_ex %s: %s", what, cq ? "made" : errno_name(e));
	if (want_ok && !cq)
		fail("expected a CQ, got NULL with errno %d (%s)", e, strerror(e));
	if (!want_ok && cq)
		fail("expected NULL with errno %s, got a CQ", errno_name(want_errno));
	if (!want_ok && !cq && e != want_errno)
		fail("expected errno %s, got %d (%s)", errno_name(want_errno), e, strerror(e));
	if (cq)
		destroy_cq(ibv_cq_ex_to_cq(cq));
}

/* The fields of the current completion, read with ibv_wc_read_*, as one canonical line. */
static void say_current(struct ibv_cq_ex *cq, const char *what, uint32_t want_qpn)
{
	unsigned flags = ibv_wc_read_wc_flags(cq);
	char imm[32] = "";
	if (flags & IBV_WC_WITH_IMM)
		snprintf(imm, sizeof(imm), " imm 0x%08x", ntohl(ibv_wc_read_imm_data(cq)));
	int op = ibv_wc_read_opcode(cq);
	/* IBV_WC_GRH is defined for UD QPs only (ibv_poll_cq(3)): not said here (RC). */
	say("%s: status %s opcode %s byte_len %u wc_flags%s%s", what,
	    ibv_wc_status_str(cq->status), wc_opcode_str(op),
	    op & IBV_WC_RECV ? ibv_wc_read_byte_len(cq) : 0,
	    flags & IBV_WC_WITH_IMM ? " WITH_IMM" : "", imm);
	if (ibv_wc_read_qp_num(cq) != want_qpn)
		fail("%s: qp_num 0x%x, expected 0x%x", what, ibv_wc_read_qp_num(cq), want_qpn);
}

/* Waits (bounded) for ibv_start_poll to find a completion; returns its result. */
static int start_poll_wait(struct ibv_cq_ex *cq, const char *what)
{
	struct ibv_poll_cq_attr pa = { .comp_mask = 0 };
	double end = now_s() + POLL_TIMEOUT_S;
	for (;;) {
		int rc = ibv_start_poll(cq, &pa);
		if (rc != ENOENT)
			return rc;
		if (now_s() > end)
			fatal("%s: no completion within %.0f s", what, POLL_TIMEOUT_S);
		usleep(100);
	}
}

/* Waits for the next completion inside a poll (start_poll returned 0). */
static int next_poll_wait(struct ibv_cq_ex *cq, const char *what)
{
	double end = now_s() + POLL_TIMEOUT_S;
	for (;;) {
		int rc = ibv_next_poll(cq);
		if (rc != ENOENT)
			return rc;
		if (now_s() > end)
			fatal("%s: no completion within %.0f s", what, POLL_TIMEOUT_S);
		usleep(100);
	}
}

/* An extended CQ (standard wc_flags, on channel ch or none) under two connected RC QPs. */
struct cq_ex_pair {
	struct ibv_cq_ex *cq;
	struct ibv_cq *plain; /* ibv_cq_ex_to_cq(cq) */
	struct ibv_qp *a, *b;
};

static struct cq_ex_pair cq_ex_pair_new(struct ibv_comp_channel *ch)
{
	struct cq_ex_pair p;
	p.cq = cq_ex_try(64, IBV_WC_STANDARD_FLAGS, 0, 0, ch);
	if (!p.cq)
		fatal("ibv_create_cq_ex returned NULL, errno %d (%s)", errno, strerror(errno));
	p.plain = ibv_cq_ex_to_cq(p.cq);
	p.a = rc_qp_new(p.plain, p.plain);
	p.b = rc_qp_new(p.plain, p.plain);
	rc_connect_both(p.a, p.b);
	return p;
}

/* ------------------------------------------------------------------------ */
/* Case: cq_ex                                                               */

static void case_cq_ex(void)
{
	const uint64_t std_flags = IBV_WC_STANDARD_FLAGS;
	cq_ex_attempt("the standard wc_flags", std_flags, 0, 0, 1, 0);
	cq_ex_attempt("no wc_flags", 0, 0, 0, 1, 0);
	cq_ex_attempt("SINGLE_THREADED", std_flags, IBV_CQ_INIT_ATTR_MASK_FLAGS,
		      IBV_CREATE_CQ_ATTR_SINGLE_THREADED, 1, 0);
	cq_ex_attempt("COMPLETION_TIMESTAMP", IBV_WC_EX_WITH_COMPLETION_TIMESTAMP, 0, 0, 0,
		      EOPNOTSUPP);
	cq_ex_attempt("CVLAN", IBV_WC_EX_WITH_CVLAN, 0, 0, 0, EOPNOTSUPP);
	cq_ex_attempt("FLOW_TAG", IBV_WC_EX_WITH_FLOW_TAG, 0, 0, 0, EOPNOTSUPP);

	set_step("an extended CQ under two RC QPs");
	struct ibv_comp_channel *ch = chan_new();
	struct cq_ex_pair p = cq_ex_pair_new(ch);
	struct ibv_cq_ex *cq = p.cq;
	struct ibv_cq *plain = p.plain;
	struct ibv_qp *a = p.a, *b = p.b;
	struct buf *buf = buf_reg(8192, "buffer", ACC_ALL);

	set_step("ibv_start_poll on an empty CQ");
	struct ibv_poll_cq_attr pa = { .comp_mask = 0 };
	int rc = ibv_start_poll(cq, &pa);
	say("start_poll on an empty CQ: %s", errno_name(rc));
	if (rc != ENOENT) {
		fail("expected ENOENT, got %d", rc);
		if (rc == 0)
			ibv_end_poll(cq);
	}

	set_step("SEND_WITH_IMM of 123 bytes, A to B");
	struct ibv_sge r = buf_sge(buf, 4000, 500);
	recv1(b, 0xB0, &r, 1, "recv on B");
	struct ibv_sge s = buf_sge(buf, 10, 123);
	send1(a, 0xA0, IBV_WR_SEND_WITH_IMM, &s, 1, 0, 0, 0x1234, "send A->B");
	buf_expect(buf, 4000, buf->exp + 10, 123);
	rc = start_poll_wait(cq, "the send's completions");
	if (rc)
		fatal("ibv_start_poll returned %d", rc);
	int seen_send = 0, seen_recv = 0;
	for (int i = 0; i < 2; i++) {
		if (i == 1) {
			rc = next_poll_wait(cq, "the second completion");
			if (rc)
				fatal("ibv_next_poll returned %d", rc);
		}
		if (cq->wr_id == 0xA0) {
			seen_send++;
			say_current(cq, "SEND_WITH_IMM at A", a->qp_num);
		} else if (cq->wr_id == 0xB0) {
			seen_recv++;
			say_current(cq, "SEND_WITH_IMM at B", b->qp_num);
		} else {
			fail("completion with wr_id 0x%" PRIx64 ", expected 0xA0 or 0xB0", cq->wr_id);
		}
		if (cq->status != IBV_WC_SUCCESS)
			fail("status %s", ibv_wc_status_str(cq->status));
	}
	ibv_end_poll(cq);
	if (seen_send != 1 || seen_recv != 1)
		fail("expected one send and one receive completion, got %d and %d", seen_send,
		     seen_recv);
	buf_check(buf, "after SEND_WITH_IMM");

	set_step("RDMA_WRITE_WITH_IMM of 77 bytes, B to A, read through ibv_poll_cq");
	r = buf_sge(buf, 6000, 16);
	recv1(a, 0xA1, &r, 1, "recv on A");
	s = buf_sge(buf, 300, 77);
	send1(b, 0xB1, IBV_WR_RDMA_WRITE_WITH_IMM, &s, 1, addr_of(buf->p + 7000), buf->mr->rkey,
	      0xBEEF, "write_imm B->A");
	buf_expect(buf, 7000, buf->exp + 300, 77);
	struct ibv_wc wc;
	for (int i = 0; i < 2; i++) {
		poll1(plain, &wc, "the write's completions (ibv_poll_cq on the extended CQ)");
		say("RDMA_WRITE_WITH_IMM at %s (ibv_poll_cq): status %s opcode %s byte_len %u imm 0x%08x",
		    wc.wr_id == 0xB1 ? "B" : "A", ibv_wc_status_str(wc.status),
		    wc_opcode_str(wc.opcode), wc.opcode & IBV_WC_RECV ? wc.byte_len : 0,
		    wc.wc_flags & IBV_WC_WITH_IMM ? ntohl(wc.imm_data) : 0);
		if (wc.status != IBV_WC_SUCCESS)
			fail("ibv_poll_cq on an extended CQ: status %s", ibv_wc_status_str(wc.status));
	}
	buf_check(buf, "after RDMA_WRITE_WITH_IMM");

	set_step("a completion event on the extended CQ's channel");
	rc = ibv_req_notify_cq(plain, 0);
	if (rc)
		fatal("ibv_req_notify_cq returned %d", rc);
	r = buf_sge(buf, 4000, 500);
	recv1(b, 0xB2, &r, 1, "recv on B");
	s = buf_sge(buf, 20, 9);
	send1(a, 0xA2, IBV_WR_SEND, &s, 1, 0, 0, 0, "send A->B");
	buf_expect(buf, 4000, buf->exp + 20, 9);
	struct ibv_cq *ev_cq = NULL;
	void *ev_ctx = NULL;
	rc = ibv_get_cq_event(ch, &ev_cq, &ev_ctx);
	say("get_cq_event: %s", rc == 0 ? "0" : "failed");
	if (rc)
		fail("ibv_get_cq_event returned %d", rc);
	else if (ev_cq != plain)
		fail("ibv_get_cq_event named CQ %p, expected %p", (void *)ev_cq, (void *)plain);
	else
		ibv_ack_cq_events(plain, 1);
	rc = start_poll_wait(cq, "the SEND's completions");
	for (int i = 0; rc == 0 && i < 2; i++) {
		say_current(cq, cq->wr_id == 0xA2 ? "SEND at A" : "SEND at B",
			    cq->wr_id == 0xA2 ? a->qp_num : b->qp_num);
		if (i == 0)
			rc = next_poll_wait(cq, "the second completion");
	}
	ibv_end_poll(cq);
	buf_check(buf, "after SEND");

	set_step("an error completion read with ibv_wc_read_*");
	s = buf_sge(buf, 0, 8);
	send1(a, 0xA3, IBV_WR_RDMA_WRITE, &s, 1, addr_of(buf->p), buf->mr->rkey ^ 0x5a5a00, 0,
	      "write with a bad rkey");
	rc = start_poll_wait(cq, "the bad write's completion");
	if (rc == 0) {
		/* With an error status only wr_id, status, qp_num and vendor_err are defined. */
		say("RDMA_WRITE with a bad rkey: status %s", ibv_wc_status_str(cq->status));
		if (cq->status != IBV_WC_REM_ACCESS_ERR)
			fail("expected REM_ACCESS_ERR, got %s", ibv_wc_status_str(cq->status));
		if (cq->wr_id != 0xA3)
			fail("wr_id 0x%" PRIx64 ", expected 0xA3", cq->wr_id);
		ibv_end_poll(cq);
	}

	destroy_qp(a);
	destroy_qp(b);
	rc = destroy_cq(plain);
	say("destroy the extended CQ: %s", errno_name(rc));
	destroy_channel(ch);
	buf_free(buf);
}

/* ------------------------------------------------------------------------ */
/* Case: cq_ex_batch_end                                                     */

/*
 * The batch as ibv_create_cq_ex(3) writes it: next_poll until it returns
 * ENOENT, then end_poll ("If an error code is given, end_poll should still
 * be called"). The CQ must stay valid: the next completions are the right
 * ones, and no other appears.
 */
static void case_cq_ex_batch_end(void)
{
	struct cq_ex_pair p = cq_ex_pair_new(NULL);
	struct ibv_cq_ex *cq = p.cq;
	struct ibv_cq *plain = p.plain;
	struct ibv_qp *a = p.a, *b = p.b;
	struct buf *buf = buf_reg(4096, "buffer", ACC_ALL);

	for (int round = 0; round < 3; round++) {
		set_step("round %d: a SEND of 100 bytes, A to B, polled to ENOENT", round);
		struct ibv_sge r = buf_sge(buf, 2048, 1000);
		recv1(b, 0xB0 + round, &r, 1, "recv on B");
		struct ibv_sge s = buf_sge(buf, 100 * round, 100);
		send1(a, 0xA0 + round, IBV_WR_SEND, &s, 1, 0, 0, 0, "send A->B");
		buf_expect(buf, 2048, buf->exp + 100 * round, 100);
		int got = 0, rc = start_poll_wait(cq, "the first completion");
		while (rc == 0) {
			got++;
			int mine = cq->wr_id == (uint64_t)(0xA0 + round) ||
				   cq->wr_id == (uint64_t)(0xB0 + round);
			say("round %d: status %s opcode %s%s", round, ibv_wc_status_str(cq->status),
			    wc_opcode_str(ibv_wc_read_opcode(cq)), mine ? "" : " (not this round's)");
			if (!mine || cq->status != IBV_WC_SUCCESS)
				fail("round %d: completion wr_id 0x%" PRIx64 " status %s", round,
				     cq->wr_id, ibv_wc_status_str(cq->status));
			rc = got < 2 ? next_poll_wait(cq, "the second completion") : ibv_next_poll(cq);
			if (got >= 8)
				break;
		}
		say("round %d: %d completions, then %s", round, got, errno_name(rc));
		if (rc != ENOENT)
			fail("round %d: ibv_next_poll after the last completion: expected ENOENT, got %d",
			     round, rc);
		ibv_end_poll(cq);
		if (got != 2)
			fail("round %d: expected 2 completions, got %d", round, got);
		buf_check(buf, "after the SEND");
	}
	set_step("nothing more on the CQ");
	struct ibv_poll_cq_attr pa = { .comp_mask = 0 };
	int rc = ibv_start_poll(cq, &pa);
	say("start_poll at the end: %s", errno_name(rc));
	if (rc != ENOENT) {
		fail("expected ENOENT, got %d (wr_id 0x%" PRIx64 ")", rc, rc ? 0 : cq->wr_id);
		if (rc == 0)
			ibv_end_poll(cq);
	}
	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(plain);
	buf_free(buf);
}

/* ------------------------------------------------------------------------ */
/* Case: roce_answers                                                        */

static const char *gid_type_str(uint32_t t)
{
	switch (t) {
	case IBV_GID_TYPE_IB: return "IB";
	case IBV_GID_TYPE_ROCE_V1: return "RoCE v1";
	case IBV_GID_TYPE_ROCE_V2: return "RoCE v2";
	default: return "another type";
	}
}

/*
 * What a RoCE device answers about itself: ibv_query_device_ex against
 * ibv_query_device, the GID entry of the device's IPv4-mapped GID through
 * ibv_query_gid_ex and ibv_query_gid_table, and the address handles and
 * RC paths without a GRH that a RoCE port must refuse.
 */
static void case_roce_answers(void)
{
	set_step("ibv_query_device_ex");
	struct ibv_device_attr_ex dx;
	memset(&dx, 0, sizeof(dx));
	int rc = ibv_query_device_ex(E.ctx, NULL, &dx);
	say("query_device_ex: %s", errno_name(rc));
	if (rc)
		fail("ibv_query_device_ex returned %d", rc);
	say("phys_port_cnt_ex equals phys_port_cnt: %s",
	    dx.phys_port_cnt_ex == E.dev.phys_port_cnt ? "yes" : "no");
	if (dx.phys_port_cnt_ex != E.dev.phys_port_cnt)
		fail("phys_port_cnt_ex %u, phys_port_cnt %u", dx.phys_port_cnt_ex,
		     E.dev.phys_port_cnt);
	say("orig_attr equals ibv_query_device: %s",
	    dx.orig_attr.max_qp_wr == E.dev.max_qp_wr && dx.orig_attr.max_sge == E.dev.max_sge &&
			    dx.orig_attr.max_cqe == E.dev.max_cqe &&
			    dx.orig_attr.max_mr_size == E.dev.max_mr_size &&
			    dx.orig_attr.phys_port_cnt == E.dev.phys_port_cnt ?
		    "yes" :
		    "no");

	set_step("ibv_query_gid_ex(port 1, index %d)", gid_index());
	struct ibv_gid_entry ge;
	memset(&ge, 0, sizeof(ge));
	rc = ibv_query_gid_ex(E.ctx, 1, gid_index(), &ge, 0);
	say("query_gid_ex: %s", errno_name(rc));
	if (rc) {
		fail("ibv_query_gid_ex returned %d (%s)", rc, strerror(rc));
	} else {
		int same = memcmp(ge.gid.raw, E.gid.raw, 16) == 0;
		say("query_gid_ex: type %s, same GID as ibv_query_gid %s, port %u, netdev %s",
		    gid_type_str(ge.gid_type), same ? "yes" : "no", ge.port_num,
		    ge.ndev_ifindex ? "named" : "none");
		if (!same || ge.gid_type != IBV_GID_TYPE_ROCE_V2 || ge.port_num != 1 ||
		    (int)ge.gid_index != gid_index())
			fail("ibv_query_gid_ex: entry {index %u, port %u, type %u}, GID %s",
			     ge.gid_index, ge.port_num, ge.gid_type, same ? "same" : "different");
		if (!ge.ndev_ifindex)
			fail("ibv_query_gid_ex: no netdev for a RoCE GID");
		char name[IF_NAMESIZE] = "";
		if (ge.ndev_ifindex && !if_indextoname(ge.ndev_ifindex, name))
			fail("ibv_query_gid_ex: netdev index %u is no interface of this namespace",
			     ge.ndev_ifindex);
	}
	set_step("ibv_query_gid_ex of an index past the table");
	rc = ibv_query_gid_ex(E.ctx, 1, E.port.gid_tbl_len, &ge, 0);
	say("query_gid_ex past the table: %s", rc ? "refused" : "0");
	if (rc == 0)
		fail("ibv_query_gid_ex(index gid_tbl_len %d) returned 0", E.port.gid_tbl_len);

	set_step("ibv_query_gid_table");
	struct ibv_gid_entry table[1024];
	ssize_t n = ibv_query_gid_table(E.ctx, table, 1024, 0);
	int found = 0;
	for (ssize_t i = 0; i < n; i++)
		if (memcmp(table[i].gid.raw, E.gid.raw, 16) == 0 && table[i].port_num == 1 &&
		    (int)table[i].gid_index == gid_index() &&
		    table[i].gid_type == IBV_GID_TYPE_ROCE_V2)
			found = 1;
	say("query_gid_table: %s, the GID listed as RoCE v2: %s", n > 0 ? "entries" : "none",
	    found ? "yes" : "no");
	if (n <= 0 || !found)
		fail("ibv_query_gid_table returned %zd, GID %d as RoCE v2 on port 1: %s", n,
		     gid_index(), found ? "yes" : "no");

	set_step("ibv_create_ah without a GRH on the RoCE port");
	struct ibv_ah_attr ah = { .dlid = 1, .port_num = 1, .is_global = 0 };
	errno = 0;
	struct ibv_ah *h = ibv_create_ah(E.pd, &ah);
	int e = h ? 0 : errno;
	say("create_ah without a GRH: %s", h ? "made" : errno_name(e));
	if (h) {
		fail("ibv_create_ah without a GRH on a RoCE port: made (expected EINVAL)");
		ibv_destroy_ah(h);
	} else if (e != EINVAL) {
		fail("ibv_create_ah without a GRH: errno %d (%s), expected EINVAL", e, strerror(e));
	}
	set_step("ibv_create_ah with a GRH");
	ah.is_global = 1;
	ah.grh.dgid = E.gid;
	ah.grh.sgid_index = gid_index();
	ah.grh.hop_limit = 64;
	h = ibv_create_ah(E.pd, &ah);
	say("create_ah with a GRH: %s", h ? "made" : errno_name(errno));
	if (!h)
		fail("ibv_create_ah with a GRH to our own GID: errno %d (%s)", errno,
		     strerror(errno));
	else
		destroy_ah(h);

	set_step("an RC QP to RTR without a GRH on the RoCE port");
	struct ibv_cq *cq = cq_new(16);
	struct ibv_qp *qp = rc_qp_new(cq, cq);
	if (qp_to_init(qp, ACC_ALL))
		fatal("RESET->INIT failed");
	struct ibv_qp_attr a;
	rtr_attr(&a, qp->qp_num);
	a.ah_attr.is_global = 0;
	a.ah_attr.dlid = 1;
	rc = ibv_modify_qp(qp, &a, RC_RTR_MASK);
	say("modify_qp to RTR without a GRH: %s", errno_name(rc));
	if (rc != EINVAL)
		fail("INIT->RTR without a GRH on a RoCE port: %d (%s), expected EINVAL", rc,
		     strerror(rc));
	destroy_qp(qp);
	destroy_cq(cq);
}

/* ------------------------------------------------------------------------ */
/* Case: qp_ex                                                               */

/* An RC QP made with ibv_create_qp_ex and the given send operations (NULL: errno). */
static struct ibv_qp *qp_ex_try(enum ibv_qp_type type, struct ibv_cq *cq, uint64_t ops)
{
	struct ibv_qp_init_attr_ex a = {
		.send_cq = cq,
		.recv_cq = cq,
		.cap = { .max_send_wr = 32, .max_recv_wr = 32, .max_send_sge = 4, .max_recv_sge = 4,
			 .max_inline_data = 64 },
		.qp_type = type,
		.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
		.pd = E.pd,
		.send_ops_flags = ops,
	};
	errno = 0;
	return ibv_create_qp_ex(E.ctx, &a);
}

/* Polls n completions (any order) into wcs; fatal if they do not come. */
static void poll_some(struct ibv_cq *cq, struct ibv_wc *wcs, int n, const char *what)
{
	for (int i = 0; i < n; i++)
		poll1(cq, &wcs[i], what);
}

static const struct ibv_wc *wc_with_id(const struct ibv_wc *wcs, int n, uint64_t id)
{
	for (int i = 0; i < n; i++)
		if (wcs[i].wr_id == id)
			return &wcs[i];
	fail("no completion with wr_id 0x%" PRIx64, id);
	return NULL;
}

/* Says a completion's defined fields (status; opcode, byte_len and imm only on success). */
static void say_wc(const char *what, const struct ibv_wc *wc)
{
	if (!wc)
		return;
	if (wc->status != IBV_WC_SUCCESS) {
		say("%s: status %s", what, ibv_wc_status_str(wc->status));
		fail("%s: status %s", what, ibv_wc_status_str(wc->status));
		return;
	}
	char imm[32] = "";
	if (wc->wc_flags & IBV_WC_WITH_IMM)
		snprintf(imm, sizeof(imm), " imm 0x%08x", ntohl(wc->imm_data));
	say("%s: status %s opcode %s byte_len %u%s", what, ibv_wc_status_str(wc->status),
	    wc_opcode_str(wc->opcode), wc->opcode & IBV_WC_RECV ? wc->byte_len : 0, imm);
}

static void case_qp_ex(void)
{
	const uint64_t rc_ops = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM |
				IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM |
				IBV_QP_EX_WITH_RDMA_READ | IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP |
				IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD;
	struct ibv_cq *cq = cq_new(128);

	set_step("ibv_qp_to_qp_ex of a QP made by ibv_create_qp");
	struct ibv_qp *plain = rc_qp_new(cq, cq);
	say("qp_to_qp_ex of a plain QP: %s", ibv_qp_to_qp_ex(plain) ? "an ibv_qp_ex" : "NULL");
	destroy_qp(plain);

	set_step("ibv_create_qp_ex, RC, every RC operation");
	struct ibv_qp *a = qp_ex_try(IBV_QPT_RC, cq, rc_ops);
	struct ibv_qp *b = qp_ex_try(IBV_QPT_RC, cq, rc_ops);
	say("create_qp_ex RC: %s", a && b ? "made" : errno_name(errno));
	if (!a || !b)
		fatal("ibv_create_qp_ex returned NULL, errno %d (%s)", errno, strerror(errno));
	struct ibv_qp_ex *ax = ibv_qp_to_qp_ex(a);
	say("qp_to_qp_ex: %s", ax ? "an ibv_qp_ex" : "NULL");
	if (!ax)
		fatal("ibv_qp_to_qp_ex returned NULL for a QP made with send_ops_flags");
	rc_connect_both(a, b);
	struct buf *buf = buf_reg(16384, "buffer", ACC_ALL);
	struct ibv_wc wcs[8];

	set_step("a batch: SEND, SEND_WITH_IMM, RDMA_WRITE, RDMA_WRITE_WITH_IMM");
	for (int i = 0; i < 3; i++) {
		struct ibv_sge r = buf_sge(buf, 8000 + 1000 * i, 1000);
		recv1(b, 0xB0 + i, &r, 1, "recv on B");
	}
	ibv_wr_start(ax);
	ax->wr_id = 0xA0;
	ax->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_send(ax);
	ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p + 100), 300);
	ax->wr_id = 0xA1;
	ibv_wr_send_imm(ax, htonl(0x1234));
	ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p + 500), 40);
	ax->wr_id = 0xA2;
	ibv_wr_rdma_write(ax, buf->mr->rkey, addr_of(buf->p + 12000));
	ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p + 3000), 222);
	ax->wr_id = 0xA3;
	ibv_wr_rdma_write_imm(ax, buf->mr->rkey, addr_of(buf->p + 13000), htonl(0xBEEF));
	ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p + 900), 77);
	int rc = ibv_wr_complete(ax);
	say("wr_complete of four: %s", errno_name(rc));
	if (rc)
		fatal("ibv_wr_complete returned %d (%s)", rc, strerror(rc));
	buf_expect(buf, 8000, buf->exp + 100, 300);
	buf_expect(buf, 9000, buf->exp + 500, 40);
	buf_expect(buf, 12000, buf->exp + 3000, 222);
	buf_expect(buf, 13000, buf->exp + 900, 77);
	poll_some(cq, wcs, 7, "the batch's completions");
	say_wc("SEND at A", wc_with_id(wcs, 7, 0xA0));
	say_wc("SEND_WITH_IMM at A", wc_with_id(wcs, 7, 0xA1));
	say_wc("RDMA_WRITE at A", wc_with_id(wcs, 7, 0xA2));
	say_wc("RDMA_WRITE_WITH_IMM at A", wc_with_id(wcs, 7, 0xA3));
	say_wc("SEND at B", wc_with_id(wcs, 7, 0xB0));
	say_wc("SEND_WITH_IMM at B", wc_with_id(wcs, 7, 0xB1));
	say_wc("RDMA_WRITE_WITH_IMM at B", wc_with_id(wcs, 7, 0xB2));
	buf_check(buf, "after the first batch");

	set_step("a batch: RDMA_READ, FETCH_AND_ADD, CMP_AND_SWP");
	uint64_t *counter = (uint64_t *)(buf->p + 14000);
	uint64_t seven = 7;
	buf_set(buf, 14000, &seven, 8);
	ibv_wr_start(ax);
	ax->wr_id = 0xA4;
	ax->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_rdma_read(ax, buf->mr->rkey, addr_of(buf->p + 1000));
	ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p + 2000), 123);
	ax->wr_id = 0xA5;
	ibv_wr_atomic_fetch_add(ax, buf->mr->rkey, addr_of(counter), 5);
	ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p + 14008), 8);
	rc = ibv_wr_complete(ax);
	say("wr_complete of read and fetch-add: %s", errno_name(rc));
	if (rc)
		fatal("ibv_wr_complete returned %d", rc);
	buf_expect(buf, 2000, buf->exp + 1000, 123);
	uint64_t twelve = 12;
	buf_expect(buf, 14000, &twelve, 8);
	buf_expect(buf, 14008, &seven, 8);
	poll_some(cq, wcs, 2, "read and fetch-add");
	say_wc("RDMA_READ at A", wc_with_id(wcs, 2, 0xA4));
	say_wc("FETCH_ADD at A", wc_with_id(wcs, 2, 0xA5));
	ibv_wr_start(ax);
	ax->wr_id = 0xA6;
	ibv_wr_atomic_cmp_swp(ax, buf->mr->rkey, addr_of(counter), 12, 99);
	ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p + 14016), 8);
	rc = ibv_wr_complete(ax);
	say("wr_complete of cmp-swap: %s", errno_name(rc));
	uint64_t ninety_nine = 99;
	buf_expect(buf, 14000, &ninety_nine, 8);
	buf_expect(buf, 14016, &twelve, 8);
	poll_some(cq, wcs, 1, "cmp-swap");
	say_wc("COMP_SWAP at A", wc_with_id(wcs, 1, 0xA6));
	buf_check(buf, "after the second batch");

	set_step("ibv_wr_abort posts nothing");
	ibv_wr_start(ax);
	ax->wr_id = 0xA7;
	ibv_wr_rdma_write(ax, buf->mr->rkey, addr_of(buf->p + 15000));
	ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p), 64);
	ibv_wr_abort(ax);
	say("after wr_abort: %s", expect_empty(cq, 300, "after ibv_wr_abort") ? "nothing" : "a completion");
	buf_check(buf, "after the aborted batch");

	set_step("an empty batch");
	ibv_wr_start(ax);
	rc = ibv_wr_complete(ax);
	say("wr_complete of nothing: %s", errno_name(rc));

	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq);
	buf_free(buf);
}

/* ------------------------------------------------------------------------ */
/* Cases: qp_ex_sge_list, qp_ex_inline                                       */

/* Two connected extended RC QPs with SEND on a fresh CQ, a receive posted on B. */
struct ex_pair {
	struct ibv_cq *cq;
	struct ibv_qp *a, *b;
	struct ibv_qp_ex *ax;
	struct buf *buf;
};

static void ex_pair_new(struct ex_pair *p)
{
	uint64_t ops = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_WRITE;
	p->cq = cq_new(64);
	p->a = qp_ex_try(IBV_QPT_RC, p->cq, ops);
	p->b = qp_ex_try(IBV_QPT_RC, p->cq, ops);
	if (!p->a || !p->b)
		fatal("ibv_create_qp_ex returned NULL, errno %d (%s)", errno, strerror(errno));
	p->ax = ibv_qp_to_qp_ex(p->a);
	rc_connect_both(p->a, p->b);
	p->buf = buf_reg(16384, "buffer", ACC_ALL);
	struct ibv_sge r = buf_sge(p->buf, 8000, 1000);
	recv1(p->b, 0xB0, &r, 1, "recv on B");
	ibv_wr_start(p->ax);
	p->ax->wr_id = 0xA0;
	p->ax->wr_flags = IBV_SEND_SIGNALED;
}

/* Completes the batch, polls the SEND's two completions, checks the buffer. */
static void ex_pair_finish(struct ex_pair *p, const char *what)
{
	int rc = ibv_wr_complete(p->ax);
	say("%s: wr_complete %s", what, errno_name(rc));
	if (rc)
		fatal("ibv_wr_complete returned %d (%s)", rc, strerror(rc));
	struct ibv_wc wcs[2];
	poll_some(p->cq, wcs, 2, what);
	say_wc("SEND at A", wc_with_id(wcs, 2, 0xA0));
	say_wc("SEND at B", wc_with_id(wcs, 2, 0xB0));
	buf_check(p->buf, what);
	destroy_qp(p->a);
	destroy_qp(p->b);
	destroy_cq(p->cq);
	buf_free(p->buf);
}

static void case_qp_ex_sge_list(void)
{
	struct ex_pair p;
	ex_pair_new(&p);
	set_step("SEND of two SGEs (40 and 60 bytes) set with ibv_wr_set_sge_list");
	ibv_wr_send(p.ax);
	struct ibv_sge two[2] = { buf_sge(p.buf, 500, 40), buf_sge(p.buf, 700, 60) };
	ibv_wr_set_sge_list(p.ax, 2, two);
	buf_expect(p.buf, 8000, p.buf->exp + 500, 40);
	buf_expect(p.buf, 8040, p.buf->exp + 700, 60);
	ex_pair_finish(&p, "a SEND of an SGE list");
}

static void case_qp_ex_inline(void)
{
	struct ex_pair p;
	ex_pair_new(&p);
	set_step("SEND of inline data set with ibv_wr_set_inline_data_list (the buffers reused at once)");
	char one[] = "inline bytes, ", two[] = "copied at the setter";
	struct ibv_data_buf bufs[2] = { { one, strlen(one) }, { two, strlen(two) } };
	ibv_wr_send(p.ax);
	ibv_wr_set_inline_data_list(p.ax, 2, bufs);
	buf_expect(p.buf, 8000, "inline bytes, copied at the setter", strlen(one) + strlen(two));
	memset(one, 'x', sizeof(one));
	memset(two, 'y', sizeof(two));
	ex_pair_finish(&p, "a SEND of inline data");
}

/* ------------------------------------------------------------------------ */
/* Case: qp_attrs                                                            */

/*
 * Says what ibv_query_qp answers for the attributes a connected RC QP was
 * given (connected: 0 in INIT, where only state, port, P_Key index and
 * access are defined).
 */
static void say_queried(struct ibv_qp *qp, const char *when, int connected)
{
	struct ibv_qp_attr q;
	struct ibv_qp_init_attr init;
	memset(&q, 0, sizeof(q));
	int mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS |
		   IBV_QP_PATH_MTU | IBV_QP_RQ_PSN | IBV_QP_SQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
		   IBV_QP_MAX_QP_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER | IBV_QP_TIMEOUT |
		   IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_AV | IBV_QP_DEST_QPN;
	int rc = ibv_query_qp(qp, &q, mask, &init);
	if (rc) {
		say("query_qp %s: %s", when, errno_name(rc));
		fail("ibv_query_qp returned %d", rc);
		return;
	}
	say("query_qp %s: state %s, port %u, pkey_index %u, access 0x%x", when,
	    state_str(q.qp_state), q.port_num, q.pkey_index, q.qp_access_flags);
	if (connected) {
		say("query_qp %s: path_mtu %d, rq_psn 0x%x, sq_psn 0x%x, max_dest_rd_atomic %u, "
		    "max_rd_atomic %u, min_rnr_timer %u, timeout %u, retry_cnt %u, rnr_retry %u, "
		    "dest_qp_num %s, GRH %u, sgid_index %s, dgid %s",
		    when, q.path_mtu, q.rq_psn, q.sq_psn, q.max_dest_rd_atomic, q.max_rd_atomic,
		    q.min_rnr_timer, q.timeout, q.retry_cnt, q.rnr_retry,
		    q.dest_qp_num == qp->qp_num ? "its own" : "another", q.ah_attr.is_global,
		    q.ah_attr.grh.sgid_index == gid_index() ? "the one set" : "another",
		    memcmp(q.ah_attr.grh.dgid.raw, E.gid.raw, 16) == 0 ? "the one set" : "another");
		say("hop_limit %s: %u", when, q.ah_attr.grh.hop_limit);
	}
	say("query_qp %s: init_attr qp_type %s, cap max_send_wr %s, max_send_sge %s", when,
	    qpt_str(init.qp_type), init.cap.max_send_wr >= 20 ? ">= 20" : "< 20",
	    init.cap.max_send_sge >= 2 ? ">= 2" : "< 2");
}

/*
 * ibv_query_qp returns what ibv_modify_qp set, and ibv_modify_qp refuses
 * an attribute the state transition does not take (EINVAL, the QP
 * unchanged).
 */
static void case_qp_attrs(void)
{
	struct ibv_cq *cq = cq_new(16);
	struct qp_cfg c = { 20, 20, 2, 2, 0, 1, 0 };
	struct ibv_qp *qp = qp_create(IBV_QPT_RC, cq, cq, NULL, &c);
	struct ibv_qp_attr a;

	set_step("RESET->INIT with an attribute it does not take (SQ_PSN)");
	init_attr(&a);
	a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
	a.sq_psn = 5;
	int rc = ibv_modify_qp(qp, &a,
			       IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS |
				       IBV_QP_SQ_PSN);
	say("RESET->INIT with SQ_PSN: %s, state %s", errno_name(rc), state_str(qp_state(qp)));
	if (rc != EINVAL)
		fail("RESET->INIT with IBV_QP_SQ_PSN: %d, expected EINVAL", rc);

	set_step("RESET->INIT without PKEY_INDEX (a required attribute)");
	rc = ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
	say("RESET->INIT without PKEY_INDEX: %s, state %s", errno_name(rc),
	    state_str(qp_state(qp)));
	if (rc != EINVAL)
		fail("RESET->INIT without IBV_QP_PKEY_INDEX: %d, expected EINVAL", rc);

	set_step("RESET->INIT->RTR->RTS with chosen values");
	rc = ibv_modify_qp(qp, &a,
			   IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
	if (rc)
		fatal("RESET->INIT returned %d", rc);
	say_queried(qp, "in INIT", 0);
	rtr_attr(&a, qp->qp_num);
	a.rq_psn = 0x123456;
	a.min_rnr_timer = 14;
	a.max_dest_rd_atomic = 1;
	a.path_mtu = IBV_MTU_1024;
	a.ah_attr.grh.hop_limit = 33;
	rc = ibv_modify_qp(qp, &a, RC_RTR_MASK);
	if (rc)
		fatal("INIT->RTR returned %d", rc);
	rts_attr(&a);
	a.sq_psn = 0x654321;
	a.timeout = 17;
	a.retry_cnt = 5;
	a.rnr_retry = 6;
	a.max_rd_atomic = 1;
	rc = ibv_modify_qp(qp, &a, RC_RTS_MASK);
	if (rc)
		fatal("RTR->RTS returned %d", rc);
	say_queried(qp, "in RTS", 1);

	set_step("RTS->RTS with an attribute it does not take (PATH_MTU)");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.path_mtu = IBV_MTU_512;
	rc = ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PATH_MTU);
	say("RTS->RTS with PATH_MTU: %s", errno_name(rc));
	if (rc != EINVAL)
		fail("RTS->RTS with IBV_QP_PATH_MTU: %d, expected EINVAL", rc);
	say_queried(qp, "after the refused change", 1);

	set_step("RTS->RTS changing MIN_RNR_TIMER (allowed)");
	a.min_rnr_timer = 20;
	rc = ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_MIN_RNR_TIMER);
	say("RTS->RTS with MIN_RNR_TIMER: %s", errno_name(rc));
	say_queried(qp, "after RTS->RTS", 1);

	destroy_qp(qp);
	destroy_cq(cq);
}

/* ------------------------------------------------------------------------ */
/* Memory windows: cases mw_type1 and mw_type2                              */

/* The MR a window is bound to: every right and IBV_ACCESS_MW_BIND. */
#define ACC_MW (ACC_ALL | IBV_ACCESS_MW_BIND)
/* The window lies at [WIN_OFF, WIN_OFF + WIN_LEN) of its 16 KiB MR. */
#define WIN_OFF 4096
#define WIN_LEN 4096

/* Two connected RC QPs on one CQ (in the window cases, A owns the window
 * and B accesses it). */
struct rc_pair {
	struct ibv_cq *cq;
	struct ibv_qp *a, *b;
};

static struct rc_pair rc_pair_new(void)
{
	struct rc_pair p;
	p.cq = cq_new(32);
	p.a = rc_qp_new(p.cq, p.cq);
	p.b = rc_qp_new(p.cq, p.cq);
	rc_connect_both(p.a, p.b);
	return p;
}

static void rc_pair_free(struct rc_pair *p)
{
	destroy_qp(p->a);
	destroy_qp(p->b);
	destroy_cq(p->cq);
}

static struct ibv_mw *mw_alloc(enum ibv_mw_type type, const char *what)
{
	set_step("ibv_alloc_mw %s", what);
	errno = 0;
	struct ibv_mw *mw = ibv_alloc_mw(E.pd, type);
	say("alloc_mw %s: %s", what, mw ? "made" : errno_name(errno));
	if (mw && mw->type != type)
		fail("alloc_mw %s: type %d", what, (int)mw->type);
	return mw;
}

/* Waits for one completion on cq and says its status (and opcode when successful). */
static enum ibv_wc_status say_next_wc(struct ibv_cq *cq, uint64_t wr_id, const char *what)
{
	struct ibv_wc wc;
	poll1(cq, &wc, what);
	say("%s: status %s%s%s", what, ibv_wc_status_str(wc.status),
	    wc.status == IBV_WC_SUCCESS ? " opcode " : "",
	    wc.status == IBV_WC_SUCCESS ? wc_opcode_str(wc.opcode) : "");
	if (wc.wr_id != wr_id)
		fail("%s: wr_id 0x%" PRIx64 ", expected 0x%" PRIx64, what, wc.wr_id, wr_id);
	return wc.status;
}

/* ibv_bind_mw (type 1) of [off, off + len) of mr with access; says the return and completion. */
static int bind1(struct ibv_qp *qp, struct ibv_cq *cq, struct ibv_mw *mw, struct ibv_mr *mr,
		 size_t off, size_t len, unsigned access, const char *what)
{
	set_step("ibv_bind_mw: %s", what);
	struct ibv_mw_bind b = {
		.wr_id = 0xB1,
		.send_flags = IBV_SEND_SIGNALED,
		.bind_info = { .mr = mr,
			       .addr = mr ? addr_of(mr->addr) + off : 0,
			       .length = len,
			       .mw_access_flags = access },
	};
	int rc = ibv_bind_mw(qp, mw, &b);
	say("bind_mw %s: %s", what, errno_name(rc));
	if (rc)
		return -1;
	return say_next_wc(cq, 0xB1, what);
}

/* IBV_WR_BIND_MW (type 2) of [off, off + len) of mr under rkey; says the completion. */
static int bind2(struct ibv_qp *qp, struct ibv_cq *cq, struct ibv_mw *mw, uint32_t rkey,
		 struct ibv_mr *mr, size_t off, size_t len, unsigned access, const char *what)
{
	set_step("IBV_WR_BIND_MW: %s", what);
	struct ibv_send_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = 0xB2;
	wr.opcode = IBV_WR_BIND_MW;
	wr.send_flags = IBV_SEND_SIGNALED;
	wr.bind_mw.mw = mw;
	wr.bind_mw.rkey = rkey;
	wr.bind_mw.bind_info.mr = mr;
	wr.bind_mw.bind_info.addr = addr_of(mr->addr) + off;
	wr.bind_mw.bind_info.length = len;
	wr.bind_mw.bind_info.mw_access_flags = access;
	int rc = ibv_post_send(qp, &wr, &bad);
	if (rc) {
		say("post BIND_MW %s: %s", what, errno_name(rc));
		return -1;
	}
	enum ibv_wc_status st = say_next_wc(cq, 0xB2, what);
	/*
	 * The window's rkey is now rkey. rxe matches the next bind's window by
	 * mw->rkey, which its provider leaves as it was: keep it current, as an
	 * application on rxe must.
	 */
	if (st == IBV_WC_SUCCESS)
		mw->rkey = rkey;
	return st;
}

/* IBV_WR_LOCAL_INV of rkey on qp; says the completion. */
static int local_inv(struct ibv_qp *qp, struct ibv_cq *cq, uint32_t rkey, const char *what)
{
	set_step("IBV_WR_LOCAL_INV: %s", what);
	struct ibv_send_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = 0x1A;
	wr.opcode = IBV_WR_LOCAL_INV;
	wr.send_flags = IBV_SEND_SIGNALED;
	wr.invalidate_rkey = rkey;
	int rc = ibv_post_send(qp, &wr, &bad);
	if (rc) {
		say("post LOCAL_INV %s: %s", what, errno_name(rc));
		return -1;
	}
	return say_next_wc(cq, 0x1A, what);
}

/*
 * B accesses A's memory mem through rkey with op (WRITE, READ or FETCH_AND_ADD) at
 * remote address base + off (base: where the region is addressed: the buffer, its IOVA,
 * or another address), len bytes from or into its buffer src at 64; says the status and
 * checks that the data moved, at offset off of mem, exactly when it succeeded.
 */
static enum ibv_wc_status access_at(struct rc_pair *p, struct buf *mem, struct buf *src,
				    enum ibv_wr_opcode op, uint64_t base, size_t off, uint32_t len,
				    uint32_t rkey, const char *what)
{
	set_step("%s", what);
	struct ibv_sge s = buf_sge(src, 64, len);
	struct ibv_send_wr wr;
	wr_init(&wr, 0xAC, op, &s, 1, IBV_SEND_SIGNALED);
	if (op == IBV_WR_ATOMIC_FETCH_AND_ADD) {
		wr.wr.atomic.remote_addr = base + off;
		wr.wr.atomic.rkey = rkey;
		wr.wr.atomic.compare_add = 1;
	} else {
		wr.wr.rdma.remote_addr = base + off;
		wr.wr.rdma.rkey = rkey;
	}
	post_send_ok(p->b, &wr, what);
	enum ibv_wc_status st = say_next_wc(p->cq, 0xAC, what);
	if (st == IBV_WC_SUCCESS && op == IBV_WR_RDMA_WRITE)
		buf_expect(mem, off, src->exp + 64, len);
	if (st == IBV_WC_SUCCESS && op == IBV_WR_RDMA_READ)
		buf_expect(src, 64, mem->exp + off, len);
	if (st == IBV_WC_SUCCESS && op == IBV_WR_ATOMIC_FETCH_AND_ADD) {
		uint64_t old;
		memcpy(&old, mem->exp + off, 8);
		uint64_t now = old + 1;
		buf_expect(src, 64, &old, 8);
		buf_expect(mem, off, &now, 8);
	}
	buf_check(mem, mem->name);
	buf_check(src, "B's buffer");
	return st;
}

/* access_at of memory addressed by its own address (an MR's, or a window's over it). */
static enum ibv_wc_status access_win(struct rc_pair *p, struct buf *win, struct buf *src,
				     enum ibv_wr_opcode op, size_t off, uint32_t len, uint32_t rkey,
				     const char *what)
{
	return access_at(p, win, src, op, addr_of(win->p), off, len, rkey, what);
}

static void case_mw_type1(void)
{
	struct buf *win = buf_reg(16384, "window MR", ACC_MW);
	struct buf *plain = buf_reg(16384, "MR without MW_BIND", ACC_ALL);
	struct buf *src = buf_reg(8192, "B's buffer", ACC_ALL);
	const unsigned rw = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

	struct ibv_mw *mw = mw_alloc(IBV_MW_TYPE_1, "type 1");
	if (!mw)
		fatal("ibv_alloc_mw(type 1) returned NULL, errno %d", errno);
	struct rc_pair p = rc_pair_new();

	uint32_t before = mw->rkey;
	if (bind1(p.a, p.cq, mw, win->mr, WIN_OFF, WIN_LEN, rw, "read/write") != IBV_WC_SUCCESS)
		fatal("binding the window failed");
	say("rkey after the bind: %s", mw->rkey != before ? "new" : "unchanged");
	if ((mw->rkey & ~0xffu) != (before & ~0xffu))
		fail("the bind changed the rkey's index: 0x%x -> 0x%x", before, mw->rkey);
	uint32_t first = mw->rkey;

	access_win(&p, win, src, IBV_WR_RDMA_WRITE, WIN_OFF, 100, mw->rkey,
		   "WRITE 100 B into the window");
	access_win(&p, win, src, IBV_WR_RDMA_READ, WIN_OFF + 200, 300, mw->rkey,
		   "READ 300 B from the window");
	access_win(&p, win, src, IBV_WR_RDMA_WRITE, 100, 64, win->mr->rkey,
		   "WRITE through the MR's own rkey");
	rc_pair_free(&p);
	p = rc_pair_new();
	access_win(&p, win, src, IBV_WR_RDMA_WRITE, WIN_OFF + WIN_LEN - 50, 100, mw->rkey,
		   "WRITE across the window's end");
	rc_pair_free(&p);
	p = rc_pair_new();
	access_win(&p, win, src, IBV_WR_RDMA_WRITE, WIN_OFF - 8, 16, mw->rkey,
		   "WRITE across the window's start");
	rc_pair_free(&p);
	p = rc_pair_new();
	access_win(&p, win, src, IBV_WR_ATOMIC_FETCH_AND_ADD, WIN_OFF, 8, mw->rkey,
		   "FETCH_ADD without the atomic right");
	rc_pair_free(&p);

	p = rc_pair_new();
	if (bind1(p.a, p.cq, mw, win->mr, WIN_OFF, WIN_LEN, IBV_ACCESS_REMOTE_READ,
		  "read only (a rebind)") == IBV_WC_SUCCESS) {
		say("rkey after the rebind: %s", mw->rkey != first ? "new" : "unchanged");
		access_win(&p, win, src, IBV_WR_RDMA_READ, WIN_OFF, 64, mw->rkey,
			   "READ through the rebound window");
		rc_pair_free(&p);
		p = rc_pair_new();
		access_win(&p, win, src, IBV_WR_RDMA_READ, WIN_OFF, 64, first,
			   "READ through the first bind's rkey");
		rc_pair_free(&p);
		p = rc_pair_new();
		access_win(&p, win, src, IBV_WR_RDMA_WRITE, WIN_OFF, 64, mw->rkey,
			   "WRITE to the read-only window");
		rc_pair_free(&p);
		p = rc_pair_new();
	}

	uint32_t bound = mw->rkey;
	/* (with the MR given: rxe's provider dereferences bind_info.mr even for length 0) */
	bind1(p.a, p.cq, mw, win->mr, WIN_OFF, 0, 0, "unbind (length 0)");
	access_win(&p, win, src, IBV_WR_RDMA_READ, WIN_OFF, 64, bound,
		   "READ through the unbound window's rkey");
	rc_pair_free(&p);

	set_step("ibv_dealloc_mw");
	int rc = ibv_dealloc_mw(mw);
	say("dealloc_mw: %s", errno_name(rc));

	/*
	 * Binds that fail, each on a window of its own (rxe's provider takes the
	 * next rkey as it posts, so a failed bind leaves its window unusable).
	 */
	struct {
		struct ibv_mr *mr;
		size_t off, len;
		unsigned access;
		const char *what;
	} bad[] = {
		{ plain->mr, WIN_OFF, WIN_LEN, rw, "to an MR without MW_BIND" },
		{ win->mr, 12288, 8192, rw, "past the MR's end" },
		{ win->mr, WIN_OFF - 8, 16, rw, "before the MR's start" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct ibv_mw *w = ibv_alloc_mw(E.pd, IBV_MW_TYPE_1);
		if (!w)
			fatal("ibv_alloc_mw(type 1) returned NULL, errno %d", errno);
		p = rc_pair_new();
		if (i == 2) {
			/* (the MR starts at the buffer; bind below it) */
			bad[i].off = 0;
			struct ibv_mw_bind b = { .wr_id = 0xB1, .send_flags = IBV_SEND_SIGNALED,
						 .bind_info = { .mr = win->mr,
								.addr = addr_of(win->p) - 8,
								.length = 16,
								.mw_access_flags = rw } };
			set_step("ibv_bind_mw: %s", bad[i].what);
			rc = ibv_bind_mw(p.a, w, &b);
			say("bind_mw %s: %s", bad[i].what, errno_name(rc));
			if (rc == 0)
				say_next_wc(p.cq, 0xB1, bad[i].what);
		} else {
			bind1(p.a, p.cq, w, bad[i].mr, bad[i].off, bad[i].len, bad[i].access,
			      bad[i].what);
		}
		rc_pair_free(&p);
		ibv_dealloc_mw(w);
	}
	buf_free(src);
	buf_free(plain);
	buf_free(win);
}

static void case_mw_type2(void)
{
	struct buf *win = buf_reg(16384, "window MR", ACC_MW);
	struct buf *plain = buf_reg(16384, "MR without MW_BIND", ACC_ALL);
	struct buf *src = buf_reg(8192, "B's buffer", ACC_ALL);
	const unsigned wr_ = IBV_ACCESS_REMOTE_WRITE;

	struct ibv_mw *mw = mw_alloc(IBV_MW_TYPE_2, "type 2");
	if (!mw)
		fatal("ibv_alloc_mw(type 2) returned NULL, errno %d", errno);
	struct rc_pair p = rc_pair_new();

	set_step("ibv_bind_mw on a type 2 window");
	struct ibv_mw_bind b1 = { .wr_id = 1,
				  .send_flags = IBV_SEND_SIGNALED,
				  .bind_info = { .mr = win->mr,
						 .addr = addr_of(win->p),
						 .length = 64,
						 .mw_access_flags = wr_ } };
	int rc = ibv_bind_mw(p.a, mw, &b1);
	say("bind_mw on type 2: %s", errno_name(rc));
	if (rc == 0)
		fail("ibv_bind_mw accepted a type 2 window");

	uint32_t k = ibv_inc_rkey(mw->rkey);
	bind2(p.a, p.cq, mw, k, plain->mr, WIN_OFF, WIN_LEN, wr_, "to an MR without MW_BIND");
	rc_pair_free(&p);
	/*
	 * A bound type 2 window is invalidated or deallocated before its QP
	 * goes (rxe's QP destruction waits for the window forever otherwise).
	 */
	p = rc_pair_new();
	if (bind2(p.a, p.cq, mw, k, win->mr, WIN_OFF, WIN_LEN, wr_, "write") != IBV_WC_SUCCESS)
		fatal("binding the window failed");
	access_win(&p, win, src, IBV_WR_RDMA_WRITE, WIN_OFF + 8, 500, k,
		   "WRITE 500 B into the window");
	struct rc_pair q = rc_pair_new();
	access_win(&q, win, src, IBV_WR_RDMA_WRITE, WIN_OFF + 8, 16, k,
		   "WRITE into the window through another QP");
	rc_pair_free(&q);
	local_inv(p.a, p.cq, k, "the bound window");
	access_win(&p, win, src, IBV_WR_RDMA_WRITE, WIN_OFF + 8, 16, k,
		   "WRITE after LOCAL_INV");
	rc_pair_free(&p);

	/* Rebound under a new key, then invalidated by the peer's SEND_WITH_INV. */
	p = rc_pair_new();
	k = ibv_inc_rkey(k);
	if (bind2(p.a, p.cq, mw, k, win->mr, WIN_OFF, WIN_LEN, wr_, "again, a new key") !=
	    IBV_WC_SUCCESS)
		fatal("rebinding the window failed");
	set_step("SEND_WITH_INV of the window's rkey, B to A");
	struct ibv_sge r = buf_sge(src, 4096, 256);
	recv1(p.a, 0xE0, &r, 1, "recv on A");
	struct ibv_sge s = buf_sge(src, 0, 32);
	struct ibv_send_wr wr, *bad = NULL;
	wr_init(&wr, 0xE1, IBV_WR_SEND_WITH_INV, &s, 1, IBV_SEND_SIGNALED);
	wr.invalidate_rkey = k;
	rc = ibv_post_send(p.b, &wr, &bad);
	if (rc)
		fatal("post SEND_WITH_INV: %d", rc);
	buf_expect(src, 4096, src->exp, 32);
	for (int i = 0; i < 2; i++) {
		struct ibv_wc wc;
		poll1(p.cq, &wc, "SEND_WITH_INV's completions");
		if (wc.wr_id == 0xE0) {
			say("SEND_WITH_INV at A: status %s opcode %s byte_len %u%s%s",
			    ibv_wc_status_str(wc.status), wc_opcode_str(wc.opcode), wc.byte_len,
			    wc.wc_flags & IBV_WC_WITH_INV ? " WITH_INV" : "",
			    wc.wc_flags & IBV_WC_WITH_IMM ? " WITH_IMM" : "");
			say("invalidated rkey: %s",
			    !(wc.wc_flags & IBV_WC_WITH_INV) ? "not reported"
			    : wc.invalidated_rkey == k	     ? "the window's"
							     : "another");
		} else {
			say("SEND_WITH_INV at B: status %s opcode %s", ibv_wc_status_str(wc.status),
			    wc_opcode_str(wc.opcode));
		}
	}
	buf_check(src, "B's buffer");
	access_win(&p, win, src, IBV_WR_RDMA_WRITE, WIN_OFF, 16, k, "WRITE after SEND_WITH_INV");
	rc_pair_free(&p);

	/* A bound window: its MR cannot go, and deallocating it ends access. */
	p = rc_pair_new();
	k = ibv_inc_rkey(k);
	if (bind2(p.a, p.cq, mw, k, win->mr, WIN_OFF, WIN_LEN, wr_, "a third time") !=
	    IBV_WC_SUCCESS)
		fatal("binding the window a third time failed");
	set_step("ibv_dereg_mr of the MR under a bound window");
	rc = ibv_dereg_mr(win->mr);
	say("dereg_mr under a bound window: %s", errno_name(rc));
	if (rc == 0)
		win->mr = reg(win->p, win->n, ACC_MW);
	set_step("ibv_dealloc_mw of a bound window");
	rc = ibv_dealloc_mw(mw);
	say("dealloc_mw of a bound window: %s", errno_name(rc));
	access_win(&p, win, src, IBV_WR_RDMA_WRITE, WIN_OFF, 16, k, "WRITE after dealloc_mw");
	rc_pair_free(&p);

	/* A type 1 window cannot be bound by a work request, nor invalidated. */
	struct ibv_mw *t1 = mw_alloc(IBV_MW_TYPE_1, "type 1");
	if (t1) {
		p = rc_pair_new();
		bind2(p.a, p.cq, t1, ibv_inc_rkey(t1->rkey), win->mr, WIN_OFF, WIN_LEN, wr_,
		      "a type 1 window");
		rc_pair_free(&p);
		p = rc_pair_new();
		if (bind1(p.a, p.cq, t1, win->mr, WIN_OFF, WIN_LEN, wr_, "type 1 to invalidate") ==
		    IBV_WC_SUCCESS)
			local_inv(p.a, p.cq, t1->rkey, "a type 1 window");
		rc_pair_free(&p);
		ibv_dealloc_mw(t1);
	}
	buf_free(src);
	buf_free(plain);
	buf_free(win);
}

/* ------------------------------------------------------------------------ */
/* Case: mr_variants                                                         */

/*
 * A region registered with ibv_reg_mr_iova2 under an IOVA other than its
 * address: remote and local addresses are in the IOVA's space, which
 * lies far from the buffer (the same offset in the page).
 */
static void case_mr_variants(void)
{
	struct buf *mem = buf_alloc(16384, "IOVA region");
	struct buf *src = buf_reg(16384, "B's buffer", ACC_ALL);
	uint64_t va = addr_of(mem->p);
	uint64_t iova = 0x100000000000ull + (va & 0xfff);
	struct rc_pair p;

	set_step("ibv_reg_mr_iova2 with an IOVA other than the address");
	errno = 0;
	struct ibv_mr *mr = ibv_reg_mr_iova2(E.pd, mem->p, mem->n, iova, ACC_MW);
	say("reg_mr_iova2: %s", mr ? "made" : errno_name(errno));
	if (!mr)
		fatal("ibv_reg_mr_iova2 returned NULL, errno %d (%s)", errno, strerror(errno));
	mem->mr = mr;

	p = rc_pair_new();
	access_at(&p, mem, src, IBV_WR_RDMA_WRITE, iova, 4096, 100, mr->rkey,
		    "WRITE 100 B at IOVA + 4096");
	access_at(&p, mem, src, IBV_WR_RDMA_READ, iova, 8000, 64, mr->rkey,
		    "READ 64 B at IOVA + 8000");
	access_at(&p, mem, src, IBV_WR_ATOMIC_FETCH_AND_ADD, iova, 64, 8, mr->rkey,
		    "FETCH_ADD at IOVA + 64");

	set_step("SEND from the IOVA region (its SGE in IOVA space)");
	struct ibv_sge r = buf_sge(src, 9000, 300);
	recv1(p.b, 0xC0, &r, 1, "recv on B");
	struct ibv_sge s = { .addr = iova + 200, .length = 300, .lkey = mr->lkey };
	send1(p.a, 0xC1, IBV_WR_SEND, &s, 1, 0, 0, 0, "send A->B");
	buf_expect(src, 9000, mem->exp + 200, 300);
	for (int i = 0; i < 2; i++) {
		struct ibv_wc wc;
		poll1(p.cq, &wc, "the SEND's completions");
		say("SEND from IOVA space, %s: status %s", wc.wr_id == 0xC0 ? "receive" : "send",
		    ibv_wc_status_str(wc.status));
	}
	buf_check(src, "B's buffer");

	set_step("a type 1 window over IOVA + 4096");
	struct ibv_mw *mw = ibv_alloc_mw(E.pd, IBV_MW_TYPE_1);
	if (!mw)
		fatal("ibv_alloc_mw(type 1) returned NULL, errno %d", errno);
	struct ibv_mw_bind b = { .wr_id = 0xB1, .send_flags = IBV_SEND_SIGNALED,
				 .bind_info = { .mr = mr, .addr = iova + 4096, .length = 4096,
						.mw_access_flags = IBV_ACCESS_REMOTE_WRITE } };
	int rc = ibv_bind_mw(p.a, mw, &b);
	say("bind_mw in IOVA space: %s", errno_name(rc));
	if (rc == 0 && say_next_wc(p.cq, 0xB1, "bind in IOVA space") == IBV_WC_SUCCESS)
		access_at(&p, mem, src, IBV_WR_RDMA_WRITE, iova, 4096 + 16, 32, mw->rkey,
			    "WRITE through the window at IOVA + 4112");
	rc_pair_free(&p);
	ibv_dealloc_mw(mw);

	p = rc_pair_new();
	access_at(&p, mem, src, IBV_WR_RDMA_WRITE, va, 4096, 16, mr->rkey,
		    "WRITE at the buffer's address instead of its IOVA");
	rc_pair_free(&p);

	set_step("ibv_reg_dmabuf_mr of a descriptor that is no dma-buf");
	errno = 0;
	struct ibv_mr *dm = ibv_reg_dmabuf_mr(E.pd, 0, 4096, 0, 0, IBV_ACCESS_LOCAL_WRITE);
	say("reg_dmabuf_mr: %s", dm ? "made" : errno_name(errno));
	if (dm)
		dereg(dm);
	buf_free(src);
	buf_free(mem);
}

/* ------------------------------------------------------------------------ */
/* Case: mr_rereg                                                            */

/* A status the case requires (its canonical line is said already). */
static void want(enum ibv_wc_status got, enum ibv_wc_status exp)
{
	if (got != exp)
		fail("status %s, expected %s", ibv_wc_status_str(got), ibv_wc_status_str(exp));
}

/* ibv_rereg_mr(3) of mr; says and checks its return. */
static int rereg(struct ibv_mr *mr, int flags, struct ibv_pd *pd, struct buf *b, int access,
		 const char *what)
{
	set_step("ibv_rereg_mr: %s", what);
	int rc = ibv_rereg_mr(mr, flags, pd, b ? b->p : NULL, b ? b->n : 0, access);
	say("rereg_mr %s: %d", what, rc);
	if (rc)
		fail("ibv_rereg_mr(%s) returned %d, errno %d (%s)", what, rc, errno, strerror(errno));
	return rc;
}

static void case_mr_rereg(void)
{
	struct buf *mem = buf_reg(16384, "the region", ACC_ALL);
	struct buf *other = buf_alloc(16384, "another range");
	struct buf *src = buf_reg(16384, "B's buffer", ACC_ALL);
	struct ibv_mr *mr = mem->mr;
	struct rc_pair p = rc_pair_new();
	want(access_win(&p, mem, src, IBV_WR_RDMA_WRITE, 100, 64, mr->rkey, "WRITE before"),
	     IBV_WC_SUCCESS);
	uint32_t before = mr->rkey;

	if (rereg(mr, IBV_REREG_MR_CHANGE_ACCESS, NULL, NULL,
		  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ, "to read only"))
		return;
	want(access_win(&p, mem, src, IBV_WR_RDMA_READ, 200, 64, mr->rkey, "READ after"),
	     IBV_WC_SUCCESS);
	rc_pair_free(&p);
	p = rc_pair_new();
	want(access_win(&p, mem, src, IBV_WR_RDMA_WRITE, 300, 64, mr->rkey, "WRITE after"),
	     IBV_WC_REM_ACCESS_ERR);
	rc_pair_free(&p);
	if (mr->rkey != before) {
		p = rc_pair_new();
		want(access_win(&p, mem, src, IBV_WR_RDMA_READ, 200, 64, before,
				"READ under the old rkey"),
		     IBV_WC_REM_ACCESS_ERR);
		rc_pair_free(&p);
	}

	/* The region now covers the other range (same access). */
	if (rereg(mr, IBV_REREG_MR_CHANGE_TRANSLATION, NULL, other, 0, "to another range"))
		return;
	if (mr->addr != other->p || mr->length != other->n)
		fail("mr->addr/length: %p+%zu, expected %p+%zu", mr->addr, mr->length,
		     (void *)other->p, other->n);
	p = rc_pair_new();
	want(access_win(&p, other, src, IBV_WR_RDMA_READ, 500, 128, mr->rkey,
			"READ of the new range"),
	     IBV_WC_SUCCESS);
	want(access_win(&p, mem, src, IBV_WR_RDMA_READ, 500, 128, mr->rkey,
			"READ of the old range"),
	     IBV_WC_REM_ACCESS_ERR);
	rc_pair_free(&p);

	/* Into another PD: no longer reachable from QPs of the first one. */
	struct ibv_pd *pd2 = ibv_alloc_pd(E.ctx);
	if (!pd2)
		fatal("ibv_alloc_pd returned NULL");
	if (rereg(mr, IBV_REREG_MR_CHANGE_PD, pd2, NULL, 0, "to another PD"))
		return;
	p = rc_pair_new();
	want(access_win(&p, other, src, IBV_WR_RDMA_READ, 500, 128, mr->rkey,
			"READ from a QP of the first PD"),
	     IBV_WC_REM_ACCESS_ERR);
	rc_pair_free(&p);
	set_step("ibv_dereg_mr after the re-registrations");
	int rc = ibv_dereg_mr(mr);
	say("dereg_mr: %s", errno_name(rc));
	if (rc)
		fail("ibv_dereg_mr after the re-registrations: %d", rc);
	mem->mr = NULL;
	dealloc_pd(pd2);
	buf_free(src);
	buf_free(other);
	buf_free(mem);
}

/* ------------------------------------------------------------------------ */
/* Case: qp_ex_windows                                                       */

/*
 * The builder's window operations: ibv_wr_bind_mw of a type 2 window,
 * RDMA through it, ibv_wr_local_inv, a rebind, and the peer's
 * ibv_wr_send_inv.
 */
static void case_qp_ex_windows(void)
{
	const uint64_t ops = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_WRITE |
			     IBV_QP_EX_WITH_BIND_MW | IBV_QP_EX_WITH_LOCAL_INV |
			     IBV_QP_EX_WITH_SEND_WITH_INV;
	struct ibv_cq *cq = cq_new(64);
	struct ibv_qp *a = qp_ex_try(IBV_QPT_RC, cq, ops);
	struct ibv_qp *b = qp_ex_try(IBV_QPT_RC, cq, ops);
	say("create_qp_ex with the window operations: %s", a && b ? "made" : errno_name(errno));
	if (!a || !b)
		fatal("ibv_create_qp_ex returned NULL, errno %d (%s)", errno, strerror(errno));
	struct ibv_qp_ex *ax = ibv_qp_to_qp_ex(a), *bx = ibv_qp_to_qp_ex(b);
	rc_connect_both(a, b);
	struct buf *win = buf_reg(16384, "window MR", ACC_MW);
	struct buf *src = buf_reg(16384, "B's buffer", ACC_ALL);
	struct ibv_mw *mw = ibv_alloc_mw(E.pd, IBV_MW_TYPE_2);
	if (!mw)
		fatal("ibv_alloc_mw(type 2) returned NULL, errno %d", errno);
	struct ibv_wc wc;

	for (int round = 0; round < 2; round++) {
		uint32_t k = ibv_inc_rkey(mw->rkey);
		struct ibv_mw_bind_info info = { .mr = win->mr, .addr = addr_of(win->p) + WIN_OFF,
						 .length = WIN_LEN,
						 .mw_access_flags = IBV_ACCESS_REMOTE_WRITE };
		set_step("ibv_wr_bind_mw, round %d", round);
		ibv_wr_start(ax);
		ax->wr_id = 0xB2;
		ax->wr_flags = IBV_SEND_SIGNALED;
		ibv_wr_bind_mw(ax, mw, k, &info);
		int rc = ibv_wr_complete(ax);
		say("wr_bind_mw, round %d: %s", round, errno_name(rc));
		if (rc)
			fatal("ibv_wr_complete of a bind returned %d", rc);
		poll1(cq, &wc, "the bind");
		say_wc("bind", &wc);
		mw->rkey = k; /* as an application on rxe keeps it */

		set_step("B writes through the window, round %d", round);
		ibv_wr_start(bx);
		bx->wr_id = 0xBB;
		bx->wr_flags = IBV_SEND_SIGNALED;
		ibv_wr_rdma_write(bx, k, addr_of(win->p) + WIN_OFF + 64);
		ibv_wr_set_sge(bx, src->mr->lkey, addr_of(src->p), 200);
		if (ibv_wr_complete(bx))
			fatal("ibv_wr_complete of a WRITE failed");
		buf_expect(win, WIN_OFF + 64, src->exp, 200);
		poll1(cq, &wc, "the WRITE");
		say_wc("WRITE through the window", &wc);
		buf_check(win, "the window's MR");

		if (round == 0) {
			set_step("ibv_wr_local_inv");
			ibv_wr_start(ax);
			ax->wr_id = 0x1A;
			ax->wr_flags = IBV_SEND_SIGNALED;
			ibv_wr_local_inv(ax, k);
			if (ibv_wr_complete(ax))
				fatal("ibv_wr_complete of a LOCAL_INV failed");
			poll1(cq, &wc, "the LOCAL_INV");
			say_wc("local invalidation", &wc);
		} else {
			set_step("ibv_wr_send_inv from B");
			struct ibv_sge r = buf_sge(src, 8192, 64);
			recv1(a, 0xE0, &r, 1, "recv on A");
			ibv_wr_start(bx);
			bx->wr_id = 0xE1;
			bx->wr_flags = IBV_SEND_SIGNALED;
			ibv_wr_send_inv(bx, k);
			ibv_wr_set_sge(bx, src->mr->lkey, addr_of(src->p) + 100, 48);
			if (ibv_wr_complete(bx))
				fatal("ibv_wr_complete of a SEND_WITH_INV failed");
			buf_expect(src, 8192, src->exp + 100, 48);
			struct ibv_wc two[2];
			poll_some(cq, two, 2, "the SEND_WITH_INV");
			const struct ibv_wc *recv = wc_with_id(two, 2, 0xE0);
			say_wc("SEND_WITH_INV, sender", wc_with_id(two, 2, 0xE1));
			say_wc("SEND_WITH_INV, receiver", recv);
			if (recv)
				say("invalidated rkey at the receiver: %s",
				    !(recv->wc_flags & IBV_WC_WITH_INV) ? "not reported"
				    : recv->invalidated_rkey == k	 ? "the window's"
									 : "another");
			buf_check(src, "B's buffer");
		}
	}
	/* Free again after the SEND_WITH_INV: a third bind succeeds. */
	uint32_t k = ibv_inc_rkey(mw->rkey);
	struct ibv_mw_bind_info info = { .mr = win->mr, .addr = addr_of(win->p), .length = 64,
					 .mw_access_flags = IBV_ACCESS_REMOTE_WRITE };
	ibv_wr_start(ax);
	ax->wr_id = 0xB3;
	ax->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_bind_mw(ax, mw, k, &info);
	if (ibv_wr_complete(ax))
		fatal("ibv_wr_complete of the third bind failed");
	poll1(cq, &wc, "the third bind");
	say_wc("a third bind", &wc);
	ibv_dealloc_mw(mw);
	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq);
	buf_free(src);
	buf_free(win);
}

/* ------------------------------------------------------------------------ */
/* Case: qp_ex_full                                                          */

/*
 * A batch that does not fit in the send queue: ibv_wr_complete fails with
 * ENOMEM and posts none of it (ibv_wr_post(3): the WRs are posted only if
 * ibv_wr_complete succeeds).
 */
static void case_qp_ex_full(void)
{
	struct ibv_cq *cq = cq_new(64);
	struct ibv_qp_init_attr_ex ia = {
		.send_cq = cq,
		.recv_cq = cq,
		.cap = { .max_send_wr = 4, .max_recv_wr = 16, .max_send_sge = 1, .max_recv_sge = 1 },
		.qp_type = IBV_QPT_RC,
		.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
		.pd = E.pd,
		.send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_WRITE,
	};
	struct ibv_qp *a = ibv_create_qp_ex(E.ctx, &ia);
	if (!a)
		fatal("ibv_create_qp_ex returned NULL, errno %d (%s)", errno, strerror(errno));
	unsigned cap = ia.cap.max_send_wr;
	struct ibv_qp *b = rc_qp_new(cq, cq);
	rc_connect_both(a, b);
	struct ibv_qp_ex *ax = ibv_qp_to_qp_ex(a);
	struct buf *buf = buf_reg(16384, "buffer", ACC_ALL);

	set_step("%u SENDs that wait for receives at B", cap - 1);
	for (unsigned i = 0; i < cap - 1; i++) {
		struct ibv_sge s = buf_sge(buf, 100 * i, 16);
		send1(a, 0x50 + i, IBV_WR_SEND, &s, 1, 0, 0, 0, "a SEND that waits");
	}
	set_step("a batch of two WRITEs with one slot left");
	ibv_wr_start(ax);
	for (int i = 0; i < 2; i++) {
		ax->wr_id = 0x70 + i;
		ax->wr_flags = IBV_SEND_SIGNALED;
		ibv_wr_rdma_write(ax, buf->mr->rkey, addr_of(buf->p) + 8192 + 64 * i);
		ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p) + 4096, 32);
	}
	int rc = ibv_wr_complete(ax);
	say("wr_complete of a batch that does not fit: %s", errno_name(rc));
	if (rc != ENOMEM)
		fail("ibv_wr_complete returned %d, expected ENOMEM", rc);
	if (rc == 0) {
		buf_expect(buf, 8192, buf->exp + 4096, 32);
		buf_expect(buf, 8192 + 64, buf->exp + 4096, 32);
	}

	set_step("receives at B: the SENDs complete, and nothing else");
	for (unsigned i = 0; i < cap - 1; i++) {
		struct ibv_sge r = buf_sge(buf, 12000 + 100 * i, 16);
		recv1(b, 0x90 + i, &r, 1, "recv on B");
		buf_expect(buf, 12000 + 100 * i, buf->exp + 100 * i, 16);
	}
	unsigned sends = 0, recvs = 0, others = 0;
	for (unsigned i = 0; i < 2 * (cap - 1); i++) {
		struct ibv_wc wc;
		poll1(cq, &wc, "the SENDs' completions");
		if (wc.status != IBV_WC_SUCCESS)
			fail("completion 0x%" PRIx64 ": status %s", wc.wr_id,
			     ibv_wc_status_str(wc.status));
		if (wc.wr_id >= 0x50 && wc.wr_id < 0x50 + cap)
			sends++;
		else if (wc.wr_id >= 0x90 && wc.wr_id < 0x90 + cap)
			recvs++;
		else
			others++;
	}
	struct ibv_wc extra;
	int n = wait_wc(cq, &extra, 0.3);
	say("after the receives: %s SENDs and receives completed, %s more",
	    sends == cap - 1 && recvs == cap - 1 && !others ? "all" : "not all",
	    n > 0 ? "a completion" : "nothing");
	if (n > 0)
		fail("an extra completion: wr_id 0x%" PRIx64 " (part of the refused batch?)",
		     extra.wr_id);
	buf_check(buf, "buffer");

	set_step("the same batch, now that it fits");
	ibv_wr_start(ax);
	for (int i = 0; i < 2; i++) {
		ax->wr_id = 0x70 + i;
		ax->wr_flags = IBV_SEND_SIGNALED;
		ibv_wr_rdma_write(ax, buf->mr->rkey, addr_of(buf->p) + 8192 + 64 * i);
		ibv_wr_set_sge(ax, buf->mr->lkey, addr_of(buf->p) + 4096, 32);
	}
	rc = ibv_wr_complete(ax);
	say("wr_complete of a batch that fits: %s", errno_name(rc));
	if (rc)
		fatal("ibv_wr_complete returned %d", rc);
	buf_expect(buf, 8192, buf->exp + 4096, 32);
	buf_expect(buf, 8192 + 64, buf->exp + 4096, 32);
	for (int i = 0; i < 2; i++) {
		struct ibv_wc wc;
		poll1(cq, &wc, "the WRITEs");
		say_wc("a WRITE of the batch", &wc);
	}
	buf_check(buf, "buffer");
	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq);
	buf_free(buf);
}

/* ------------------------------------------------------------------------ */
/* Case: resize_cq                                                           */

/* ibv_resize_cq(cq, cqe), said as "resize <what>: <errno>"; on success cq->cqe must cover cqe. */
static int resize(struct ibv_cq *cq, int cqe, const char *what)
{
	set_step("ibv_resize_cq(%d): %s", cqe, what);
	int rc = ibv_resize_cq(cq, cqe);
	say("resize %s: %s", what, errno_name(rc));
	if (rc == 0 && cq->cqe < cqe)
		fail("%s: ibv_resize_cq(%d) returned 0 but cq->cqe is %d", what, cqe, cq->cqe);
	return rc;
}

/*
 * n SENDs of 16 bytes A->B (wr_ids 0xA000 + i and, received, 0xB000 + i for
 * i in [first, first + n)), waiting for their send completions on scq: a
 * receive completion is written before the acknowledgement that completes
 * the send (on rxe as on fv0), so B's receive CQ then holds all n.
 */
static void sends_landed(struct ibv_qp *a, struct ibv_qp *b, struct ibv_cq *scq, struct buf *buf,
			 int first, int n)
{
	for (int i = first; i < first + n; i++) {
		struct ibv_sge r = buf_sge(buf, 2048 + 16 * (i % 64), 16);
		recv1(b, 0xB000 + i, &r, 1, "recv on B");
	}
	for (int i = first; i < first + n; i++) {
		buf->p[16 * (i % 64)] = (uint8_t)i;
		struct ibv_sge s = buf_sge(buf, 16 * (i % 64), 16);
		send1(a, 0xA000 + i, IBV_WR_SEND, &s, 1, 0, 0, 0, "send A->B");
	}
	for (int i = first; i < first + n; i++)
		expect_wc(scq, "a send's completion", 0xA000 + i, IBV_WC_SUCCESS, IBV_WC_SEND, a, NULL);
}

/* Polls the receive completions [first, first + n) from cq, in order, data checked. */
static void receives_in_order(struct ibv_cq *cq, struct ibv_qp *b, struct buf *buf, int first,
			      int n, const char *when)
{
	int ok = 1;
	for (int i = first; i < first + n; i++) {
		struct ibv_wc wc;
		ok &= expect_wc(cq, when, 0xB000 + i, IBV_WC_SUCCESS, IBV_WC_RECV, b, &wc);
		if (wc.status == IBV_WC_SUCCESS && wc.byte_len != 16) {
			fail("%s: receive %d: byte_len %u, expected 16", when, i, wc.byte_len);
			ok = 0;
		}
		if (buf->p[2048 + 16 * (i % 64)] != (uint8_t)i) {
			fail("%s: receive %d holds message %u", when, i, buf->p[2048 + 16 * (i % 64)]);
			ok = 0;
		}
	}
	say("%s: %d receives, in order, data checked: %s", when, n, ok ? "yes" : "no");
}

/* Nothing more on cq. */
static void cq_empty(struct ibv_cq *cq, const char *when)
{
	struct ibv_wc wc;
	int n = ibv_poll_cq(cq, 1, &wc);
	say("%s: CQ empty: %s", when, n == 0 ? "yes" : "no");
	if (n != 0)
		fail("%s: ibv_poll_cq returned %d (wr_id 0x%" PRIx64 ")", when, n, wc.wr_id);
}

/*
 * ibv_resize_cq(3): grows and shrinks a CQ that holds completions, which
 * are all polled afterwards, once each, in order; a size below what the CQ
 * holds, 0 or above max_cqe is EINVAL and changes nothing; a CQ armed
 * before a resize still gets its event.
 */
static void case_resize_cq(void)
{
	struct ibv_comp_channel *ch = chan_new();
	struct ibv_cq *cq = cq_new_ch(8, ch, NULL);
	struct ibv_cq *scq = cq_new(64);
	struct ibv_qp *a = rc_qp_new(scq, scq);
	struct ibv_qp *b = rc_qp_new(scq, cq);
	rc_connect_both(a, b);
	struct buf *buf = buf_reg(4096, "buffer", ACC_ALL);

	sends_landed(a, b, scq, buf, 0, 6);
	resize(cq, 4, "below the 6 completions held");
	resize(cq, 0, "to 0");
	resize(cq, E.dev.max_cqe + 1, "above max_cqe");
	resize(cq, 64, "to 64 with 6 held");
	receives_in_order(cq, b, buf, 0, 2, "after growing");
	sends_landed(a, b, scq, buf, 6, 6);
	resize(cq, 9, "below the 10 completions held");
	resize(cq, 16, "to 16 with 10 held");
	resize(cq, 12, "to 12 with 10 held");
	receives_in_order(cq, b, buf, 2, 10, "after shrinking");
	cq_empty(cq, "after shrinking");

	set_step("an event armed before a resize");
	if (ibv_req_notify_cq(cq, 0))
		fail("ibv_req_notify_cq failed");
	resize(cq, 32, "while armed");
	sends_landed(a, b, scq, buf, 12, 1);
	struct pollfd pfd = { .fd = ch->fd, .events = POLLIN };
	int ready = poll(&pfd, 1, 10000);
	say("event after the resize: %s", ready == 1 ? "yes" : "no");
	if (ready == 1) {
		struct ibv_cq *ev_cq;
		void *ev_ctx;
		if (ibv_get_cq_event(ch, &ev_cq, &ev_ctx) || ev_cq != cq)
			fail("ibv_get_cq_event: not this CQ's event");
		else
			ibv_ack_cq_events(cq, 1);
	} else {
		fail("no completion event within 10 s of a receive on a CQ armed before a resize");
	}
	receives_in_order(cq, b, buf, 12, 1, "after the event");
	cq_empty(cq, "at the end");
	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq);
	destroy_cq(scq);
	destroy_channel(ch);
	buf_free(buf);
}

/* ------------------------------------------------------------------------ */
/* Case: resize_cq_traffic                                                   */

/*
 * A thread sends while another polls and resizes: A's sends and B's
 * receives complete on one CQ, which the polling thread resizes every
 * RT_EVERY completions through RT_SIZES (shrinking only to what the sender's
 * window can hold). Every send and receive must complete once, in order,
 * with its data. In semi mode the sending thread writes both completions
 * itself, into rings the resize moves.
 */
#define RT_MESSAGES 6000
#define RT_WINDOW 8
#define RT_EVERY 61
static const int rt_sizes[] = { 64, 16, 1024, 32, 256, 17, 4096 };

struct rt_shared {
	struct ibv_qp *a;
	struct buf *buf;
	volatile int stop;
	int sent;             /* by the sender */
	int completed;        /* sends completed, by the poller (atomic) */
	int post_failed;
};

static void *rt_sender(void *arg)
{
	struct rt_shared *t = arg;
	for (int i = 0; i < RT_MESSAGES && !t->stop; i++) {
		while (i - __atomic_load_n(&t->completed, __ATOMIC_ACQUIRE) >= RT_WINDOW && !t->stop)
			sched_yield();
		uint8_t *m = t->buf->p + 64 * (i % RT_WINDOW);
		memcpy(m, &i, sizeof(i));
		struct ibv_sge s = buf_sge(t->buf, 64 * (i % RT_WINDOW), 64);
		struct ibv_send_wr wr, *bad = NULL;
		wr_init(&wr, (uint64_t)i, IBV_WR_SEND, &s, 1, IBV_SEND_SIGNALED);
		int rc = ibv_post_send(t->a, &wr, &bad);
		if (rc) {
			t->post_failed = rc;
			break;
		}
		t->sent = i + 1;
	}
	return NULL;
}

static void case_resize_cq_traffic(void)
{
	struct ibv_cq *cq = cq_new(64);
	struct qp_cfg c = CFG_DEFAULT;
	struct ibv_qp *a = qp_create(IBV_QPT_RC, cq, cq, NULL, &c);
	struct ibv_qp *b = qp_create(IBV_QPT_RC, cq, cq, NULL, &c);
	rc_connect_both(a, b);
	struct buf *sbuf = buf_reg(64 * RT_WINDOW, "send buffer", ACC_ALL);
	struct buf *rbuf = buf_reg(64 * 2 * RT_WINDOW, "receive buffer", ACC_ALL);
	/* B always has twice the sender's window of receives posted. */
	int posted = 0;
	for (; posted < 2 * RT_WINDOW; posted++) {
		struct ibv_sge r = buf_sge(rbuf, 64 * (posted % (2 * RT_WINDOW)), 64);
		recv1(b, (uint64_t)posted, &r, 1, "recv on B");
	}
	struct rt_shared t = { .a = a, .buf = sbuf };
	pthread_t th;
	if (pthread_create(&th, NULL, rt_sender, &t))
		fatal("pthread_create failed");
	int sends = 0, recvs = 0, polled = 0, resizes = 0, resize_failed = 0, bad = 0;
	double give_up = now_s() + 120;
	set_step("sending %d messages while resizing", RT_MESSAGES);
	while ((sends < RT_MESSAGES || recvs < RT_MESSAGES) && !bad) {
		struct ibv_wc wc[8];
		int n = ibv_poll_cq(cq, 8, wc);
		if (n < 0) {
			fail("ibv_poll_cq returned %d", n);
			break;
		}
		if (n == 0) {
			if (t.post_failed || now_s() > give_up) {
				fail("stuck after %d sends and %d receives completed (%d posted, "
				     "post error %d, %d resizes)",
				     sends, recvs, t.sent, t.post_failed, resizes);
				break;
			}
			sched_yield();
			continue;
		}
		for (int k = 0; k < n && !bad; k++) {
			const struct ibv_wc *w = &wc[k];
			if (w->status != IBV_WC_SUCCESS) {
				fail("completion %d: status %s (wr_id %" PRIu64 ", qp 0x%x)", polled,
				     ibv_wc_status_str(w->status), w->wr_id, w->qp_num);
				bad = 1;
			} else if (w->qp_num == a->qp_num && w->opcode == IBV_WC_SEND) {
				if (w->wr_id != (uint64_t)sends) {
					fail("send completion %d has wr_id %" PRIu64, sends, w->wr_id);
					bad = 1;
				}
				sends++;
				__atomic_store_n(&t.completed, sends, __ATOMIC_RELEASE);
			} else if (w->qp_num == b->qp_num && w->opcode == IBV_WC_RECV) {
				int m = -1;
				memcpy(&m, rbuf->p + 64 * (w->wr_id % (2 * RT_WINDOW)), sizeof(m));
				if (w->wr_id != (uint64_t)recvs || w->byte_len != 64 || m != recvs) {
					fail("receive %d: wr_id %" PRIu64 ", %u bytes, message %d", recvs,
					     w->wr_id, w->byte_len, m);
					bad = 1;
				}
				recvs++;
				if (posted < RT_MESSAGES) {
					struct ibv_sge r =
						buf_sge(rbuf, 64 * (posted % (2 * RT_WINDOW)), 64);
					recv1(b, (uint64_t)posted, &r, 1, "recv on B");
					posted++;
				}
			} else {
				fail("completion %d: opcode %s of qp 0x%x", polled,
				     wc_opcode_str(w->opcode), w->qp_num);
				bad = 1;
			}
			polled++;
			if (polled % RT_EVERY == 0) {
				int size = rt_sizes[resizes % (sizeof(rt_sizes) / sizeof(rt_sizes[0]))];
				int rc = ibv_resize_cq(cq, size);
				if (rc) {
					fail("resize %d to %d after %d completions: %d (%s)", resizes,
					     size, polled, rc, strerror(rc));
					resize_failed++;
				} else if (cq->cqe < size) {
					fail("resize %d to %d: cq->cqe %d", resizes, size, cq->cqe);
				}
				resizes++;
			}
		}
	}
	t.stop = 1;
	pthread_join(th, NULL);
	say("traffic: %d sends and %d receives completed, in order, data checked: %s", sends, recvs,
	    sends == RT_MESSAGES && recvs == RT_MESSAGES && !bad ? "yes" : "no");
	say("traffic: every resize returned 0: %s", resizes > 0 && !resize_failed ? "yes" : "no");
	cq_empty(cq, "after the traffic");
	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq);
	buf_free(sbuf);
	buf_free(rbuf);
}

/* ------------------------------------------------------------------------ */
/* Case: qp_ex_misuse                                                        */

/* ibv_wr_complete of a misbuilt batch: EINVAL (ibv_wr_post(3): a failed
 * ibv_wr_complete posts none of the batch). */
static void complete_refused(struct ibv_qp_ex *ax, const char *what)
{
	set_step("%s", what);
	int rc = ibv_wr_complete(ax);
	say("%s: wr_complete %s", what, errno_name(rc));
	if (rc != EINVAL)
		fail("%s: ibv_wr_complete returned %d (%s), expected EINVAL", what, rc,
		     strerror(rc));
}

/*
 * Misuse of the builder, each in its own batch: a data setter with no
 * operation before it, an operation the QP was not created for
 * (send_ops_flags), a second data setter for one operation, inline data
 * for an RDMA READ. Each batch fails as a whole; a SEND built correctly
 * afterwards is the only thing that reaches the peer and completes.
 */
static void case_qp_ex_misuse(void)
{
	struct ibv_cq *cq = cq_new(64);
	uint64_t ops = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_READ;
	struct ibv_qp *a = qp_ex_try(IBV_QPT_RC, cq, ops);
	struct ibv_qp *b = qp_ex_try(IBV_QPT_RC, cq, ops);
	if (!a || !b)
		fatal("ibv_create_qp_ex returned NULL, errno %d (%s)", errno, strerror(errno));
	struct ibv_qp_ex *ax = ibv_qp_to_qp_ex(a);
	rc_connect_both(a, b);
	struct buf *buf = buf_reg(16384, "buffer", ACC_ALL);
	uint32_t lkey = buf->mr->lkey, rkey = buf->mr->rkey;
	uint64_t base = addr_of(buf->p);
	struct ibv_sge r = buf_sge(buf, 8000, 1000);
	recv1(b, 0xB0, &r, 1, "recv on B");

	ibv_wr_start(ax);
	ax->wr_id = 0xE0;
	ax->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_set_sge(ax, lkey, base, 16);
	complete_refused(ax, "a data setter before any operation");

	ibv_wr_start(ax);
	ax->wr_id = 0xE1;
	ax->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_rdma_write(ax, rkey, base + 4096);
	ibv_wr_set_sge(ax, lkey, base, 16);
	complete_refused(ax, "an RDMA WRITE on a QP made for SEND and READ");

	ibv_wr_start(ax);
	ax->wr_id = 0xE2;
	ax->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_send(ax);
	ibv_wr_set_sge(ax, lkey, base, 16);
	ibv_wr_set_sge(ax, lkey, base + 16, 16);
	complete_refused(ax, "a SEND given two data setters");

	ibv_wr_start(ax);
	ax->wr_id = 0xE3;
	ax->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_rdma_read(ax, rkey, base + 4096);
	ibv_wr_set_inline_data(ax, buf->p, 16);
	complete_refused(ax, "an RDMA READ given inline data");

	set_step("a SEND built correctly after the refused batches");
	ibv_wr_start(ax);
	ax->wr_id = 0xA0;
	ax->wr_flags = IBV_SEND_SIGNALED;
	ibv_wr_send(ax);
	ibv_wr_set_sge(ax, lkey, base + 100, 64);
	buf_expect(buf, 8000, buf->exp + 100, 64);
	int rc = ibv_wr_complete(ax);
	say("the correct SEND: wr_complete %s", errno_name(rc));
	if (rc)
		fatal("ibv_wr_complete returned %d (%s)", rc, strerror(rc));
	struct ibv_wc wcs[2];
	poll_some(cq, wcs, 2, "the SEND's completions");
	const struct ibv_wc *at_a = wc_with_id(wcs, 2, 0xA0), *at_b = wc_with_id(wcs, 2, 0xB0);
	say("the first two completions are the SEND's at A and at B: %s",
	    at_a && at_b ? "yes" : "no");
	if (!at_a || !at_b)
		fail("the first two completions are not the correct SEND's (wr_ids 0x%" PRIx64
		     ", 0x%" PRIx64 ")", wcs[0].wr_id, wcs[1].wr_id);
	say_wc("SEND at A", at_a);
	say_wc("SEND at B", at_b);
	buf_check(buf, "after the correct SEND");
	cq_empty(cq, "after the correct SEND");
	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq);
	buf_free(buf);
}

/* ------------------------------------------------------------------------ */
/* Case: spec_statuses                                                       */

/* The completion with wr_id among the next n of cq (NULL-safe status string). */
static const char *status_of(const struct ibv_wc *wcs, int n, uint64_t wr_id)
{
	for (int i = 0; i < n; i++)
		if (wcs[i].wr_id == wr_id)
			return ibv_wc_status_str(wcs[i].status);
	return "no completion";
}

/*
 * Completion statuses and post answers the IB specification gives, where
 * rxe answers otherwise (README, "Extended verbs, against a real device",
 * lists each): a SEND with an unknown lkey (C10-?: a local protection
 * error), a message longer than the receive (the responder's receive
 * completes with a local length error, the requester gets remote invalid
 * request), a misaligned atomic (a responder check: remote invalid
 * request; not refused at post), a receive posted to a QP in the error
 * state (completed with a flush error, as every WR of a QP in ERR).
 */
static void case_spec_statuses(void)
{
	struct rc_pair p = rc_pair_new();
	struct buf *buf = buf_reg(8192, "buffer", ACC_ALL);
	set_step("a SEND with an unknown lkey");
	struct ibv_sge r = buf_sge(buf, 4096, 64);
	recv1(p.b, 0x10, &r, 1, "recv on B");
	struct ibv_sge bad = buf_sge(buf, 0, 16);
	bad.lkey = unused_key(&buf->mr, 1);
	send1(p.a, 0x11, IBV_WR_SEND, &bad, 1, 0, 0, 0, "a SEND with an unknown lkey");
	struct ibv_wc wc;
	poll1(p.cq, &wc, "the SEND's completion");
	say("SEND with an unknown lkey: wr_id %s, status %s", wc.wr_id == 0x11 ? "the SEND's" : "another",
	    ibv_wc_status_str(wc.status));
	if (wc.status == IBV_WC_SUCCESS)
		fail("a SEND with an unknown lkey succeeded");
	rc_pair_free(&p);

	p = rc_pair_new();
	set_step("a SEND of 64 bytes into a receive of 16");
	r = buf_sge(buf, 4096, 16);
	recv1(p.b, 0x20, &r, 1, "recv on B");
	struct ibv_sge s = buf_sge(buf, 0, 64);
	send1(p.a, 0x21, IBV_WR_SEND, &s, 1, 0, 0, 0, "a SEND too long");
	struct ibv_wc two[2];
	poll_some(p.cq, two, 2, "the two completions");
	say("receive too small, at the responder: %s", status_of(two, 2, 0x20));
	say("receive too small, at the requester: %s", status_of(two, 2, 0x21));
	if (two[0].status == IBV_WC_SUCCESS || two[1].status == IBV_WC_SUCCESS)
		fail("a SEND longer than its receive completed successfully");
	rc_pair_free(&p);

	p = rc_pair_new();
	set_step("a FETCH_ADD at an address that is not 8-byte aligned");
	struct ibv_sge at = buf_sge(buf, 0, 8);
	struct ibv_send_wr wr, *badwr = NULL;
	wr_init(&wr, 0x31, IBV_WR_ATOMIC_FETCH_AND_ADD, &at, 1, IBV_SEND_SIGNALED);
	wr.wr.atomic.remote_addr = addr_of(buf->p + 4096 + 4);
	wr.wr.atomic.rkey = buf->mr->rkey;
	wr.wr.atomic.compare_add = 1;
	int rc = ibv_post_send(p.a, &wr, &badwr);
	if (rc == 0) {
		poll1(p.cq, &wc, "the FETCH_ADD's completion");
		say("misaligned FETCH_ADD: post 0, status %s", ibv_wc_status_str(wc.status));
		if (wc.status == IBV_WC_SUCCESS)
			fail("a misaligned FETCH_ADD succeeded");
	} else {
		say("misaligned FETCH_ADD: post %s", errno_name(rc));
	}
	rc_pair_free(&p);

	p = rc_pair_new();
	set_step("a receive posted to a QP in the error state");
	qp_to_state(p.b, IBV_QPS_ERR, "B to ERR");
	r = buf_sge(buf, 4096, 64);
	recv1(p.b, 0x41, &r, 1, "recv on B in ERR");
	int n = wait_wc(p.cq, &wc, 10);
	say("a receive posted in ERR: %s",
	    n == 1 ? ibv_wc_status_str(wc.status) : "no completion within 10 s");
	rc_pair_free(&p);
	buf_free(buf);
}

static const struct fv_case cases[] = {
	{ "cq_ex", case_cq_ex },
	{ "cq_ex_batch_end", case_cq_ex_batch_end },
	{ "roce_answers", case_roce_answers },
	{ "qp_ex", case_qp_ex },
	{ "qp_ex_sge_list", case_qp_ex_sge_list },
	{ "qp_ex_inline", case_qp_ex_inline },
	{ "qp_attrs", case_qp_attrs },
	{ "mw_type1", case_mw_type1 },
	{ "mw_type2", case_mw_type2 },
	{ "mr_variants", case_mr_variants },
	{ "mr_rereg", case_mr_rereg },
	{ "qp_ex_windows", case_qp_ex_windows },
	{ "qp_ex_full", case_qp_ex_full },
	{ "resize_cq", case_resize_cq },
	{ "resize_cq_traffic", case_resize_cq_traffic },
	{ "qp_ex_misuse", case_qp_ex_misuse },
	{ "spec_statuses", case_spec_statuses },
};

int main(int argc, char **argv)
{
	return fv_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]), 1);
}
