/*
 * Waiting for and checking one work completion: shared by the QP-type and
 * semi-mode check programs (include after fv_test_util.h).
 */
#ifndef FV_COMPLETIONS_H
#define FV_COMPLETIONS_H

static void poll1(struct ibv_cq *cq, struct ibv_wc *wc, const char *what)
{
	double end = now_s() + POLL_TIMEOUT_S;
	unsigned spins = 0;
	for (;;) {
		memset(wc, 0, sizeof(*wc));
		int n = ibv_poll_cq(cq, 1, wc);
		if (n < 0)
			fatal("%s: ibv_poll_cq returned %d", what, n);
		if (n > 1)
			fatal("%s: ibv_poll_cq(num_entries 1) returned %d", what, n);
		if (n == 1)
			return;
		if (now_s() > end)
			fatal("%s: expected a completion, got none within %.0f s", what,
			      POLL_TIMEOUT_S);
		if (++spins > 200)
			usleep(50);
		else
			sched_yield();
	}
}

static int check_wc(const struct ibv_wc *wc, const char *what, uint64_t wr_id,
		    enum ibv_wc_status status, int opcode, struct ibv_qp *qp)
{
	int bad = 0;
	char d[400];
	describe_wc(wc, d, sizeof(d));
	if (wc->wr_id != wr_id) {
		fail("%s: wc.wr_id: expected 0x%" PRIx64 ", got 0x%" PRIx64 " (completion %s)", what,
		     wr_id, wc->wr_id, d);
		bad = 1;
	}
	if (wc->status != status) {
		fail("%s: wc.status: expected %s (%d), got %s (%d) (completion %s)", what,
		     ibv_wc_status_str(status), (int)status, ibv_wc_status_str(wc->status),
		     (int)wc->status, d);
		bad = 1;
	}
	if (opcode >= 0 && wc->status == IBV_WC_SUCCESS &&
	    wc->opcode != (enum ibv_wc_opcode)opcode) {
		fail("%s: wc.opcode: expected %s (%d), got %s (%d) (completion %s)", what,
		     wc_opcode_str(opcode), opcode, wc_opcode_str(wc->opcode), (int)wc->opcode, d);
		bad = 1;
	}
	if (qp && wc->qp_num != qp->qp_num) {
		fail("%s: wc.qp_num: expected 0x%x, got 0x%x (completion %s)", what, qp->qp_num,
		     wc->qp_num, d);
		bad = 1;
	}
	return !bad;
}

static int expect_wc(struct ibv_cq *cq, const char *what, uint64_t wr_id,
		     enum ibv_wc_status status, int opcode, struct ibv_qp *qp, struct ibv_wc *out)
{
	struct ibv_wc wc;
	poll1(cq, &wc, what);
	int ok = check_wc(&wc, what, wr_id, status, opcode, qp);
	if (out)
		*out = wc;
	return ok;
}

static void check_imm(const struct ibv_wc *wc, const char *what, int with_imm, uint32_t imm_host)
{
	if (with_imm) {
		if (!(wc->wc_flags & IBV_WC_WITH_IMM))
			fail("%s: wc.wc_flags: expected IBV_WC_WITH_IMM set, got 0x%x", what,
			     wc->wc_flags);
		else if (wc->imm_data != htonl(imm_host))
			fail("%s: wc.imm_data: expected htonl(0x%08x), got htonl(0x%08x)", what,
			     imm_host, ntohl(wc->imm_data));
	} else if (wc->wc_flags & IBV_WC_WITH_IMM) {
		fail("%s: wc.wc_flags: expected IBV_WC_WITH_IMM clear, got 0x%x", what,
		     wc->wc_flags);
	}
}

#endif
