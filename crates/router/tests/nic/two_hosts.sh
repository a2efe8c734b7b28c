#!/bin/bash
# Runs inside scripts/rxe-vm (Debian's kernel with Soft-RoCE: rxe0 on veth0,
# 198.18.0.1; rxe1 on veth1, 198.18.0.2; one wire between them).
#
# Two "hosts" in one VM: router A posts to rxe0 and serves the container
# namespace fv_a (10.77.1.2); router B has two NICs, rxe1 and rxe0, and
# serves fv_b (10.77.2.2, which it puts on rxe1) and fv_c (10.77.3.3, on
# rxe0: each container posts to one NIC, spread evenly, a lone one by
# its address). rxe devices must stay in the root namespace (on this kernel
# an rxe device disappears when its netdev moves), so the routers run there
# and the containers' TCP is routed through it. The routers are linked over
# loopback (--listen/--peer), as two hosts' routers would be over their
# network.
#
# Usage: two_hosts.sh OUT FLOWVERBS PROVIDER_DIR SCENARIOS
#   OUT          a directory writable from the VM (results for the test)
#   FLOWVERBS    the flowverbs executable
#   PROVIDER_DIR holds libflowverbs-rdmav34.so
#   SCENARIOS    a bash file sourced once both hosts are up; it calls
#                `scenario NAME PORT SERVER_CMD CLIENT_CMD [CLIENT_HOST]` and
#                `alone NAME HOST CMD`
#
# For each scenario NAME it writes OUT/NAME.{server,client}.{out,err,rc}
# (`alone`: NAME.client.*) and the counters of `snapshot` before and after.
set -u
OUT=$1 FV=$2 PROV=$3 SCENARIOS=$4
ROUTER_LOG_LEVEL=${FLOWVERBS_LOG:-info}
unset FLOWVERBS_LOG

sysctl -qw net.ipv4.ip_forward=1
for h in a b c; do
  case $h in a) n=1 host=2 ;; b) n=2 host=2 ;; c) n=3 host=3 ;; esac
  ip netns add fv_$h
  ip link add fv$h type veth peer name fvc$h
  ip link set fvc$h netns fv_$h
  ip addr add 10.77.$n.1/24 dev fv$h
  ip link set fv$h up
  ip -n fv_$h addr add 10.77.$n.$host/24 dev fvc$h
  ip -n fv_$h link set fvc$h up
  ip -n fv_$h link set lo up
  ip -n fv_$h route add default via 10.77.$n.1
done

# Resolve the wire's neighbours once: the kernel resolves a RoCE path's
# MAC when a QP connects, and a cold neighbour entry can fail that modify.
for pair in "198.18.0.1 198.18.0.2" "198.18.0.2 198.18.0.1"; do
  set -- $pair
  /run/rxe-vm/busybox ping -c 1 -W 2 -I "$1" "$2" >/dev/null 2>&1 || true
done

FLOWVERBS_LOG=$ROUTER_LOG_LEVEL "$FV" router --runtime-dir /run/fv_a --mode semi --nic rxe0 \
  --listen 127.0.0.1:7471 --peer 127.0.0.2:7472 2>"$OUT/router_a.log" &
PID_A=$!
FLOWVERBS_LOG=$ROUTER_LOG_LEVEL "$FV" router --runtime-dir /run/fv_b --mode semi --nic rxe1 --nic rxe0 \
  --listen 127.0.0.2:7472 --peer 127.0.0.1:7471 2>"$OUT/router_b.log" &
PID_B=$!
for _ in $(seq 100); do
  if grep -q 'peer .* up' "$OUT/router_a.log" 2>/dev/null &&
    grep -q 'peer .* up' "$OUT/router_b.log" 2>/dev/null; then
    break
  fi
  sleep 0.1
done

# on CONTAINER CMD...: CMD in that container namespace (a, b or c), given
# the fv0 of its router (A for a, B for b and c); killed after 120 s: a
# hang fails its scenario, not the whole run.
on() {
  local h=$1 r=$1
  [ "$h" = c ] && r=b
  shift
  timeout -k 5 120 ip netns exec fv_$h "$FV" exec --runtime-dir /run/fv_$r --provider "$PROV/libflowverbs-rdmav34.so" -- "$@"
}

# plm_rsh_agent for Open MPI: `agent.sh HOST COMMAND...` runs COMMAND in
# HOST's container with its fv0 (what ssh would do between real hosts).
cat >"$OUT/agent.sh" <<AGENT
#!/bin/sh
host=\$1; shift
case "\$host" in
10.77.1.2) exec ip netns exec fv_a "$FV" exec --runtime-dir /run/fv_a --provider "$PROV/libflowverbs-rdmav34.so" -- sh -c "\$*" ;;
10.77.2.2) exec ip netns exec fv_b "$FV" exec --runtime-dir /run/fv_b --provider "$PROV/libflowverbs-rdmav34.so" -- sh -c "\$*" ;;
esac
echo "agent: unknown host \$host" >&2
exit 1
AGENT
chmod +x "$OUT/agent.sh"

counter() { cat /sys/class/infiniband/$1/ports/1/hw_counters/$2; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }

# snapshot NAME WHEN: the packets rxe0 sent and rxe1 received and both
# routers' CPU ticks (NAME.counters, `key WHEN value` lines), and both
# routers' `status --json` (NAME.status_{a,b}.WHEN.json: what they moved
# on the link and by their own copies, closed QPs included).
snapshot() {
  {
    echo "rxe0_sent $2 $(counter rxe0 sent_pkts)"
    echo "rxe0_rcvd $2 $(counter rxe0 rcvd_pkts)"
    echo "rxe1_sent $2 $(counter rxe1 sent_pkts)"
    echo "rxe1_rcvd $2 $(counter rxe1 rcvd_pkts)"
    echo "cpu_a $2 $(cpu_ticks $PID_A)"
    echo "cpu_b $2 $(cpu_ticks $PID_B)"
  } >>"$OUT/$1.counters"
  "$FV" status --runtime-dir /run/fv_a --json >"$OUT/$1.status_a.$2.json"
  "$FV" status --runtime-dir /run/fv_b --json >"$OUT/$1.status_b.$2.json"
}

# Waits until a server in host A's namespace listens on TCP port $1.
wait_listen() {
  for _ in $(seq 150); do
    ip netns exec fv_a ss -Htln "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

# scenario NAME PORT SERVER_CMD CLIENT_CMD [CLIENT_HOST]: the server in
# host A's container, the client in container CLIENT_HOST (default b, on
# host B), which connects to 10.77.1.2:PORT.
scenario() {
  local name=$1 port=$2 server=$3 client=$4 client_host=${5:-b}
  snapshot "$name" before
  (on a bash -c "$server" >"$OUT/$name.server.out" 2>"$OUT/$name.server.err"
    echo $? >"$OUT/$name.server.rc") &
  local spid=$!
  wait_listen "$port" || echo "server of $name never listened on $port" >>"$OUT/$name.server.err"
  on "$client_host" bash -c "$client" >"$OUT/$name.client.out" 2>"$OUT/$name.client.err"
  echo $? >"$OUT/$name.client.rc"
  wait $spid
  snapshot "$name" after
}

# alone NAME HOST CMD: one program in HOST's container.
alone() {
  local name=$1 host=$2 cmd=$3
  snapshot "$name" before
  on "$host" bash -c "$cmd" >"$OUT/$name.client.out" 2>"$OUT/$name.client.err"
  echo $? >"$OUT/$name.client.rc"
  snapshot "$name" after
}

source "$SCENARIOS"

kill -TERM $PID_A $PID_B
wait $PID_A $PID_B
echo "two_hosts: done"
