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
 *
 * Exit status: 0 = every check passed; 1 = at least one check failed;
 * 2 = usage error; 3 = watchdog.
 */
#include "fv_test_util.h"

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

static const struct fv_case cases[] = {
	{ "unknown_gid", case_unknown_gid },
};

int main(int argc, char **argv)
{
	return fv_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]), 1);
}
