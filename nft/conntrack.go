package nft

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
)

// staleFlow describes UDP conntrack entries that would keep datagrams on
// an old path after a Sync: entries to a frontend (an address and port, or
// for a NodePort any local address and the port), and, when endpoint is
// valid, only those DNATed to that endpoint.
//
// UDP has no connection teardown, so a client that keeps sending from one
// source port keeps its conntrack entry (and its NAT decision) for as long
// as it sends. When its endpoint goes away, or a service without endpoints
// (whose datagrams were never DNATed) gets its first, the entry must go for
// the next datagram to take the new path. TCP needs nothing: its
// connections end, or fail, on their own.
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

// clearConntrack deletes the stale UDP entries, in one conntrack dump per
// family. Entries that vanish meanwhile are not an error.
func (d *Dataplane) clearConntrack(flows []staleFlow) error {
	if len(flows) == 0 {
		return nil
	}
	var h *netlink.Handle
	var err error
	if d.nsFd >= 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(d.nsFd), unix.NETLINK_NETFILTER)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
	}
	if err != nil {
		return fmt.Errorf("open conntrack netlink: %w", err)
	}
	defer h.Delete()
	var filters [2][]netlink.CustomConntrackFilter
	for _, fl := range flows {
		f := &netlink.ConntrackFilter{}
		if err := errors.Join(
			f.AddProtocol(unix.IPPROTO_UDP),
			f.AddPort(netlink.ConntrackOrigDstPort, fl.port),
		); err != nil {
			return err
		}
		if fl.addr.IsValid() {
			if err := f.AddIP(netlink.ConntrackOrigDstIP, net.IP(fl.addr.AsSlice())); err != nil {
				return err
			}
		}
		if fl.endpoint.IsValid() {
			if err := f.AddIP(netlink.ConntrackReplySrcIP, net.IP(fl.endpoint.AsSlice())); err != nil {
				return err
			}
		}
		filters[fl.fam] = append(filters[fl.fam], f)
	}
	families := [2]netlink.InetFamily{unix.AF_INET, unix.AF_INET6}
	for fam, fs := range filters {
		if len(fs) == 0 {
			continue
		}
		var err error
		for try := 0; try < 3; try++ {
			if _, err = h.ConntrackDeleteFilters(netlink.ConntrackTable, families[fam], fs...); !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("delete stale UDP conntrack entries: %w", err)
		}
	}
	return nil
}
