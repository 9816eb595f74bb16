#!/usr/bin/env bash
# Installs every system package seqrec needs to build, test and run its examples on Debian
# bookworm. Idempotent: when everything is present it checks with dpkg and returns in well under a
# second, without touching the network. Used by the README quick start and by .ci/run.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libeigen3-dev libboost-dev libcxxopts-dev libbenchmark-dev libfmt-dev nlohmann-json3-dev
  libopenmpi-dev openmpi-bin clang-format
)
backports=(catch2)  # Catch2 v3: bookworm has v2 only, bookworm-backports has v3

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
need_catch2=0
if ! dpkg-query -W -f='${Version}' catch2 2>/dev/null | grep -q '^3'; then need_catch2=1; fi

if [ ${#missing[@]} -eq 0 ] && [ $need_catch2 -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

if [ $need_catch2 -eq 1 ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  list=/etc/apt/sources.list.d/${codename}-backports.list
  if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian ${codename}-backports main" | $SUDO tee "$list" >/dev/null
  fi
fi

echo "install_deps: installing ${missing[*]} $([ $need_catch2 -eq 1 ] && echo 'catch2 (backports)')" >&2
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $need_catch2 -eq 1 ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  $SUDO apt-get install -y -qq --no-install-recommends -t "${codename}-backports" catch2 >/dev/null
fi
