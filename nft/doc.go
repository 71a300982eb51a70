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
// Every Sync sends one atomic netlink batch: the kernel either takes all of
// it or none of it, and traffic keeps flowing on the previous rules when a
// Sync fails.
//
// # Ruleset shape
//
// The table (inet family, "svcplane" by default) has a fixed, small set of
// chains and rules; everything per service lives in map elements, so a
// change to one service costs a handful of element writes however many
// services exist:
//
//   - service-ips-v4 / -v6 holds every frontend (address . protocol .
//     port) that has endpoints. Each element's comment names the service
//     port (namespace/name:port).
//   - endpoints-v4 / -v6 maps (frontend . bucket) to an endpoint (address .
//     port). Every frontend has 64 buckets; a packet picks one with numgen
//     random mod 64 and is DNATed to that bucket's endpoint. Each endpoint
//     owns an equal share of the buckets (to within one), and a change of
//     one endpoint rewrites only the buckets that change hands.
//   - cluster-ips-v4 / -v6 holds every cluster IP: a new connection still
//     addressed to one after DNAT matched no service (no endpoints, or a port
//     the service does not define) and is rejected.
//   - hairpin-v4 / -v6 holds (endpoint . endpoint) pairs, so that an
//     endpoint reaching itself through its service is masqueraded and its
//     replies come back through the node.
//
// Traffic to a service from a source outside Node.LocalPodCIDRs (or all
// traffic, with Node.MasqueradeAll) gets a packet mark and is masqueraded
// on the way out.
//
// List it with `nft list table inet svcplane`.
package nft
