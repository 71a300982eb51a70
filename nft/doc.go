// Package nft is svcplane's nftables backend: it programs a node's service
// load balancing as one nftables table, over netlink, with no nft binary.
//
// # Usage
//
//	dp, err := nft.New(nft.Config{Node: node, NetNS: "/run/netns/node-a"})
//	if err != nil { ... }
//	defer dp.Close()
//	err = dp.Sync(ctx, state) // as often as the State changes
//
// Every Sync sends one atomic netlink batch: the kernel takes all of it or
// none of it, and traffic keeps flowing on the previous rules when a Sync
// fails. Plan shows, as nft commands, what a Sync would change.
//
// # What it programs
//
// Cluster IPs, NodePorts (on every local non-loopback address, or on
// Node.NodePortAddrs), external IPs and load-balancer IPs, for TCP, UDP and
// SCTP, over IPv4 and IPv6; loadBalancerSourceRanges; externalTrafficPolicy
// and internalTrafficPolicy Local, terminating-endpoint fallback and
// topology hints (through dataplane.Categorize); ClientIP affinity with its
// timeout; rejects for services without endpoints and for ports a cluster
// IP does not define; masquerading of traffic from outside the node's pod
// CIDRs (or of all of it, with Node.MasqueradeAll) and of hairpin traffic.
// After a Sync that removes UDP endpoints or gives a UDP service its first,
// it deletes the conntrack entries that would keep datagrams on the old
// path.
//
// # Ruleset shape
//
// The table (inet family, "svcplane" by default) has a fixed, small set of
// chains and rules; everything per service lives in set and map elements,
// so a change to one service costs a handful of element writes however
// many services exist, and a Sync of an unchanged State writes nothing.
//
//   - service-ips-v4 / -v6 holds the cluster-IP frontends (address .
//     protocol . port) that have endpoints; external-cluster and
//     external-local hold external and load-balancer IP frontends by
//     traffic policy, nodeports-cluster and nodeports-local the NodePorts
//     (protocol . port). Each element's comment names the service port
//     (namespace/name:port).
//   - endpoints-v4 / -v6 maps (frontend . slot) to an endpoint (address .
//     port); local-endpoints, nodeport-endpoints and nodeport-local-endpoints
//     do the same for the other paths. A frontend has one slot per
//     endpoint, numbered from 0; a frontend with slot 0 is sent to the
//     map's pick chain (pick-endpoints-v4 and so on), whose rule n matches
//     a frontend without a slot n and DNATs to slot "numgen random mod n".
//     So a service costs one element per endpoint, new connections are
//     spread evenly, and a change of one endpoint rewrites one or two
//     slots. A frontend with ClientIP affinity always has 64 slots, shared
//     evenly (to within one) and moved as little as possible when
//     endpoints change, since its clients are remembered by slot. A
//     frontend with more than 64 endpoints sends traffic to 64 of them
//     only (the ipvs backend has no such limit).
//   - cluster-ips, no-endpoints, no-local-endpoints and
//     no-endpoint-nodeports decide rejects and drops after DNAT: what is
//     still addressed to a frontend found no endpoint.
//   - firewall and firewall-allow (a concatenated interval set) hold
//     load-balancer source ranges, checked before DNAT.
//   - hairpin-v4 / -v6 holds (endpoint . endpoint) pairs, so that an
//     endpoint reaching itself through its service is masqueraded.
//   - ClientIP affinity adds, per distinct timeout, two chains and a
//     dynamic set per family (see the comment in affinity.go); services
//     reach them through the affinity-frontends and affinity-nodeports
//     verdict maps.
//
// List it with `nft list table inet svcplane`. Every rule is written so
// that nft 1.0.6 (Debian 12) and later can print it.
//
// # Restarts and other programs
//
// A new Dataplane adopts a table its predecessor left when the table's
// rules are exactly the ones it would write: its first Sync reads the
// elements once and sends only differences, so open connections and
// slot assignments are undisturbed. A table written for another
// configuration is rebuilt in one batch. Each Sync reads the nftables
// generation and, when another program has committed since, checks that
// the table's chains, rules and sets are intact, rebuilding it if not.
// The Dataplane touches no other table.
package nft
