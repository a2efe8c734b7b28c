/*
 * fv_limits_check.c: how many contexts, or CQs in one context, fv0 grants
 * (tests/security.rs's per-user and per-context caps).
 *
 * Usage: fv_limits_check contexts K [HOLD]   opens up to K contexts of fv0
 *        fv_limits_check cqs K [HOLD]        creates up to K CQs in one context
 * Prints "made N, then errno E (message)" (E 0: all K were made), then
 * keeps everything open for HOLD seconds (default 0) and exits 0.
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

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: %s contexts|cqs K [HOLD]\n", argv[0]);
		return 2;
	}
	int k = atoi(argv[2]);
	struct ibv_device *dev = fv0();
	int made = 0, err = 0;
	if (!strcmp(argv[1], "contexts")) {
		for (; made < k; made++) {
			if (!ibv_open_device(dev)) {
				err = errno;
				break;
			}
		}
	} else if (!strcmp(argv[1], "cqs")) {
		struct ibv_context *ctx = ibv_open_device(dev);
		if (!ctx) {
			perror("ibv_open_device");
			return 2;
		}
		for (; made < k; made++) {
			if (!ibv_create_cq(ctx, 4, NULL, NULL, 0)) {
				err = errno;
				break;
			}
		}
	} else {
		fprintf(stderr, "unknown case %s\n", argv[1]);
		return 2;
	}
	printf("made %d, then errno %d (%s)\n", made, err, err ? strerror(err) : "none");
	fflush(stdout);
	if (argc == 4)
		sleep(atoi(argv[3]));
	return 0;
}
