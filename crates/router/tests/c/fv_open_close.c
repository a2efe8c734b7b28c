/* Opens and closes fv0 N times in a row, as fast as it can (argv[1], default
 * 100): each time, a session of the router comes and goes. Exits 0 if every
 * open and close succeeded. Run by tests/e2e_etcd.rs. */
#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 100;
	for (int i = 0; i < n; i++) {
		int num = 0;
		struct ibv_device **list = ibv_get_device_list(&num);
		struct ibv_context *ctx = NULL;
		for (int d = 0; list && d < num && !ctx; d++)
			if (!strcmp(ibv_get_device_name(list[d]), "fv0"))
				ctx = ibv_open_device(list[d]);
		if (!ctx) {
			fprintf(stderr, "open %d: no fv0\n", i);
			return 1;
		}
		if (ibv_close_device(ctx)) {
			fprintf(stderr, "close %d failed\n", i);
			return 1;
		}
		ibv_free_device_list(list);
	}
	printf("opened and closed fv0 %d times\n", n);
	return 0;
}
