#!/bin/bash
# Runs inside scripts/rxe-vm --modules fuse,cuse (crates/router/tests/rdma_cm.rs).
#
# Usage: vm.sh OUT FLOWVERBS PROVIDER CHECKER
#   OUT       a directory writable from the VM (results for the test)
#   FLOWVERBS the flowverbs executable
#   PROVIDER  libflowverbs-rdmav34.so
#   CHECKER   tests/c/fv_cm_check, compiled
#
# 1. Placement: with the kernel's rdma_ucm loaded (/dev/infiniband/rdma_cm is
#    the kernel's), a router serves its device under another name; it is
#    gone once the router stops.
# 2. The kernel's rdma_ucm is unloaded (a host without kernel RDMA) and one
#    router serves /dev/infiniband/rdma_cm; every scenario runs under
#    `flowverbs exec` against it. Scenario NAME writes
#    OUT/NAME.{server,client}.{out,err,rc}.
set -u
OUT=$1 FV=$2 PROV=$3 CHK=$4
BB=/run/rxe-vm/busybox
LOG=${FLOWVERBS_LOG:-info}
unset FLOWVERBS_LOG

stat -c '%t:%T' /dev/infiniband/rdma_cm >"$OUT/placement.kernel_before"
FLOWVERBS_LOG=$LOG "$FV" router --runtime-dir /run/fv_b 2>"$OUT/router_b.log" &
PID_B=$!
for _ in $(seq 600); do [ -S /run/fv_b/router.sock ] && break; sleep 0.1; done
ls /dev/infiniband >"$OUT/placement.during"
kill -TERM $PID_B
wait $PID_B
echo $? >"$OUT/placement.router_rc"
ls /dev/infiniband >"$OUT/placement.after"
stat -c '%t:%T' /dev/infiniband/rdma_cm >"$OUT/placement.kernel_after"

$BB rmmod rdma_ucm || echo "rmmod rdma_ucm failed"
FLOWVERBS_LOG=$LOG "$FV" router --runtime-dir /run/fv 2>"$OUT/router.log" &
PID_A=$!
for _ in $(seq 600); do [ -S /run/fv/router.sock ] && break; sleep 0.1; done
ls -l /dev/infiniband >"$OUT/devices"

# on CMD...: CMD with the router's fv0, killed after 120 s (a hang fails its
# scenario, not the run).
on() {
  timeout -k 5 120 "$FV" exec --runtime-dir /run/fv --provider "$PROV" -- "$@"
}

# retry_client PREFIX CMD...: CMD (a client) with its output in
# PREFIX.{out,err,rc}, again while it is refused because its server does
# not listen yet (REJECTED with status 8, invalid service id, as rping and
# perftest print it; for UD, UNREACHABLE with SIDR status 1, as udaddy
# prints it): a slow start is no failure. At most 60 s.
retry_client() {
  local p=$1 rc=0
  shift
  for _ in $(seq 120); do
    "$@" >"$p.out" 2>"$p.err"
    rc=$?
    if [ $rc -ne 0 ] && grep -qE 'RDMA_CM_EVENT_REJECTED, error 8|Unexpected CM event bl blka 8|RDMA_CM_EVENT_UNREACHABLE, error: 1$' "$p.err" "$p.out"; then
      sleep 0.5
      continue
    fi
    break
  done
  echo $rc >"$p.rc"
}

# pair NAME SERVER_CMD CLIENT_CMD: the server, then the client.
pair() {
  local n=$1 s=$2 c=$3
  on $s >"$OUT/$n.server.out" 2>"$OUT/$n.server.err" &
  local sp=$!
  retry_client "$OUT/$n.client" on $c
  wait $sp
  echo $? >"$OUT/$n.server.rc"
  echo "rdma_cm vm: $n: client $(cat "$OUT/$n.client.rc") server $(cat "$OUT/$n.server.rc")"
}

# alone NAME CMD
alone() {
  local n=$1
  shift
  on "$@" >"$OUT/$n.client.out" 2>"$OUT/$n.client.err"
  echo $? >"$OUT/$n.client.rc"
  echo "rdma_cm vm: $n: $(cat "$OUT/$n.client.rc")"
}

pair rping "rping -s -a 127.0.0.1 -p 7174 -C 1000 -v" "rping -c -a 127.0.0.1 -p 7174 -C 1000 -v"
pair send_bw "ib_send_bw -R -d fv0 -n 500" "ib_send_bw -R -d fv0 -n 500 127.0.0.1"
pair write_lat "ib_write_lat -R -d fv0 -n 500" "ib_write_lat -R -d fv0 -n 500 127.0.0.1"
pair read_bw "ib_read_bw -R -d fv0 -n 500" "ib_read_bw -R -d fv0 -n 500 127.0.0.1"
# UD through SIDR: two ids, 100 messages each way on each (udaddy's port
# is always 7174, UDP port space). Then a client alone: no one serves the
# port, UNREACHABLE.
pair udaddy "udaddy -c 2 -C 100" "udaddy -s 127.0.0.1 -c 2 -C 100"
alone udaddy_unreachable udaddy -s 127.0.0.1

# libfabric's verbs provider (a MSG endpoint: rdma_cm in epoll, nonblocking
# GET_EVENT), fi_pingpong with its data checks (-c), 100 iterations of each
# size. Its control socket (TCP, loopback) must listen before the client
# starts: wait for it (at most 60 s) instead of sleeping.
wait_listen() {
  for _ in $(seq 600); do
    ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
}
FI="fi_pingpong -p verbs -e msg -d fv0 -c -I 100"
on $FI -B 47600 >"$OUT/fi_msg.server.out" 2>"$OUT/fi_msg.server.err" &
SP=$!
wait_listen 47600
on $FI -P 47600 127.0.0.1 >"$OUT/fi_msg.client.out" 2>"$OUT/fi_msg.client.err"
echo $? >"$OUT/fi_msg.client.rc"
wait $SP
echo $? >"$OUT/fi_msg.server.rc"
echo "rdma_cm vm: fi_msg: client $(cat "$OUT/fi_msg.client.rc") server $(cat "$OUT/fi_msg.server.rc")"

# Two network namespaces (two containers of one host): the server listens
# on its namespace's address, the client (in the other) resolves that
# address to the server's fv0 GID.
sysctl -qw net.ipv4.ip_forward=1
for n in 1 2; do
  ip netns add fv_n$n
  ip link add fvh$n type veth peer name fvc$n
  ip link set fvc$n netns fv_n$n
  ip addr add 10.77.$n.1/24 dev fvh$n
  ip link set fvh$n up
  ip -n fv_n$n addr add 10.77.$n.2/24 dev fvc$n
  ip -n fv_n$n link set fvc$n up
  ip -n fv_n$n link set lo up
  ip -n fv_n$n route add default via 10.77.$n.1
done
in_ns() {
  local ns=$1
  shift
  timeout -k 5 120 ip netns exec "$ns" "$FV" exec --runtime-dir /run/fv --provider "$PROV" -- "$@"
}
in_ns fv_n1 rping -s -a 10.77.1.2 -p 7176 -C 100 -v >"$OUT/netns.server.out" 2>"$OUT/netns.server.err" &
SP=$!
retry_client "$OUT/netns.client" in_ns fv_n2 rping -c -a 10.77.1.2 -p 7176 -C 100 -v
wait $SP
echo $? >"$OUT/netns.server.rc"
# The client in fv_n2 must not reach a server by an address of its own
# namespace that only fv_n1 listens on (ports are per namespace). A
# persistent server (its pid is rping's), reached from its own namespace
# before and after the refused client (so it was listening then).
ip netns exec fv_n1 "$FV" exec --runtime-dir /run/fv --provider "$PROV" -- \
  rping -s -P -a 10.77.1.2 -p 7177 -C 1 -v >"$OUT/netns_port.server.out" 2>"$OUT/netns_port.server.err" &
SP=$!
retry_client "$OUT/netns_port.before" in_ns fv_n1 rping -c -a 10.77.1.2 -p 7177 -C 1 -v
in_ns fv_n2 rping -c -a 10.77.2.2 -p 7177 -C 1 -v >"$OUT/netns_port.client.out" 2>"$OUT/netns_port.client.err"
echo $? >"$OUT/netns_port.client.rc"
in_ns fv_n1 rping -c -a 10.77.1.2 -p 7177 -C 1 -v >"$OUT/netns_port.after.out" 2>"$OUT/netns_port.after.err"
echo $? >"$OUT/netns_port.after.rc"
kill -TERM $SP
wait $SP
echo "rdma_cm vm: netns: client $(cat "$OUT/netns.client.rc") server $(cat "$OUT/netns.server.rc")"

# A killed server: its client gets DISCONNECTED. The server is not under
# `timeout` so that its pid is rping's (flowverbs exec execs it).
"$FV" exec --runtime-dir /run/fv --provider "$PROV" -- \
  rping -s -a 127.0.0.1 -p 7175 -C 1000000 -v >"$OUT/killed.server.out" 2>"$OUT/killed.server.err" &
SP=$!
retry_client "$OUT/killed.client" on rping -c -a 127.0.0.1 -p 7175 -C 1000000 -v &
CP=$!
for _ in $(seq 600); do
  [ "$(wc -l <"$OUT/killed.client.out" 2>/dev/null || echo 0)" -ge 20 ] && break
  sleep 0.1
done
kill -KILL $SP
wait $SP
wait $CP
echo "rdma_cm vm: killed: client $(cat "$OUT/killed.client.rc")"

# Two routers, as two hosts (tests/rdma_cm/two_routers.sh).
. "$(dirname "$0")/two_routers.sh"

port=7200
for c in destroy_counts migrate nonblock_poll hidden_child reject backlog ud; do
  port=$((port + 10))
  alone "$c" "$CHK" "$c" "$port"
done
FV_CM_IDS=4096 alone hostile "$CHK" hostile

kill -TERM $PID_A
wait $PID_A
echo $? >"$OUT/router.rc"
echo "rdma_cm vm: done"
