package topo

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/netnsutil"
)

// Host is one network namespace of the topology: a node, a pod or the
// external client.
type Host struct {
	// Name is "node-a", "node-b", "client", or the pod's name. Echo
	// servers greet with it.
	Name string
	// NS is the host's network namespace. Backends program a node through
	// NS.Path() or NS.Fd(); it stays owned by the Topology.
	NS *netnsutil.NS
	// IPv4 and IPv6 are the host's node-network addresses (nodes, client)
	// or its pod addresses (pods).
	IPv4, IPv6 netip.Addr

	nlMu sync.Mutex // serialises requests on nl
	nl   *netlink.Handle
	srv  servers
}

// init names h and gives it a new namespace with a netlink handle bound
// to it, the common sysctls and lo up. On error h is left closed.
func (h *Host) init(name string) error {
	h.Name = name
	ns, err := netnsutil.New()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	h.NS = ns
	err = ns.Do(func() error {
		// Created on the namespace's thread, the handle's socket stays
		// in the namespace.
		nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink handle: %w", err)
		}
		h.nl = nl
		err = setSysctls(
			"net.ipv6.conf.all.accept_dad", "0",
			"net.ipv6.conf.default.accept_dad", "0",
			"net.ipv4.conf.all.accept_redirects", "0",
			"net.ipv4.conf.default.accept_redirects", "0",
			"net.ipv6.conf.all.accept_redirects", "0",
			"net.ipv6.conf.default.accept_redirects", "0",
			"net.ipv4.icmp_ratelimit", "0",
			"net.ipv6.icmp.ratelimit", "0",
			"net.ipv4.tcp_tw_reuse", "1",
		)
		// The global ICMP limit became per namespace in Linux 6.x; on
		// older kernels it is the root namespace's, which stays as is.
		// SCTP retransmits a lost INIT after rto_initial (3 s by
		// default), longer than a request waits; TCP retries a SYN after
		// 1 s. Match TCP, so one lost packet (slow under emulation) does
		// not fail a request. Absent where the kernel has no SCTP.
		return errors.Join(err, setOptionalSysctls(
			"net.ipv4.icmp_msgs_per_sec", "1000000",
			"net.ipv4.icmp_msgs_burst", "1000000",
			"net.sctp.rto_min", "200",
			"net.sctp.rto_initial", "1000",
		))
	})
	if err == nil {
		var lo netlink.Link
		if lo, err = h.nl.LinkByName("lo"); err == nil {
			err = h.nl.LinkSetUp(lo)
		}
	}
	if err != nil {
		return errors.Join(fmt.Errorf("%s: %w", name, err), h.close())
	}
	return nil
}

// Do runs fn with its thread in the host's namespace (see
// netnsutil.NS.Do): sockets fn creates belong to the host.
func (h *Host) Do(fn func() error) error { return h.NS.Do(fn) }

// AddAddress adds p's address to the host's eth0 (for example a second
// client address for source-range tests, or a second node address for
// NodePort address tests). Use a /32 or /128 for an extra address on the
// node network so that no route changes. It is removed with the host.
func (h *Host) AddAddress(p netip.Prefix) error {
	h.nlMu.Lock()
	defer h.nlMu.Unlock()
	if h.nl == nil {
		return fmt.Errorf("%s: closed", h.Name)
	}
	eth, err := h.nl.LinkByName(hostIf)
	if err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	if err := addAddr(h.nl, eth, p); err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	return nil
}

func (h *Host) addRoutes(routes ...netlink.Route) error {
	h.nlMu.Lock()
	defer h.nlMu.Unlock()
	for _, r := range routes {
		if err := h.nl.RouteAdd(&r); err != nil {
			return fmt.Errorf("%s: add route %s: %w", h.Name, r, err)
		}
	}
	return nil
}

func (h *Host) replaceRoutes(routes ...netlink.Route) error {
	h.nlMu.Lock()
	defer h.nlMu.Unlock()
	if h.nl == nil {
		return fmt.Errorf("%s: closed", h.Name)
	}
	for _, r := range routes {
		if err := h.nl.RouteReplace(&r); err != nil {
			return fmt.Errorf("%s: replace route %s: %w", h.Name, r, err)
		}
	}
	return nil
}

// waitLinkReady waits until the kernel's link watcher has processed the
// carrier of the host's link name: its operational state is up and it has
// its real qdisc instead of noop (which drops everything). Packets sent
// before that are lost (an ARP request, and with it the first packet to a
// new pod, for a whole second), and a bridge port is not yet forwarding.
// Carrier changes of a veth are applied asynchronously by linkwatch, so
// wiring returns only after this.
func (h *Host) waitLinkReady(name string) error {
	h.nlMu.Lock()
	defer h.nlMu.Unlock()
	deadline := time.Now().Add(linkReadyTimeout)
	for {
		link, err := h.nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		state := link.Attrs().OperState
		qdisc := "none"
		if state == netlink.OperUp {
			qs, err := h.nl.QdiscList(link)
			if err != nil {
				return fmt.Errorf("%s: list qdiscs of %s: %w", h.Name, name, err)
			}
			if len(qs) > 0 {
				qdisc = qs[0].Type()
			}
			if qdisc != "none" && qdisc != "noop" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: link %s not ready after %v (operstate %s, qdisc %s)", h.Name, name, linkReadyTimeout, state, qdisc)
		}
		time.Sleep(time.Millisecond)
	}
}

const linkReadyTimeout = 5 * time.Second

// close stops the host's servers and closes its netlink handle and
// namespace.
func (h *Host) close() error {
	h.srv.close()
	h.nlMu.Lock()
	if h.nl != nil {
		h.nl.Close()
		h.nl = nil
	}
	h.nlMu.Unlock()
	if h.NS == nil {
		return nil
	}
	return h.NS.Close()
}

// Node is node-a or node-b: a host on the node network that routes for its
// pods. The backend under test programs its namespace.
type Node struct {
	Host
	// Index is 1 for node-a and 2 for node-b; it is the N in the pod
	// CIDRs.
	Index int
	// Zone is reported by NodeModel; empty unless a test sets it.
	Zone string
	// PodCIDRv4 and PodCIDRv6 are 198.18.N.0/24 and 2001:db8:N::/64.
	PodCIDRv4, PodCIDRv6 netip.Prefix
	// Pods are the node's pods in the order they were added, without the
	// removed ones. Read it while no AddPod or RemovePod runs.
	Pods []*Pod

	nextPod int // last address octet of the next pod
}

// NodeModel returns the node as the dataplane model describes it: its
// Name, Zone, and both pod CIDRs as LocalPodCIDRs.
func (n *Node) NodeModel() dataplane.Node {
	return dataplane.Node{
		Name:          n.Name,
		Zone:          n.Zone,
		LocalPodCIDRs: []netip.Prefix{n.PodCIDRv4, n.PodCIDRv6},
	}
}

// Pod is a pod: a host behind one node, with echo servers on its ports.
type Pod struct {
	Host
	// Node is the node the pod runs on.
	Node *Node
	// Ports are the ports its echo servers listen on.
	Ports []uint16
	// VethName is the node-side name of the pod's veth.
	VethName string
}
