# Sourced by vm.sh after two_routers.sh (its variables and functions, the
# namespaces fv_n1 and fv_n2): two routers that know each other only
# through an etcd registry (no --peer), so neither is linked to the other
# until something needs it. A client's REQ for the server's GID must make
# its router dial the server's (and wait for the link) instead of being
# refused. etcd (Debian's etcd-server) listens on the root namespace's
# side of fv_n1's veth, which both namespaces reach.
EP=http://10.77.1.1:2379
etcd --name fvcm --data-dir /tmp/etcd-cm \
  --listen-client-urls $EP --advertise-client-urls $EP \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster fvcm=http://127.0.0.1:2380 >"$OUT/etcd.log" 2>&1 &
PID_ETCD=$!
for _ in $(seq 300); do etcdctl --endpoints $EP endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
ns_router E 1 --listen 10.77.1.2:7710 --registry etcd://10.77.1.1:2379
ns_router F 2 --listen 10.77.2.2:7710 --registry etcd://10.77.1.1:2379
for r in E F; do
  for _ in $(seq 600); do grep -q 'in sync with etcd' "$OUT/router_$r.log" && break; sleep 0.1; done
done

onF() { behind F 2 "$@"; }
behind E 1 rping -s -a 10.77.1.2 -p 7186 -C 100 -v >"$OUT/x_etcd.server.out" 2>"$OUT/x_etcd.server.err" &
SP=$!
retry_client "$OUT/x_etcd.client" onF rping -c -a 10.77.1.2 -p 7186 -C 100 -v
wait $SP
echo $? >"$OUT/x_etcd.server.rc"
echo "rdma_cm vm: x_etcd: client $(cat "$OUT/x_etcd.client.rc") server $(cat "$OUT/x_etcd.server.rc")"

kill -TERM $PID_RE $PID_RF
wait $PID_RE $PID_RF
kill -TERM $PID_ETCD
wait $PID_ETCD
