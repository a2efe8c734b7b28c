/*
 * fv_send_one.c: one RC SEND through the stock API, to a QP that the test
 * drives by hand (tests/hostile_client.rs: what each data path answers
 * when the responder's receive is malformed).
 *
 * Prints "qpn 0x<its QP number>", reads the responder's QP number (hex) from
 * stdin, connects to it on this host (no GRH), posts one signaled 64-byte
 * SEND and prints "status <ibv_wc_status>" of its completion (or "status
 * none" after 10 s). Exit 0 unless a verb fails.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fv_test_util.h"
#include "fv_completions.h"

static void die(const char *what)
{
	fprintf(stderr, "fv_send_one: %s: %s\n", what, strerror(errno));
	exit(1);
}

int main(void)
{
	struct ibv_context *ctx = open_device_named(dev_name());
	if (!ctx)
		die("opening the device");
	struct ibv_pd *pd = ibv_alloc_pd(ctx);
	struct ibv_cq *cq = ibv_create_cq(ctx, 4, NULL, NULL, 0);
	static char buf[64] = "a message from fv_send_one";
	struct ibv_mr *mr = pd ? ibv_reg_mr(pd, buf, sizeof(buf), IBV_ACCESS_LOCAL_WRITE) : NULL;
	if (!pd || !cq || !mr)
		die("PD/CQ/MR");
	static const struct qp_cfg c = { .send_wr = 2, .recv_wr = 2, .send_sge = 1, .recv_sge = 1,
					 .sig_all = 1 };
	struct ibv_qp *qp = qp_try_create(pd, IBV_QPT_RC, cq, cq, NULL, &c, NULL);
	if (!qp)
		die("ibv_create_qp");
	printf("qpn 0x%x\n", qp->qp_num);
	fflush(stdout);
	unsigned dest;
	if (scanf("%x", &dest) != 1)
		die("reading the responder's QPN");
	/* On this host without a GRH; no remote access; retry and rnr_retry 7. */
	const char *failed = "";
	int rc = rc_connect_local(qp, dest, 0, 7, &failed);
	if (rc) {
		errno = rc;
		die(failed);
	}
	struct ibv_sge s = sge(buf, sizeof(buf), mr->lkey);
	struct ibv_send_wr wr;
	wr_init(&wr, 1, IBV_WR_SEND, &s, 1, 0);
	int status = post_and_wait(qp, &wr, cq, 10, &failed);
	if (status == -2)
		die(failed);
	if (status >= 0)
		printf("status %d\n", status);
	else
		printf("status none\n");
	fflush(stdout);
	return 0;
}
