/*
 * fv_xfer: a checked transfer between two processes over an RDMA verbs
 * device (by default flowverbs' fv0), for the end-to-end tests.
 *
 * Why: rdma-core's ibv_*_pingpong -c only checks one zero byte per page and
 * exits 0 even when that byte is wrong, so a pingpong run proves nothing
 * about the data. fv_xfer moves messages both ways with a pattern that
 * differs per byte offset, per message and per side, checks every byte of
 * every message it receives, guard regions around every buffer, every
 * completion (status, opcode, byte_len, imm_data, qp_num, src_qp, GRH) and
 * exits 1 on the first discrepancy.
 *
 *   server: fv_xfer [options]
 *   client: fv_xfer [options] HOST
 *
 *   -d DEV      device (default fv0)          -i PORT  IB port (default 1)
 *   -g GIDX     GID index (default 0; -1: no GRH)
 *   -p TCPPORT  out-of-band TCP port (default 18515)
 *   -t rc|uc|ud|srq   transport (default rc; srq: RC QPs on one SRQ per side)
 *   -o send|send_imm|write|write_imm|read|write_mw   operation (default send)
 *   -s SIZE     bytes per message (default 4096; UD: at most the port MTU)
 *   -n ITERS    messages each way (default 100)
 *   -q NQPS     QPs per side (default 1; message i uses QP i % NQPS)
 *   -e          wait for completions on a completion channel
 *   -z N        ibv_resize_cq the CQ after every N rounds, between four times
 *               its size and its size (completions may be pending)
 *   -X I:J      self-test: flip byte J of our own message I after filling it
 *
 * Each round i: the client's message i goes to the server, which checks it,
 * then the server's message i goes to the client, which checks it; only one
 * message is ever in flight. send/send_imm/ud: a SEND into a posted receive.
 * write: RDMA WRITE into the peer's receive buffer, then a small SEND notice.
 * write_imm: RDMA WRITE WITH IMM (imm = htonl(i)). read: the owner fills its
 * buffer and SENDs a notice; the peer RDMA READs it and checks it.
 * write_mw (RC): as write, but each side's receive buffer is reached only
 * through a type 2 memory window bound over exactly that buffer on its QP;
 * the last notice is a SEND_WITH_INV of the peer's window, whose receive
 * must carry IBV_WC_WITH_INV and that rkey, after which the window must be
 * free (a new bind of it succeeds).
 *
 * Output: the pingpongs' "local address:" / "remote address:" lines and
 * throughput lines on stdout, then "fv_xfer: N messages of S bytes checked
 * each way (...)". Exit 0: success; 1: any failure (one line on stderr:
 * "fv_xfer: MISMATCH|GUARD|COMPLETION side ... msg ... qp ...", a failed
 * verbs call, the peer going away, "Couldn't connect to" for the client);
 * 2: the watchdog fired (FV_XFER_TIMEOUT seconds, default 120; 0: none).
 * FV_XFER_RC_TIMEOUT: the RC QPs' local ACK timeout exponent (default 14);
 * FV_XFER_CONNECT_SECS: how long a client retries a refused TCP connection
 * (default 0). The soak sets both, so that a machine loaded far beyond its
 * cores fails a run only for a fault, not for being slow.
 */
#define _GNU_SOURCE
#include <infiniband/verbs.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fv_test_util.h"

#define GUARD_LEN 64     /* guard bytes in front of every buffer (and at least after) */
#define GRH_LEN 40       /* GRH area in front of a UD receive */
#define NOTICE_LEN 16    /* the SEND that announces a WRITE or READ buffer */
#define PATTERN_MOD 251  /* pattern bytes are 0..250 ... */
#define POISON 0xFD      /* ... never the poison of unwritten receive buffers */
#define GUARD_IN 0xFC    /* ... nor the guards around receive buffers */
#define GUARD_OUT 0xFB   /* ... nor (a different value, so that an overrun from a send
			    buffer into a receive buffer's guard shows) around send buffers */
#define UD_QKEY 0x11111111
#define HDR_LEN 64       /* out-of-band records, NUL padded */
#define REC_LEN 128

enum transport { T_RC, T_UC, T_UD, T_SRQ };
enum operation { OP_SEND, OP_SEND_IMM, OP_WRITE, OP_WRITE_IMM, OP_READ, OP_WRITE_MW };
static const char *const transport_names[] = { "rc", "uc", "ud", "srq" };
static const char *const op_names[] = { "send",	"send_imm", "write",
					"write_imm", "read",	    "write_mw" };

/* What a work request was, encoded in the upper half of its wr_id. */
enum wr_kind { WK_RECV, WK_DATA, WK_NOTICE, WK_READ, WK_BIND, WK_COUNT };
static const char *const kind_names[] = { "receive", "data send", "notice send", "RDMA READ",
					  "window bind" };

struct options {
	const char *dev, *host;
	int ib_port, gidx, tcp_port, iters, nqps;
	enum transport transport;
	enum operation op;
	size_t size;
	bool events;
	int resize_every; /* -z: 0 = never */
	long flip_msg; /* -X: -1 = none */
	size_t flip_off;
};

/* A buffer inside the registered region, with GUARD_LEN guard bytes in front
 * of base and guard bytes from base + len up to the next buffer. */
struct buffer {
	uint8_t *base;
	size_t len, after;
	uint8_t guard;
};

struct remote_qp {
	uint32_t qpn, psn, rkey;
	uint16_t lid;
	uint64_t in_addr, out_addr; /* its receive (WRITE target) and send (READ source) buffers */
	union ibv_gid gid;
};

struct qp_ctx {
	struct ibv_qp *qp;
	struct ibv_ah *ah; /* UD: to the peer's QP of the same index */
	uint32_t psn;
	struct buffer data_in, data_out, notice_in, notice_out;
	long last_sent; /* the message data_out holds, -1: none yet */
	struct remote_qp remote;
	struct ibv_mw *mw; /* write_mw: the window over data_in, under mw_rkey */
	uint32_t mw_rkey;
};

struct pending {
	bool posted, done;
	struct ibv_wc wc;
};

static struct options opt = {
	.dev = "fv0", .ib_port = 1, .gidx = 0, .tcp_port = 18515, .iters = 100, .nqps = 1,
	.transport = T_RC, .op = OP_SEND, .size = 4096, .flip_msg = -1,
};
static int side; /* 0 server, 1 client */
static const char *side_name = "server";

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_mr *mr;
static struct ibv_cq *cq;
static struct ibv_comp_channel *channel;
static struct ibv_srq *srq;
static struct qp_ctx *qps;
static struct pending *pend; /* [kind * nqps + slot] */
static uint8_t *region, *pattern_base;
static size_t region_len;
static uint16_t local_lid;
static union ibv_gid local_gid;
static int sock = -1;
static bool watch_sock, cq_armed;
static long cur_msg = -1;

/* ------------------------------------------------------------------------ */
/* Failing                                                                   */

/* The step (set_step, g_step) is fv_test_util.h's. */
static char timeout_text[32];

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fputs("fv_xfer: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* ibv_post_*, ibv_modify_*, ibv_destroy_* ... return an errno value. */
static void check_ret(int ret, const char *call)
{
	if (ret)
		die("%s failed: %s (%d) [%s side, %s]", call, strerror(ret), ret, side_name, g_step);
}

/* ibv_create_*, ibv_reg_mr ... return NULL and set errno. */
static void *check_ptr(void *p, const char *call)
{
	if (!p)
		die("%s failed: %s [%s side, %s]", call, strerror(errno), side_name, g_step);
	return p;
}

static void xfer_on_alarm(int sig)
{
	const char *parts[] = { "fv_xfer: TIMEOUT after ", timeout_text, " s on the ", side_name,
				" side; last step: ", g_step, "\n" };
	(void)sig;
	for (size_t p = 0; p < sizeof(parts) / sizeof(parts[0]); p++)
		if (write(2, parts[p], strlen(parts[p])) < 0)
			break;
	_exit(2);
}

static void start_watchdog(void)
{
	const char *env = getenv("FV_XFER_TIMEOUT");
	char *end;
	unsigned long secs = 120;
	if (env && *env) {
		secs = strtoul(env, &end, 10);
		if (*end || secs > 86400)
			die("FV_XFER_TIMEOUT must be a number of seconds (0: no watchdog)");
	}
	snprintf(timeout_text, sizeof(timeout_text), "%lu", secs);
	signal(SIGALRM, xfer_on_alarm);
	alarm((unsigned)secs);
}

/* ------------------------------------------------------------------------ */
/* Patterns and buffers                                                      */

static uint32_t mix32(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352dU;
	x ^= x >> 15;
	x *= 0x846ca68bU;
	x ^= x >> 16;
	return x;
}

/* pattern_base[j] is a hash of the offset j in 0..250. Byte j of message i
 * from side s is (pattern_base[j] + 2i + s) mod 251: it depends on the
 * offset, and at every offset it differs between consecutive messages and
 * between the two sides' messages of nearby rounds (equal only when
 * 2i + s = 2i' + s' mod 251). It is never POISON or GUARD. */
static void make_pattern_base(void)
{
	pattern_base = malloc(opt.size);
	if (!pattern_base)
		die("out of memory (%zu bytes)", opt.size);
	for (size_t j = 0; j < opt.size; j++)
		pattern_base[j] = (uint8_t)(mix32((uint32_t)j + 0x9e3779b9U) % PATTERN_MOD);
}

static unsigned pattern_shift(int from_side, long msg)
{
	return (unsigned)((2 * (msg % PATTERN_MOD) + from_side) % PATTERN_MOD);
}

static uint8_t pattern_byte(unsigned shift, size_t j)
{
	unsigned v = pattern_base[j] + shift;
	return (uint8_t)(v >= PATTERN_MOD ? v - PATTERN_MOD : v);
}

static void fill_message(uint8_t *p, long msg)
{
	unsigned shift = pattern_shift(side, msg);
	for (size_t j = 0; j < opt.size; j++)
		p[j] = pattern_byte(shift, j);
	if (msg == opt.flip_msg)
		p[opt.flip_off] ^= 0xFF;
}

/* Checks every byte of message msg from from_side: the peer's message we
 * received, or our own still in our send buffer (with our -X flip, if any). */
static void check_message(const uint8_t *p, int from_side, long msg, int k, const char *what)
{
	unsigned shift = pattern_shift(from_side, msg);
	bool flipped = from_side == side && msg == opt.flip_msg;
	for (size_t j = 0; j < opt.size; j++) {
		uint8_t want = pattern_byte(shift, j);
		if (flipped && j == opt.flip_off)
			want ^= 0xFF;
		if (p[j] != want)
			die("MISMATCH side %s msg %ld qp %d offset %zu: got 0x%02x want 0x%02x%s",
			    side_name, msg, k, j, p[j], want, what);
	}
}

static void check_bytes(const uint8_t *p, size_t len, uint8_t want, const char *tag, int k,
			const char *where, size_t base_off)
{
	for (size_t j = 0; j < len; j++)
		if (p[j] != want)
			die("%s side %s msg %ld qp %d offset %zu %s: got 0x%02x want 0x%02x", tag,
			    side_name, cur_msg, k, base_off + j, where, p[j], want);
}

static void check_guards(const struct buffer *b, int k, const char *name)
{
	char where[96];
	snprintf(where, sizeof(where), "(guard before the %s buffer)", name);
	check_bytes(b->base - GUARD_LEN, GUARD_LEN, b->guard, "GUARD", k, where, 0);
	snprintf(where, sizeof(where), "(guard after the %s buffer, offset from its end)", name);
	check_bytes(b->base + b->len, b->after, b->guard, "GUARD", k, where, 0);
}

/* Carves the next buffer of len bytes out of the region (NULL region: sizing). */
static struct buffer carve(size_t *off, size_t len, uint8_t guard, uint8_t fill)
{
	struct buffer b;
	size_t end = (*off + GUARD_LEN + len + 63) / 64 * 64 + GUARD_LEN;
	b.base = region ? region + *off + GUARD_LEN : NULL;
	b.len = len;
	b.after = end - (*off + GUARD_LEN + len);
	b.guard = guard;
	if (region) {
		memset(b.base - GUARD_LEN, guard, GUARD_LEN);
		memset(b.base, fill, len);
		memset(b.base + len, guard, b.after);
	}
	*off = end;
	return b;
}

static size_t recv_len(void)
{
	return opt.size + (opt.transport == T_UD ? GRH_LEN : 0);
}

static void layout_buffers(void)
{
	size_t off = 0;
	for (int pass = 0; pass < 2; pass++) {
		off = 0;
		for (int k = 0; k < opt.nqps; k++) {
			qps[k].data_in = carve(&off, recv_len(), GUARD_IN, POISON);
			qps[k].data_out = carve(&off, opt.size, GUARD_OUT, POISON);
			qps[k].notice_in = carve(&off, NOTICE_LEN, GUARD_IN, POISON);
			qps[k].notice_out = carve(&off, NOTICE_LEN, GUARD_OUT, POISON);
			qps[k].last_sent = -1;
		}
		if (pass == 0) {
			region_len = (off + 4095) / 4096 * 4096;
			if (posix_memalign((void **)&region, 4096, region_len))
				die("out of memory (%zu bytes)", region_len);
			memset(region, GUARD_IN, region_len); /* the tail after the last buffer */
		}
	}
}

/* Every guard is intact; with idle_too, every receive buffer other than the
 * ones given is still poisoned (nothing wrote where it should not). */
static void check_all_buffers(bool idle_too, int busy_data, int busy_notice)
{
	for (int k = 0; k < opt.nqps; k++) {
		check_guards(&qps[k].data_in, k, "receive");
		check_guards(&qps[k].data_out, k, "send");
		check_guards(&qps[k].notice_in, k, "notice receive");
		check_guards(&qps[k].notice_out, k, "notice send");
		if (!idle_too)
			continue;
		if (k != busy_data)
			check_bytes(qps[k].data_in.base, qps[k].data_in.len, POISON, "MISMATCH", k,
				    "(idle receive buffer written)", 0);
		if (k != busy_notice)
			check_bytes(qps[k].notice_in.base, NOTICE_LEN, POISON, "MISMATCH", k,
				    "(idle notice buffer written)", 0);
	}
}

static void make_notice(uint8_t *p, int from_side, long msg)
{
	uint32_t w[4] = { htonl(0x4656584eU /* FVXN */), htonl((uint32_t)msg),
			  htonl((uint32_t)from_side), htonl(~(uint32_t)msg) };
	memcpy(p, w, NOTICE_LEN);
}

/* ------------------------------------------------------------------------ */
/* Work requests and completions                                             */

static uint64_t wr_id_of(enum wr_kind kind, int slot)
{
	return ((uint64_t)kind << 32) | (uint32_t)slot;
}

static struct pending *pending_of(enum wr_kind kind, int slot)
{
	return &pend[kind * opt.nqps + slot];
}

static void mark_posted(enum wr_kind kind, int slot)
{
	struct pending *p = pending_of(kind, slot);
	if (p->posted)
		die("internal error: %s %d posted twice", kind_names[kind], slot);
	p->posted = true;
	p->done = false;
}

/* Poisons receive buffer slot (the data or the notice buffer, as the
 * operation receives) and posts it on its QP or on the SRQ. */
static void post_receive(int slot)
{
	bool data = opt.op == OP_SEND || opt.op == OP_SEND_IMM;
	struct buffer *b = data ? &qps[slot].data_in : &qps[slot].notice_in;
	struct ibv_sge sge = { .addr = (uintptr_t)b->base, .length = (uint32_t)b->len,
			       .lkey = mr->lkey };
	struct ibv_recv_wr wr = { .wr_id = wr_id_of(WK_RECV, slot), .sg_list = &sge, .num_sge = 1 };
	struct ibv_recv_wr *bad;

	memset(b->base, POISON, b->len);
	mark_posted(WK_RECV, slot);
	if (srq)
		check_ret(ibv_post_srq_recv(srq, &wr, &bad), "ibv_post_srq_recv");
	else
		check_ret(ibv_post_recv(qps[slot].qp, &wr, &bad), "ibv_post_recv");
}

static void post_send_wr(long msg, int k, enum wr_kind kind, enum ibv_wr_opcode opcode,
			 struct buffer *local, uint64_t remote_addr)
{
	struct qp_ctx *q = &qps[k];
	struct ibv_sge sge = { .addr = (uintptr_t)local->base,
			       .length = (uint32_t)(kind == WK_NOTICE ? NOTICE_LEN : opt.size),
			       .lkey = mr->lkey };
	struct ibv_send_wr wr = { .wr_id = wr_id_of(kind, k), .sg_list = &sge, .num_sge = 1,
				  .opcode = opcode, .send_flags = IBV_SEND_SIGNALED };
	struct ibv_send_wr *bad;

	if (opcode == IBV_WR_SEND_WITH_IMM || opcode == IBV_WR_RDMA_WRITE_WITH_IMM)
		wr.imm_data = htonl((uint32_t)msg);
	if (opcode == IBV_WR_SEND_WITH_INV)
		wr.invalidate_rkey = q->remote.rkey;
	if (opcode == IBV_WR_RDMA_WRITE || opcode == IBV_WR_RDMA_WRITE_WITH_IMM ||
	    opcode == IBV_WR_RDMA_READ) {
		wr.wr.rdma.remote_addr = remote_addr;
		wr.wr.rdma.rkey = q->remote.rkey;
	}
	if (opt.transport == T_UD) {
		wr.wr.ud.ah = q->ah;
		wr.wr.ud.remote_qpn = q->remote.qpn;
		wr.wr.ud.remote_qkey = UD_QKEY;
	}
	mark_posted(kind, k);
	check_ret(ibv_post_send(q->qp, &wr, &bad), "ibv_post_send");
}

/* Whether the peer went away (EOF on the out-of-band socket): then it failed
 * and said why; we stop too instead of waiting for the watchdog. */
static void check_peer_alive(void)
{
	char c;
	ssize_t n;
	if (!watch_sock)
		return;
	n = recv(sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
		die("the peer closed the out-of-band connection (it failed or was stopped) "
		    "[%s side, %s]", side_name, g_step);
	if (n > 0)
		watch_sock = false; /* it finished and sent its final byte */
}

static void record_completion(const struct ibv_wc *wc)
{
	uint32_t kind = (uint32_t)(wc->wr_id >> 32), slot = (uint32_t)wc->wr_id;
	struct pending *p;
	if (kind >= WK_COUNT || slot >= (uint32_t)opt.nqps || !pending_of(kind, slot)->posted ||
	    pending_of(kind, slot)->done)
		die("COMPLETION side %s msg %ld: unexpected completion wr_id 0x%" PRIx64
		    " opcode %d status %d (%s) qp_num 0x%06x", side_name, cur_msg, wc->wr_id,
		    wc->opcode, wc->status, ibv_wc_status_str(wc->status), wc->qp_num);
	if (wc->status != IBV_WC_SUCCESS)
		die("COMPLETION side %s msg %ld qp %u: %s status got %d (%s) want 0 (success) "
		    "[qp_num 0x%06x vendor_err 0x%x]", side_name, cur_msg, slot, kind_names[kind],
		    wc->status, ibv_wc_status_str(wc->status), wc->qp_num, wc->vendor_err);
	p = pending_of(kind, slot);
	p->wc = *wc;
	p->done = true;
}

/* Blocks until the completion channel has an event (acknowledging it) or
 * the peer goes away. */
static void wait_for_event(void)
{
	struct pollfd fds[2] = { { .fd = channel->fd, .events = POLLIN },
				 { .fd = sock, .events = POLLIN } };
	struct ibv_cq *ev_cq;
	void *ev_ctx;
	int n = poll(fds, watch_sock ? 2 : 1, -1);
	if (n < 0) {
		if (errno == EINTR)
			return;
		die("poll: %s", strerror(errno));
	}
	if (watch_sock && fds[1].revents)
		check_peer_alive();
	if (!fds[0].revents)
		return;
	if (ibv_get_cq_event(channel, &ev_cq, &ev_ctx))
		die("ibv_get_cq_event failed: %s [%s side, %s]", strerror(errno), side_name, g_step);
	if (ev_cq != cq)
		die("ibv_get_cq_event returned CQ %p, not ours (%p)", (void *)ev_cq, (void *)cq);
	ibv_ack_cq_events(cq, 1);
	cq_armed = false;
}

/* Waits for the completion of the work request (kind, slot), or with slot
 * -1 of any posted one of that kind; returns its slot and completion.
 * Other completions that arrive meanwhile are kept for later. */
static int wait_completion(enum wr_kind kind, int slot, struct ibv_wc *out)
{
	unsigned long spins = 0;
	double next_check = 0;
	for (;;) {
		struct ibv_wc wcs[16];
		int n;
		for (int s = 0; s < opt.nqps; s++) {
			struct pending *p = pending_of(kind, s);
			if ((slot < 0 || s == slot) && p->done) {
				*out = p->wc;
				p->posted = p->done = false;
				return s;
			}
		}
		n = ibv_poll_cq(cq, 16, wcs);
		if (n < 0)
			die("ibv_poll_cq failed (%d) [%s side, %s]", n, side_name, g_step);
		for (int w = 0; w < n; w++)
			record_completion(&wcs[w]);
		if (n > 0)
			continue;
		if (opt.events) {
			if (!cq_armed) {
				check_ret(ibv_req_notify_cq(cq, 0), "ibv_req_notify_cq");
				cq_armed = true; /* poll once more: it may have come in before */
				continue;
			}
			wait_for_event();
		} else if (++spins % 64 == 0 && now_s() >= next_check) {
			/* By the clock, not by the number of polls: on a loaded
			 * machine every empty poll may yield the CPU for long. */
			check_peer_alive();
			next_check = now_s() + 0.05;
		}
	}
}

static void completion_mismatch(long msg, int k, const struct ibv_wc *wc, const char *field,
				unsigned long long got, unsigned long long want)
{
	die("COMPLETION side %s msg %ld qp %d: %s %s got %llu (0x%llx) want %llu (0x%llx) "
	    "[wr_id 0x%" PRIx64 " opcode %d byte_len %u wc_flags 0x%x]", side_name, msg, k,
	    kind_names[wc->wr_id >> 32], field, got, got, want, want, wc->wr_id, wc->opcode,
	    wc->byte_len, wc->wc_flags);
}

/* Checks the fields of a successful completion; want_len < 0: not checked. */
static void check_completion(long msg, int k, const struct ibv_wc *wc, enum ibv_wc_opcode op,
			     long long want_len, bool imm)
{
	if (wc->opcode != op)
		completion_mismatch(msg, k, wc, "opcode", wc->opcode, op);
	if (wc->qp_num != qps[k].qp->qp_num)
		completion_mismatch(msg, k, wc, "qp_num", wc->qp_num, qps[k].qp->qp_num);
	if (!(op & IBV_WC_RECV))
		return;
	if (want_len >= 0 && wc->byte_len != (unsigned long long)want_len)
		completion_mismatch(msg, k, wc, "byte_len", wc->byte_len, (unsigned long long)want_len);
	if (!!(wc->wc_flags & IBV_WC_WITH_IMM) != imm)
		completion_mismatch(msg, k, wc, "IBV_WC_WITH_IMM flag", !!(wc->wc_flags & IBV_WC_WITH_IMM),
				    imm);
	if (imm && wc->imm_data != htonl((uint32_t)msg))
		completion_mismatch(msg, k, wc, "imm_data (network order)", wc->imm_data,
				    htonl((uint32_t)msg));
	if (opt.transport == T_UD) {
		if (wc->src_qp != qps[k].remote.qpn)
			completion_mismatch(msg, k, wc, "src_qp", wc->src_qp, qps[k].remote.qpn);
		if (opt.gidx >= 0 && !(wc->wc_flags & IBV_WC_GRH))
			completion_mismatch(msg, k, wc, "IBV_WC_GRH flag", 0, 1);
	}
}

/* The GRH area of a UD receive: written (with a GRH flagged), and with -g,
 * it names the peer as source and us as destination: either an IPv6 GRH
 * (GIDs at 8 and 24) or RoCE v2's IPv4 header in its last 20 bytes. */
static void check_grh(const uint8_t *g, const struct ibv_wc *wc, long msg, int k)
{
	const uint8_t *peer = qps[k].remote.gid.raw, *me = local_gid.raw;
	bool written = false;
	if (!(wc->wc_flags & IBV_WC_GRH))
		return;
	for (int j = 0; j < GRH_LEN; j++)
		written |= g[j] != POISON;
	if (!written)
		die("MISMATCH side %s msg %ld qp %d: the GRH area was not written (all 0x%02x)",
		    side_name, msg, k, POISON);
	if (opt.gidx < 0)
		return;
	if ((g[0] >> 4) == 6 && !memcmp(g + 8, peer, 16) && !memcmp(g + 24, me, 16))
		return;
	if (g[20] == 0x45 && !memcmp(g + 32, peer + 12, 4) && !memcmp(g + 36, me + 12, 4))
		return;
	die("MISMATCH side %s msg %ld qp %d: the GRH area does not name the peer as source and "
	    "us as destination (bytes 0: 0x%02x, 20: 0x%02x, IPv4 src %u.%u.%u.%u dst %u.%u.%u.%u)",
	    side_name, msg, k, g[0], g[20], g[32], g[33], g[34], g[35], g[36], g[37], g[38], g[39]);
}

/* Binds QP k's window over its receive buffer under rkey (write_mw). */
static void bind_window(int k, uint32_t rkey)
{
	struct qp_ctx *q = &qps[k];
	struct ibv_send_wr wr = { .wr_id = wr_id_of(WK_BIND, k), .opcode = IBV_WR_BIND_MW,
				  .send_flags = IBV_SEND_SIGNALED };
	struct ibv_send_wr *bad;
	struct ibv_wc wc;

	set_step("binding qp %d's window", k);
	wr.bind_mw.mw = q->mw;
	wr.bind_mw.rkey = rkey;
	wr.bind_mw.bind_info.mr = mr;
	wr.bind_mw.bind_info.addr = (uintptr_t)q->data_in.base;
	wr.bind_mw.bind_info.length = opt.size;
	wr.bind_mw.bind_info.mw_access_flags = IBV_ACCESS_REMOTE_WRITE;
	mark_posted(WK_BIND, k);
	check_ret(ibv_post_send(q->qp, &wr, &bad), "ibv_post_send(BIND_MW)");
	wait_completion(WK_BIND, k, &wc);
	if (wc.opcode != IBV_WC_BIND_MW)
		completion_mismatch(cur_msg, k, &wc, "opcode", wc.opcode, IBV_WC_BIND_MW);
	q->mw_rkey = rkey;
	q->mw->rkey = rkey; /* as an application on rxe keeps it */
}

/* The receive of the peer's SEND_WITH_INV: flagged, naming our window's
 * rkey; the window is free again (a bind under the next key succeeds). */
static void check_invalidated(long msg, int k, const struct ibv_wc *wc)
{
	if (!(wc->wc_flags & IBV_WC_WITH_INV))
		completion_mismatch(msg, k, wc, "IBV_WC_WITH_INV flag", 0, 1);
	if (wc->invalidated_rkey != qps[k].mw_rkey)
		completion_mismatch(msg, k, wc, "invalidated_rkey", wc->invalidated_rkey,
				    qps[k].mw_rkey);
	bind_window(k, ibv_inc_rkey(qps[k].mw_rkey));
}

static void check_notice(const uint8_t *p, long msg, int k)
{
	uint8_t want[NOTICE_LEN];
	make_notice(want, !side, msg);
	for (int j = 0; j < NOTICE_LEN; j++)
		if (p[j] != want[j])
			die("MISMATCH side %s msg %ld qp %d offset %d: got 0x%02x want 0x%02x (notice)",
			    side_name, msg, k, j, p[j], want[j]);
}

/* ------------------------------------------------------------------------ */
/* One message each way                                                      */

static void send_message(long msg, int k)
{
	struct qp_ctx *q = &qps[k];
	struct ibv_wc wc;
	bool imm = opt.op == OP_SEND_IMM || opt.op == OP_WRITE_IMM;

	set_step("sending msg %ld on qp %d", msg, k);
	if (q->last_sent >= 0) /* the device must not have altered what we sent */
		check_message(q->data_out.base, side, q->last_sent, k,
			      " (our own send buffer, altered after it was sent)");
	fill_message(q->data_out.base, msg);
	q->last_sent = msg;

	switch (opt.op) {
	case OP_SEND:
	case OP_SEND_IMM:
		post_send_wr(msg, k, WK_DATA, imm ? IBV_WR_SEND_WITH_IMM : IBV_WR_SEND, &q->data_out, 0);
		wait_completion(WK_DATA, k, &wc);
		check_completion(msg, k, &wc, IBV_WC_SEND, -1, false);
		break;
	case OP_WRITE:
	case OP_WRITE_IMM:
	case OP_WRITE_MW:
		post_send_wr(msg, k, WK_DATA, imm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE,
			     &q->data_out, q->remote.in_addr);
		if (!imm) { /* RC/UC ordering: the notice arrives after the data */
			bool inv = opt.op == OP_WRITE_MW && msg >= opt.iters - opt.nqps;
			make_notice(q->notice_out.base, side, msg);
			post_send_wr(msg, k, WK_NOTICE, inv ? IBV_WR_SEND_WITH_INV : IBV_WR_SEND,
				     &q->notice_out, 0);
		}
		wait_completion(WK_DATA, k, &wc);
		check_completion(msg, k, &wc, IBV_WC_RDMA_WRITE, -1, false);
		if (!imm) {
			wait_completion(WK_NOTICE, k, &wc);
			check_completion(msg, k, &wc, IBV_WC_SEND, -1, false);
		}
		break;
	case OP_READ: /* the peer reads data_out after this notice */
		make_notice(q->notice_out.base, side, msg);
		post_send_wr(msg, k, WK_NOTICE, IBV_WR_SEND, &q->notice_out, 0);
		wait_completion(WK_NOTICE, k, &wc);
		check_completion(msg, k, &wc, IBV_WC_SEND, -1, false);
		break;
	}
	check_all_buffers(false, -1, -1);
}

static void receive_message(long msg, int k)
{
	struct qp_ctx *q = &qps[k];
	struct ibv_wc wc;
	const uint8_t *data;
	int slot;
	int busy_notice = -1;

	set_step("waiting for msg %ld on qp %d", msg, k);
	slot = wait_completion(WK_RECV, srq ? -1 : k, &wc);

	switch (opt.op) {
	case OP_SEND:
	case OP_SEND_IMM:
		check_completion(msg, k, &wc, IBV_WC_RECV, (long long)recv_len(), opt.op == OP_SEND_IMM);
		data = qps[slot].data_in.base;
		if (opt.transport == T_UD) {
			check_grh(data, &wc, msg, k);
			data += GRH_LEN;
		}
		check_message(data, !side, msg, k, "");
		check_all_buffers(true, slot, -1);
		post_receive(slot);
		return;
	case OP_WRITE:
		check_completion(msg, k, &wc, IBV_WC_RECV, NOTICE_LEN, false);
		check_notice(qps[slot].notice_in.base, msg, k);
		busy_notice = slot;
		break;
	case OP_WRITE_MW:
		check_completion(msg, k, &wc, IBV_WC_RECV, NOTICE_LEN, false);
		check_notice(qps[slot].notice_in.base, msg, k);
		busy_notice = slot;
		if (msg >= opt.iters - opt.nqps) /* the QP's last message: SEND_WITH_INV */
			check_invalidated(msg, k, &wc);
		break;
	case OP_WRITE_IMM: /* the receive's buffer is not used */
		check_completion(msg, k, &wc, IBV_WC_RECV_RDMA_WITH_IMM, (long long)opt.size, true);
		break;
	case OP_READ:
		check_completion(msg, k, &wc, IBV_WC_RECV, NOTICE_LEN, false);
		check_notice(qps[slot].notice_in.base, msg, k);
		busy_notice = slot;
		set_step("reading msg %ld on qp %d", msg, k);
		post_send_wr(msg, k, WK_READ, IBV_WR_RDMA_READ, &q->data_in, q->remote.out_addr);
		wait_completion(WK_READ, k, &wc);
		check_completion(msg, k, &wc, IBV_WC_RDMA_READ, -1, false);
		if (wc.byte_len != opt.size) /* valid for RDMA READ on the send queue */
			completion_mismatch(msg, k, &wc, "byte_len", wc.byte_len, opt.size);
		break;
	}
	check_message(q->data_in.base, !side, msg, k, "");
	check_all_buffers(true, k, busy_notice);
	memset(q->data_in.base, POISON, q->data_in.len);
	post_receive(slot);
}

/* ------------------------------------------------------------------------ */
/* Out-of-band exchange (TCP)                                                */

static void write_all(const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(sock, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("writing to the peer: %s", n < 0 ? strerror(errno) : "closed");
		p += n;
		len -= (size_t)n;
	}
}

static void read_all(void *buf, size_t len, const char *what)
{
	char *p = buf;
	while (len) {
		ssize_t n = read(sock, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("reading %s from the peer: %s", what,
			    n < 0 ? strerror(errno) : "connection closed (the peer failed or disagreed)");
		p += n;
		len -= (size_t)n;
	}
}

static long parse_num(const char *s, long min, long max, char flag);

static void tcp_connect_or_listen(void)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *a;
	char port[16];
	int fd = -1, one = 1, err;

	snprintf(port, sizeof(port), "%d", opt.tcp_port);
	if (!opt.host)
		hints.ai_flags = AI_PASSIVE;
	err = getaddrinfo(opt.host, port, &hints, &res);
	if (err) {
		if (opt.host)
			die("Couldn't connect to %s:%d (%s)", opt.host, opt.tcp_port, gai_strerror(err));
		die("getaddrinfo for port %d: %s", opt.tcp_port, gai_strerror(err));
	}
	/* FV_XFER_CONNECT_SECS: how long a client keeps trying while the
	 * server does not listen yet (default 0: one try). */
	const char *patience_env = getenv("FV_XFER_CONNECT_SECS");
	double give_up = now_s() + (patience_env ? atof(patience_env) : 0);
	for (;;) {
		for (a = res; a; a = a->ai_next) {
			fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
			if (fd < 0)
				continue;
			if (opt.host ? !connect(fd, a->ai_addr, a->ai_addrlen)
				     : (!setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) &&
					!bind(fd, a->ai_addr, a->ai_addrlen) && !listen(fd, 1)))
				break;
			close(fd);
			fd = -1;
		}
		if (fd >= 0 || !opt.host || now_s() >= give_up)
			break;
		usleep(100 * 1000);
	}
	freeaddrinfo(res);
	if (fd < 0) {
		if (opt.host)
			die("Couldn't connect to %s:%d", opt.host, opt.tcp_port);
		die("couldn't listen on TCP port %d", opt.tcp_port);
	}
	if (opt.host) {
		sock = fd;
		return;
	}
	set_step("waiting for the client on TCP port %d", opt.tcp_port);
	do
		sock = accept(fd, NULL, NULL);
	while (sock < 0 && errno == EINTR);
	if (sock < 0)
		die("accept: %s", strerror(errno));
	close(fd);
}

static void format_gid(const union ibv_gid *gid, char *out, size_t len)
{
	if (!inet_ntop(AF_INET6, gid->raw, out, (socklen_t)len))
		snprintf(out, len, "?");
}

static void send_local_info(void)
{
	char hdr[HDR_LEN] = { 0 }, rec[REC_LEN];
	snprintf(hdr, sizeof(hdr), "FVXFER1 %s %s %zu %d %d", transport_names[opt.transport],
		 op_names[opt.op], opt.size, opt.iters, opt.nqps);
	write_all(hdr, sizeof(hdr));
	for (int k = 0; k < opt.nqps; k++) {
		char hex[33];
		for (int b = 0; b < 16; b++)
			sprintf(hex + 2 * b, "%02x", local_gid.raw[b]);
		memset(rec, 0, sizeof(rec));
		snprintf(rec, sizeof(rec), "%06x %06x %04x %016" PRIx64 " %016" PRIx64 " %08x %s",
			 qps[k].qp->qp_num, qps[k].psn, local_lid,
			 (uint64_t)(uintptr_t)qps[k].data_in.base,
			 (uint64_t)(uintptr_t)qps[k].data_out.base,
			 opt.op == OP_WRITE_MW ? qps[k].mw_rkey : mr->rkey, hex);
		write_all(rec, sizeof(rec));
	}
}

static void receive_remote_info(void)
{
	char hdr[HDR_LEN], want[HDR_LEN] = { 0 }, rec[REC_LEN], gidtext[INET6_ADDRSTRLEN];
	snprintf(want, sizeof(want), "FVXFER1 %s %s %zu %d %d", transport_names[opt.transport],
		 op_names[opt.op], opt.size, opt.iters, opt.nqps);
	read_all(hdr, sizeof(hdr), "the options header");
	hdr[HDR_LEN - 1] = 0;
	if (strcmp(hdr, want)) {
		if (!side) /* so that the client can say why too */
			write_all(want, sizeof(want));
		die("the peer's options differ: it has \"%s\", we have \"%s\"", hdr, want);
	}
	for (int k = 0; k < opt.nqps; k++) {
		struct remote_qp *r = &qps[k].remote;
		char hex[33];
		unsigned lid;
		read_all(rec, sizeof(rec), "a QP's address");
		rec[REC_LEN - 1] = 0;
		if (sscanf(rec, "%x %x %x %" SCNx64 " %" SCNx64 " %x %32s", &r->qpn, &r->psn, &lid,
			   &r->in_addr, &r->out_addr, &r->rkey, hex) != 7 || strlen(hex) != 32)
			die("malformed QP address from the peer: \"%s\"", rec);
		r->lid = (uint16_t)lid;
		for (int b = 0; b < 16; b++) {
			unsigned v;
			sscanf(hex + 2 * b, "%2x", &v);
			r->gid.raw[b] = (uint8_t)v;
		}
		format_gid(&r->gid, gidtext, sizeof(gidtext));
		printf("  remote address: QPN 0x%06x, PSN 0x%06x, GID %s\n", r->qpn, r->psn, gidtext);
	}
	fflush(stdout);
}

/* Both sides finished their rounds: only now may the buffers go away (the
 * peer may still be reading ours). */
static void final_sync(void)
{
	char c = 'D';
	set_step("final handshake");
	watch_sock = false;
	write_all(&c, 1);
	read_all(&c, 1, "the final handshake");
	if (c != 'D')
		die("unexpected final byte 0x%02x from the peer", (unsigned char)c);
}

/* ------------------------------------------------------------------------ */
/* Verbs setup and teardown                                                  */

static void open_device(void)
{
	struct ibv_device **list = check_ptr(ibv_get_device_list(NULL), "ibv_get_device_list");
	struct ibv_port_attr port;
	for (int d = 0; list[d] && !ctx; d++)
		if (!strcmp(ibv_get_device_name(list[d]), opt.dev))
			ctx = check_ptr(ibv_open_device(list[d]), "ibv_open_device");
	ibv_free_device_list(list);
	if (!ctx)
		die("IB device %s not found", opt.dev);
	check_ret(ibv_query_port(ctx, (uint8_t)opt.ib_port, &port), "ibv_query_port");
	local_lid = port.lid;
	if (port.state != IBV_PORT_ACTIVE)
		die("port %d of %s is not active (state %d)", opt.ib_port, opt.dev, port.state);
	if (opt.transport == T_UD && opt.size > (size_t)(128u << port.active_mtu))
		die("UD messages are at most the port's MTU (%u bytes); -s %zu is too large",
		    128u << port.active_mtu, opt.size);
	if (opt.gidx >= 0)
		if (ibv_query_gid(ctx, (uint8_t)opt.ib_port, opt.gidx, &local_gid))
			die("ibv_query_gid(port %d, index %d) failed: %s", opt.ib_port, opt.gidx,
			    strerror(errno));
}

static void fill_ah_attr(struct ibv_ah_attr *ah, const struct remote_qp *r)
{
	memset(ah, 0, sizeof(*ah));
	ah->dlid = r->lid;
	ah->port_num = (uint8_t)opt.ib_port;
	if (opt.gidx >= 0) {
		ah->is_global = 1;
		ah->grh.dgid = r->gid;
		ah->grh.sgid_index = (uint8_t)opt.gidx;
		ah->grh.hop_limit = 1;
	}
}

/* The CQ's size at creation (and the smaller of -z's two sizes). */
static int cq_entries(void)
{
	return 4 * opt.nqps + 4;
}

/* -z: after round i, every resize_every rounds, the CQ grows to four times
 * its size or shrinks back, with whatever completions it holds. */
static void maybe_resize_cq(long i)
{
	if (!opt.resize_every || (i + 1) % opt.resize_every)
		return;
	int cqe = ((i + 1) / opt.resize_every) % 2 ? 4 * cq_entries() : cq_entries();
	set_step("ibv_resize_cq(%d) after message %ld", cqe, i);
	int rc = ibv_resize_cq(cq, cqe);
	if (rc)
		die("ibv_resize_cq(%d) after message %ld: %s", cqe, i, strerror(rc));
	if (cq->cqe < cqe)
		die("ibv_resize_cq(%d) returned 0 but cq->cqe is %d", cqe, cq->cqe);
}

static void create_resources(void)
{
	int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
		     (opt.op == OP_WRITE_MW ? IBV_ACCESS_MW_BIND : 0);
	int cqe = cq_entries();
	char gidtext[INET6_ADDRSTRLEN];

	set_step("creating verbs resources");
	pd = check_ptr(ibv_alloc_pd(ctx), "ibv_alloc_pd");
	mr = check_ptr(ibv_reg_mr(pd, region, region_len, access), "ibv_reg_mr");
	if (opt.events)
		channel = check_ptr(ibv_create_comp_channel(ctx), "ibv_create_comp_channel");
	cq = check_ptr(ibv_create_cq(ctx, cqe, NULL, channel, 0), "ibv_create_cq");
	if (opt.transport == T_SRQ) {
		struct ibv_srq_init_attr sa = { .attr = { .max_wr = (uint32_t)(2 * opt.nqps),
							  .max_sge = 1 } };
		srq = check_ptr(ibv_create_srq(pd, &sa), "ibv_create_srq");
	}
	for (int k = 0; k < opt.nqps; k++) {
		struct qp_ctx *q = &qps[k];
		struct ibv_qp_init_attr ia = {
			.send_cq = cq, .recv_cq = cq, .srq = srq,
			.cap = { .max_send_wr = 4, .max_recv_wr = srq ? 0 : 2,
				 .max_send_sge = 1, .max_recv_sge = srq ? 0 : 1 },
			.qp_type = opt.transport == T_UD ? IBV_QPT_UD
				   : opt.transport == T_UC ? IBV_QPT_UC : IBV_QPT_RC,
		};
		struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .pkey_index = 0,
					 .port_num = (uint8_t)opt.ib_port };
		int mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT;
		q->qp = check_ptr(ibv_create_qp(pd, &ia), "ibv_create_qp");
		q->psn = (uint32_t)lrand48() & 0xffffff;
		if (opt.transport == T_UD) {
			a.qkey = UD_QKEY;
			mask |= IBV_QP_QKEY;
		} else {
			a.qp_access_flags = (unsigned)access & ~IBV_ACCESS_MW_BIND;
			mask |= IBV_QP_ACCESS_FLAGS;
		}
		check_ret(ibv_modify_qp(q->qp, &a, mask), "ibv_modify_qp(INIT)");
		if (opt.op == OP_WRITE_MW) {
			q->mw = check_ptr(ibv_alloc_mw(pd, IBV_MW_TYPE_2), "ibv_alloc_mw");
			q->mw_rkey = ibv_inc_rkey(q->mw->rkey); /* what the peer is told */
		}
		format_gid(&local_gid, gidtext, sizeof(gidtext));
		printf("  local address:  QPN 0x%06x, PSN 0x%06x, GID %s\n", q->qp->qp_num, q->psn,
		       gidtext);
	}
	fflush(stdout);
	/* One receive per QP (or per QP on the SRQ), before the peer can send. */
	for (int k = 0; k < opt.nqps; k++)
		post_receive(k);
}

static void connect_qps(void)
{
	set_step("connecting the QPs");
	for (int k = 0; k < opt.nqps; k++) {
		struct qp_ctx *q = &qps[k];
		struct ibv_qp_attr a = { .qp_state = IBV_QPS_RTR };
		int mask = IBV_QP_STATE;
		if (opt.transport == T_UD) {
			fill_ah_attr(&a.ah_attr, &q->remote);
			q->ah = check_ptr(ibv_create_ah(pd, &a.ah_attr), "ibv_create_ah");
			memset(&a.ah_attr, 0, sizeof(a.ah_attr));
		} else {
			a.path_mtu = IBV_MTU_1024;
			a.dest_qp_num = q->remote.qpn;
			a.rq_psn = q->remote.psn;
			fill_ah_attr(&a.ah_attr, &q->remote);
			mask |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
			if (opt.transport != T_UC) {
				a.max_dest_rd_atomic = 1;
				a.min_rnr_timer = 12;
				mask |= IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
			}
		}
		check_ret(ibv_modify_qp(q->qp, &a, mask), "ibv_modify_qp(RTR)");

		memset(&a, 0, sizeof(a));
		a.qp_state = IBV_QPS_RTS;
		a.sq_psn = q->psn;
		mask = IBV_QP_STATE | IBV_QP_SQ_PSN;
		if (opt.transport == T_RC || opt.transport == T_SRQ) {
			/* FV_XFER_RC_TIMEOUT: the local ACK timeout exponent
			 * (4.096 us * 2^N; default 14, 67 ms). */
			const char *t = getenv("FV_XFER_RC_TIMEOUT");
			a.timeout = t ? (uint8_t)parse_num(t, 0, 31, 'T') : 14;
			a.retry_cnt = 7;
			a.rnr_retry = 7;
			a.max_rd_atomic = 1;
			mask |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
				IBV_QP_MAX_QP_RD_ATOMIC;
		}
		check_ret(ibv_modify_qp(q->qp, &a, mask), "ibv_modify_qp(RTS)");
	}
}

static void destroy_resources(void)
{
	set_step("destroying verbs resources");
	for (int k = 0; k < opt.nqps; k++)
		if (qps[k].mw) /* (bound: before its QP, which rxe needs) */
			check_ret(ibv_dealloc_mw(qps[k].mw), "ibv_dealloc_mw");
	for (int k = 0; k < opt.nqps; k++) {
		check_ret(ibv_destroy_qp(qps[k].qp), "ibv_destroy_qp");
		if (qps[k].ah)
			check_ret(ibv_destroy_ah(qps[k].ah), "ibv_destroy_ah");
	}
	if (srq)
		check_ret(ibv_destroy_srq(srq), "ibv_destroy_srq");
	check_ret(ibv_destroy_cq(cq), "ibv_destroy_cq");
	if (channel)
		check_ret(ibv_destroy_comp_channel(channel), "ibv_destroy_comp_channel");
	check_ret(ibv_dereg_mr(mr), "ibv_dereg_mr");
	check_ret(ibv_dealloc_pd(pd), "ibv_dealloc_pd");
	if (ibv_close_device(ctx)) /* 0 or -1 */
		die("ibv_close_device failed: %s", strerror(errno));
}

/* ------------------------------------------------------------------------ */
/* Command line and main                                                     */

static void usage(void)
{
	fprintf(stderr,
		"usage: fv_xfer [-d DEV] [-i IBPORT] [-g GIDX] [-p TCPPORT] [-t rc|uc|ud|srq]\n"
		"               [-o send|send_imm|write|write_imm|read] [-s SIZE] [-n ITERS]\n"
		"               [-q NQPS] [-e] [-z N] [HOST]\n");
	exit(1);
}

static long parse_num(const char *s, long min, long max, char flag)
{
	char *end;
	long v;
	errno = 0;
	v = strtol(s, &end, 0);
	if (errno || end == s || *end || v < min || v > max)
		die("-%c: \"%s\" is not a number in %ld..%ld", flag, s, min, max);
	return v;
}

static int parse_name(const char *s, const char *const *names, int n, char flag)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(s, names[i]))
			return i;
	die("-%c: unknown value \"%s\"", flag, s);
}

static void parse_options(int argc, char **argv)
{
	int c;
	while ((c = getopt(argc, argv, "d:i:g:p:t:o:s:n:q:ez:X:h")) != -1) {
		switch (c) {
		case 'd': opt.dev = optarg; break;
		case 'i': opt.ib_port = (int)parse_num(optarg, 1, 255, 'i'); break;
		case 'g': opt.gidx = (int)parse_num(optarg, -1, 255, 'g'); break;
		case 'p': opt.tcp_port = (int)parse_num(optarg, 1, 65535, 'p'); break;
		case 't': opt.transport = (enum transport)parse_name(optarg, transport_names, 4, 't'); break;
		case 'o': opt.op = (enum operation)parse_name(optarg, op_names, 6, 'o'); break;
		case 's': opt.size = (size_t)parse_num(optarg, 1, 1L << 30, 's'); break;
		case 'n': opt.iters = (int)parse_num(optarg, 1, 1L << 30, 'n'); break;
		case 'q': opt.nqps = (int)parse_num(optarg, 1, 1024, 'q'); break;
		case 'e': opt.events = true; break;
		case 'z': opt.resize_every = (int)parse_num(optarg, 1, 1L << 30, 'z'); break;
		case 'X': {
			char *colon = strchr(optarg, ':');
			if (!colon)
				die("-X wants MSG:OFFSET");
			*colon = 0;
			opt.flip_msg = parse_num(optarg, 0, 1L << 30, 'X');
			opt.flip_off = (size_t)parse_num(colon + 1, 0, 1L << 30, 'X');
			break;
		}
		default: usage();
		}
	}
	if (optind + 1 < argc)
		usage();
	opt.host = optind < argc ? argv[optind] : NULL;
	side = opt.host ? 1 : 0;
	side_name = side ? "client" : "server";
	if (opt.transport == T_UD && opt.op != OP_SEND && opt.op != OP_SEND_IMM)
		die("-t ud allows only -o send or send_imm");
	if (opt.transport == T_UC && opt.op == OP_READ)
		die("-t uc does not allow -o read");
	if (opt.op == OP_WRITE_MW && opt.transport != T_RC)
		die("-o write_mw needs -t rc");
	if (opt.op == OP_WRITE_MW && opt.iters < opt.nqps)
		die("-o write_mw needs at least one message per QP (-n >= -q)");
	if (opt.transport == T_UD && opt.size > 4096)
		die("-t ud: -s is at most 4096");
	if (opt.flip_msg >= 0 && (opt.flip_msg >= opt.iters || opt.flip_off >= opt.size))
		die("-X %ld:%zu is outside the %d messages of %zu bytes", opt.flip_msg, opt.flip_off,
		    opt.iters, opt.size);
}

int main(int argc, char **argv)
{
	double start, secs;

	parse_options(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	start_watchdog();
	srand48(getpid() * 1000003L ^ (long)time(NULL));

	qps = calloc((size_t)opt.nqps, sizeof(*qps));
	pend = calloc((size_t)opt.nqps * WK_COUNT, sizeof(*pend));
	if (!qps || !pend)
		die("out of memory");
	make_pattern_base();
	layout_buffers();
	open_device();
	create_resources();

	tcp_connect_or_listen();
	set_step("exchanging QP addresses");
	if (side) {
		send_local_info();
		receive_remote_info();
		connect_qps();
	} else {
		receive_remote_info();
		connect_qps();
		send_local_info();
	}
	if (opt.op == OP_WRITE_MW) {
		/* Every window is bound before either side writes through one. */
		char c = 'B';
		for (int k = 0; k < opt.nqps; k++)
			bind_window(k, qps[k].mw_rkey);
		set_step("window handshake");
		write_all(&c, 1);
		read_all(&c, 1, "the window handshake");
		if (c != 'B')
			die("unexpected window handshake byte 0x%02x from the peer", (unsigned char)c);
	}
	watch_sock = true;

	start = now_s();
	for (long i = 0; i < opt.iters; i++) {
		int k = (int)(i % opt.nqps);
		cur_msg = i;
		if (side) {
			send_message(i, k);
			receive_message(i, k);
		} else {
			receive_message(i, k);
			send_message(i, k);
		}
		maybe_resize_cq(i);
	}
	secs = now_s() - start;
	set_step("final checks");
	for (int k = 0; k < opt.nqps; k++)
		if (qps[k].last_sent >= 0)
			check_message(qps[k].data_out.base, side, qps[k].last_sent, k,
				      " (our own send buffer, altered after it was sent)");
	check_all_buffers(true, -1, -1);
	final_sync();
	destroy_resources();
	close(sock);

	printf("%lld bytes in %.2f seconds = %.2f Mbit/sec\n",
	       2LL * (long long)opt.size * opt.iters, secs,
	       secs > 0 ? 2.0 * (double)opt.size * opt.iters * 8 / secs / 1e6 : 0.0);
	printf("%d iters in %.2f seconds = %.2f usec/iter\n", opt.iters, secs,
	       secs * 1e6 / opt.iters);
	printf("fv_xfer: %d messages of %zu bytes checked each way (%s over %s, %d QP(s))\n",
	       opt.iters, opt.size, op_names[opt.op], transport_names[opt.transport], opt.nqps);
	free(region);
	free(pattern_base);
	free(qps);
	free(pend);
	return 0;
}
