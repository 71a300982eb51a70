package topo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/netnsutil"
)

// Addresses and names of the topology. See the package documentation for
// the picture.
var (
	// NodeNetV4 and NodeNetV6 are the node network.
	NodeNetV4 = netip.MustParsePrefix("192.0.2.0/24")
	NodeNetV6 = netip.MustParsePrefix("2001:db8::/64")
	// ExternalV4 and ExternalV6 hold external and load-balancer IPs; the
	// client routes them to one node (RouteExternalVia).
	ExternalV4 = netip.MustParsePrefix("203.0.113.0/24")
	ExternalV6 = netip.MustParsePrefix("2001:db8:beef::/64")
	// ServiceV4 and ServiceV6 are the service (cluster IP) CIDRs. Nothing
	// in the topology routes them: a node's backend must handle them.
	ServiceV4 = netip.MustParsePrefix("198.19.0.0/16")
	ServiceV6 = netip.MustParsePrefix("2001:db8:ffff::/112")
)

// ClientName is the Name of Topology.Client.
const ClientName = "client"

const (
	bridgeName = "br0"
	hostIf     = "eth0"
	// dropTable is the client's routing table for packets it receives
	// for someone else: a blackhole, so they vanish silently.
	dropTable    = 100
	dropRulePrio = 100
	firstPodHost = 10 // last octet of a node's first pod
)

var (
	clientV4 = netip.MustParseAddr("192.0.2.100")
	clientV6 = netip.MustParseAddr("2001:db8::100")
	// podGatewayV6 is on the node side of every pod veth, as is
	// 198.18.N.1.
	podGatewayV6 = netip.MustParseAddr("fe80::1")
)

// Options configures New. The zero value builds the standard topology;
// there are no options yet.
type Options struct{}

// Topology is a running throwaway cluster: the lan namespace with its
// bridge, two nodes, the external client, and the pods added since. Its
// methods are safe for concurrent use. Close it when done.
type Topology struct {
	// Nodes are node-a (Index 1) and node-b (Index 2).
	Nodes []*Node
	// Client is the external client on the node network.
	Client *Host

	lan  *Host
	sctp bool

	mu     sync.Mutex // guards pods, closed and the Pods slices of Nodes
	pods   map[string]*Pod
	closed bool
}

// New builds the lan namespace with bridge br0, node-a, node-b and the
// client, wired and addressed as the package documentation shows. It starts
// no pods and no servers. On error it tears down whatever it built. New
// needs root; it typically takes a few tens of milliseconds.
func New(ctx context.Context, opts Options) (*Topology, error) {
	t := &Topology{pods: map[string]*Pod{}}
	if err := t.build(ctx); err != nil {
		return nil, errors.Join(err, t.Close())
	}
	return t, nil
}

func (t *Topology) build(ctx context.Context) error {
	t.lan = &Host{}
	if err := t.lan.init("lan"); err != nil {
		return err
	}
	if err := t.lan.Do(func() error {
		// The bridge is a plain L2 switch: no IPv6 on its ports, no
		// netfilter on bridged frames.
		err := setSysctls(
			"net.ipv6.conf.all.disable_ipv6", "1",
			"net.ipv6.conf.default.disable_ipv6", "1",
		)
		// Present only when br_netfilter is loaded.
		return errors.Join(err, setOptionalSysctls(
			"net.bridge.bridge-nf-call-iptables", "0",
			"net.bridge.bridge-nf-call-ip6tables", "0",
			"net.bridge.bridge-nf-call-arptables", "0",
		))
	}); err != nil {
		return fmt.Errorf("lan: %w", err)
	}
	off := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}, MulticastSnooping: &off}
	if err := t.lan.nl.LinkAdd(br); err != nil {
		return fmt.Errorf("lan: add bridge %s: %w", bridgeName, err)
	}
	if err := t.lan.nl.LinkSetUp(br); err != nil {
		return fmt.Errorf("lan: set %s up: %w", bridgeName, err)
	}

	var err error
	if t.sctp, err = probeSCTP(t.lan.NS); err != nil {
		return err
	}

	for i, name := range []string{"node-a", "node-b"} {
		if err := ctx.Err(); err != nil {
			return err
		}
		idx := i + 1
		n := &Node{
			Index:     idx,
			PodCIDRv4: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(idx), 0}), 24),
			PodCIDRv6: netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(idx)}), 64),
			nextPod:   firstPodHost,
		}
		n.IPv4 = netip.AddrFrom4([4]byte{192, 0, 2, byte(idx)})
		n.IPv6 = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(idx)})
		t.Nodes = append(t.Nodes, n)
		if err := n.init(name); err != nil {
			return err
		}
		if err := n.Do(func() error {
			return setSysctls(
				"net.ipv4.ip_forward", "1",
				"net.ipv6.conf.all.forwarding", "1",
				"net.ipv4.conf.all.send_redirects", "0",
				"net.ipv4.conf.default.send_redirects", "0",
			)
		}); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := t.plug(&n.Host); err != nil {
			return err
		}
	}

	c := &Host{IPv4: clientV4, IPv6: clientV6}
	t.Client = c
	if err := c.init(ClientName); err != nil {
		return err
	}
	if err := c.Do(func() error {
		return setSysctls(
			"net.ipv4.ip_forward", "0",
			"net.ipv6.conf.all.forwarding", "0",
		)
	}); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if err := t.plug(c); err != nil {
		return err
	}

	// Routes. Nodes: the other node's pod CIDRs, and a default route to
	// the client, where unhandled traffic vanishes.
	for _, n := range t.Nodes {
		var routes []netlink.Route
		for _, o := range t.Nodes {
			if o != n {
				routes = append(routes, viaRoute(o.PodCIDRv4, o.IPv4), viaRoute(o.PodCIDRv6, o.IPv6))
			}
		}
		routes = append(routes,
			viaRoute(netip.MustParsePrefix("0.0.0.0/0"), clientV4),
			viaRoute(netip.MustParsePrefix("::/0"), clientV6))
		if err := n.addRoutes(routes...); err != nil {
			return err
		}
	}
	// Client: pod CIDRs via their nodes, external ranges via node-a, and
	// whatever it receives for someone else into a blackhole.
	var routes []netlink.Route
	for _, n := range t.Nodes {
		routes = append(routes, viaRoute(n.PodCIDRv4, n.IPv4), viaRoute(n.PodCIDRv6, n.IPv6))
	}
	routes = append(routes, viaRoute(ExternalV4, t.Nodes[0].IPv4), viaRoute(ExternalV6, t.Nodes[0].IPv6))
	for _, def := range []string{"0.0.0.0/0", "::/0"} {
		routes = append(routes, netlink.Route{
			Dst:   ipNet(netip.MustParsePrefix(def)),
			Type:  unix.RTN_BLACKHOLE,
			Table: dropTable,
		})
	}
	if err := c.addRoutes(routes...); err != nil {
		return err
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		r := netlink.NewRule()
		r.Family = fam
		r.IifName = hostIf
		r.Table = dropTable
		r.Priority = dropRulePrio
		if err := c.nl.RuleAdd(r); err != nil {
			return fmt.Errorf("client: add rule iif %s lookup %d: %w", hostIf, dropTable, err)
		}
	}
	// Last, so that the waits overlap: every bridge port forwarding, every
	// eth0 able to send.
	for _, h := range []*Host{&t.Nodes[0].Host, &t.Nodes[1].Host, c} {
		if err := t.lan.waitLinkReady(h.Name); err != nil {
			return err
		}
		if err := h.waitLinkReady(hostIf); err != nil {
			return err
		}
	}
	return nil
}

// plug connects h to the lan bridge with a veth: eth0 in h, "<h.Name>" in
// the lan namespace, and gives eth0 h's node-network addresses. The caller
// waits for the links (waitLinkReady).
func (t *Topology) plug(h *Host) error {
	peer := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: h.Name},
		PeerName:      hostIf,
		PeerNamespace: netlink.NsFd(h.NS.Fd()),
	}
	if err := t.lan.nl.LinkAdd(peer); err != nil {
		return fmt.Errorf("lan: add veth %s ↔ %s/%s: %w", h.Name, h.Name, hostIf, err)
	}
	br, err := t.lan.nl.LinkByName(bridgeName)
	if err != nil {
		return fmt.Errorf("lan: %w", err)
	}
	if err := t.lan.nl.LinkSetMaster(peer, br); err != nil {
		return fmt.Errorf("lan: enslave %s to %s: %w", h.Name, bridgeName, err)
	}
	if err := t.lan.nl.LinkSetUp(peer); err != nil {
		return fmt.Errorf("lan: set %s up: %w", h.Name, err)
	}
	eth, err := h.nl.LinkByName(hostIf)
	if err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	if err := h.nl.LinkSetUp(eth); err != nil {
		return fmt.Errorf("%s: set %s up: %w", h.Name, hostIf, err)
	}
	for _, p := range []netip.Prefix{
		netip.PrefixFrom(h.IPv4, NodeNetV4.Bits()),
		netip.PrefixFrom(h.IPv6, NodeNetV6.Bits()),
	} {
		if err := addAddr(h.nl, eth, p); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	return nil
}

// SCTP reports whether the kernel has SCTP sockets. Without them the echo
// servers serve TCP and UDP only, and SCTP requests fail with an error
// wrapping dataplane.ErrUnsupported.
func (t *Topology) SCTP() bool { return t.sctp }

// Pod returns the pod with the given name, or nil.
func (t *Topology) Pod(name string) *Pod {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pods[name]
}

// RouteExternalVia points the client's routes for the external ranges
// (203.0.113.0/24 and 2001:db8:beef::/64, where external and load-balancer
// IPs live) at node n. New points them at node-a.
func (t *Topology) RouteExternalVia(n *Node) error {
	return t.Client.replaceRoutes(viaRoute(ExternalV4, n.IPv4), viaRoute(ExternalV6, n.IPv6))
}

// Close stops every echo server, waits for their goroutines, and closes
// every namespace, which makes the kernel destroy them with their devices.
// Close is idempotent and safe on a partly built Topology.
func (t *Topology) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	var hosts []*Host
	for _, n := range t.Nodes {
		for _, p := range n.Pods {
			hosts = append(hosts, &p.Host)
		}
	}
	for _, n := range t.Nodes {
		hosts = append(hosts, &n.Host)
	}
	hosts = append(hosts, t.Client, t.lan)
	t.mu.Unlock()

	var errs []error
	for _, h := range hosts {
		if h != nil {
			errs = append(errs, h.close())
		}
	}
	return errors.Join(errs...)
}

// viaRoute is "dst via gw".
func viaRoute(dst netip.Prefix, gw netip.Addr) netlink.Route {
	return netlink.Route{Dst: ipNet(dst), Gw: gw.AsSlice()}
}

// devRoute is "dst dev link scope link".
func devRoute(dst netip.Prefix, link netlink.Link) netlink.Route {
	return netlink.Route{Dst: ipNet(dst), LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// addAddr adds p to link; IPv6 addresses skip duplicate address detection
// so they are usable at once.
func addAddr(h *netlink.Handle, link netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, link.Attrs().Name, err)
	}
	return nil
}

func setSysctls(kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if err := netnsutil.SetSysctl(kv[i], kv[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// setOptionalSysctls is setSysctls for sysctls that older kernels or
// missing modules do not have in a namespace; those are skipped.
func setOptionalSysctls(kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if err := netnsutil.SetSysctl(kv[i], kv[i+1]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// probeSCTP reports whether socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)
// works in ns.
func probeSCTP(ns *netnsutil.NS) (bool, error) {
	var ok bool
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		switch {
		case err == nil:
			unix.Close(fd)
			ok = true
			return nil
		case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.ESOCKTNOSUPPORT):
			return nil
		}
		return fmt.Errorf("probe SCTP sockets: %w", err)
	})
	return ok, err
}

// errNoSCTP is returned for SCTP servers and requests on a kernel without
// SCTP sockets.
var errNoSCTP = fmt.Errorf("SCTP sockets: %w", dataplane.ErrUnsupported)
