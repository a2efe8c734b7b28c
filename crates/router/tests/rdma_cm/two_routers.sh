# Sourced by vm.sh (its variables and functions, the namespaces fv_n1 and
# fv_n2 routed through the root namespace): rdma_cm between two routers,
# as between two hosts. Router A runs in fv_n1 (10.77.1.2), router B in
# fv_n2 (10.77.2.2), linked over TCP; each serves rdma_cm at a node of its
# own (/dev/infiniband/rdma_cm is the root router's), which `flowverbs
# exec` mounts at /dev/infiniband/rdma_cm for its program. Servers run
# behind A, clients behind B. Scenario x_NAME writes OUT/x_NAME.*.
# The routers enter only their network namespace (nsenter, not `ip netns
# exec`, which would give them a mount namespace of their own): their FUSE
# mounts (completion channels) must be visible to their clients.

ns_router A 1 --listen 10.77.1.2:7700 --peer 10.77.2.2:7700
ns_router B 2 --listen 10.77.2.2:7700 --peer 10.77.1.2:7700
for r in A B; do
  for _ in $(seq 600); do [ -S /run/fv$r/router.sock ] && break; sleep 0.1; done
done
cat /run/fvA/rdma_cm.node /run/fvB/rdma_cm.node >"$OUT/x_nodes" 2>&1
# Both links up (each router logs its peer going up).
for r in A B; do
  for _ in $(seq 600); do grep -q ' up' "$OUT/router_$r.log" && break; sleep 0.1; done
done

onA() { behind A 1 "$@"; }
onB() { behind B 2 "$@"; }

# xpair NAME SERVER_CMD CLIENT_CMD: the server behind A, the client behind B
# (once the server listens, if LISTEN="PS PORT" is set).
xpair() {
  local n=$1 s=$2 c=$3
  onA $s >"$OUT/$n.server.out" 2>"$OUT/$n.server.err" &
  local sp=$!
  [ -n "${LISTEN:-}" ] && wait_listener /run/fvA $LISTEN
  retry_client "$OUT/$n.client" onB $c
  wait $sp
  echo $? >"$OUT/$n.server.rc"
  echo "rdma_cm vm: $n: client $(cat "$OUT/$n.client.rc") server $(cat "$OUT/$n.server.rc")"
}

xpair x_rping "rping -s -a 10.77.1.2 -p 7180 -C 300 -v" "rping -c -a 10.77.1.2 -p 7180 -C 300 -v"
xpair x_send_bw "ib_send_bw -R -d fv0 -n 200" "ib_send_bw -R -d fv0 -n 200 10.77.1.2"
xpair x_write_lat "ib_write_lat -R -d fv0 -n 200" "ib_write_lat -R -d fv0 -n 200 10.77.1.2"
xpair x_read_bw "ib_read_bw -R -d fv0 -n 200" "ib_read_bw -R -d fv0 -n 200 10.77.1.2"
# UD through SIDR across the link. udaddy's server listens on the wildcard
# address and opens fv0 only for its first request: router A announces
# the GID of a listener without a verbs session.
LISTEN="udp 7174" xpair x_udaddy "udaddy -c 2 -C 100" "udaddy -s 10.77.1.2 -c 2 -C 100"

# The server behind A is killed mid-run: its verbs session closes before
# its rdma_cm file is released, and the DREQ of that release must still
# reach router B (A goes on announcing the GID while an id needs it).
killed_server x_killed 10.77.1.2 7184 onB ip netns exec fv_n1 "$FV" exec --runtime-dir /run/fvA --provider "$PROV" --

# Router A itself dies mid-run: router B loses the link, and the client
# behind it gets DISCONNECTED.
onA rping -s -a 10.77.1.2 -p 7182 -C 1000000 -v >"$OUT/x_lost.server.out" 2>"$OUT/x_lost.server.err" &
SP=$!
retry_client "$OUT/x_lost.client" onB rping -c -a 10.77.1.2 -p 7182 -C 1000000 -v &
CP=$!
wait_lines "$OUT/x_lost.client.out" 20
"$FV" status --runtime-dir /run/fvB >"$OUT/x_lost.status" 2>&1
kill -KILL $PID_RA
wait $PID_RA
wait $CP
kill -KILL $SP 2>/dev/null
wait $SP
echo "rdma_cm vm: x_lost: client $(cat "$OUT/x_lost.client.rc")"

kill -TERM $PID_RB
wait $PID_RB
echo $? >"$OUT/router_B.rc"
# Router A was killed: its node and tree are left behind; remove them so
# that nothing later sees a stale node.
rm -f "$(cat /run/fvA/rdma_cm.node 2>/dev/null)"
