/*
 * fv_nic_check: checks of semi mode over a real NIC
 * (`flowverbs router --mode semi --nic DEVICE`), for fv0, run in a
 * container namespace of one "host" of tests/nic/two_hosts.sh.
 *
 * Usage: fv_nic_check <case>      (fv_nic_check list  prints the cases)
 *
 *   unknown_gid   an RC QP's modify to RTR toward a GID that no router
 *                 serves fails with EINVAL and leaves the QP in INIT; the
 *                 same QP then connects to a GID that is served (this
 *                 process's own) and reaches RTS;
 *   ud_grh        a datagram between two UD QPs of this process (over the
 *                 NIC, in loopback) arrives with a GRH that names this
 *                 process's fv0 GID, not the NIC's: ibv_init_ah_from_wc
 *                 gives an address handle back to the sender's GID, and
 *                 ibv_create_ah_from_wc one that reaches it (an answer
 *                 sent with it arrives).
 *   srq_limit     an RC QP on an SRQ and its peer, both of this process
 *                 (over the NIC, in loopback: a QP on an SRQ takes the
 *                 NIC): the SRQ's limit, armed with ibv_modify_srq, is
 *                 crossed by two sends; the real device raises
 *                 SRQ_LIMIT_REACHED, and fv0's async fd delivers it for
 *                 fv0's SRQ, once; everything is then destroyed (which
 *                 waits for the acknowledgement).
 *   qp_error      the same pair over the NIC; the peer is destroyed and
 *                 a send to it fails with RETRY_EXC_ERR (the device's
 *                 transport error, which the router never sees);
 *                 ibv_query_qp then reports the QP in ERR, as the device
 *                 has it.
 *   resize_cq     the same pair over the NIC on a CQ of 8: grown to 128,
 *                 it takes 60 RDMA WRITE completions before any is polled
 *                 (the device's twin CQ must have grown too); then resized
 *                 while sends and receives complete into it, growing and
 *                 shrinking; every completion arrives once with its data.
 *   mw            the same pair over the NIC: a type 2 window bound with
 *                 IBV_WR_BIND_MW and a type 1 window bound with
 *                 ibv_bind_mw (the device's twins of the window and the
 *                 region are bound), the peer's RDMA WRITEs through each
 *                 land (data checked); after IBV_WR_LOCAL_INV a write
 *                 through the type 2 window fails with REM_ACCESS_ERR.
 *
 * Exit status: 0 = every check passed; 1 = at least one check failed;
 * 2 = usage error; 3 = watchdog.
 */
#include "fv_test_util.h"
#include <poll.h>
#include "fv_completions.h"

static void case_unknown_gid(void)
{
	struct ibv_cq *cq = cq_new(16);
	struct ibv_qp *qp = rc_qp_new(cq, cq);
	struct ibv_qp_attr a;

	set_step("INIT");
	qp_must(qp_to_init(qp, IBV_ACCESS_LOCAL_WRITE), qp, "RESET->INIT");
	set_step("RTR to an unknown GID");
	rtr_attr(&a, qp->qp_num);
	/* ::ffff:10.99.99.99: no namespace of either host has it. */
	memset(a.ah_attr.grh.dgid.raw, 0, 16);
	a.ah_attr.grh.dgid.raw[10] = 0xff;
	a.ah_attr.grh.dgid.raw[11] = 0xff;
	a.ah_attr.grh.dgid.raw[12] = 10;
	a.ah_attr.grh.dgid.raw[13] = 99;
	a.ah_attr.grh.dgid.raw[14] = 99;
	a.ah_attr.grh.dgid.raw[15] = 99;
	int rc = ibv_modify_qp(qp, &a, RC_RTR_MASK);
	if (rc != EINVAL)
		fail("ibv_modify_qp to RTR toward ::ffff:10.99.99.99: expected EINVAL, got %d (%s)",
		     rc, strerror(rc));
	else
		printf("refused: modify to RTR toward an unknown GID returned EINVAL\n");
	expect_state(qp, IBV_QPS_INIT, "after the refused RTR");

	set_step("RTR to our own GID");
	rtr_attr(&a, qp->qp_num);
	qp_must(ibv_modify_qp(qp, &a, RC_RTR_MASK), qp, "INIT->RTR (own GID)");
	rts_attr(&a);
	qp_must(ibv_modify_qp(qp, &a, RC_RTS_MASK), qp, "RTR->RTS");
	expect_state(qp, IBV_QPS_RTS, "connected to itself");
	destroy_qp(qp);
	destroy_cq(cq);
}

#define UD_QKEY 0x11111111

static void ud_ready(struct ibv_qp *qp)
{
	struct ibv_qp_attr a;
	init_attr(&a);
	a.qkey = UD_QKEY;
	qp_must(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY),
		qp, "UD RESET->INIT");
	qp_to_state(qp, IBV_QPS_RTR, "UD INIT->RTR");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.sq_psn = 0;
	qp_must(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN), qp, "UD RTR->RTS");
}

/* Sends 64 bytes from `from` to `to` through `ah`; returns the receive's
 * completion (the GRH is in the first 40 bytes of rbuf). */
static void ud_exchange(struct ibv_qp *from, struct ibv_qp *to, struct ibv_cq *cq,
			struct ibv_ah *ah, struct buf *sbuf, struct buf *rbuf, struct ibv_wc *wc)
{
	struct ibv_sge rs = { .addr = addr_of(rbuf->p), .length = 40 + 64, .lkey = rbuf->mr->lkey };
	struct ibv_recv_wr rwr = { .wr_id = 7, .sg_list = &rs, .num_sge = 1 }, *rbad;
	if (ibv_post_recv(to, &rwr, &rbad))
		fatal("ibv_post_recv failed");
	struct ibv_sge ss = { .addr = addr_of(sbuf->p), .length = 64, .lkey = sbuf->mr->lkey };
	struct ibv_send_wr swr = { .wr_id = 8, .sg_list = &ss, .num_sge = 1, .opcode = IBV_WR_SEND,
				   .send_flags = IBV_SEND_SIGNALED };
	swr.wr.ud.ah = ah;
	swr.wr.ud.remote_qpn = to->qp_num;
	swr.wr.ud.remote_qkey = UD_QKEY;
	struct ibv_send_wr *sbad;
	if (ibv_post_send(from, &swr, &sbad))
		fatal("ibv_post_send failed");
	/* Both completions land on the one CQ, in either order. */
	int got_recv = 0;
	for (int i = 0; i < 2; i++) {
		struct ibv_wc w;
		poll1(cq, &w, "UD completion"); /* fatal if none comes */
		if (w.status != IBV_WC_SUCCESS)
			fatal("UD completion wr_id %llu: status %s", (unsigned long long)w.wr_id,
			      ibv_wc_status_str(w.status));
		if (w.wr_id == 7) {
			*wc = w;
			got_recv = 1;
		}
	}
	if (!got_recv)
		fatal("no receive completion");
}

static void case_ud_grh(void)
{
	struct ibv_cq *cq = cq_new(16);
	struct qp_cfg cfg = CFG_DEFAULT;
	struct ibv_qp *a = qp_create(IBV_QPT_UD, cq, cq, NULL, &cfg);
	struct ibv_qp *b = qp_create(IBV_QPT_UD, cq, cq, NULL, &cfg);
	ud_ready(a);
	ud_ready(b);
	struct buf *sbuf = buf_reg(4096, "send", IBV_ACCESS_LOCAL_WRITE);
	struct buf *rbuf = buf_reg(4096, "recv", IBV_ACCESS_LOCAL_WRITE);
	struct ibv_ah_attr aa = { .is_global = 1, .port_num = 1 };
	aa.grh.dgid = E.gid;
	aa.grh.sgid_index = gid_index();
	aa.grh.hop_limit = 1;
	set_step("create_ah to our own GID");
	struct ibv_ah *ah = ibv_create_ah(E.pd, &aa);
	if (!ah)
		fatal("ibv_create_ah: %s", strerror(errno));
	struct ibv_wc wc;
	set_step("datagram a -> b");
	ud_exchange(a, b, cq, ah, sbuf, rbuf, &wc);
	if (!(wc.wc_flags & IBV_WC_GRH))
		fail("the receive has no GRH (wc_flags %#x)", wc.wc_flags);
	if (wc.src_qp != a->qp_num)
		fail("src_qp %#x, expected %#x", wc.src_qp, a->qp_num);
	set_step("ibv_init_ah_from_wc");
	struct ibv_ah_attr back;
	memset(&back, 0, sizeof(back));
	if (ibv_init_ah_from_wc(E.ctx, 1, &wc, (struct ibv_grh *)rbuf->p, &back))
		fail("ibv_init_ah_from_wc: %s", strerror(errno));
	else if (memcmp(back.grh.dgid.raw, E.gid.raw, 16) != 0) {
		char got[INET6_ADDRSTRLEN], want[INET6_ADDRSTRLEN];
		inet_ntop(AF_INET6, back.grh.dgid.raw, got, sizeof(got));
		inet_ntop(AF_INET6, E.gid.raw, want, sizeof(want));
		fail("the GRH names %s, expected the sender's fv0 GID %s", got, want);
	} else
		printf("GRH: the sender's fv0 GID\n");
	set_step("ibv_create_ah_from_wc, datagram b -> a");
	struct ibv_ah *reply = ibv_create_ah_from_wc(E.pd, &wc, (struct ibv_grh *)rbuf->p, 1);
	if (!reply)
		fatal("ibv_create_ah_from_wc: %s", strerror(errno));
	ud_exchange(b, a, cq, reply, sbuf, rbuf, &wc);
	printf("answered through ibv_create_ah_from_wc\n");
	destroy_ah(reply);
	destroy_ah(ah);
	buf_free(sbuf);
	buf_free(rbuf);
	destroy_qp(a);
	destroy_qp(b);
	destroy_cq(cq);
}

/* The next async event within `secs` other than a port event, or 0 (fv0's
 * async fd is non-blocking here). Port events are printed and skipped: a
 * real device raises PORT_ACTIVE whenever its network device changes (Soft-RoCE
 * does, during these tests), and an application must expect them. */
static int async_within(struct ibv_async_event *ev, double secs)
{
	double end = now_s() + secs;
	do {
		if (ibv_get_async_event(E.ctx, ev) == 0) {
			if (ev->event_type != IBV_EVENT_PORT_ACTIVE &&
			    ev->event_type != IBV_EVENT_PORT_ERR)
				return 1;
			printf("port event: %s, port %d\n", ibv_event_type_str(ev->event_type),
			       ev->element.port_num);
			ibv_ack_async_event(ev);
			continue;
		}
		if (errno != EAGAIN)
			fatal("ibv_get_async_event: %s", strerror(errno));
		struct pollfd p = { .fd = E.ctx->async_fd, .events = POLLIN };
		poll(&p, 1, 100);
	} while (now_s() < end);
	return 0;
}

/* An RC QP on an SRQ (8 receives) and its peer, both of this process and
 * on one CQ, connected over the NIC: a QP on an SRQ takes the NIC, and its
 * peer follows. `retry_cnt`: the first QP's; `cqe`: the CQ's size. */
struct srq_pair {
	struct ibv_cq *cq;
	struct ibv_srq *srq;
	struct ibv_qp *on_srq, *peer;
	struct buf *b;
};

static struct srq_pair srq_pair_new(uint8_t retry_cnt, int cqe)
{
	struct srq_pair p;
	struct ibv_srq_attr got;
	struct qp_cfg cfg = CFG_DEFAULT;
	p.cq = cq_new(cqe);
	p.srq = srq_create(8, 1, &got);
	p.on_srq = qp_create(IBV_QPT_RC, p.cq, p.cq, p.srq, &cfg);
	p.peer = rc_qp_new(p.cq, p.cq);
	struct rc_path path = rc_path_default();
	path.retry_cnt = retry_cnt;
	const char *failed = "";
	qp_must(rc_connect_path(p.on_srq, p.peer->qp_num, ACC_ALL, &path, &failed), p.on_srq,
		failed);
	rc_connect(p.peer, p.on_srq->qp_num, ACC_ALL);
	p.b = buf_reg(4096, "buffers", IBV_ACCESS_LOCAL_WRITE);
	return p;
}

/* Destroys what is left of the pair (a NULL QP is gone already). */
static void srq_pair_free(struct srq_pair *p)
{
	set_step("destroy");
	if (p->on_srq)
		destroy_qp(p->on_srq);
	if (p->peer)
		destroy_qp(p->peer);
	destroy_srq(p->srq);
	buf_free(p->b);
	destroy_cq(p->cq);
}

static void case_srq_limit(void)
{
	struct srq_pair p = srq_pair_new(7, 32);
	struct ibv_cq *cq = p.cq;
	struct ibv_srq *srq = p.srq;
	struct ibv_qp *peer = p.peer;
	struct buf *b = p.b;
	set_nonblock(E.ctx->async_fd, "async_fd");

	set_step("four receives on the SRQ, limit 3");
	for (int i = 0; i < 4; i++) {
		struct ibv_sge sg = buf_sge(b, 1024 + 64 * i, 64);
		srq_recv1(srq, 100 + i, &sg, 1, "SRQ receive");
	}
	struct ibv_srq_attr m = { .srq_limit = 3 };
	int rc = ibv_modify_srq(srq, &m, IBV_SRQ_LIMIT);
	if (rc)
		fatal("ibv_modify_srq(IBV_SRQ_LIMIT 3): %d (%s)", rc, strerror(rc));

	set_step("two sends: 2 receives left, below the limit");
	for (int i = 0; i < 2; i++) {
		struct ibv_sge sg = buf_sge(b, 64 * i, 64);
		send1(peer, 1 + i, IBV_WR_SEND, &sg, 1, 0, 0, 0, "send");
	}
	for (int i = 0; i < 4; i++) {
		struct ibv_wc wc;
		poll1(cq, &wc, "completion");
		if (wc.status != IBV_WC_SUCCESS)
			fatal("completion wr_id %llu: %s", (unsigned long long)wc.wr_id,
			      ibv_wc_status_str(wc.status));
	}

	set_step("the async event");
	struct ibv_async_event ev;
	if (!async_within(&ev, POLL_TIMEOUT_S)) {
		fail("no async event within %.0f s", POLL_TIMEOUT_S);
	} else {
		if (ev.event_type != IBV_EVENT_SRQ_LIMIT_REACHED)
			fail("async event %s, expected SRQ_LIMIT_REACHED",
			     ibv_event_type_str(ev.event_type));
		else if (ev.element.srq != srq)
			fail("SRQ_LIMIT_REACHED for %p, expected fv0's SRQ %p",
			     (void *)ev.element.srq, (void *)srq);
		else
			printf("SRQ_LIMIT_REACHED from the NIC, for fv0's SRQ\n");
		ibv_ack_async_event(&ev);
	}
	set_step("no second event");
	if (async_within(&ev, 1.0)) {
		fail("a second async event: %s", ibv_event_type_str(ev.event_type));
		ibv_ack_async_event(&ev);
	}

	srq_pair_free(&p);
	printf("destroyed\n");
}

static void case_qp_error(void)
{
	/* retry_cnt 3: Soft-RoCE retries forever at 7 (the IB spec gives
	 * that meaning to rnr_retry 7 only). */
	struct srq_pair p = srq_pair_new(3, 32);
	struct ibv_qp *on_srq = p.on_srq;
	struct ibv_cq *cq = p.cq;
	struct buf *b = p.b;
	expect_state(on_srq, IBV_QPS_RTS, "connected");

	set_step("the peer goes; a send to it");
	destroy_qp(p.peer);
	p.peer = NULL;
	struct ibv_sge sg = buf_sge(b, 0, 64);
	send1(on_srq, 1, IBV_WR_SEND, &sg, 1, 0, 0, 0, "send to a destroyed QP");
	struct ibv_wc wc;
	poll1(cq, &wc, "the send's completion");
	if (wc.status != IBV_WC_RETRY_EXC_ERR)
		fail("the send completed with %s, expected RETRY_EXC_ERR",
		     ibv_wc_status_str(wc.status));
	else
		printf("send to a destroyed QP: RETRY_EXC_ERR\n");

	set_step("ibv_query_qp");
	if (qp_state(on_srq) != IBV_QPS_ERR)
		fail("ibv_query_qp: %s, expected ERR after the transport error",
		     state_str(qp_state(on_srq)));
	else
		printf("ibv_query_qp: ERR, as the device has it\n");
	srq_pair_free(&p);
}

/* Four sends peer -> on_srq of 64 bytes (message byte = round * 4 + i + 1),
 * then ibv_resize_cq(cq, cqe) at once, then all eight completions polled
 * and checked, with the data. Returns 1 if all were right. */
static int resize_round(struct srq_pair *p, int round, int cqe)
{
	struct buf *b = p->b;
	for (int i = 0; i < 4; i++) {
		struct ibv_sge sg = buf_sge(b, 1024 + 64 * i, 64);
		srq_recv1(p->srq, 100 + i, &sg, 1, "SRQ receive");
	}
	for (int i = 0; i < 4; i++) {
		memset(b->p + 64 * i, round * 4 + i + 1, 64);
		struct ibv_sge sg = buf_sge(b, 64 * i, 64);
		send1(p->peer, 1 + i, IBV_WR_SEND, &sg, 1, 0, 0, 0, "send");
	}
	set_step("round %d: ibv_resize_cq(%d) with completions arriving", round, cqe);
	int rc = ibv_resize_cq(p->cq, cqe);
	if (rc) {
		fail("ibv_resize_cq(%d): %d (%s)", cqe, rc, strerror(rc));
		return 0;
	}
	if (p->cq->cqe < cqe)
		fail("ibv_resize_cq(%d): cq->cqe %d", cqe, p->cq->cqe);
	int sends = 0, recvs = 0, ok = 1;
	for (int k = 0; k < 8; k++) {
		struct ibv_wc wc;
		if (!poll1(p->cq, &wc, "completion"))
			return 0;
		if (wc.status != IBV_WC_SUCCESS) {
			fail("completion wr_id %llu: %s", (unsigned long long)wc.wr_id,
			     ibv_wc_status_str(wc.status));
			ok = 0;
		} else if (wc.opcode == IBV_WC_SEND && wc.wr_id == (uint64_t)(1 + sends)) {
			sends++;
		} else if (wc.opcode == IBV_WC_RECV && wc.wr_id == (uint64_t)(100 + recvs) &&
			   wc.byte_len == 64) {
			uint8_t got = b->p[1024 + 64 * recvs];
			if (got != round * 4 + recvs + 1) {
				fail("receive %d holds message byte %u", recvs, got);
				ok = 0;
			}
			recvs++;
		} else {
			fail("completion %d: opcode %d wr_id %llu byte_len %u out of order", k,
			     wc.opcode, (unsigned long long)wc.wr_id, wc.byte_len);
			ok = 0;
		}
	}
	struct ibv_wc extra;
	if (ibv_poll_cq(p->cq, 1, &extra) != 0) {
		fail("round %d: a ninth completion (wr_id %llu)", round,
		     (unsigned long long)extra.wr_id);
		ok = 0;
	}
	return ok && sends == 4 && recvs == 4;
}

/* After growing a CQ of 8 to 128: 60 signaled RDMA WRITEs complete into it
 * before any is polled, more than the twin held before the resize. */
static int writes_fill_grown_cq(struct srq_pair *p)
{
	enum { N = 60, LEN = 64 };
	struct buf *dst = buf_reg(N * LEN, "write target", ACC_ALL);
	struct buf *src = buf_reg(N * LEN, "write source", ACC_ALL);
	set_step("ibv_resize_cq(128) of a CQ of 8");
	int rc = ibv_resize_cq(p->cq, 128);
	if (rc) {
		fail("ibv_resize_cq(128): %d (%s)", rc, strerror(rc));
		return 0;
	}
	for (int i = 0; i < N; i++) {
		memset(src->p + LEN * i, 0x40 + i, LEN);
		buf_expect(dst, LEN * i, src->p + LEN * i, LEN);
		struct ibv_sge sg = buf_sge(src, LEN * i, LEN);
		send1(p->peer, 1000 + i, IBV_WR_RDMA_WRITE, &sg, 1, addr_of(dst->p + LEN * i),
		      dst->mr->rkey, 0, "RDMA WRITE");
	}
	set_step("the %d writes' completions, polled only once all were posted", N);
	int ok = 1;
	for (int i = 0; i < N; i++)
		ok &= expect_wc(p->cq, "a write's completion", 1000 + i, IBV_WC_SUCCESS,
				IBV_WC_RDMA_WRITE, p->peer, NULL);
	ok &= buf_check(dst, "after the writes");
	buf_free(src);
	buf_free(dst);
	return ok;
}

static void case_resize_cq(void)
{
	struct srq_pair p = srq_pair_new(7, 8);
	int ok = writes_fill_grown_cq(&p);
	if (ok)
		printf("resize over the NIC: 60 writes completed into the grown CQ\n");
	ok &= resize_round(&p, 0, 64);
	ok &= resize_round(&p, 1, 16);
	ok &= resize_round(&p, 2, 256);
	if (ok)
		printf("resize over the NIC: 12 sends and 12 receives, once each, data checked\n");
	srq_pair_free(&p);
}

/* The peer's RDMA WRITE of `len` bytes of `byte` to `at` with `rkey`;
 * returns its completion status. */
static enum ibv_wc_status write_through(struct srq_pair *p, struct buf *src, uint8_t *at,
					uint32_t rkey, uint8_t byte, uint64_t wr_id)
{
	memset(src->p, byte, 4096);
	struct ibv_sge sg = buf_sge(src, 0, 4096);
	send1(p->peer, wr_id, IBV_WR_RDMA_WRITE, &sg, 1, addr_of(at), rkey, 0, "RDMA WRITE");
	struct ibv_wc wc;
	if (!poll1(p->cq, &wc, "the write's completion"))
		return IBV_WC_GENERAL_ERR;
	if (wc.wr_id != wr_id)
		fail("completion wr_id %llu, expected %llu", (unsigned long long)wc.wr_id,
		     (unsigned long long)wr_id);
	return wc.status;
}

/* One completion of on_srq's own work request wr_id: its status. */
static enum ibv_wc_status own_completion(struct srq_pair *p, uint64_t wr_id, const char *what)
{
	struct ibv_wc wc;
	if (!poll1(p->cq, &wc, what))
		return IBV_WC_GENERAL_ERR;
	if (wc.wr_id != wr_id)
		fail("%s: completion wr_id %llu", what, (unsigned long long)wc.wr_id);
	return wc.status;
}

static void case_mw(void)
{
	struct srq_pair p = srq_pair_new(3, 64);
	struct buf *dst = buf_reg(8192, "window target", ACC_ALL | IBV_ACCESS_MW_BIND);
	struct buf *src = buf_reg(4096, "write source", ACC_ALL);

	set_step("a type 2 window bound with IBV_WR_BIND_MW on the QP on the NIC");
	struct ibv_mw *mw2 = ibv_alloc_mw(E.pd, IBV_MW_TYPE_2);
	if (!mw2)
		fatal("ibv_alloc_mw(type 2): %s", strerror(errno));
	struct ibv_send_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = 21;
	wr.opcode = IBV_WR_BIND_MW;
	wr.send_flags = IBV_SEND_SIGNALED;
	wr.bind_mw.mw = mw2;
	wr.bind_mw.rkey = ibv_inc_rkey(mw2->rkey);
	wr.bind_mw.bind_info.mr = dst->mr;
	wr.bind_mw.bind_info.addr = addr_of(dst->p + 4096);
	wr.bind_mw.bind_info.length = 4096;
	wr.bind_mw.bind_info.mw_access_flags = IBV_ACCESS_REMOTE_WRITE;
	int rc = ibv_post_send(p.on_srq, &wr, &bad);
	if (rc)
		fatal("ibv_post_send(BIND_MW): %d (%s)", rc, strerror(rc));
	enum ibv_wc_status st = own_completion(&p, 21, "the bind's completion");
	if (st != IBV_WC_SUCCESS)
		fail("type 2 bind: %s", ibv_wc_status_str(st));
	mw2->rkey = wr.bind_mw.rkey; /* the application keeps the window's rkey (rxe needs it) */
	st = write_through(&p, src, dst->p + 4096, mw2->rkey, 0x5a, 22);
	memset(dst->exp + 4096, 0x5a, 4096);
	if (st == IBV_WC_SUCCESS && buf_check(dst, "after the write through the type 2 window"))
		printf("mw over the NIC: type 2 window bound, a write through it landed\n");
	else
		fail("write through the type 2 window: %s", ibv_wc_status_str(st));

	set_step("a type 1 window bound with ibv_bind_mw");
	struct ibv_mw *mw1 = ibv_alloc_mw(E.pd, IBV_MW_TYPE_1);
	if (!mw1)
		fatal("ibv_alloc_mw(type 1): %s", strerror(errno));
	struct ibv_mw_bind mb = { .wr_id = 23, .send_flags = IBV_SEND_SIGNALED };
	mb.bind_info.mr = dst->mr;
	mb.bind_info.addr = addr_of(dst->p);
	mb.bind_info.length = 4096;
	mb.bind_info.mw_access_flags = IBV_ACCESS_REMOTE_WRITE;
	rc = ibv_bind_mw(p.on_srq, mw1, &mb);
	if (rc)
		fatal("ibv_bind_mw(type 1): %d (%s)", rc, strerror(rc));
	st = own_completion(&p, 23, "the type 1 bind's completion");
	if (st != IBV_WC_SUCCESS)
		fail("type 1 bind: %s", ibv_wc_status_str(st));
	st = write_through(&p, src, dst->p, mw1->rkey, 0xa5, 24);
	memset(dst->exp, 0xa5, 4096);
	if (st == IBV_WC_SUCCESS && buf_check(dst, "after the write through the type 1 window"))
		printf("mw over the NIC: type 1 window bound, a write through it landed\n");
	else
		fail("write through the type 1 window: %s", ibv_wc_status_str(st));

	set_step("IBV_WR_LOCAL_INV of the type 2 window, then a write through it");
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = 25;
	wr.opcode = IBV_WR_LOCAL_INV;
	wr.send_flags = IBV_SEND_SIGNALED;
	wr.invalidate_rkey = mw2->rkey;
	rc = ibv_post_send(p.on_srq, &wr, &bad);
	if (rc)
		fatal("ibv_post_send(LOCAL_INV): %d (%s)", rc, strerror(rc));
	st = own_completion(&p, 25, "the invalidation's completion");
	if (st != IBV_WC_SUCCESS)
		fail("LOCAL_INV: %s", ibv_wc_status_str(st));
	st = write_through(&p, src, dst->p + 4096, mw2->rkey, 0x77, 26);
	if (st == IBV_WC_REM_ACCESS_ERR && buf_check(dst, "after the refused write"))
		printf("mw over the NIC: after LOCAL_INV a write through the window: "
		       "REM_ACCESS_ERR\n");
	else
		fail("write through the invalidated window: %s, expected REM_ACCESS_ERR",
		     ibv_wc_status_str(st));

	set_step("deallocate the windows");
	if (ibv_dealloc_mw(mw1) || ibv_dealloc_mw(mw2))
		fail("ibv_dealloc_mw failed: %s", strerror(errno));
	buf_free(src);
	srq_pair_free(&p);
	buf_free(dst);
}

static const struct fv_case cases[] = {
	{ "unknown_gid", case_unknown_gid },
	{ "ud_grh", case_ud_grh },
	{ "srq_limit", case_srq_limit },
	{ "qp_error", case_qp_error },
	{ "resize_cq", case_resize_cq },
	{ "mw", case_mw },
};

int main(int argc, char **argv)
{
	return fv_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]), 1);
}
