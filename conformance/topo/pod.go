package topo

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/svcplane/svcplane/dataplane"
)

// AddPod creates a pod named name on node: a namespace wired to the node
// by a routed veth, with the node's next pod addresses (see the package
// documentation), and echo servers on each port for TCP, UDP and, when the
// kernel has it, SCTP, in both families. Pod names are unique in the
// topology and made of letters, digits, '-', '_' and '.'.
func (t *Topology) AddPod(node *Node, name string, ports ...uint16) (*Pod, error) {
	if err := validPodName(name); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errors.New("topo: AddPod on a closed Topology")
	}
	if !slices.Contains(t.Nodes, node) {
		return nil, fmt.Errorf("topo: AddPod %s: node is not part of this topology", name)
	}
	if _, dup := t.pods[name]; dup {
		return nil, fmt.Errorf("topo: AddPod: a pod named %q exists", name)
	}
	if node.nextPod > 254 {
		return nil, fmt.Errorf("topo: AddPod %s: node %s has no pod addresses left", name, node.Name)
	}
	octet := node.nextPod
	node.nextPod++

	p := &Pod{Node: node, Ports: slices.Clone(ports), VethName: vethName(name, octet)}
	if err := p.init(name); err != nil {
		return nil, fmt.Errorf("topo: AddPod: %w", err)
	}
	p.IPv4 = netip.AddrFrom4([4]byte{198, 18, byte(node.Index), byte(octet)})
	p.IPv6 = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(node.Index), 15: byte(octet)})

	err := t.wirePod(p)
	if err == nil {
		err = t.waitPodLinks(p)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("topo: AddPod %s: %w", name, err), t.unwirePod(p))
	}
	for _, port := range ports {
		protos := []dataplane.Protocol{dataplane.TCP, dataplane.UDP}
		if t.sctp {
			protos = append(protos, dataplane.SCTP)
		}
		for _, proto := range protos {
			if err := p.ServeEcho(proto, port); err != nil {
				return nil, errors.Join(fmt.Errorf("topo: AddPod %s: %w", name, err), t.unwirePod(p))
			}
		}
	}
	t.pods[name] = p
	node.Pods = append(node.Pods, p)
	return p, nil
}

// wirePod creates the pod's veth and its addresses and routes on both
// sides.
func (t *Topology) wirePod(p *Pod) error {
	n := p.Node
	gw4 := netip.AddrFrom4([4]byte{198, 18, byte(n.Index), 1})

	n.nlMu.Lock()
	defer n.nlMu.Unlock()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.VethName},
		PeerName:      hostIf,
		PeerNamespace: netlink.NsFd(p.NS.Fd()),
	}
	if err := n.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("%s: add veth %s ↔ %s/%s: %w", n.Name, p.VethName, p.Name, hostIf, err)
	}
	link, err := n.nl.LinkByName(p.VethName)
	if err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	if err := n.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s: set %s up: %w", n.Name, p.VethName, err)
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(gw4, 32), netip.PrefixFrom(podGatewayV6, 64)} {
		if err := addAddr(n.nl, link, a); err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
	}
	for _, r := range []netlink.Route{
		devRoute(netip.PrefixFrom(p.IPv4, 32), link),
		devRoute(netip.PrefixFrom(p.IPv6, 128), link),
	} {
		if err := n.nl.RouteAdd(&r); err != nil {
			return fmt.Errorf("%s: add route %s: %w", n.Name, r, err)
		}
	}

	p.nlMu.Lock()
	defer p.nlMu.Unlock()
	eth, err := p.nl.LinkByName(hostIf)
	if err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	if err := p.nl.LinkSetUp(eth); err != nil {
		return fmt.Errorf("%s: set %s up: %w", p.Name, hostIf, err)
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(p.IPv4, 32), netip.PrefixFrom(p.IPv6, 128)} {
		if err := addAddr(p.nl, eth, a); err != nil {
			return fmt.Errorf("%s: %w", p.Name, err)
		}
	}
	for _, r := range []netlink.Route{
		devRoute(netip.PrefixFrom(gw4, 32), eth),
		{Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: gw4.AsSlice()},
		{Dst: ipNet(netip.MustParsePrefix("::/0")), Gw: podGatewayV6.AsSlice(), LinkIndex: eth.Attrs().Index},
	} {
		if err := p.nl.RouteAdd(&r); err != nil {
			return fmt.Errorf("%s: add route %s: %w", p.Name, r, err)
		}
	}
	return nil
}

// waitPodLinks waits for both ends of the pod's veth (see waitLinkReady).
func (t *Topology) waitPodLinks(p *Pod) error {
	if err := p.Node.waitLinkReady(p.VethName); err != nil {
		return err
	}
	return p.waitLinkReady(hostIf)
}

// unwirePod stops the pod's servers, deletes its veth and closes its
// namespace.
func (t *Topology) unwirePod(p *Pod) error {
	p.srv.close()
	var errs []error
	n := p.Node
	n.nlMu.Lock()
	if n.nl != nil {
		if link, err := n.nl.LinkByName(p.VethName); err == nil {
			if err := n.nl.LinkDel(link); err != nil {
				errs = append(errs, fmt.Errorf("%s: delete %s: %w", n.Name, p.VethName, err))
			}
		}
	}
	n.nlMu.Unlock()
	errs = append(errs, p.close())
	return errors.Join(errs...)
}

// RemovePod stops the pod's servers, deletes its veth (with its routes on
// the node) and its namespace, and removes it from its node's Pods. Its
// addresses are not reused by later pods.
func (t *Topology) RemovePod(p *Pod) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil // Close removed it
	}
	if t.pods[p.Name] != p {
		return fmt.Errorf("topo: RemovePod %s: not a pod of this topology", p.Name)
	}
	delete(t.pods, p.Name)
	n := p.Node
	n.Pods = slices.DeleteFunc(n.Pods, func(q *Pod) bool { return q == p })
	if err := t.unwirePod(p); err != nil {
		return fmt.Errorf("topo: RemovePod %s: %w", p.Name, err)
	}
	return nil
}

func validPodName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("topo: pod name %q: want 1 to 63 characters", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("topo: pod name %q: only letters, digits, '-', '_' and '.' are allowed", name)
		}
	}
	return nil
}

// vethName is the node-side name of a pod's veth: "veth-<pod>" if that
// fits in IFNAMSIZ-1 characters, else "vpod<octet>" (unique per node, and
// never of the first form).
func vethName(pod string, octet int) string {
	if n := "veth-" + pod; len(n) <= 15 {
		return n
	}
	return fmt.Sprintf("vpod%d", octet)
}
