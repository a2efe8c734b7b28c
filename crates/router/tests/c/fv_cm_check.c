/* rdma_cm checks on the router's CUSE device (crates/router/tests/rdma_cm.rs),
 * through Debian's unmodified librdmacm and, for hostile input, raw commands.
 *
 *   fv_cm_check CASE [PORT]
 *
 * Cases: destroy_counts, migrate, nonblock_poll, hidden_child PORT,
 * reject PORT, backlog PORT, hostile. Prints "PASS CASE" and exits 0, or
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
	else if (!strcmp(the_case, "hostile"))
		hostile();
	else
		FAIL("no such case");
	printf("PASS %s\n", the_case);
	return 0;
}
