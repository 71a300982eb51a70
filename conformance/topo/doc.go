// Package topo builds a throwaway two-node "cluster" out of network
// namespaces, for the conformance suite, the demo and benchmarks: a node
// network with two nodes and an external client, pods behind each node, and
// in-process echo servers that say which pod answered and which client
// address they saw.
//
// Everything lives in unnamed namespaces held by file descriptors: nothing
// is added to the root namespace (no links, routes, rules, sysctls, no
// /run/netns entries), and a killed test process leaves nothing behind.
// Building needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the veth and
// bridge link types. Everything is configured over netlink and /proc/sys;
// no program is executed.
//
// # Wiring
//
//	lan namespace: bridge br0, L2 only (no addresses, no netfilter)
//	  │ port "node-a"            │ port "node-b"            │ port "client"
//	node-a                     node-b                     client
//	eth0 192.0.2.1/24          eth0 192.0.2.2/24          eth0 192.0.2.100/24
//	     2001:db8::1/64             2001:db8::2/64             2001:db8::100/64
//	forwards                   forwards                   does not forward
//	198.18.2.0/24 via node-b   198.18.1.0/24 via node-a   pod CIDRs via their nodes
//	2001:db8:2::/64 via node-b 2001:db8:1::/64 via node-a 203.0.113.0/24,
//	default via client         default via client         2001:db8:beef::/64 via node-a
//	  │ veth-web-1               │ veth-web-3
//	  │ 198.18.1.1/32 fe80::1    │ 198.18.2.1/32 fe80::1
//	  │ route 198.18.1.10/32,    │ route 198.18.2.10/32,
//	  │ 2001:db8:1::a/128        │ 2001:db8:2::a/128
//	pod web-1                  pod web-3
//	eth0 198.18.1.10/32        eth0 198.18.2.10/32
//	     2001:db8:1::a/128          2001:db8:2::a/128
//	default via 198.18.1.1     default via 198.18.2.1
//	and fe80::1 dev eth0       and fe80::1 dev eth0
//
// Pods hang off their node on routed veths, with no bridge in the node (so
// no br_netfilter effects): the node side of every pod veth carries
// 198.18.N.1/32 and fe80::1/64 and a host route to the pod, and the pod
// routes everything to them. Hairpin traffic (pod → node → same pod) is
// plain routing.
//
// Pod k (counting from 0, never reused) on node N gets 198.18.N.(10+k)/32
// and 2001:db8:N::(10+k in hex)/128, so the first pod on node-a is
// 198.18.1.10 and 2001:db8:1::a. The node side of its veth is named
// "veth-<pod>" (or "vpod<10+k>" when that would exceed 15 characters).
//
// # Where unhandled traffic goes
//
// Each node's default route (both families) points at the client, and the
// client does not forward: its rule "iif eth0 lookup 100" sends everything
// it receives for someone else to a blackhole route in table 100. So a
// packet nobody handles, for example one from a pod to a service IP in
// 198.19.0.0/16 when nothing is programmed, vanishes silently and the
// sender times out ([IsTimeout]); it is never answered with "network
// unreachable". A deliberate reject (TCP reset, ICMP unreachable) is told at
// once ([IsRejected]). The client's own main table has no default route:
// its packets to addresses outside the node network, the pod CIDRs and the
// external range fail at once with ENETUNREACH.
//
// The rule matters for IPv6: a host that does not forward drops IPv4
// packets for others silently, but answers IPv6 ones it has no route for
// with ICMPv6 "no route", which the sender sees as a reject.
//
// # Ready when returned
//
// A veth's carrier change is applied by the kernel's link watcher
// asynchronously; until then the device drops what it is given (its qdisc
// is noop) and a bridge port does not forward. A request right after
// wiring would lose its first ARP request and wait a second for the retry.
// New and AddPod therefore return only when every new link is
// operationally up with its real qdisc.
//
// # Namespaces and sysctls
//
// In every namespace: lo is up, IPv6 DAD is off (addresses are also added
// with IFA_F_NODAD, so they work at once), ICMP rate limits are off (so
// repeated rejects are always answered), ICMP redirects are neither sent
// nor accepted, and tcp_tw_reuse is on (many short connections, fixed
// source ports). Nodes forward both families; the client does not.
//
// # Echo servers
//
// [Topology.AddPod] starts TCP and UDP (and SCTP, when the kernel has it)
// echo servers on each given port of the pod, for both families;
// [Host.ServeEcho] starts one on any host, such as a "host service" on a
// node. On a stream connection the server first writes
// "You've hit <name> from <client ip:port>\n" and then echoes every byte
// until the client half-closes; a UDP datagram is answered with the same
// line followed by the datagram's payload, sent from the address the
// datagram was sent to. [Host.Request] runs the client side and parses the
// answer into a [Reply].
package topo
