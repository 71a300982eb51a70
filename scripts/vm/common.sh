# shellcheck shell=bash
# Shared by the scripts in scripts/vm/ (sourced, not run). Bash only.
#
# Kernel versions are named as `uname -r` names them inside the guest
# (6.1.0-56-amd64, 6.12.117+deb12-amd64); that is also the Debian package
# name minus its "linux-image-" prefix and the key of the cache.

# The cache lives outside the repo so a fresh clone, `git clean` or another
# work tree reuses it: one directory per kernel version.
# (HOME may be unset in a CI job: then the passwd entry's home.)
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
VM_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/svcplane/vm"

vm_log() { echo "vm: $*" >&2; }
vm_die() {
  echo "vm: error: $*" >&2
  exit 1
}

# vm_apt_ready runs `apt-get update` once per script run, and only when the
# package lists do not answer (a fresh machine ships none): the archive is
# then asked only for what the project needs.
_vm_apt_updated=
vm_apt_update() {
  [ -n "$_vm_apt_updated" ] && return 0
  [ "$(id -u)" = 0 ] || vm_die "apt-get update needs root (run as root, e.g. sudo make test-vm)"
  vm_log "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  _vm_apt_updated=1
}

# vm_resolve_kernel SPEC prints the kernel version SPEC stands for:
#   6.1, 6.12 ...   the newest amd64 image of that series the archive serves.
#                   Debian names them two ways: 6.1.0-56-amd64 (bookworm's
#                   ABI numbering) and 6.12.117+deb12-amd64; both match.
#   6.1.0-56-amd64  itself (any full version ending in -amd64).
# When apt has no answer (no lists and no network), the newest cached
# version of the series is used, so a cached machine still runs offline.
vm_resolve_kernel() {
  local spec=$1
  case $spec in
  *-amd64)
    echo "$spec"
    return
    ;;
  [0-9]*.[0-9]*) ;;
  *) vm_die "kernel '$spec': want a series (6.1, 6.12) or a full version (6.1.0-56-amd64)" ;;
  esac
  local series=${spec//./\\.}
  local re="^linux-image-${series}(\\.0-[0-9]+|\\.[0-9]+\\+deb[0-9]+)-amd64\$"
  local names
  names=$(apt-cache search --names-only "$re" 2>/dev/null | cut -d' ' -f1) || true
  if [ -z "$names" ] && [ "$(id -u)" = 0 ]; then
    vm_apt_update
    names=$(apt-cache search --names-only "$re" 2>/dev/null | cut -d' ' -f1) || true
  fi
  if [ -z "$names" ]; then
    # Offline fallback: what an earlier run left in the cache.
    names=$(find "$VM_CACHE" -mindepth 1 -maxdepth 1 \( -name "$spec.0-*-amd64" -o -name "$spec.*+deb*-amd64" \) \
      -printf 'linux-image-%f\n' 2>/dev/null) || true
  fi
  [ -n "$names" ] || vm_die "no linux-image for kernel series $spec in the archive (apt-cache search '$re')"
  printf '%s\n' "$names" | sed 's/^linux-image-//' | sort -V | tail -n1
}
