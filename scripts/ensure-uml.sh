#!/usr/bin/env bash
# Make sure User-mode Linux can run nodes here: Debian's user-mode-linux (a
# Linux 6.1 kernel as an ordinary process, /usr/bin/linux.uml, with modules
# such as ip_vs, dummy and sch_netem the host kernel may lack), e2fsprogs
# (mkfs.ext4 makes the guests' root filesystem) and iproute2 (tap devices,
# the host bridge). Idempotent: does nothing when all is there.
# On Debian or Ubuntu as root it installs what is missing; elsewhere it says
# what is missing and stops.
set -euo pipefail

if [ "$(uname -s)" != Linux ]; then
  echo "error: User-mode Linux runs on Linux hosts only (this is $(uname -s))." >&2
  echo "  Use the docker runtime here, or run emu in a Linux machine." >&2
  exit 1
fi

need=()
[ -x /usr/bin/linux.uml ] && [ -d /usr/lib/uml/modules ] || need+=(user-mode-linux)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "error: ${need[*]} missing, and installing needs root." >&2
  echo "  Run 'sudo $0' (User-mode Linux nodes also need root for tap devices)." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: ${need[*]} missing, and this is not Debian or Ubuntu (no apt-get)." >&2
  echo "  Install your distribution's User-mode Linux kernel as /usr/bin/linux.uml with its" >&2
  echo "  modules under /usr/lib/uml/modules/VERSION, and mkfs.ext4, then run this again." >&2
  exit 1
fi

echo "installing ${need[*]} from Debian's packages" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
if ! [ -x /usr/bin/linux.uml ]; then
  echo "error: user-mode-linux installed but /usr/bin/linux.uml is missing (an architecture without it?)" >&2
  exit 1
fi
