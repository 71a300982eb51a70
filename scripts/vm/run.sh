#!/usr/bin/env bash
# run.sh --kernel KERNEL [options] -- COMMAND [ARG...]
#
# Boots a Debian kernel in QEMU (software emulation) with the host's root
# mounted read-only, runs COMMAND inside as root, streams the guest console
# (the command's output) to stdout and exits with COMMAND's exit code.
#
#   --kernel K     6.1, 6.12 (newest of the series) or a full version
#   --cwd DIR      working directory in the guest (default: the current one);
#                  a test binary wants its package directory, as go test does
#   --timeout S    kill the VM after S seconds (default 1800) and exit 124
#   --share DIR    writable directory shared with the guest at the same path
#                  (default: a fresh temporary one, removed afterwards).
#                  Files under the host's /tmp, /run or /var/tmp are hidden in
#                  the guest (tmpfs there) unless they are in the share.
#   --env K=V      set K in the command's environment (repeatable)
#   --expose DIR   make host directory DIR, under /tmp, /run or /var/tmp,
#                  visible read-only in the guest (repeatable); done on its
#                  own for --cwd
#
# Exit codes besides COMMAND's: 124 timeout, 125 the guest wrote no exit
# code (it failed to boot or panicked: the console above says why).
# The kernel and initramfs come from prepare.sh (cached after the first run).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$here/common.sh"

usage() { vm_die "usage: $0 --kernel K [--cwd DIR] [--timeout S] [--share DIR] [--env K=V]... [--expose DIR]... -- COMMAND [ARG...]"; }

kernel='' cwd=$PWD timeout=1800 share='' envs=() expose=()
while [ $# -gt 0 ]; do
  case $1 in
  --kernel) kernel=${2:?}; shift 2 ;;
  --cwd) cwd=${2:?}; shift 2 ;;
  --timeout) timeout=${2:?}; shift 2 ;;
  --share) share=${2:?}; shift 2 ;;
  --env) envs+=("${2:?}"); shift 2 ;;
  --expose) expose+=("$(realpath "${2:?}")"); shift 2 ;;
  --) shift; break ;;
  *) usage ;;
  esac
done
if [ -z "$kernel" ] || [ $# -eq 0 ]; then usage; fi

kver=$("$here/prepare.sh" "$kernel")
dir=$VM_CACHE/$kver

own_share=''
if [ -z "$share" ]; then
  share=$(mktemp -d "${TMPDIR:-/tmp}/svcplane-vm.XXXXXX")
  own_share=1
fi
share=$(cd "$share" && pwd -P)
case $share in
*[[:space:]]*) vm_die "the share's path may not contain spaces (it goes on the kernel command line): $share" ;;
esac
# shellcheck disable=SC2317 # run by the trap
cleanup() { [ -z "$own_share" ] || rm -rf "$share"; }
trap cleanup EXIT
trap 'exit 130' INT # so that EXIT runs on Ctrl-C too
trap 'exit 143' TERM

# A command under the host's /tmp, /run or /var/tmp would be hidden behind
# the guest's tmpfs there: copy it into the share, which the guest sees.
cmd=("$@")
if [ -f "${cmd[0]}" ]; then
  bin=$(realpath "${cmd[0]}")
  case $bin in
  "$share"/*) ;;
  /tmp/* | /run/* | /var/tmp/*)
    cp "$bin" "$share/"
    cmd[0]=$share/$(basename "$bin")
    ;;
  *) cmd[0]=$bin ;;
  esac
fi

# The guest mounts tmpfs over /tmp, /run and /var/tmp; a working directory
# there (a clone under /tmp) is passed as its own read-only 9p share.
cwd=$(realpath "$cwd")
case $cwd in
/tmp/* | /run/* | /var/tmp/*) [[ $cwd == "$share" || $cwd == "$share"/* ]] || expose+=("$cwd") ;;
esac
virtfs_expose=() expose_list=
for i in "${!expose[@]}"; do
  p=${expose[$i]}
  case $p in
  *[[:space:],]*) vm_die "--expose: the path may not contain spaces or commas: $p" ;;
  esac
  virtfs_expose+=(-virtfs "local,path=$p,mount_tag=expose$i,security_model=passthrough,readonly=on,multidevs=remap")
  expose_list+=${expose_list:+,}$p
done

# The command reaches the guest as a script in the share (quoting survives;
# the kernel command line would not keep it). Single quotes work in any sh.
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
  echo "# written by scripts/vm/run.sh; run by the guest's /init"
  echo "cd $(q "$cwd") || exit 125"
  for e in "${envs[@]}"; do echo "export $(q "$e")"; done
  printf 'exec'
  for a in "${cmd[@]}"; do printf ' %s' "$(q "$a")"; done
  echo
} >"$share/cmd.sh"
rm -f "$share/exit-code"

# As VM.md: TCG, because nested KVM hangs on this kind of machine; the two
# 9p shares; no NIC (the tests build their own networks in namespaces);
# multidevs=remap because the exported root spans several host filesystems
# (without it QEMU warns and inode numbers may collide). Stdin is /dev/null:
# QEMU must not take over the terminal (nor the monitor's input). timeout
# runs in the foreground so that Ctrl-C, or CI ending the process group,
# reaches QEMU too instead of leaving it running. The console's CRLFs become
# LFs, and SeaBIOS's terminal resets and screen clears go (they would wipe
# the caller's screen).
t0=$SECONDS
set +e
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
  -accel tcg -cpu max -smp 2 -m 2048 -nographic -no-reboot -nic none \
  -kernel "$dir/vmlinuz" -initrd "$dir/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 no_timer_check svcplane.share=$share${expose_list:+ svcplane.expose=$expose_list}" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap \
  -virtfs "local,path=$share,mount_tag=results,security_model=none" \
  "${virtfs_expose[@]}" \
  </dev/null | sed -u -e 's/\r$//' -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g'
status=("${PIPESTATUS[@]}")
set -e
secs=$((SECONDS - t0))

if [ "${status[0]}" = 124 ] || [ "${status[0]}" = 137 ]; then
  vm_log "$kver: timed out after ${timeout}s; VM killed"
  exit 124
fi
if [ ! -f "$share/exit-code" ]; then
  vm_log "$kver: the guest wrote no exit code (qemu exit ${status[0]}, ${secs}s): it did not boot or did not finish; see the console above"
  exit 125
fi
rc=$(cat "$share/exit-code")
vm_log "$kver: command exited $rc after ${secs}s in the VM"
exit "$rc"
