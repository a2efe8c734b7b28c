/*
 * Waiting for and checking work completions: shared by the C programs of
 * tests/c (include after fv_test_util.h). wait_wc and post_and_wait return
 * what they found and report nothing (for the programs that report in their
 * own way); the rest reports through fail/fatal.
 *
 * A program may use only some of these helpers, so unused-function warnings
 * are silenced for this header only.
 */
#ifndef FV_COMPLETIONS_H
#define FV_COMPLETIONS_H

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"

/*
 * Polls cq for one completion for up to secs seconds. Returns 0 if none
 * came (*wc zeroed), else what ibv_poll_cq(cq, 1, wc) returned: 1 (*wc
 * holds it), negative (it failed) or, from a broken provider, more than 1.
 */
static int wait_wc(struct ibv_cq *cq, struct ibv_wc *wc, double secs)
{
	double end = now_s() + secs;
	unsigned spins = 0;
	for (;;) {
		memset(wc, 0, sizeof(*wc));
		int n = ibv_poll_cq(cq, 1, wc);
		if (n != 0)
			return n;
		if (now_s() > end)
			return 0;
		if (++spins > 200)
			usleep(50);
		else
			sched_yield();
	}
}

/*
 * Posts wr on qp and waits up to secs for one completion on cq (for the
 * programs that report in their own way). Returns its status, -1 if none
 * came, or -2 with errno set and *failed naming the verb that failed.
 */
static int post_and_wait(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_cq *cq,
			 double secs, const char **failed)
{
	struct ibv_send_wr *bad = NULL;
	int rc = ibv_post_send(qp, wr, &bad);
	if (rc) {
		errno = rc;
		*failed = "ibv_post_send";
		return -2;
	}
	struct ibv_wc wc;
	int n = wait_wc(cq, &wc, secs);
	if (n < 0) {
		*failed = "ibv_poll_cq";
		return -2;
	}
	return n > 0 ? (int)wc.status : -1;
}

/*
 * When set, a missing completion is a failure but not fatal (for cases
 * whose remaining steps do not depend on it).
 */
static int g_soft_timeouts;

/*
 * Waits up to secs for one completion; fatal on error or timeout (unless
 * g_soft_timeouts: then returns 0, *wc zeroed, after reporting the failure).
 */
static int poll1_within(struct ibv_cq *cq, struct ibv_wc *wc, const char *what, double secs)
{
	int n = wait_wc(cq, wc, secs);
	if (n < 0)
		fatal("%s: ibv_poll_cq returned %d", what, n);
	if (n > 1)
		fatal("%s: ibv_poll_cq(num_entries 1) returned %d", what, n);
	if (n == 1)
		return 1;
	if (!g_soft_timeouts)
		fatal("%s: expected a completion, got none within %.0f s", what, secs);
	fail("%s: expected a completion, got none within %.0f s", what, secs);
	return 0;
}

/* Waits up to POLL_TIMEOUT_S for one completion (see poll1_within). */
static int poll1(struct ibv_cq *cq, struct ibv_wc *wc, const char *what)
{
	return poll1_within(cq, wc, what, POLL_TIMEOUT_S);
}

/*
 * Checks a completion; returns 1 if every field matched. opcode < 0: do
 * not check the opcode (it is undefined when status != success; it is not
 * checked then either). qp: if non-NULL, wc->qp_num must be its number.
 */
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

/*
 * Polls one completion and checks it; returns 1 if every field matched.
 * out: the completion (after a soft timeout, zeroed with status
 * IBV_WC_GENERAL_ERR so that callers skip their success-only checks).
 */
static int expect_wc(struct ibv_cq *cq, const char *what, uint64_t wr_id,
		     enum ibv_wc_status status, int opcode, struct ibv_qp *qp, struct ibv_wc *out)
{
	struct ibv_wc wc;
	int ok = 0;
	if (!poll1(cq, &wc, what)) {
		memset(&wc, 0, sizeof(wc));
		wc.status = IBV_WC_GENERAL_ERR;
	} else {
		ok = check_wc(&wc, what, wr_id, status, opcode, qp);
	}
	if (out)
		*out = wc;
	return ok;
}

/*
 * Polls one completion of qp with wr_id and status want, or alt if alt >= 0
 * (two statuses the specification or real devices allow); the opcode is
 * not checked. Returns 1 if it matched.
 */
static int expect_wc_alt(struct ibv_cq *cq, const char *what, uint64_t wr_id,
			 enum ibv_wc_status want, int alt, struct ibv_qp *qp)
{
	struct ibv_wc wc;
	if (!poll1(cq, &wc, what))
		return 0;
	if (alt >= 0 && wc.status == (enum ibv_wc_status)alt)
		want = (enum ibv_wc_status)alt;
	return check_wc(&wc, what, wr_id, want, -1, qp);
}

/* A successful requester completion that carries byte_len (READ, atomics). */
static void expect_wc_len(struct ibv_cq *cq, const char *what, uint64_t wr_id, int opcode,
			  struct ibv_qp *qp, uint32_t byte_len)
{
	struct ibv_wc wc;
	expect_wc(cq, what, wr_id, IBV_WC_SUCCESS, opcode, qp, &wc);
	if (wc.status == IBV_WC_SUCCESS && wc.byte_len != byte_len)
		fail("%s: wc.byte_len: expected %u, got %u", what, byte_len, wc.byte_len);
}

/* Checks the immediate-data fields of a successful receive completion. */
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

/*
 * Polls a successful receive completion of qp and checks byte_len and the
 * immediate data (src_qp: see expect_recv_from). Returns 1 if all matched;
 * out: the completion.
 */
static int expect_recv(struct ibv_cq *cq, const char *what, uint64_t wr_id, struct ibv_qp *qp,
		       uint32_t byte_len, int with_imm, uint32_t imm_host, int opcode,
		       struct ibv_wc *out)
{
	struct ibv_wc wc;
	int ok = expect_wc(cq, what, wr_id, IBV_WC_SUCCESS, opcode, qp, &wc);
	if (out)
		*out = wc;
	if (wc.status != IBV_WC_SUCCESS)
		return 0;
	if (wc.byte_len != byte_len) {
		fail("%s: wc.byte_len: expected %u, got %u", what, byte_len, wc.byte_len);
		ok = 0;
	}
	check_imm(&wc, what, with_imm, imm_host);
	return ok;
}

/*
 * expect_recv, and wc.src_qp must be src's number. (The man page defines
 * src_qp for UD only; flowverbs fills it for RC too.)
 */
static int expect_recv_from(struct ibv_cq *cq, const char *what, uint64_t wr_id,
			    struct ibv_qp *qp, struct ibv_qp *src, uint32_t byte_len, int with_imm,
			    uint32_t imm_host, int opcode)
{
	struct ibv_wc wc;
	int ok = expect_recv(cq, what, wr_id, qp, byte_len, with_imm, imm_host, opcode, &wc);
	if (wc.status != IBV_WC_SUCCESS)
		return 0;
	if (wc.src_qp != src->qp_num) {
		fail("%s: wc.src_qp: expected 0x%x (the sender), got 0x%x", what, src->qp_num,
		     wc.src_qp);
		ok = 0;
	}
	return ok;
}

#pragma GCC diagnostic pop

#endif /* FV_COMPLETIONS_H */
