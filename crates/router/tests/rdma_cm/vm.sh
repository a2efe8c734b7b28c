#!/bin/bash
# Runs inside scripts/rxe-vm --modules fuse,cuse (crates/router/tests/rdma_cm.rs).
#
# Usage: vm.sh OUT FLOWVERBS PROVIDER CHECKER UCP
#   OUT       a directory writable from the VM (results for the test)
#   FLOWVERBS the flowverbs executable
#   PROVIDER  libflowverbs-rdmav34.so
#   CHECKER   tests/c/fv_cm_check, compiled
#   UCP       UCX's ucp_client_server example (libucx-dev), compiled
#
# 1. Placement: with the kernel's rdma_ucm loaded (/dev/infiniband/rdma_cm is
#    the kernel's), a router serves its device under another name; it is
#    gone once the router stops.
# 2. The kernel's rdma_ucm is unloaded (a host without kernel RDMA) and one
#    router serves /dev/infiniband/rdma_cm; every scenario runs under
#    `flowverbs exec` against it. Scenario NAME writes
#    OUT/NAME.{server,client}.{out,err,rc}.
set -u
OUT=$1 FV=$2 PROV=$3 CHK=$4 UCP=$5
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

# on CMD...: CMD with the fv0 of the router of RT (default /run/fv),
# killed after 120 s (a hang fails its scenario, not the run).
on() {
  timeout -k 5 120 "$FV" exec --runtime-dir "${RT:-/run/fv}" --provider "$PROV" -- "$@"
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

# wait_listener RT PS PORT: until the router of RT shows (flowverbs
# status) an rdma_cm id listening on PORT in port space PS (at most 60 s).
# udaddy needs it: a client that starts first is refused for one of its
# ids, quits, and leaves the server short of a connection; no retry helps.
wait_listener() {
  local end=$((SECONDS + 60))
  while [ $SECONDS -lt $end ]; do
    "$FV" status --runtime-dir "$1" | grep -qE " $2 +listening +[0-9.]+:$3 " && return 0
    sleep 0.1
  done
}

# pair NAME SERVER_CMD CLIENT_CMD: the server, then the client (once the
# server listens, if LISTEN="PS PORT" is set).
pair() {
  local n=$1 s=$2 c=$3
  on $s >"$OUT/$n.server.out" 2>"$OUT/$n.server.err" &
  local sp=$!
  [ -n "${LISTEN:-}" ] && wait_listener "${RT:-/run/fv}" $LISTEN
  retry_client "$OUT/$n.client" on $c
  wait $sp
  echo $? >"$OUT/$n.server.rc"
  echo "rdma_cm vm: $n: client $(cat "$OUT/$n.client.rc") server $(cat "$OUT/$n.server.rc")"
}

# wait_lines FILE N: until FILE has N lines (at most 60 s).
wait_lines() {
  for _ in $(seq 600); do
    [ "$(wc -l <"$1" 2>/dev/null || echo 0)" -ge "$2" ] && return 0
    sleep 0.1
  done
}

# alone NAME CMD
alone() {
  local n=$1
  shift
  on "$@" >"$OUT/$n.client.out" 2>"$OUT/$n.client.err"
  echo $? >"$OUT/$n.client.rc"
  echo "rdma_cm vm: $n: $(cat "$OUT/$n.client.rc")"
}

# Two routers that start at the same instant on a host without kernel
# RDMA may both find /dev/infiniband/rdma_cm free; the kernel gives the
# name to one, and the other serves a node of its own. Each then serves
# an rping. A third router told to serve the taken name
# (--rdma-cm-node) is refused by the kernel, which ends its CUSE
# connection: it serves no rdma_cm (it must not publish the other's node
# as its own, nor spin on the dead connection).
for r in 1 2; do
  FLOWVERBS_LOG=$LOG "$FV" router --runtime-dir /run/fv_s$r 2>"$OUT/race_$r.log" &
  eval "PID_S$r=\$!"
done
for r in 1 2; do
  for _ in $(seq 600); do [ -S /run/fv_s$r/router.sock ] && break; sleep 0.1; done
done
cat /run/fv_s1/rdma_cm.node /run/fv_s2/rdma_cm.node >"$OUT/race.nodes" 2>&1
FLOWVERBS_LOG=$LOG "$FV" router --runtime-dir /run/fv_s3 --rdma-cm-node infiniband/rdma_cm 2>"$OUT/race_3.log" &
PID_S3=$!
for _ in $(seq 600); do [ -S /run/fv_s3/router.sock ] && break; sleep 0.1; done
ls /run/fv_s3 >"$OUT/race_3.files"
for r in 1 2; do
  RT=/run/fv_s$r pair race_$r "rping -s -a 127.0.0.1 -p 719$r -C 3 -v" "rping -c -a 127.0.0.1 -p 719$r -C 3 -v"
done
kill -TERM $PID_S1 $PID_S2 $PID_S3
wait $PID_S1 $PID_S2 $PID_S3

# The router of every scenario below: it serves /dev/infiniband/rdma_cm,
# with a cap of 300 rdma_cm ids per user (the hostile case fills it).
FLOWVERBS_LOG=$LOG "$FV" router --runtime-dir /run/fv --max-cm-ids-per-user 300 2>"$OUT/router.log" &
PID_A=$!
for _ in $(seq 600); do [ -S /run/fv/router.sock ] && break; sleep 0.1; done
ls -l /dev/infiniband >"$OUT/devices"

pair rping "rping -s -a 127.0.0.1 -p 7174 -C 1000 -v" "rping -c -a 127.0.0.1 -p 7174 -C 1000 -v"
pair send_bw "ib_send_bw -R -d fv0 -n 500" "ib_send_bw -R -d fv0 -n 500 127.0.0.1"
pair write_lat "ib_write_lat -R -d fv0 -n 500" "ib_write_lat -R -d fv0 -n 500 127.0.0.1"
pair read_bw "ib_read_bw -R -d fv0 -n 500" "ib_read_bw -R -d fv0 -n 500 127.0.0.1"
# UD through SIDR: two ids, 100 messages each way on each (udaddy's port
# is always 7174, UDP port space). Then a client alone: no one serves the
# port, UNREACHABLE.
LISTEN="udp 7174" pair udaddy "udaddy -c 2 -C 100" "udaddy -s 127.0.0.1 -c 2 -C 100"
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
# fi_pair NAME PORT FI_PINGPONG_ARGS...
fi_pair() {
  local n=$1 port=$2
  shift 2
  on fi_pingpong "$@" -B "$port" >"$OUT/$n.server.out" 2>"$OUT/$n.server.err" &
  local sp=$!
  wait_listen "$port"
  on fi_pingpong "$@" -P "$port" 127.0.0.1 >"$OUT/$n.client.out" 2>"$OUT/$n.client.err"
  echo $? >"$OUT/$n.client.rc"
  wait $sp
  echo $? >"$OUT/$n.server.rc"
  echo "rdma_cm vm: $n: client $(cat "$OUT/$n.client.rc") server $(cat "$OUT/$n.server.rc")"
}
fi_pair fi_msg 47600 -p verbs -e msg -d fv0 -c -I 100
# RDM endpoints (ofi_rxm over verbs MSG endpoints), as they come: ofi_rxm
# sizes its verbs CQ from the universe size (256 by default: 65536
# entries, above rxe's max_cqe, within fv0's).
fi_pair fi_rxm 47610 -p "verbs;ofi_rxm" -e rdm -d fv0 -c -I 100

# UCX's client/server connection by socket address (ucp_ep_create with a
# sockaddr, ucp_listener_create), with rdma_cm as the only connection
# manager UCX may use and fv0's rc_verbs/ud_verbs as the only transports:
# Debian's example program (libucx-dev), 100 tagged messages of 64 KiB
# (rendezvous). Its server never exits (it waits for the next client):
# stopped once the client is done. It runs under `script` so that what it
# printed reaches the file (a terminal: line-buffered).
export UCX_SOCKADDR_TLS_PRIORITY=rdmacm UCX_TLS=rc_verbs,ud_verbs UCX_NET_DEVICES=fv0:1
UCP_ARGS="-p 13337 -c tag -i 100 -s 65536"
script -qfec "timeout -k 5 120 $FV exec --runtime-dir /run/fv --provider $PROV -- $UCP -l 127.0.0.1 $UCP_ARGS" \
  "$OUT/ucx_sockaddr.server.out" >/dev/null 2>&1 &
SP=$!
wait_listener /run/fv tcp 13337
on "$UCP" -a 127.0.0.1 $UCP_ARGS >"$OUT/ucx_sockaddr.client.out" 2>"$OUT/ucx_sockaddr.client.err"
echo $? >"$OUT/ucx_sockaddr.client.rc"
pkill -f "$UCP -l"
wait $SP
unset UCX_SOCKADDR_TLS_PRIORITY UCX_TLS UCX_NET_DEVICES
echo "rdma_cm vm: ucx_sockaddr: client $(cat "$OUT/ucx_sockaddr.client.rc")"

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

# killed_server NAME ADDR PORT CLIENT_FN SERVER_PREFIX...: an rping
# server (run by SERVER_PREFIX, not under `timeout`, so that its pid is
# rping's: flowverbs exec execs it) killed once its client (run by
# CLIENT_FN) printed 20 pings.
killed_server() {
  local n=$1 addr=$2 port=$3 client=$4
  shift 4
  "$@" rping -s -a "$addr" -p "$port" -C 1000000 -v >"$OUT/$n.server.out" 2>"$OUT/$n.server.err" &
  local sp=$!
  retry_client "$OUT/$n.client" "$client" rping -c -a "$addr" -p "$port" -C 1000000 -v &
  local cp=$!
  wait_lines "$OUT/$n.client.out" 20
  kill -KILL $sp
  wait $sp
  wait $cp
  echo "rdma_cm vm: $n: client $(cat "$OUT/$n.client.rc")"
}

# behind R N CMD...: CMD in fv_nN with router R's fv0 (runtime directory
# /run/fvR), killed after 120 s.
behind() {
  local r=$1 n=$2
  shift 2
  timeout -k 5 120 ip netns exec fv_n$n "$FV" exec --runtime-dir /run/fv$r --provider "$PROV" -- "$@"
}

# ns_router R N ARGS...: router R in fv_nN's network namespace only (not
# `ip netns exec`, which would give it a mount namespace of its own and
# hide its FUSE mount from its clients), runtime directory /run/fvR, log
# OUT/router_R.log; its pid in PID_RR.
ns_router() {
  local r=$1 n=$2
  shift 2
  nsenter --net=/run/netns/fv_n$n env FLOWVERBS_LOG=$LOG "$FV" router --runtime-dir /run/fv$r "$@" \
    2>"$OUT/router_$r.log" &
  eval "PID_R$r=\$!"
}

# A killed server: its client gets DISCONNECTED.
killed_server killed 127.0.0.1 7175 on "$FV" exec --runtime-dir /run/fv --provider "$PROV" --

# Two routers, as two hosts (tests/rdma_cm/two_routers.sh).
. "$(dirname "$0")/two_routers.sh"
# Two routers found through etcd (tests/rdma_cm/etcd.sh).
. "$(dirname "$0")/etcd.sh"

port=7200
for c in destroy_counts migrate nonblock_poll hidden_child reject backlog ud; do
  port=$((port + 10))
  alone "$c" "$CHK" "$c" "$port"
done
FV_CM_IDS=300 alone hostile "$CHK" hostile

kill -TERM $PID_A
wait $PID_A
echo $? >"$OUT/router.rc"
echo "rdma_cm vm: done"
