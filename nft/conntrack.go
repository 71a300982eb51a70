package nft

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
)

// staleFlow describes UDP conntrack entries that would keep datagrams on
// an old path after a Sync: entries to frontend, and, when endpoint is
// valid, only those DNATed to that endpoint.
//
// UDP has no connection teardown, so a client that keeps sending from one
// source port keeps its conntrack entry (and its NAT decision) for as long
// as it sends. When its endpoint goes away, or a service without endpoints
// (whose datagrams were never DNATed) gets its first, the entry must go for
// the next datagram to take the new path. TCP needs nothing: its
// connections end, or fail, on their own.
type staleFlow struct {
	frontend netip.AddrPort
	endpoint netip.Addr // invalid: every entry to frontend
}

// staleFlows returns the UDP conntrack entries that a change of p from old
// (nil: new port) to groups makes stale. A removed port passes nil groups.
func staleFlows(old *svcState, p *dataplane.ServicePort, groups []*group) []staleFlow {
	if p.Protocol != dataplane.UDP {
		return nil
	}
	var out []staleFlow
	for _, cip := range p.ClusterIPs {
		f := famOf(cip)
		front := netip.AddrPortFrom(cip, p.Port)
		var prev, next *group
		if old != nil {
			prev = findGroup(old.groups, f)
		}
		next = findGroup(groups, f)
		switch {
		case prev == nil || len(prev.eps) == 0:
			// A new port, or one that had no endpoints: entries to it
			// were never DNATed; once it has endpoints they must go.
			if next != nil && len(next.eps) > 0 {
				out = append(out, staleFlow{frontend: front})
			}
		default:
			for _, ep := range prev.eps {
				if next == nil || !containsEndpoint(next.eps, ep) {
					out = append(out, staleFlow{frontend: front, endpoint: ep.Addr()})
				}
			}
		}
	}
	return out
}

func findGroup(gs []*group, f int) *group {
	for _, g := range gs {
		if g.fam == f {
			return g
		}
	}
	return nil
}

func containsEndpoint(eps []netip.AddrPort, ep netip.AddrPort) bool {
	for _, e := range eps {
		if e == ep {
			return true
		}
	}
	return false
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
			f.AddIP(netlink.ConntrackOrigDstIP, net.IP(fl.frontend.Addr().AsSlice())),
			f.AddPort(netlink.ConntrackOrigDstPort, fl.frontend.Port()),
		); err != nil {
			return err
		}
		if fl.endpoint.IsValid() {
			if err := f.AddIP(netlink.ConntrackReplySrcIP, net.IP(fl.endpoint.AsSlice())); err != nil {
				return err
			}
		}
		fam := famOf(fl.frontend.Addr())
		filters[fam] = append(filters[fam], f)
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
