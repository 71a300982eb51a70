#!/bin/sh
# guest-check.sh — runs inside the VM (run.sh ... -- scripts/vm/guest-check.sh)
# and checks that the guest offers what the tests need, each in a throwaway
# network namespace: IPVS, SCTP sockets, dummy and veth links, nftables
# with NAT, writable /run and /tmp. Fails on the first missing piece, naming
# it, so a broken VM is told apart from a failing test. make test-vm runs it
# before the test binaries of each kernel.
set -eu

ok() { echo "guest-check: ok   $*"; }
bad() {
  echo "guest-check: FAIL $*"
  exit 1
}

echo "guest-check: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"

[ "$(id -u)" = 0 ] || bad "not root"
touch /tmp/.w /run/.w || bad "/tmp or /run not writable"
rm -f /tmp/.w /run/.w
ok "root, /tmp and /run writable"

[ -e /proc/net/ip_vs ] || bad "IPVS: no /proc/net/ip_vs (ip_vs not loaded?)"
unshare -n cat /proc/net/ip_vs | grep -q 'IP Virtual Server' || bad "IPVS: no /proc/net/ip_vs in a new netns"
ok "IPVS: $(head -n1 /proc/net/ip_vs), also in a new netns"

[ -d /proc/net/sctp ] || bad "SCTP: no /proc/net/sctp (sctp not loaded?)"
if command -v python3 >/dev/null; then
  unshare -n python3 -c '
import socket
for fam in (socket.AF_INET, socket.AF_INET6):
    for typ in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        socket.socket(fam, typ, 132).close()' || bad "SCTP: cannot open SCTP sockets"
  ok "SCTP: sockets open (IPv4/IPv6, stream/seqpacket)"
else
  ok "SCTP: module loaded (no python3 on the host to open a socket)"
fi

unshare -n sh -c '
  ip link set lo up &&
  ip link add d0 type dummy && ip addr add 10.96.0.1/32 dev d0 && ip link set d0 up &&
  ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up &&
  ip link add br0 type bridge' || bad "links: dummy/veth/bridge in a netns"
ok "links: dummy, veth, bridge in a netns"

unshare -n sh -c '
  nft -f - <<EOF && nft list ruleset >/dev/null
table inet t {
  map m { type ipv4_addr . inet_proto . inet_service : verdict; }
  chain pre { type nat hook prerouting priority dstnat; ip daddr . meta l4proto . th dport vmap @m; }
  chain post { type nat hook postrouting priority srcnat; ct status dnat masquerade; }
  chain out { type filter hook output priority 0; numgen random mod 2 vmap { 0 : accept, 1 : accept }; }
  chain svc { meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.0.0.1 . 80, 1 : 10.0.0.2 . 80 }; }
  chain fw { type filter hook forward priority 0; ct state invalid drop; fib daddr type local accept; reject with icmpx type port-unreachable; }
}
EOF
' || bad "nftables: NAT/numgen/ct/fib/reject ruleset in a netns"
ok "nftables: NAT, numgen, ct, fib, reject ruleset in a netns"

command -v conntrack >/dev/null && unshare -n conntrack -L >/dev/null 2>&1 && ok "conntrack: netlink dump works"

modprobe -q ip_vs || bad "modprobe: the host's modprobe does not find the guest kernel's modules"
ok "modprobe: the guest kernel's modules are found (MODPROBE_OPTIONS=$MODPROBE_OPTIONS)"

# Informational: modules the kernel asks for on its own (request_module)
# come from the initramfs, not from the host's root; vxlan is not preloaded.
if unshare -n ip link add vx0 type vxlan id 1 dstport 4789 2>/dev/null; then
  ok "module autoload (vxlan) works"
else
  echo "guest-check: note module autoload did not load vxlan (everything the tests need is preloaded)"
fi
echo "guest-check: all good"
