#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`.
# On a machine without one (Debian or Ubuntu, as root, no systemd), install
# Debian's engine and mmdebstrap (which makes the base image where no registry
# can be reached) and start dockerd in the background. Elsewhere, say what is
# missing and stop.
set -euo pipefail

log=${EMU_DOCKERD_LOG:-/var/log/emu-dockerd.log}

# Every pod and node keeps ARP entries, and the kernel's neighbour table is
# shared by all network namespaces: the default limit (1,024) overflows at a
# few hundred pods, and pods become unreachable. Raise it where we may.
raise_neighbour_limits() {
  [ "$(id -u)" = 0 ] && [ -w /proc/sys/net/ipv4/neigh/default/gc_thresh3 ] || return 0
  for pair in gc_thresh1:4096 gc_thresh2:8192 gc_thresh3:16384; do
    key=${pair%%:*} want=${pair##*:}
    file=/proc/sys/net/ipv4/neigh/default/$key
    [ "$(cat "$file")" -ge "$want" ] || echo "$want" >"$file"
  done
}
raise_neighbour_limits

if docker info >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no Docker engine answers 'docker info'." >&2
  echo "  Start Docker (Docker Desktop, or 'sudo systemctl start docker') and run this again." >&2
  exit 1
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian's packages" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl start docker || true
fi
if ! docker info >/dev/null 2>&1; then
  # A dockerd killed with its machine session leaves its pid file behind.
  pgrep -x dockerd >/dev/null 2>&1 || rm -f /var/run/docker.pid
  echo "starting dockerd (log: $log)" >&2
  nohup dockerd >"$log" 2>&1 &
fi
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
echo "error: dockerd did not answer within 60 s; see $log" >&2
tail -n 20 "$log" >&2 || true
exit 1
