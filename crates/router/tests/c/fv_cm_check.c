/* rdma_cm checks on the router's CUSE device (crates/router/tests/rdma_cm.rs),
 * through Debian's unmodified librdmacm and, for hostile input, raw commands.
 *
 *   fv_cm_check CASE [PORT]
 *
 * Cases: destroy_counts, migrate, nonblock_poll, hidden_child PORT,
 * reject PORT, backlog PORT, ud PORT, hostile. Prints "PASS CASE" and exits 0, or
 * "FAIL CASE: why" and exits 1. A hang is the test's timeout. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <rdma/rdma_cma.h>

/* The kernel ABI's commands (rdma_user_cm.h clashes with rdma_cma.h). */
enum { CMD_CREATE_ID = 0, CMD_DESTROY_ID = 1, CMD_BIND_IP = 2, CMD_CONNECT = 6,
       CMD_GET_EVENT = 12, CMD_MIGRATE_ID = 18, CMD_BIND = 20 };
struct ucm_hdr { uint32_t cmd; uint16_t in, out; };
struct ucm_create_id { uint64_t uid, response; uint16_t ps; uint8_t qp_type, reserved[5]; };
struct ucm_destroy_id { uint64_t response; uint32_t id, reserved; };
struct ucm_bind_ip { uint64_t response; struct sockaddr_in6 addr; uint32_t id; };
struct ucm_bind { uint32_t id; uint16_t addr_size, reserved; struct sockaddr_storage addr; };
struct ucm_connect { uint8_t conn_param[272]; uint32_t id, reserved; uint32_t ece[2]; };
struct ucm_get_event { uint64_t response; };
#define EVENT_RESP_LEN 336

static const char *the_case = "?";
#define FAIL(...) do { printf("FAIL %s: ", the_case); printf(__VA_ARGS__); printf("\n"); exit(1); } while (0)
#define CHECK(c, ...) do { if (!(c)) FAIL(__VA_ARGS__); } while (0)

static struct sockaddr_in addr_of(const char *ip, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, ip, &a.sin_addr);
	return a;
}

/* The next event on `ch`, which must be `want` (waits at most 10 s). */
static struct rdma_cm_event *expect(struct rdma_event_channel *ch, enum rdma_cm_event_type want)
{
	struct pollfd p = { .fd = ch->fd, .events = POLLIN };
	CHECK(poll(&p, 1, 10000) == 1, "no event (waiting for %s)", rdma_event_str(want));
	struct rdma_cm_event *ev;
	CHECK(rdma_get_cm_event(ch, &ev) == 0, "rdma_get_cm_event: %s", strerror(errno));
	CHECK(ev->event == want, "event %s, not %s (status %d)", rdma_event_str(ev->event),
	      rdma_event_str(want), ev->status);
	return ev;
}

static void nonblocking(struct rdma_event_channel *ch)
{
	fcntl(ch->fd, F_SETFL, fcntl(ch->fd, F_GETFL) | O_NONBLOCK);
}

static void no_event(struct rdma_event_channel *ch, const char *when)
{
	struct rdma_cm_event *ev;
	int rc = rdma_get_cm_event(ch, &ev);
	CHECK(rc == -1 && errno == EAGAIN, "%s: an event (%s) or error %s where none may be", when,
	      rc == 0 ? rdma_event_str(ev->event) : "-", strerror(errno));
}

static struct rdma_cm_id *resolved(struct rdma_event_channel *ch, const char *ip, int port)
{
	struct rdma_cm_id *id;
	CHECK(rdma_create_id(ch, &id, NULL, RDMA_PS_TCP) == 0, "create_id: %s", strerror(errno));
	struct sockaddr_in d = addr_of(ip, port);
	CHECK(rdma_resolve_addr(id, NULL, (struct sockaddr *)&d, 2000) == 0, "resolve_addr: %s",
	      strerror(errno));
	rdma_ack_cm_event(expect(ch, RDMA_CM_EVENT_ADDR_RESOLVED));
	CHECK(rdma_resolve_route(id, 2000) == 0, "resolve_route: %s", strerror(errno));
	rdma_ack_cm_event(expect(ch, RDMA_CM_EVENT_ROUTE_RESOLVED));
	return id;
}

static struct rdma_cm_id *listener(struct rdma_event_channel *ch, int port, int backlog)
{
	struct rdma_cm_id *id;
	CHECK(rdma_create_id(ch, &id, NULL, RDMA_PS_TCP) == 0, "create_id: %s", strerror(errno));
	struct sockaddr_in a = addr_of("127.0.0.1", port);
	CHECK(rdma_bind_addr(id, (struct sockaddr *)&a) == 0, "bind: %s", strerror(errno));
	CHECK(rdma_listen(id, backlog) == 0, "listen: %s", strerror(errno));
	return id;
}

static void connect_no_qp(struct rdma_cm_id *id, const char *data)
{
	struct rdma_conn_param p = { .qp_num = 77, .retry_count = 7, .rnr_retry_count = 7,
				     .private_data = data, .private_data_len = data ? strlen(data) + 1 : 0 };
	CHECK(rdma_connect(id, &p) == 0, "connect: %s", strerror(errno));
}

/* rdma_destroy_id waits until every event the router says it reported is
 * acknowledged: a wrong count hangs it. */
static void destroy_counts(void)
{
	struct rdma_event_channel *ch = rdma_create_event_channel();
	CHECK(ch, "channel: %s", strerror(errno));
	struct rdma_cm_id *a = resolved(ch, "127.0.0.1", 1);
	CHECK(rdma_destroy_id(a) == 0, "destroy after two events");
	/* An event queued but never read does not count. */
	struct rdma_cm_id *b;
	CHECK(rdma_create_id(ch, &b, NULL, RDMA_PS_TCP) == 0, "create_id");
	struct sockaddr_in d = addr_of("127.0.0.1", 1);
	CHECK(rdma_resolve_addr(b, NULL, (struct sockaddr *)&d, 2000) == 0, "resolve");
	CHECK(rdma_destroy_id(b) == 0, "destroy with an unread event");
	nonblocking(ch);
	no_event(ch, "after destroying the id whose event was unread");
	rdma_destroy_event_channel(ch);
}

/* An id moves to another channel with its unread event; the count the
 * router returns lets rdma_migrate_id (and then destroy) finish. */
static void migrate(void)
{
	struct rdma_event_channel *a = rdma_create_event_channel(), *b = rdma_create_event_channel();
	CHECK(a && b, "channels");
	struct rdma_cm_id *id = resolved(a, "127.0.0.1", 1); /* two events read on a */
	CHECK(rdma_create_id(a, &id, NULL, RDMA_PS_TCP) == 0, "create_id");
	struct sockaddr_in d = addr_of("127.0.0.1", 1);
	CHECK(rdma_resolve_addr(id, NULL, (struct sockaddr *)&d, 2000) == 0, "resolve");
	rdma_ack_cm_event(expect(a, RDMA_CM_EVENT_ADDR_RESOLVED));
	CHECK(rdma_resolve_route(id, 2000) == 0, "resolve_route");
	/* ROUTE_RESOLVED is queued on a, unread: it must follow the id. */
	CHECK(rdma_migrate_id(id, b) == 0, "migrate: %s", strerror(errno));
	nonblocking(a);
	no_event(a, "old channel after migrate");
	rdma_ack_cm_event(expect(b, RDMA_CM_EVENT_ROUTE_RESOLVED));
	CHECK(rdma_destroy_id(id) == 0, "destroy after migrate");
}

/* O_NONBLOCK: EAGAIN; poll wakes when an event comes. */
static void nonblock_poll(void)
{
	struct rdma_event_channel *ch = rdma_create_event_channel();
	CHECK(ch, "channel");
	nonblocking(ch);
	no_event(ch, "fresh channel");
	struct pollfd p = { .fd = ch->fd, .events = POLLIN };
	CHECK(poll(&p, 1, 0) == 0, "poll of an empty channel: %d (revents %x)", poll(&p, 1, 0), p.revents);
	struct rdma_cm_id *id;
	CHECK(rdma_create_id(ch, &id, NULL, RDMA_PS_TCP) == 0, "create_id");
	struct sockaddr_in d = addr_of("127.0.0.1", 1);
	CHECK(rdma_resolve_addr(id, NULL, (struct sockaddr *)&d, 2000) == 0, "resolve");
	CHECK(poll(&p, 1, 10000) == 1 && (p.revents & POLLIN), "poll after resolve: revents %x", p.revents);
	rdma_ack_cm_event(expect(ch, RDMA_CM_EVENT_ADDR_RESOLVED));
	rdma_destroy_id(id);
}

/* A connection request withdrawn by its requester (destroyed before the
 * ACCEPT): the listener sees no event for the child (the kernel hides a
 * child's events until its ACCEPT; librdmacm would drop them anyway) and
 * the ACCEPT fails. */
static void hidden_child(int port)
{
	struct rdma_event_channel *ls = rdma_create_event_channel(), *cs = rdma_create_event_channel();
	struct rdma_cm_id *l = listener(ls, port, 4);
	struct rdma_cm_id *c = resolved(cs, "127.0.0.1", port);
	connect_no_qp(c, "hello");
	struct rdma_cm_event *ev = expect(ls, RDMA_CM_EVENT_CONNECT_REQUEST);
	struct rdma_cm_id *child = ev->id;
	CHECK(ev->param.conn.private_data_len >= 6 &&
	      strcmp(ev->param.conn.private_data, "hello") == 0, "private data");
	rdma_ack_cm_event(ev);
	rdma_destroy_id(c);
	nonblocking(ls);
	usleep(200000);
	no_event(ls, "child before its ACCEPT");
	struct rdma_conn_param p = { .qp_num = 78 };
	CHECK(rdma_accept(child, &p) == -1 && errno == EINVAL, "accept of a withdrawn request: %s",
	      strerror(errno));
	no_event(ls, "after the refused ACCEPT");
	CHECK(rdma_destroy_id(child) == 0, "destroy child");
	CHECK(rdma_destroy_id(l) == 0, "destroy listener");
}

/* REJECT with private data reaches the requester as REJECTED. */
static void reject(int port)
{
	struct rdma_event_channel *ls = rdma_create_event_channel(), *cs = rdma_create_event_channel();
	struct rdma_cm_id *l = listener(ls, port, 4);
	struct rdma_cm_id *c = resolved(cs, "127.0.0.1", port);
	connect_no_qp(c, NULL);
	struct rdma_cm_event *ev = expect(ls, RDMA_CM_EVENT_CONNECT_REQUEST);
	struct rdma_cm_id *child = ev->id;
	rdma_ack_cm_event(ev);
	CHECK(rdma_reject(child, "no thanks", 10) == 0, "reject: %s", strerror(errno));
	ev = expect(cs, RDMA_CM_EVENT_REJECTED);
	CHECK(ev->status == 28, "status %d", ev->status);
	CHECK(ev->param.conn.private_data_len >= 10 &&
	      memcmp(ev->param.conn.private_data, "no thanks", 10) == 0, "private data");
	rdma_ack_cm_event(ev);
	rdma_destroy_id(child);
	rdma_destroy_id(c);
	/* No listener on port+1: REJECTED (invalid service id). */
	c = resolved(cs, "127.0.0.1", port + 1);
	connect_no_qp(c, NULL);
	ev = expect(cs, RDMA_CM_EVENT_REJECTED);
	CHECK(ev->status == 8, "no listener: status %d", ev->status);
	rdma_ack_cm_event(ev);
	rdma_destroy_id(c);
	rdma_destroy_id(l);
}

/* A listener of backlog 1 holds one unanswered request; the next is
 * rejected. */
static void backlog(int port)
{
	struct rdma_event_channel *ls = rdma_create_event_channel(), *cs = rdma_create_event_channel();
	struct rdma_cm_id *l = listener(ls, port, 1);
	struct rdma_cm_id *c1 = resolved(cs, "127.0.0.1", port);
	connect_no_qp(c1, NULL);
	rdma_ack_cm_event(expect(ls, RDMA_CM_EVENT_CONNECT_REQUEST));
	struct rdma_cm_id *c2 = resolved(cs, "127.0.0.1", port);
	connect_no_qp(c2, NULL);
	struct rdma_cm_event *ev = expect(cs, RDMA_CM_EVENT_REJECTED);
	CHECK(ev->id == c2 && ev->status == 28, "second request: status %d", ev->status);
	rdma_ack_cm_event(ev);
	rdma_destroy_id(c2);
	rdma_destroy_id(c1);
	rdma_destroy_id(l);
}

/* UD through SIDR, with real UD QPs and checked data: a request to no
 * listener is UNREACHABLE (status 1), a refused one UNREACHABLE (status 2);
 * an accepted one gives the client ESTABLISHED with the server's QP number,
 * the UDP qkey and an address it sends through; the server sees the
 * request's private data, answers each message through an address made
 * from the completion (as udaddy does); every byte is checked both ways. */
#define UD_MSGS 40
#define UD_LEN 200
#define UD_GRH 40
struct ud_end {
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	struct ibv_mr *mr;
	uint8_t buf[UD_MSGS + 1][UD_GRH + UD_LEN];
};

static void ud_qp(struct rdma_cm_id *id, struct ud_end *e)
{
	e->pd = ibv_alloc_pd(id->verbs);
	CHECK(e->pd, "alloc_pd: %s", strerror(errno));
	e->cq = ibv_create_cq(id->verbs, 4 * UD_MSGS, NULL, NULL, 0);
	CHECK(e->cq, "create_cq: %s", strerror(errno));
	e->mr = ibv_reg_mr(e->pd, e->buf, sizeof e->buf, IBV_ACCESS_LOCAL_WRITE);
	CHECK(e->mr, "reg_mr: %s", strerror(errno));
	struct ibv_qp_init_attr a = { .send_cq = e->cq, .recv_cq = e->cq, .qp_type = IBV_QPT_UD,
				      .cap = { .max_send_wr = UD_MSGS + 1, .max_recv_wr = UD_MSGS + 1,
					       .max_send_sge = 1, .max_recv_sge = 1 } };
	CHECK(rdma_create_qp(id, e->pd, &a) == 0, "rdma_create_qp (UD): %s", strerror(errno));
	struct ibv_qp_attr qa;
	struct ibv_qp_init_attr qi;
	CHECK(ibv_query_qp(id->qp, &qa, IBV_QP_QKEY | IBV_QP_STATE, &qi) == 0, "query_qp");
	CHECK(qa.qp_state == IBV_QPS_RTS && qa.qkey == 0x01234567,
	      "UD QP after rdma_create_qp: state %d qkey %#x", qa.qp_state, qa.qkey);
	for (int i = 0; i < UD_MSGS; i++) {
		struct ibv_sge sge = { (uintptr_t)e->buf[i], UD_GRH + UD_LEN, e->mr->lkey };
		struct ibv_recv_wr wr = { .wr_id = i, .sg_list = &sge, .num_sge = 1 }, *bad;
		CHECK(ibv_post_recv(id->qp, &wr, &bad) == 0, "post_recv");
	}
}

static void ud_fill(uint8_t *p, int i, int salt)
{
	for (int j = 0; j < UD_LEN; j++)
		p[j] = (uint8_t)(i * 31 + j * 7 + salt);
}

static void ud_send(struct rdma_cm_id *id, struct ud_end *e, struct ibv_ah *ah, uint32_t qpn,
		    uint32_t qkey, int i, int salt)
{
	uint8_t *p = e->buf[UD_MSGS] + UD_GRH;
	ud_fill(p, i, salt);
	struct ibv_sge sge = { (uintptr_t)p, UD_LEN, e->mr->lkey };
	struct ibv_send_wr wr = { .wr_id = 1000 + i, .sg_list = &sge, .num_sge = 1,
				  .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad;
	wr.wr.ud.ah = ah;
	wr.wr.ud.remote_qpn = qpn;
	wr.wr.ud.remote_qkey = qkey;
	CHECK(ibv_post_send(id->qp, &wr, &bad) == 0, "post_send: %s", strerror(errno));
}

/* The next completion of `e` of kind `recv` (a receive) or a send. */
static struct ibv_wc ud_wait(struct ud_end *e, int recv)
{
	struct ibv_wc wc;
	for (long n = 0; n < 20000000; n++) {
		int r = ibv_poll_cq(e->cq, 1, &wc);
		CHECK(r >= 0, "poll_cq");
		if (r == 0) {
			if (n > 1000)
				usleep(100);
			continue;
		}
		CHECK(wc.status == IBV_WC_SUCCESS, "completion %s", ibv_wc_status_str(wc.status));
		if (!!(wc.opcode & IBV_WC_RECV) == recv)
			return wc;
	}
	FAIL("no %s completion", recv ? "receive" : "send");
}

static struct rdma_cm_id *ud_resolved(struct rdma_event_channel *ch, int port)
{
	struct rdma_cm_id *id;
	CHECK(rdma_create_id(ch, &id, NULL, RDMA_PS_UDP) == 0, "create_id: %s", strerror(errno));
	struct sockaddr_in d = addr_of("127.0.0.1", port);
	CHECK(rdma_resolve_addr(id, NULL, (struct sockaddr *)&d, 2000) == 0, "resolve_addr");
	rdma_ack_cm_event(expect(ch, RDMA_CM_EVENT_ADDR_RESOLVED));
	CHECK(rdma_resolve_route(id, 2000) == 0, "resolve_route");
	rdma_ack_cm_event(expect(ch, RDMA_CM_EVENT_ROUTE_RESOLVED));
	return id;
}

static void ud(int port)
{
	struct rdma_event_channel *ls = rdma_create_event_channel(), *cs = rdma_create_event_channel();
	CHECK(ls && cs, "channels");
	/* No listener: UNREACHABLE, SIDR status 1 (unsupported service). */
	struct rdma_cm_id *c = ud_resolved(cs, port + 1);
	CHECK(rdma_connect(c, NULL) == 0, "connect: %s", strerror(errno));
	struct rdma_cm_event *ev = expect(cs, RDMA_CM_EVENT_UNREACHABLE);
	CHECK(ev->status == 1, "no listener: status %d", ev->status);
	rdma_ack_cm_event(ev);
	rdma_destroy_id(c);

	struct rdma_cm_id *l;
	CHECK(rdma_create_id(ls, &l, NULL, RDMA_PS_UDP) == 0, "create_id");
	struct sockaddr_in a = addr_of("127.0.0.1", port);
	CHECK(rdma_bind_addr(l, (struct sockaddr *)&a) == 0, "bind: %s", strerror(errno));
	CHECK(rdma_listen(l, 4) == 0, "listen: %s", strerror(errno));

	/* Refused: UNREACHABLE, SIDR status 2 (rejected). */
	c = ud_resolved(cs, port);
	CHECK(rdma_connect(c, NULL) == 0, "connect: %s", strerror(errno));
	ev = expect(ls, RDMA_CM_EVENT_CONNECT_REQUEST);
	struct rdma_cm_id *refused = ev->id;
	rdma_ack_cm_event(ev);
	CHECK(rdma_reject(refused, NULL, 0) == 0, "reject: %s", strerror(errno));
	ev = expect(cs, RDMA_CM_EVENT_UNREACHABLE);
	CHECK(ev->status == 2, "rejected: status %d", ev->status);
	rdma_ack_cm_event(ev);
	rdma_destroy_id(c);
	rdma_destroy_id(refused);

	/* Accepted, with data both ways. */
	static struct ud_end ce, se;
	c = ud_resolved(cs, port);
	ud_qp(c, &ce);
	struct rdma_conn_param cp = { .private_data = "ud-hello", .private_data_len = 9 };
	CHECK(rdma_connect(c, &cp) == 0, "connect: %s", strerror(errno));
	ev = expect(ls, RDMA_CM_EVENT_CONNECT_REQUEST);
	struct rdma_cm_id *child = ev->id;
	CHECK(ev->param.ud.private_data_len >= 9 &&
	      memcmp(ev->param.ud.private_data, "ud-hello", 9) == 0, "request private data (len %d)",
	      ev->param.ud.private_data_len);
	rdma_ack_cm_event(ev);
	ud_qp(child, &se);
	struct rdma_conn_param sp = { .qp_num = child->qp->qp_num };
	CHECK(rdma_accept(child, &sp) == 0, "accept: %s", strerror(errno));
	ev = expect(cs, RDMA_CM_EVENT_ESTABLISHED);
	CHECK(ev->param.ud.qp_num == child->qp->qp_num, "ESTABLISHED names QP %u, the server's is %u",
	      ev->param.ud.qp_num, child->qp->qp_num);
	CHECK(ev->param.ud.qkey == 0x01234567, "qkey %#x", ev->param.ud.qkey);
	CHECK(ev->param.ud.ah_attr.is_global == 1, "no GRH in the address");
	struct ibv_ah *ah = ibv_create_ah(ce.pd, &ev->param.ud.ah_attr);
	CHECK(ah, "create_ah from the event: %s", strerror(errno));
	uint32_t sqpn = ev->param.ud.qp_num, qkey = ev->param.ud.qkey;
	rdma_ack_cm_event(ev);
	nonblocking(ls);
	no_event(ls, "the server after a SIDR accept");

	struct ibv_ah *back = NULL;
	for (int i = 0; i < UD_MSGS; i++) {
		ud_send(c, &ce, ah, sqpn, qkey, i, 1);
		ud_wait(&ce, 0);
		struct ibv_wc wc = ud_wait(&se, 1);
		CHECK(wc.byte_len == UD_GRH + UD_LEN, "received %u bytes", wc.byte_len);
		CHECK(wc.src_qp == c->qp->qp_num, "from QP %u, not %u", wc.src_qp, c->qp->qp_num);
		uint8_t want[UD_LEN];
		ud_fill(want, i, 1);
		CHECK(memcmp(se.buf[wc.wr_id] + UD_GRH, want, UD_LEN) == 0, "server: message %d differs",
		      i);
		if (!back) {
			back = ibv_create_ah_from_wc(se.pd, &wc, (struct ibv_grh *)se.buf[wc.wr_id],
						     child->port_num);
			CHECK(back, "create_ah_from_wc: %s", strerror(errno));
		}
		ud_send(child, &se, back, wc.src_qp, qkey, i, 2);
		ud_wait(&se, 0);
		wc = ud_wait(&ce, 1);
		ud_fill(want, i, 2);
		CHECK(wc.src_qp == sqpn, "reply from QP %u", wc.src_qp);
		CHECK(memcmp(ce.buf[wc.wr_id] + UD_GRH, want, UD_LEN) == 0, "client: reply %d differs",
		      i);
	}
	/* Either end goes without telling the other (no DREQ in SIDR). */
	CHECK(rdma_disconnect(c) == 0, "disconnect of a UD id: %s", strerror(errno));
	ibv_destroy_ah(ah);
	ibv_destroy_ah(back);
	rdma_destroy_qp(c);
	CHECK(rdma_destroy_id(c) == 0, "destroy client");
	usleep(100000);
	no_event(ls, "the server after its client went");
	rdma_destroy_qp(child);
	CHECK(rdma_destroy_id(child) == 0, "destroy child");
	CHECK(rdma_destroy_id(l) == 0, "destroy listener");
}

/* Raw commands, each with its errno. */
static int cmd(int fd, uint32_t c, void *payload, uint16_t in, uint16_t out)
{
	char buf[512];
	struct ucm_hdr h = { .cmd = c, .in = in, .out = out };
	memcpy(buf, &h, sizeof h);
	memcpy(buf + sizeof h, payload, in);
	ssize_t n = write(fd, buf, sizeof h + in);
	if (n == (ssize_t)(sizeof h + in))
		return 0;
	return n < 0 ? errno : -1;
}

static uint32_t create(int fd, uint16_t ps)
{
	uint32_t id = 0;
	struct ucm_create_id c = { .uid = 1, .response = (uintptr_t)&id, .ps = ps };
	int e = cmd(fd, CMD_CREATE_ID, &c, sizeof c, sizeof id);
	CHECK(e == 0, "create_id: %s", strerror(e));
	return id;
}

static void hostile(void)
{
	int fd = open("/dev/infiniband/rdma_cm", O_RDWR), fd2 = open("/dev/infiniband/rdma_cm", O_RDWR);
	CHECK(fd >= 0 && fd2 >= 0, "open: %s", strerror(errno));
	char junk[4] = { 0 };
	CHECK(write(fd, junk, 4) == -1 && errno == EINVAL, "short write: %s", strerror(errno));
	uint32_t nothing = 0;
	CHECK(cmd(fd, 99, &nothing, 4, 0) == EINVAL, "unknown command");
	/* in larger than what was written */
	struct ucm_hdr h = { .cmd = CMD_CREATE_ID, .in = 200 };
	CHECK(write(fd, &h, sizeof h) == -1 && errno == EINVAL, "in beyond the write");
	/* payload too short for the command */
	CHECK(cmd(fd, CMD_CREATE_ID, &nothing, 4, 4) == EINVAL, "short payload");
	/* a response pointer to read-only memory: EFAULT, memory unchanged */
	uint32_t *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro[0] = 0xdeadbeef;
	mprotect(ro, 4096, PROT_READ);
	struct ucm_create_id c = { .uid = 1, .response = (uintptr_t)ro, .ps = RDMA_PS_TCP };
	CHECK(cmd(fd, CMD_CREATE_ID, &c, sizeof c, 4) == EFAULT, "read-only response");
	CHECK(ro[0] == 0xdeadbeef, "read-only memory written");
	c.response = 8; /* unmapped */
	CHECK(cmd(fd, CMD_CREATE_ID, &c, sizeof c, 4) == EFAULT, "unmapped response");
	c.response = (uintptr_t)&nothing;
	CHECK(cmd(fd, CMD_CREATE_ID, &c, sizeof c, 2) == ENOSPC, "small out");
	c.ps = 0x999;
	CHECK(cmd(fd, CMD_CREATE_ID, &c, sizeof c, 4) == EINVAL, "bad port space");
	uint32_t id = create(fd, RDMA_PS_TCP);
	/* another file's id */
	uint32_t reported;
	struct ucm_destroy_id d = { .response = (uintptr_t)&reported, .id = id };
	CHECK(cmd(fd2, CMD_DESTROY_ID, &d, sizeof d, 4) == EINVAL, "foreign id");
	d.id = id + 100000;
	CHECK(cmd(fd, CMD_DESTROY_ID, &d, sizeof d, 4) == ENOENT, "unknown id");
	/* AF_IB must fail (librdmacm's start-up probe deadlocks otherwise) */
	struct ucm_bind b = { .id = id, .addr_size = 48 };
	((struct sockaddr *)&b.addr)->sa_family = AF_IB;
	CHECK(cmd(fd, CMD_BIND, &b, sizeof b, 0) == EAFNOSUPPORT, "AF_IB bind");
	/* an address not of this namespace */
	struct ucm_bind_ip bi = { .id = id };
	struct sockaddr_in *sin = (struct sockaddr_in *)&bi.addr;
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, "192.0.2.77", &sin->sin_addr);
	CHECK(cmd(fd, CMD_BIND_IP, &bi, sizeof bi, 0) == EADDRNOTAVAIL, "foreign address");
	/* wrong state: listen is fine (binds), connect is not */
	struct ucm_connect cn = { .id = id };
	CHECK(cmd(fd, CMD_CONNECT, &cn, sizeof cn, 0) == EINVAL, "connect unresolved");
	/* GET_EVENT: out too small; O_NONBLOCK: EAGAIN */
	char evbuf[400];
	struct ucm_get_event g = { .response = (uintptr_t)evbuf };
	CHECK(cmd(fd, CMD_GET_EVENT, &g, sizeof g, 100) == ENOSPC, "small event out");
	fcntl(fd, F_SETFL, O_NONBLOCK);
	CHECK(cmd(fd, CMD_GET_EVENT, &g, sizeof g, EVENT_RESP_LEN) == EAGAIN,
	      "nonblocking GET_EVENT");
	/* reads and ioctls */
	CHECK(read(fd, evbuf, 8) == -1 && errno == EINVAL, "read: %s", strerror(errno));
	d.id = id;
	CHECK(cmd(fd, CMD_DESTROY_ID, &d, sizeof d, 4) == 0 && reported == 0, "destroy");
	/* another user writing to this descriptor (inherited): EACCES */
	pid_t pid = fork();
	if (pid == 0) {
		uint32_t x;
		struct ucm_create_id cc = { .uid = 1, .response = (uintptr_t)&x, .ps = RDMA_PS_TCP };
		if (setuid(65534) != 0)
			_exit(3);
		_exit(cmd(fd, CMD_CREATE_ID, &cc, sizeof cc, 4) == EACCES ? 0 : 1);
	}
	int st = -1;
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "another user's write: status %x", st);
	/* MIGRATE_ID naming a descriptor that is not this device's: EINVAL */
	uint32_t mig = create(fd, RDMA_PS_TCP), mresp;
	struct { uint64_t response; uint32_t id, fd; } m = { (uintptr_t)&mresp, mig, 0 };
	CHECK(cmd(fd2, CMD_MIGRATE_ID, &m, sizeof m, 4) == EINVAL, "migrate from stdin");
	m.fd = 999;
	CHECK(cmd(fd2, CMD_MIGRATE_ID, &m, sizeof m, 4) == EBADF, "migrate from a closed fd");
	m.fd = fd;
	CHECK(cmd(fd2, CMD_MIGRATE_ID, &m, sizeof m, 4) == 0 && mresp == 0, "migrate to fd2");
	d.id = mig;
	CHECK(cmd(fd, CMD_DESTROY_ID, &d, sizeof d, 4) == EINVAL, "destroy a migrated id on its old fd");
	CHECK(cmd(fd2, CMD_DESTROY_ID, &d, sizeof d, 4) == 0, "destroy a migrated id on its new fd");
	/* the per-user id limit (FV_CM_IDS ids, set by the test) */
	const char *lim = getenv("FV_CM_IDS");
	if (lim) {
		int n = atoi(lim), i, e = 0;
		for (i = 0; i < n + 1; i++) {
			uint32_t x;
			struct ucm_create_id cc = { .uid = 1, .response = (uintptr_t)&x, .ps = RDMA_PS_TCP };
			e = cmd(fd, CMD_CREATE_ID, &cc, sizeof cc, 4);
			if (e)
				break;
		}
		CHECK(i == n && e == ENOMEM, "id limit: %d ids, then %s", i, strerror(e));
	}
	close(fd);
	close(fd2);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc < 2)
		return 2;
	the_case = argv[1];
	int port = argc > 2 ? atoi(argv[2]) : 0;
	if (!strcmp(the_case, "destroy_counts"))
		destroy_counts();
	else if (!strcmp(the_case, "migrate"))
		migrate();
	else if (!strcmp(the_case, "nonblock_poll"))
		nonblock_poll();
	else if (!strcmp(the_case, "hidden_child"))
		hidden_child(port);
	else if (!strcmp(the_case, "reject"))
		reject(port);
	else if (!strcmp(the_case, "backlog"))
		backlog(port);
	else if (!strcmp(the_case, "ud"))
		ud(port);
	else if (!strcmp(the_case, "hostile"))
		hostile();
	else
		FAIL("no such case");
	printf("PASS %s\n", the_case);
	return 0;
}
