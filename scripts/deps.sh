#!/usr/bin/env bash
# Installs what svcplane's tests need on a fresh Debian machine, and
# nothing when it is already there. Run as root (make test does).
set -euo pipefail

need=()
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
command -v conntrack >/dev/null || need+=(conntrack)
# ipvsadm: the ipvs benchmarks' peer (ipvsadm -R) and the isolation tests
# look at IPVS with it, in the VM (which runs this machine's programs).
command -v ipvsadm >/dev/null || need+=(ipvsadm)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing ${need[*]}; run as root (sudo make test) or install them" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
command -v go >/dev/null || { echo "deps: Go 1.26 is required (https://go.dev/dl)" >&2; exit 1; }
go mod download
