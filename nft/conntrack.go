package nft

import (
	"net/netip"
	"slices"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/ctclean"
)

// staleFlow describes UDP conntrack entries that would keep datagrams on
// an old path after a Sync (see internal/ctclean): entries to a frontend
// (an address and port, or for a NodePort any local address and the port),
// and, when endpoint is valid, only those DNATed to that endpoint. TCP
// needs nothing: its connections end, or fail, on their own.
type staleFlow struct {
	fam      int
	addr     netip.Addr // invalid: a NodePort, any destination address
	port     uint16
	endpoint netip.Addr // invalid: every entry to the frontend
}

// staleFlows returns the UDP conntrack entries that a change of p from old
// (nil: a new port) to groups makes stale. A removed port passes nil groups.
func staleFlows(old *svcState, p *dataplane.ServicePort, groups []*group) []staleFlow {
	if p.Protocol != dataplane.UDP {
		return nil
	}
	var out []staleFlow
	for _, cip := range p.ClusterIPs {
		f := famOf(cip)
		type frontend struct {
			addr netip.Addr
			port uint16
		}
		internal := []frontend{{cip, p.Port}}
		var external []frontend
		for _, a := range slices.Concat(p.ExternalIPs, p.LoadBalancerIPs) {
			if famOf(a) == f {
				external = append(external, frontend{a, p.Port})
			}
		}
		if p.NodePort != 0 {
			external = append(external, frontend{port: p.NodePort})
		}
		for _, side := range []struct {
			fronts []frontend
			roles  []role
		}{{internal, []role{roleInternal}}, {external, []role{roleCluster, roleLocal}}} {
			var prev, next []netip.AddrPort
			for _, r := range side.roles {
				if old != nil {
					if g := findGroup(old.groups, f, r); g != nil {
						prev = append(prev, g.eps...)
					}
				}
				if g := findGroup(groups, f, r); g != nil {
					next = append(next, g.eps...)
				}
			}
			for _, fr := range side.fronts {
				if len(prev) == 0 {
					// Entries to a port without endpoints were never
					// DNATed; once it has endpoints they must go.
					if len(next) > 0 {
						out = append(out, staleFlow{fam: f, addr: fr.addr, port: fr.port})
					}
					continue
				}
				for _, ep := range prev {
					if !slices.Contains(next, ep) {
						out = append(out, staleFlow{fam: f, addr: fr.addr, port: fr.port, endpoint: ep.Addr()})
					}
				}
			}
		}
	}
	return out
}

// clearConntrack deletes the stale UDP entries.
func (d *Dataplane) clearConntrack(flows []staleFlow) error {
	out := make([]ctclean.Flow, 0, len(flows))
	for _, fl := range flows {
		out = append(out, ctclean.Flow{IPv6: fl.fam == v6, Addr: fl.addr, Port: fl.port, Endpoint: fl.endpoint})
	}
	return ctclean.Delete(d.nsFd, out)
}
