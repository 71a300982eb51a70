// Package ipvs is svcplane's IPVS backend: it programs a node's service
// load balancing as IPVS virtual and real servers, over netlink, with no
// ipvsadm, iptables or ipset beside it.
//
// # Usage
//
//	dp, err := ipvs.New(ipvs.Config{Node: node, NetNS: "/run/netns/node-a"})
//	if errors.Is(err, dataplane.ErrUnsupported) { ... } // no IPVS in this kernel
//	defer dp.Close()
//	err = dp.Sync(ctx, state)
//
// # What it programs
//
//   - A dummy device (svcplane-ipvs by default) holding every cluster,
//     external and load-balancer IP as a local address, so that traffic to
//     them reaches IPVS.
//   - A virtual server per cluster, external and load-balancer IP and
//     port, and per node address and NodePort (every address of the
//     namespace except loopback and the dummy device, or those in
//     Node.NodePortAddrs), with a real server per usable endpoint in
//     masquerading (NAT) mode. The scheduler is configurable (rr by
//     default). ClientIP affinity is IPVS persistence with the service's
//     timeout.
//   - An nftables table (inet svcplane-ipvs) for what IPVS does not do:
//     marking and masquerading traffic from outside the node's pod CIDRs
//     and hairpin traffic, and rejecting traffic to a service IP on a port
//     no service defines (which would otherwise reach the node's own
//     sockets, since the IPs are local).
//   - A terminating endpoint that still serves, while ready ones exist,
//     keeps a real server of weight 0: no new connections or flows go
//     to it, those it has go on. A TCP real server whose endpoint leaves
//     the service drains as in kube-proxy's IPVS mode: weight 0, and a
//     later Sync deletes it once IPVS counts no connection to it
//     (TIME_WAIT ones included). UDP and SCTP real servers of endpoints
//     that leave are deleted at once (kept, they would go on taking the
//     flows IPVS already sends them, to an endpoint that is gone), and
//     their UDP conntrack entries are deleted; their flows move to
//     another endpoint (vs/expire_nodest_conn). Moving costs a flow
//     what it costs in kube-proxy's IPVS mode: IPVS forgets the
//     connections of a deleted real server a tick later (8-17 ms in
//     the 6.1 VM), so the answer to a datagram that was on its way to
//     the endpoint comes back untranslated and is lost, and a datagram
//     that arrives in between, while the flow's conntrack entry is
//     still there, is dropped. To IPVS a flow is the client's address
//     and port: a client that sends from a port it used within IPVS's
//     UDP timeout (5 minutes by default; Config.UDPTimeout) continues
//     the old flow. New flows go to ready endpoints only, while there
//     are any.
//   - The per-namespace IPVS sysctls kube-proxy sets: vs/conntrack (so
//     netfilter sees IPVS connections and can masquerade them),
//     vs/expire_nodest_conn and vs/expire_quiescent_template.
//
// Every call speaks netlink (internal/ipvsnl, vishvananda/netlink,
// google/nftables) or writes /proc/sys of the target namespace; nothing is
// executed. On a kernel without IPVS, New returns an error wrapping
// dataplane.ErrUnsupported.
//
// # Where IPVS differs from the nft backend
//
// The conformance suite checks these by name (conformance.Profile):
//
//   - Where a Local traffic policy leaves a node without endpoints, the
//     virtual server has no real servers and IPVS answers ICMP port
//     unreachable: clients are rejected at once, where nft drops them.
//     kube-proxy's IPVS mode behaves the same.
//   - ClientIP affinity is IPVS persistence: a client's persistence
//     template lives until the timeout has passed and every connection it
//     placed has expired. Closed TCP connections stay in IPVS's TIME_WAIT
//     for 2 minutes; Config.TCPFinTimeout and UDPTimeout bound the rest.
//
// # Restarts and other programs
//
// The first Sync of a new Dataplane reads IPVS once (the services on its
// device's addresses, those it is about to program, and those on node
// addresses at the NodePorts its table records) and adopts its nftables
// table when the table's fingerprint matches, so a restart writes
// nothing that is already right and leaves nothing of its predecessor's
// behind. Each Sync dumps IPVS's services once, lists the device's
// addresses and reads the nftables generation (and, when another
// program committed, its table's chains, rules and elements): whatever
// was changed behind its back is restored. The device and its addresses
// are the Dataplane's: addresses it did not put there are removed. A
// virtual server another program made at a frontend the State programs
// is taken over, as the Service owns that address and port; others'
// virtual servers are left alone.
//
// A Sync reads everything before it writes anything and checks its
// context once more in between: cancelled until then, it changes
// nothing. Once it writes it finishes, since IPVS has no transactions:
// one request per virtual or real server, so a process killed inside a
// Sync can leave some changed and others not, until the next Sync.
package ipvs
