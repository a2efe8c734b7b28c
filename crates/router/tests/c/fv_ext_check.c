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
	struct ibv_cq_ex *cq = cq_ex_try(64, std_flags, 0, 0, ch);
	if (!cq)
		fatal("ibv_create_cq_ex returned NULL, errno %d (%s)", errno, strerror(errno));
	struct ibv_cq *plain = ibv_cq_ex_to_cq(cq);
	struct ibv_qp *a = rc_qp_new(plain, plain);
	struct ibv_qp *b = rc_qp_new(plain, plain);
	rc_connect_both(a, b);
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
	struct ibv_cq_ex *cq = cq_ex_try(64, IBV_WC_STANDARD_FLAGS, 0, 0, NULL);
	if (!cq)
		fatal("ibv_create_cq_ex returned NULL, errno %d (%s)", errno, strerror(errno));
	struct ibv_cq *plain = ibv_cq_ex_to_cq(cq);
	struct ibv_qp *a = rc_qp_new(plain, plain);
	struct ibv_qp *b = rc_qp_new(plain, plain);
	rc_connect_both(a, b);
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

static const struct fv_case cases[] = {
	{ "cq_ex", case_cq_ex },
	{ "cq_ex_batch_end", case_cq_ex_batch_end },
	{ "roce_answers", case_roce_answers },
};

int main(int argc, char **argv)
{
	return fv_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]), 1);
}
