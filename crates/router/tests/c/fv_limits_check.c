/*
 * fv_limits_check.c: how much of each resource fv0 grants one context
 * (tests/security.rs's per-user and per-context caps).
 *
 * Usage: fv_limits_check CASE K [HOLD [SIZE]]
 *   contexts  opens up to K contexts of fv0
 *   cqs       creates up to K CQs of SIZE entries (default 4) in one context
 *   qps       creates up to K RC QPs (one CQ, tiny queues) in one context
 *   channels  creates up to K completion channels in one context
 *   mrs       registers up to K MRs of SIZE bytes (default 4096, one
 *             buffer registered K times) in one context
 *   rate      K times: ibv_alloc_pd (a control request), then
 *             ibv_dealloc_pd of it; keeps going after a failure
 * Prints "made N, then errno E (message)" (E 0: all K were made; for rate:
 * N requests succeeded and E is the errno of the first failure), for rate
 * also "refused R of K", then keeps everything open for HOLD seconds
 * (default 0) and exits 0.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fv_test_util.h"

static struct ibv_device *fv0(void)
{
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	struct ibv_device *dev = device_named(list, n, "fv0");
	if (!dev) {
		fprintf(stderr, "no fv0\n");
		exit(2);
	}
	return dev;
}

static struct ibv_context *one_context(struct ibv_device *dev)
{
	struct ibv_context *ctx = ibv_open_device(dev);
	if (!ctx) {
		perror("ibv_open_device");
		exit(2);
	}
	return ctx;
}

static struct ibv_pd *one_pd(struct ibv_context *ctx)
{
	struct ibv_pd *pd = ibv_alloc_pd(ctx);
	if (!pd) {
		perror("ibv_alloc_pd");
		exit(2);
	}
	return pd;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 5) {
		fprintf(stderr, "usage: %s contexts|cqs|channels|qps|mrs|rate K [HOLD [SIZE]]\n", argv[0]);
		return 2;
	}
	int k = atoi(argv[2]);
	long size = argc == 5 ? atol(argv[4]) : 0;
	struct ibv_device *dev = fv0();
	int made = 0, err = 0, refused = -1;
	if (!strcmp(argv[1], "contexts")) {
		for (; made < k; made++) {
			if (!ibv_open_device(dev)) {
				err = errno;
				break;
			}
		}
	} else if (!strcmp(argv[1], "cqs")) {
		struct ibv_context *ctx = one_context(dev);
		for (; made < k; made++) {
			if (!ibv_create_cq(ctx, size ? (int)size : 4, NULL, NULL, 0)) {
				err = errno;
				break;
			}
		}
	} else if (!strcmp(argv[1], "channels")) {
		struct ibv_context *ctx = one_context(dev);
		for (; made < k; made++) {
			if (!ibv_create_comp_channel(ctx)) {
				err = errno;
				break;
			}
		}
	} else if (!strcmp(argv[1], "qps")) {
		struct ibv_context *ctx = one_context(dev);
		struct ibv_pd *pd = one_pd(ctx);
		struct ibv_cq *cq = ibv_create_cq(ctx, 4, NULL, NULL, 0);
		if (!cq) {
			perror("ibv_create_cq");
			return 2;
		}
		for (; made < k; made++) {
			struct ibv_qp_init_attr a = {
				.send_cq = cq,
				.recv_cq = cq,
				.qp_type = IBV_QPT_RC,
				.cap = {.max_send_wr = 1, .max_recv_wr = 1,
					.max_send_sge = 1, .max_recv_sge = 1},
			};
			if (!ibv_create_qp(pd, &a)) {
				err = errno;
				break;
			}
		}
	} else if (!strcmp(argv[1], "mrs")) {
		struct ibv_context *ctx = one_context(dev);
		struct ibv_pd *pd = one_pd(ctx);
		size_t len = size ? (size_t)size : 4096;
		void *buf = NULL;
		if (posix_memalign(&buf, 4096, len)) {
			fprintf(stderr, "no memory for %zu bytes\n", len);
			return 2;
		}
		memset(buf, 0, len);
		for (; made < k; made++) {
			if (!ibv_reg_mr(pd, buf, len, IBV_ACCESS_LOCAL_WRITE)) {
				err = errno;
				break;
			}
		}
	} else if (!strcmp(argv[1], "rate")) {
		struct ibv_context *ctx = one_context(dev);
		refused = 0;
		for (int i = 0; i < k; i++) {
			struct ibv_pd *pd = ibv_alloc_pd(ctx);
			if (!pd) {
				if (!err)
					err = errno;
				refused++;
				continue;
			}
			made++;
			if (ibv_dealloc_pd(pd)) {
				perror("ibv_dealloc_pd");
				return 2;
			}
		}
	} else {
		fprintf(stderr, "unknown case %s\n", argv[1]);
		return 2;
	}
	printf("made %d, then errno %d (%s)\n", made, err, err ? strerror(err) : "none");
	if (refused >= 0)
		printf("refused %d of %d\n", refused, k);
	fflush(stdout);
	if (argc >= 4)
		sleep(atoi(argv[3]));
	return 0;
}
