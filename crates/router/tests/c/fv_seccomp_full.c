/*
 * fv_seccomp_full.c: runs a command with no room left for another seccomp
 * filter (tests/e2e_router.rs: `flowverbs exec` must warn and carry on when
 * it cannot install its filter).
 *
 * Usage: fv_seccomp_full COMMAND ARGS...
 * Installs allow-everything filters, as long as possible, then ever
 * shorter ones, until the kernel refuses even a one-instruction filter
 * (ENOMEM: its limit on the instructions of all the filters of a task),
 * then execs COMMAND.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct sock_filter allow[BPF_MAXINSNS];

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s COMMAND ARGS...\n", argv[0]);
		return 2;
	}
	/* Jumps over the rest, then allow: BPF_MAXINSNS instructions. */
	for (int i = 0; i < BPF_MAXINSNS - 1; i++)
		allow[i] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0);
	allow[BPF_MAXINSNS - 1] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		perror("prctl(PR_SET_NO_NEW_PRIVS)");
		return 2;
	}
	int n = 0;
	for (unsigned len = BPF_MAXINSNS; len >= 1; len /= 2) {
		/* The last `len` instructions: loads, then allow. */
		struct sock_fprog prog = {.len = len, .filter = allow + BPF_MAXINSNS - len};
		while (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0)
			n++;
		if (errno != ENOMEM) {
			fprintf(stderr, "after %d filters: %s (expected ENOMEM)\n", n, strerror(errno));
			return 2;
		}
	}
	execvp(argv[1], argv + 1);
	perror("execvp");
	return 2;
}
