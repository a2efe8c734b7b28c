/*
 * fv_flood.c: a client that connects to the router's socket many times and
 * never says Hello (tests/security.rs's descriptor flood).
 *
 * Usage: fv_flood SOCKET N KEEP SECONDS
 * Makes up to N nonblocking connections, one after the other (a full
 * backlog refuses one with EAGAIN), then watches them for up to SECONDS:
 * - once the router has closed every connection after the first KEEP (the
 *   ones over its per-user cap), prints "kept: K of the first KEEP";
 * - when the router has closed all of them (its Hello deadline), or when
 *   SECONDS pass, prints "closed by the router: C of M" and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s SOCKET N KEEP SECONDS\n", argv[0]);
		return 2;
	}
	int n = atoi(argv[2]);
	int keep = atoi(argv[3]);
	double secs = atof(argv[4]);
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", argv[1]);
	struct pollfd *fds = calloc(n, sizeof(*fds));
	int m = 0, refused = 0;
	for (int i = 0; i < n; i++) {
		int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (s < 0) {
			perror("socket");
			return 2;
		}
		if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
			refused++;
			close(s);
			continue;
		}
		fds[m].fd = s;
		fds[m].events = POLLIN;
		m++;
	}
	printf("connected %d, refused %d\n", m, refused);
	fflush(stdout);
	int closed = 0, reported = 0;
	double start = now_s();
	while (now_s() - start < secs) {
		if (poll(fds, m, 50) < 0 && errno != EINTR) {
			perror("poll");
			return 2;
		}
		for (int i = 0; i < m; i++) {
			if (fds[i].fd >= 0 && fds[i].revents) {
				close(fds[i].fd);
				fds[i].fd = -1;
				closed++;
			}
		}
		/* Connections after the first KEEP are over the cap: once the
		 * router has closed them all, count the first KEEP still open. */
		if (!reported) {
			int late_open = 0, early_open = 0;
			for (int i = 0; i < m; i++)
				if (fds[i].fd >= 0)
					*(i < keep ? &early_open : &late_open) += 1;
			if (late_open == 0) {
				printf("kept: %d of the first %d\n", early_open, keep < m ? keep : m);
				fflush(stdout);
				reported = 1;
			}
		}
		if (closed == m)
			break;
	}
	printf("closed by the router: %d of %d\n", closed, m);
	return 0;
}
