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
//   - Endpoints that leave a service are removed from IPVS at once; their
//     open connections expire (vs/expire_nodest_conn) rather than drain.
//
// # Restarts and other programs
//
// The first Sync of a new Dataplane reads IPVS once (the services on its
// device's addresses and those it is about to program) and adopts its
// nftables table when the table's fingerprint matches, so a restart
// writes nothing that is already right. Each Sync dumps IPVS's services
// once and reads the nftables generation; whatever was removed behind its
// back is restored. NodePort virtual servers whose NodePort no longer
// exists in any State are removed only while the Dataplane that made them
// runs.
package ipvs
