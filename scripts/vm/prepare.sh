#!/usr/bin/env bash
# prepare.sh KERNEL... — gets each Debian kernel ready for run.sh: installs
# the host packages the VM needs (only those missing), downloads the kernel
# package with apt, unpacks it, and builds the initramfs of VM.md.
#
# KERNEL is a series (6.1, 6.12: the newest image the archive serves) or a
# full version (6.1.0-56-amd64). Everything lands in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/svcplane/vm/<version>/
#     linux-image-<version>_*.deb   the package as downloaded
#     vmlinuz                       the kernel
#     modules/lib/modules/<version> the trimmed, decompressed modules + depmod
#     initrd.gz                     busybox + modules + scripts/vm/init
#     stamp                         what the above was built from
# A second run finds it all there and does nothing; editing scripts/vm/init,
# scripts/vm/modules or this script rebuilds (from the cached package).
# Prints each ready version on stdout, one a line; logs go to stderr.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$here/common.sh"

[ $# -gt 0 ] || vm_die "usage: $0 KERNEL... (6.1, 6.12 or a full version such as 6.1.0-56-amd64)"

# Host packages: QEMU; a static busybox (PID 1 and every tool in the
# initramfs, which has no libc); cpio to pack it; kmod for depmod; xz and
# zstd to decompress modules shipped compressed.
install_host_packages() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  # The dynamic "busybox" package installs /bin/busybox too; only the static
  # one runs without a libc in the initramfs.
  [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] || need+=(busybox-static)
  command -v cpio >/dev/null || need+=(cpio)
  command -v depmod >/dev/null || [ -x /sbin/depmod ] || need+=(kmod)
  command -v xz >/dev/null || need+=(xz-utils)
  command -v zstd >/dev/null || need+=(zstd)
  [ ${#need[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || vm_die "missing ${need[*]}; run as root (sudo make test-vm) or install them"
  vm_apt_update
  vm_log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
}

# The stamp names everything the cached build depends on besides the
# package itself, so a changed init or module list rebuilds it.
stamp_of() {
  local kver=$1
  {
    echo "$kver"
    busybox_version
    sha256sum "$here/init" "$here/modules" "$here/prepare.sh" | cut -d' ' -f1
  } | sha256sum | cut -d' ' -f1
}
busybox_version() { /bin/busybox 2>&1 | head -n1; }

# download KVER DIR: the signed image is what linux-image-amd64 depends on;
# the unsigned one carries the same kernel and modules. A failure first
# refreshes stale package lists (the archive drops superseded versions).
download() {
  local kver=$1 dir=$2 pkg
  for attempt in 1 2; do
    for pkg in "linux-image-$kver" "linux-image-$kver-unsigned"; do
      apt-cache show "$pkg" >/dev/null 2>&1 || continue
      vm_log "$kver: apt-get download $pkg"
      # APT::Sandbox::User=root: the download directory is root's, not _apt's.
      if (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2); then
        return 0
      fi
    done
    [ $attempt = 1 ] && vm_apt_update
  done
  vm_die "$kver: cannot download linux-image-$kver from the archive (is $kver still served? 'apt-cache search linux-image-' lists what is)"
}

# Module subtrees that reach the initramfs: networking, 9p, virtio and the
# crypto/lib helpers they depend on. Sound, GPU, media, storage and the like
# would only make it larger and slower to unpack under emulation.
KEEP_DIRS=(kernel/arch kernel/crypto kernel/lib kernel/net kernel/fs/9p kernel/fs/netfs
  kernel/fs/fscache kernel/drivers/net kernel/drivers/virtio)
DROP_DIRS=(kernel/net/wireless kernel/net/mac80211 kernel/net/bluetooth
  kernel/drivers/net/wireless kernel/drivers/net/ethernet kernel/drivers/net/usb
  kernel/drivers/net/can kernel/drivers/net/wwan kernel/drivers/net/ieee802154
  kernel/drivers/net/hamradio)

# build_modules SRC DEST KVER: copies the kept subtrees of SRC (a package's
# lib/modules/KVER) into DEST/lib/modules/KVER, decompresses the modules
# (busybox's modprobe is not guaranteed to read .ko.xz/.ko.zst) and runs
# depmod there (the package ships no modules.dep).
build_modules() {
  local src=$1 dest=$2 kver=$3 d
  local out=$dest/lib/modules/$kver
  mkdir -p "$out"
  local dirs=()
  for d in "${KEEP_DIRS[@]}"; do [ -d "$src/$d" ] && dirs+=("$d"); done
  local prune=()
  for d in "${DROP_DIRS[@]}"; do prune+=(-path "$d" -prune -o); done
  (cd "$src" && find "${dirs[@]}" "${prune[@]}" -name '*.ko*' -print0 |
    cpio --null -pdm --quiet "$out")
  for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$src/$f" ] && cp "$src/$f" "$out/"
  done
  find "$out" -name '*.ko.xz' -exec xz -d -q {} +
  find "$out" -name '*.ko.zst' -exec zstd -d -q --rm {} +
  find "$out" -name '*.ko.gz' -exec gzip -d -q {} +
  local depmod=depmod
  command -v depmod >/dev/null || depmod=/sbin/depmod
  "$depmod" -b "$dest" "$kver"
}

# module_list MODDIR: expands scripts/vm/modules against the kernel's
# modules (names with "-" and "_" alike, as modprobe treats them), in order,
# without duplicates; notes what the kernel has built in or lacks.
module_list() {
  local moddir=$1 kver=$2
  local -A have=() builtin=() taken=()
  local n order=()
  while read -r n; do
    n=${n%%:*}
    n=${n##*/}
    n=${n%.ko}
    n=${n//-/_}
    have[$n]=1
  done <"$moddir/modules.dep"
  if [ -f "$moddir/modules.builtin" ]; then
    while read -r n; do
      n=${n##*/}
      n=${n%.ko}
      builtin[${n//-/_}]=1
    done <"$moddir/modules.builtin"
  fi
  local line pat matched m
  while read -r line; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    [ -n "$line" ] || continue
    if [ "${line:0:1}" = "!" ]; then
      pat=${line:1}
      local kept=()
      for m in "${order[@]}"; do
        # shellcheck disable=SC2053 # pat is a glob on purpose
        if [[ $m == $pat ]]; then unset "taken[$m]"; else kept+=("$m"); fi
      done
      order=("${kept[@]}")
      continue
    fi
    pat=${line//-/_}
    matched=0
    if [[ $pat == *[*?[]* ]]; then
      for m in $(printf '%s\n' "${!have[@]}" | sort); do
        # shellcheck disable=SC2053
        [[ $m == $pat ]] || continue
        matched=1
        [ -n "${taken[$m]:-}" ] && continue
        taken[$m]=1
        order+=("$m")
      done
    elif [ -n "${have[$pat]:-}" ]; then
      matched=1
      if [ -z "${taken[$pat]:-}" ]; then
        taken[$pat]=1
        order+=("$pat")
      fi
    elif [ -n "${builtin[$pat]:-}" ]; then
      matched=1
      vm_log "$kver: $pat is built in"
    fi
    [ $matched = 1 ] || vm_log "$kver: no module $line in this kernel; skipped"
  done <"$here/modules"
  printf '%s\n' "${order[@]}"
}

# build_initrd MODROOT KVER OUT: busybox (applets as relative symlinks, and
# /sbin/modprobe, the path the kernel's own module requests call), the
# modules, the module list and scripts/vm/init, packed as newc cpio + gzip.
build_initrd() {
  local modroot=$1 kver=$2 out=$3
  local root
  root=$(mktemp -d "$(dirname "$out")/.initrd.XXXXXX")
  mkdir -p "$root"/{bin,sbin,etc,dev,proc,sys,tmp,lib}
  cp /bin/busybox "$root/bin/busybox"
  local a
  for a in $("$root/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
  done
  ln -sf ../bin/busybox "$root/sbin/modprobe"
  # The kernel opens /dev/console for PID 1 before /init mounts devtmpfs.
  [ "$(id -u)" = 0 ] && mknod -m 600 "$root/dev/console" c 5 1
  cp -a "$modroot/lib/modules" "$root/lib/"
  module_list "$root/lib/modules/$kver" "$kver" >"$root/etc/vm-modules"
  install -m 755 "$here/init" "$root/init"
  (cd "$root" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$out"
  rm -rf "$root"
}

prepare_kernel() {
  local kver=$1
  local dir=$VM_CACHE/$kver stamp
  stamp=$(stamp_of "$kver")
  if [ -f "$dir/vmlinuz" ] && [ -f "$dir/initrd.gz" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then
    vm_log "$kver: cached in $dir"
    return
  fi
  mkdir -p "$dir"
  # Two runs preparing the same kernel (two make invocations) take turns.
  exec 9>"$dir/.lock"
  flock 9
  if [ -f "$dir/vmlinuz" ] && [ -f "$dir/initrd.gz" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then
    exec 9>&-
    return
  fi
  local t0=$SECONDS
  rm -rf "$dir"/.build.* "$dir"/.initrd.*
  local tmp
  tmp=$(mktemp -d "$dir/.build.XXXXXX")
  local deb
  deb=$(find "$dir" -maxdepth 1 -name "linux-image-${kver}*_amd64.deb" | head -n1)
  if [ -z "$deb" ]; then
    download "$kver" "$tmp"
    deb=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n1)
    [ -n "$deb" ] || vm_die "$kver: apt-get download left no .deb"
    mv "$deb" "$dir/"
    deb=$dir/$(basename "$deb")
  fi
  vm_log "$kver: unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$tmp/pkg"
  # bookworm's packages ship /lib/modules, later ones /usr/lib/modules.
  local src=$tmp/pkg/lib/modules/$kver
  [ -d "$src" ] || src=$tmp/pkg/usr/lib/modules/$kver
  [ -d "$src" ] || vm_die "$kver: no modules in $(basename "$deb")"
  [ -f "$tmp/pkg/boot/vmlinuz-$kver" ] || vm_die "$kver: no /boot/vmlinuz-$kver in $(basename "$deb")"
  build_modules "$src" "$tmp/modules" "$kver"
  vm_log "$kver: building the initramfs"
  build_initrd "$tmp/modules" "$kver" "$tmp/initrd.gz"
  # Swap the new build in only once all of it is there.
  rm -rf "$dir/modules" "$dir/stamp"
  mv "$tmp/pkg/boot/vmlinuz-$kver" "$dir/vmlinuz"
  mv "$tmp/modules" "$dir/modules"
  mv "$tmp/initrd.gz" "$dir/initrd.gz"
  echo "$stamp" >"$dir/stamp"
  rm -rf "$tmp"
  vm_log "$kver: ready in $((SECONDS - t0))s ($(du -h "$dir/initrd.gz" | cut -f1) initramfs)"
  exec 9>&-
}

install_host_packages
for spec in "$@"; do
  kver=$(vm_resolve_kernel "$spec")
  prepare_kernel "$kver"
  echo "$kver"
done
