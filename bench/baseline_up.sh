#!/usr/bin/env bash
# The baseline for bench/up.py: the same work as `emu up`, by hand, as a plain
# shell script would do it. One Docker network, NODES node containers started
# in parallel, then per node one `docker exec` that makes the bridge, the
# host-gw routes and PODS pods (netns, veth, address, route, one process
# each), and waits until every pod's port answers. No validation, no state, no
# cleanup on failure: the floor emu's own overhead is measured against.
#
# usage: baseline_up.sh NAME NODES PODS_PER_NODE IMAGE SUBNET WORKLOAD
#   WORKLOAD: "nc" (nc -lk 8080) or "netexec" (emu's python netexec on 8080)
set -euo pipefail
name=$1 nodes=$2 pods=$3 image=$4 subnet=$5 workload=$6
prefix=${subnet%.*}
here=$(cd "$(dirname "$0")/.." && pwd)

docker network create --subnet "$subnet" --label io.emu.bench="$name" "$name" >/dev/null
for n in $(seq 0 $((nodes - 1))); do
  docker run -d --name "$name-n$n" --hostname "n$n" --network "$name" --ip "$prefix.$((n + 2))" \
    --label io.emu.bench="$name" --cap-add NET_ADMIN --cap-add SYS_ADMIN --cap-add NET_RAW \
    --security-opt apparmor=unconfined --sysctl net.ipv4.ip_forward=1 --init "$image" sleep infinity >/dev/null &
done
wait

node_script() {
  local n=$1
  echo "set -e"
  echo "ip link add cni0 type bridge; ip addr add 10.244.$n.1/24 dev cni0; ip link set cni0 up"
  for m in $(seq 0 $((nodes - 1))); do
    [ "$m" = "$n" ] || echo "ip route add 10.244.$m.0/24 via $prefix.$((m + 2))"
  done
  for p in $(seq 2 $((pods + 1))); do
    echo "ip netns add p$p"
    echo "ip link add v$p type veth peer name eth0 netns p$p"
    echo "ip link set v$p master cni0 up"
    echo "ip -n p$p link set lo up; ip -n p$p addr add 10.244.$n.$p/24 dev eth0; ip -n p$p link set eth0 up"
    echo "ip -n p$p route add default via 10.244.$n.1"
    if [ "$workload" = netexec ]; then
      echo "setsid ip netns exec p$p python3 /tmp/netexec.py >/dev/null 2>&1 </dev/null &"
    else
      echo "setsid ip netns exec p$p nc -lk 8080 >/dev/null 2>&1 </dev/null &"
    fi
  done
  # Wait until every pod answers.
  echo "for p in \$(seq 2 $((pods + 1))); do until nc -z -w1 10.244.$n.\$p 8080; do sleep 0.02; done; done"
}

for n in $(seq 0 $((nodes - 1))); do
  (
    [ "$workload" = netexec ] && docker cp -q "$here/emu/node/workloads/netexec.py" "$name-n$n:/tmp/netexec.py"
    node_script "$n" | docker exec -i "$name-n$n" sh -s
  ) &
done
wait
