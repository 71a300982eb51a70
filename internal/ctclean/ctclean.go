// Package ctclean deletes stale UDP conntrack entries over netlink.
//
// UDP has no connection teardown, so a client that keeps sending from one
// source port keeps its conntrack entry, and the NAT decision in it, for as
// long as it sends. When a service's endpoint goes away, or a service that
// had none (whose datagrams were never DNATed) gets its first, the entries
// must go for the next datagram to take the new path. Both backends use
// this after a Sync.
package ctclean

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Flow selects UDP conntrack entries by their original destination and,
// optionally, the endpoint they were DNATed to.
type Flow struct {
	// IPv6 selects the family of the entries.
	IPv6 bool
	// Addr is the original destination address; invalid means any (a
	// NodePort on any local address).
	Addr netip.Addr
	// Port is the original destination port.
	Port uint16
	// Endpoint is the address replies come from (the DNAT target);
	// invalid means any, including entries that were never DNATed.
	Endpoint netip.Addr
}

// Delete deletes the UDP entries matching any of flows in the namespace
// behind nsFd (-1: the caller's), with one conntrack dump per family. A
// dump interrupted by concurrent changes is retried; entries that vanish
// meanwhile are not an error.
func Delete(nsFd int, flows []Flow) error {
	if len(flows) == 0 {
		return nil
	}
	var h *netlink.Handle
	var err error
	if nsFd >= 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(nsFd), unix.NETLINK_NETFILTER)
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
			f.AddPort(netlink.ConntrackOrigDstPort, fl.Port),
		); err != nil {
			return err
		}
		if fl.Addr.IsValid() {
			if err := f.AddIP(netlink.ConntrackOrigDstIP, net.IP(fl.Addr.AsSlice())); err != nil {
				return err
			}
		}
		if fl.Endpoint.IsValid() {
			if err := f.AddIP(netlink.ConntrackReplySrcIP, net.IP(fl.Endpoint.AsSlice())); err != nil {
				return err
			}
		}
		i := 0
		if fl.IPv6 {
			i = 1
		}
		filters[i] = append(filters[i], f)
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
