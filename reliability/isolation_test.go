package reliability

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/ipvsnl"
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/internal/nstest"
)

// foreignRuleset is what other programs (a host firewall, a CNI plugin,
// a monitoring agent) keep in a node's namespace, written with the nft
// tool: every kind of object, in every family, including a table of the
// backend's name in another family and a table with chains and sets
// named like the backend's.
const foreignRuleset = `
table inet firewall {
	counter dropped {
	}
	quota bulk {
		over 100 mbytes
	}
	set blocklist-v4 {
		type ipv4_addr
		flags interval
		elements = { 192.0.2.250/31, 198.51.100.0/24 }
	}
	set blocklist-v6 {
		type ipv6_addr
		elements = { 2001:db8::250 }
	}
	map ports {
		type inet_service : verdict
		elements = { 22 : accept, 23 : drop }
	}
	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr @blocklist-v4 counter name "dropped" drop
		ip6 saddr @blocklist-v6 drop
		tcp dport vmap @ports
	}
	chain services {
		comment "a chain named like one of svcplane's"
	}
}
table ip svcplane {
	set cluster-ips-v4 {
		type ipv4_addr
		elements = { 198.19.0.10 }
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 203.0.113.250 counter
	}
}
table inet svcplane-other {
	set service-ips-v4 {
		type ipv4_addr . inet_proto . inet_service
		elements = { 198.19.0.10 . tcp . 80 }
	}
	chain services {
	}
}
table ip6 filter6 {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip6 saddr 2001:db8::250 drop
	}
}
table bridge br {
	chain forward {
		type filter hook forward priority 0; policy accept;
	}
}
table arp arpfilter {
	chain input {
		type filter hook input priority 0; policy accept;
	}
}
`

var foreignTables = []string{"inet firewall", "ip svcplane", "inet svcplane-other", "ip6 filter6", "bridge br", "arp arpfilter"}

// foreignListing lists the foreign tables with the nft tool, with object
// handles (an object deleted and recreated gets a new one) and without
// counter values.
func foreignListing(t *testing.T, nsPath string) string {
	t.Helper()
	var b strings.Builder
	for _, tb := range foreignTables {
		out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath, "nft", "-a", "-s", "list", "table"}, strings.Fields(tb)...)...).CombinedOutput()
		if err != nil {
			fmt.Fprintf(&b, "table %s: %v: %s", tb, err, out) // gone: the diff shows it
			continue
		}
		b.Write(out)
	}
	return b.String()
}

// foreignIPVS are other programs' IPVS services, as ipvsadm arguments:
// TCP with persistence, UDP, a firewall mark, IPv6, and one at a port
// the backend uses as a NodePort but on an address not the node's.
var foreignIPVS = [][]string{
	{"-A", "-t", "192.0.2.250:80", "-s", "wlc", "-p", "300"},
	{"-a", "-t", "192.0.2.250:80", "-r", "198.51.100.1:80", "-m", "-w", "3"},
	{"-A", "-u", "192.0.2.250:53", "-s", "rr"},
	{"-a", "-u", "192.0.2.250:53", "-r", "198.51.100.2:53", "-m"},
	{"-A", "-f", "7", "-s", "sh"},
	{"-a", "-f", "7", "-r", "198.51.100.3", "-m"},
	{"-A", "-t", "[2001:db8::250]:443", "-s", "rr"},
	{"-A", "-t", "203.0.113.250:30080", "-s", "rr"},
}

// addForeignIPVS creates foreignIPVS with ipvsadm where the kernel has
// IPVS, and reports whether it did.
func addForeignIPVS(t *testing.T, nsPath string) bool {
	t.Helper()
	ns, err := netnsutil.Open(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if s, err := ipvsState(ns.Fd(), true); err != nil || s != "" {
		t.Fatalf("IPVS state of a fresh namespace: %q, %v", s, err)
	}
	c, err := ipvsnl.Dial(ns.Fd())
	if err != nil {
		return false // no IPVS here
	}
	c.Close()
	// IPVS refuses real servers in a namespace whose lo is down.
	run(t, nsPath, "ip", "link", "set", "lo", "up")
	for _, args := range foreignIPVS {
		run(t, nsPath, "ipvsadm", args...)
	}
	return true
}

// foreignIPVSListing lists the foreign IPVS services as ipvsadm saves
// them, with their real servers.
func foreignIPVSListing(t *testing.T, nsPath string) string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(run(t, nsPath, "ipvsadm", "-S", "-n"), "\n") {
		for _, args := range foreignIPVS {
			if args[0] == "-A" && strings.Contains(l, " "+args[1]+" "+args[2]+" ") {
				out = append(out, l)
				break
			}
		}
	}
	if len(out) != len(foreignIPVS) {
		return fmt.Sprintf("%d of %d foreign IPVS lines:\n%s\n", len(out), len(foreignIPVS), strings.Join(out, "\n"))
	}
	return "ipvsadm -S:\n" + strings.Join(out, "\n") + "\n"
}

// monitor listens, in a namespace, to every nftables change the kernel
// announces (the NFNLGRP_NFTABLES multicast group, what `nft monitor`
// shows), with a receive buffer large enough for the bursts a Sync
// makes: nft monitor itself gives up when its buffer overflows.
type monitor struct {
	conn   *mnl.Conn
	mu     sync.Mutex
	events []nftEvent
	err    error
	nsPath string
	marks  int
}

// nftEvent is one announced change: its message type (NFT_MSG_*) and
// the family and name of the table it is in.
type nftEvent struct {
	msg    uint8
	family uint8
	table  string
}

func (e nftEvent) String() string {
	return fmt.Sprintf("message %d in table %d %s", e.msg, e.family, e.table)
}

var familyNames = map[uint8]string{unix.NFPROTO_INET: "inet", unix.NFPROTO_IPV4: "ip", unix.NFPROTO_IPV6: "ip6",
	unix.NFPROTO_ARP: "arp", unix.NFPROTO_BRIDGE: "bridge", unix.NFPROTO_NETDEV: "netdev"}

func startMonitor(t *testing.T, nsPath string) *monitor {
	t.Helper()
	ns, err := netnsutil.Open(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := mnl.Dial(unix.NETLINK_NETFILTER, &mnl.Config{NetNS: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetReadBuffer(256 << 20); err != nil {
		t.Fatal(err)
	}
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		t.Fatal(err)
	}
	m := &monitor{conn: c, nsPath: nsPath}
	go func() {
		for {
			msgs, err := c.Receive()
			if err != nil {
				m.mu.Lock()
				if !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "closed") {
					m.err = err
				}
				m.mu.Unlock()
				return
			}
			for _, msg := range msgs {
				if msg.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES || len(msg.Data) < 4 {
					continue
				}
				e := nftEvent{msg: uint8(msg.Header.Type), family: msg.Data[0]}
				if e.msg == unix.NFT_MSG_NEWGEN {
					continue
				}
				ad, err := mnl.NewAttributeDecoder(msg.Data[4:])
				if err != nil {
					continue
				}
				for ad.Next() {
					if ad.Type() == 1 { // NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,SET_ELEM_LIST_TABLE,OBJ_TABLE,...}
						e.table = ad.String()
					}
				}
				m.mu.Lock()
				m.events = append(m.events, e)
				m.mu.Unlock()
			}
		}
	}()
	m.mark(t) // listening
	return m
}

// mark creates and deletes a marker table and waits until the monitor
// has seen it deleted: every change before has been read.
func (m *monitor) mark(t *testing.T) {
	t.Helper()
	m.marks++
	name := fmt.Sprintf("zz-monitor-mark-%d", m.marks)
	runNFT(t, m.nsPath, "add", "table", "inet", name)
	runNFT(t, m.nsPath, "delete", "table", "inet", name)
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.mu.Lock()
		seen := slices.Contains(m.events, nftEvent{unix.NFT_MSG_DELTABLE, unix.NFPROTO_INET, name})
		err := m.err
		m.mu.Unlock()
		switch {
		case err != nil:
			t.Fatalf("nftables monitor: %v", err)
		case seen:
			return
		case time.Now().After(deadline):
			t.Fatal("the nftables monitor did not see its marker in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// foreignEvents returns the changes to objects outside the tables owned
// ("family name"), markers aside, and how many changes there were.
func (m *monitor) foreignEvents(owned []string) ([]string, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, e := range m.events {
		if strings.HasPrefix(e.table, "zz-monitor-mark-") {
			continue
		}
		if !slices.Contains(owned, familyNames[e.family]+" "+e.table) {
			out = append(out, e.String())
		}
	}
	return out, len(m.events)
}

// richStates exercise every kind of object a backend creates: cluster
// IPs of both families, NodePorts, external and load-balancer IPs with
// source ranges, Local policies, affinity; then changes to all of it.
func richStates() []*dataplane.State {
	ep := func(a string, node string) dataplane.Endpoint {
		return dataplane.Endpoint{Addr: addr(a), Port: 8080, NodeName: node, Ready: true, Serving: true}
	}
	web := dataplane.ServicePort{
		Name: dataplane.PortName{Namespace: "default", Name: "web", Port: "http"}, Protocol: dataplane.TCP, Port: 80, NodePort: 30080,
		ClusterIPs:      []netip.Addr{addr("198.19.0.10"), addr("2001:db8:ffff::10")},
		ExternalIPs:     []netip.Addr{addr("203.0.113.10")},
		LoadBalancerIPs: []netip.Addr{addr("203.0.113.20"), addr("2001:db8:beef::20")},
		SourceRanges:    []netip.Prefix{prefix("192.0.2.0/24"), prefix("2001:db8::/64")},
		Affinity:        30 * time.Second,
		Endpoints:       []dataplane.Endpoint{ep("198.18.1.10", "node-a"), ep("198.18.2.10", "node-b"), ep("2001:db8:1::a", "node-a")},
	}
	dns := dataplane.ServicePort{
		Name: dataplane.PortName{Namespace: "kube-system", Name: "dns", Port: "dns"}, Protocol: dataplane.UDP, Port: 53, NodePort: 30053,
		ClusterIPs: []netip.Addr{addr("198.19.0.53")}, ExternalLocal: true, InternalLocal: true,
		Endpoints: []dataplane.Endpoint{ep("198.18.1.11", "node-a"), ep("198.18.2.11", "node-b")},
	}
	web2, dns2 := web, dns
	web2.Endpoints = web.Endpoints[1:]
	web2.Affinity = 60 * time.Second
	web2.SourceRanges = []netip.Prefix{prefix("192.0.2.128/25")}
	dns2.Endpoints = nil
	return []*dataplane.State{
		{Ports: []dataplane.ServicePort{web, dns}},
		{Ports: []dataplane.ServicePort{web2, dns2}},
		{Ports: []dataplane.ServicePort{web2}},
		{},
	}
}

// TestForeignObjectsUntouched creates, with the nft tool, other
// programs' tables, chains, sets, maps, counters and quotas in every
// family (one table with the backend's name in another family, one with
// its chain and set names), then drives the backend through Syncs of
// every kind of object, Cleanup, a restart that adopts, and Cleanup
// again. After each step the foreign tables, listed by the nft tool
// with their handles, are byte-identical; and the kernel, listened to
// throughout (as `nft monitor` does), announced no change to any object
// outside the backend's own tables: no flush of the ruleset, no foreign
// table deleted and recreated, not even for a moment.
func TestForeignObjectsUntouched(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ns := nstest.New(t)
		path := ns.Path()
		runNFT(t, path, "-f", writeTemp(t, foreignRuleset))
		withIPVS := addForeignIPVS(t, path)
		listing := func() string {
			s := foreignListing(t, path)
			if withIPVS {
				s += foreignIPVSListing(t, path)
			}
			return s
		}
		before := listing()
		tablesBefore := nftTables(t, path)
		mon := startMonitor(t, path)
		ctx := t.Context()
		dp := newDP(t, b, path, nodeA())
		defer func() { dp.Close() }()
		states := richStates()
		var owned []string
		step := func(what string, f func() error) {
			t.Helper()
			if err := f(); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			for _, tb := range nftTables(t, path) {
				if !slices.Contains(tablesBefore, tb) && !slices.Contains(owned, tb) {
					owned = append(owned, tb)
				}
			}
			if now := listing(); now != before {
				t.Fatalf("%s changed other programs' nftables objects or IPVS services:\n%s", what, diff(before, now))
			}
		}
		for i, st := range states {
			step(fmt.Sprintf("Sync %d", i+1), func() error { return dp.Sync(ctx, st) })
		}
		step("Sync after the empty State", func() error { return dp.Sync(ctx, states[0]) })
		step("Cleanup", func() error { return dp.Cleanup(ctx) })
		step("Sync after Cleanup", func() error { return dp.Sync(ctx, states[0]) })
		step("Close and a new Dataplane's Sync (adoption)", func() error {
			if err := dp.Close(); err != nil {
				return err
			}
			dp = newDP(t, b, path, nodeA())
			return dp.Sync(ctx, states[1])
		})
		step("Cleanup after the restart", func() error { return dp.Cleanup(ctx) })
		mon.mark(t)
		if len(owned) == 0 {
			t.Fatal("the backend created no nftables table; nothing was checked")
		}
		ev, n := mon.foreignEvents(owned)
		if len(ev) > 0 {
			if len(ev) > 10 {
				ev = ev[:10]
			}
			t.Fatalf("the backend changed nftables objects outside its tables %v:\n%s", owned, strings.Join(ev, "\n"))
		}
		t.Logf("%s: foreign tables identical after %d steps; the kernel announced %d changes, all in %v", b.name, len(states)+5, n, owned)
	})
}

func nftTables(t *testing.T, nsPath string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(runNFT(t, nsPath, "list", "tables"), "\n") {
		if s, ok := strings.CutPrefix(l, "table "); ok {
			out = append(out, s)
		}
	}
	return out
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := t.TempDir() + "/ruleset.nft"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// NodePort exposure.

// TestNodePortExposure programs node-a with NodePortAddrs = its primary
// addresses and node-b with none (every local address), with
// route_localnet=1 on both (the setting that made kube-proxy's
// localhost NodePorts reachable from other hosts, CVE-2020-8558), and
// checks four NodePort services (Cluster and Local policy, with and
// without ClientIP affinity, whose NodePorts take their own chains),
// TCP and UDP: the client reaches them on node-a's primary addresses
// and on every address of node-b; node-a's second addresses, and
// 127.0.0.1, 127.0.0.2, 127.255.255.254 and ::1 from each node itself,
// are left to the node's own stack (a host service answers); and
// datagrams a neighbour sends straight to a node's MAC address for
// 127.0.0.1 or ::1 are never translated to an endpoint, while the same
// datagrams for the node's address are (which proves they arrive). The
// conformance case NodePort/Addresses checks the basic case; this adds
// UDP, the Local and affinity paths, all of 127.0.0.0/8,
// route_localnet, and the neighbour's forged packets.
func TestNodePortExposure(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		c := newCluster(t, 2*time.Minute)
		nodeA, nodeB := c.topo.Nodes[0], c.topo.Nodes[1]
		web1, web2 := c.pod(0, "web-1", podPort), c.pod(1, "web-2", podPort)
		extraA := []netip.Addr{addr("192.0.2.201"), addr("2001:db8::201")}
		extraB := []netip.Addr{addr("192.0.2.202"), addr("2001:db8::202")}
		for _, x := range []struct {
			h  *topo.Node
			as []netip.Addr
		}{{nodeA, extraA}, {nodeB, extraB}} {
			for _, a := range x.as {
				if err := x.h.AddAddress(netip.PrefixFrom(a, a.BitLen())); err != nil {
					t.Fatal(err)
				}
			}
			if err := x.h.Do(func() error { return netnsutil.SetSysctl("net.ipv4.conf.all.route_localnet", "1") }); err != nil {
				t.Fatal(err)
			}
		}
		var ports []dataplane.ServicePort
		nodePorts := []uint16{30080, 30081, 30082, 30083}
		for i, np := range nodePorts {
			for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
				p := dataplane.ServicePort{
					Name:     dataplane.PortName{Namespace: "default", Name: fmt.Sprintf("np-%d", i), Port: proto.String()},
					Protocol: proto, Port: 80, NodePort: np,
					ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + i)}), netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 15: byte(10 + i)})},
					Endpoints: []dataplane.Endpoint{readyEndpoint(web1), readyEndpoint(web2),
						{Addr: web1.IPv6, Port: podPort, NodeName: "node-a", Ready: true, Serving: true},
						{Addr: web2.IPv6, Port: podPort, NodeName: "node-b", Ready: true, Serving: true}},
					ExternalLocal: i%2 == 1,
				}
				if i >= 2 {
					p.Affinity = time.Minute
				}
				ports = append(ports, p)
			}
		}
		for _, n := range []*topo.Node{nodeA, nodeB} {
			for _, np := range nodePorts {
				for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
					if err := n.ServeEcho(proto, np); err != nil {
						t.Fatal(err)
					}
				}
			}
			model := n.NodeModel()
			if n == nodeA {
				model.NodePortAddrs = []netip.Prefix{netip.PrefixFrom(nodeA.IPv4, 32), netip.PrefixFrom(nodeA.IPv6, 128)}
			}
			dp := open(t, b, n.NS.Path(), model)
			if err := dp.Sync(c.ctx, &dataplane.State{Ports: ports}); err != nil {
				t.Fatal(err)
			}
		}
		checked := 0
		expect := func(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, forwarded bool, hostName, why string) {
			t.Helper()
			checked++
			r, err := from.Request(c.ctx, proto, dst, topo.RequestOptions{Timeout: time.Second})
			switch {
			case err != nil:
				t.Errorf("%s %s → %s: %v; want an answer from %s: %s", from.Name, proto, dst, err, map[bool]string{true: "an endpoint", false: "the host service of " + hostName}[forwarded], why)
			case forwarded && c.topo.Pod(r.Pod) == nil:
				t.Errorf("%s %s → %s answered by the host service of %s; want an endpoint: %s", from.Name, proto, dst, r.Pod, why)
			case !forwarded && r.Pod != hostName:
				t.Errorf("%s %s → %s answered by %s; want the host service of %s (the NodePort must not be forwarded there): %s", from.Name, proto, dst, r.Pod, hostName, why)
			}
		}
		loopbacks := []netip.Addr{addr("127.0.0.1"), addr("127.0.0.2"), addr("127.255.255.254"), netip.IPv6Loopback()}
		for _, np := range nodePorts {
			for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
				for _, a := range []netip.Addr{nodeA.IPv4, nodeA.IPv6} {
					expect(c.topo.Client, proto, netip.AddrPortFrom(a, np), true, "", "node-a's primary address is in its NodePortAddrs")
				}
				for _, a := range extraA {
					expect(c.topo.Client, proto, netip.AddrPortFrom(a, np), false, "node-a", "node-a's second address is outside its NodePortAddrs")
				}
				for _, a := range append([]netip.Addr{nodeB.IPv4, nodeB.IPv6}, extraB...) {
					expect(c.topo.Client, proto, netip.AddrPortFrom(a, np), true, "", "node-b serves NodePorts on every local address")
				}
				for _, n := range []*topo.Node{nodeA, nodeB} {
					for _, lo := range loopbacks {
						expect(&n.Host, proto, netip.AddrPortFrom(lo, np), false, n.Name, "NodePorts are never served on loopback")
					}
				}
			}
		}
		// A neighbour's forged datagrams, sent to each node's MAC.
		for _, n := range []*topo.Node{nodeA, nodeB} {
			for _, np := range nodePorts {
				for _, dst := range []netip.Addr{addr("127.0.0.1"), addr("127.0.0.2"), netip.IPv6Loopback(), n.IPv4} {
					injectUDP(t, c, n, netip.AddrPortFrom(dst, np))
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
		for _, n := range []*topo.Node{nodeA, nodeB} {
			translated := dnatFlows(t, n)
			for _, np := range nodePorts {
				if !slices.Contains(translated, netip.AddrPortFrom(n.IPv4, np)) {
					t.Errorf("%s: the forged datagram to its own address port %d was not translated: the injection does not reach the node, so the loopback check proves nothing (translated: %v)", n.Name, np, translated)
				}
			}
			for _, f := range translated {
				if f.Addr().IsLoopback() {
					t.Errorf("%s: a datagram a neighbour sent to %s was translated to an endpoint: loopback NodePorts are reachable from the network", n.Name, f)
				}
			}
		}
		t.Logf("%s: %d requests checked, and %d forged datagrams", b.name, checked, 2*len(nodePorts)*4)
	})
}

// injectUDP sends, from the client's eth0 straight to node's MAC
// address, a UDP datagram from the client's address to dst: what a
// neighbour on the node network can do whatever the node's routes say.
func injectUDP(t *testing.T, c *cluster, node *topo.Node, dst netip.AddrPort) {
	t.Helper()
	mac := func(h *topo.Host) net.HardwareAddr {
		nh, err := netlink.NewHandleAt(netns.NsHandle(h.NS.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		defer nh.Close()
		l, err := nh.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().HardwareAddr
	}
	client := c.topo.Client
	src := client.IPv4
	ethType := uint16(unix.ETH_P_IP)
	if dst.Addr().Is6() {
		src, ethType = client.IPv6, unix.ETH_P_IPV6
	}
	frame := slices.Concat([]byte(mac(&node.Host)), []byte(mac(client)), binary.BigEndian.AppendUint16(nil, ethType),
		ipUDP(netip.AddrPortFrom(src, 40999), dst, []byte("forged")))
	err := client.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6})
	})
	if err != nil {
		t.Fatalf("send a forged datagram to %s: %v", dst, err)
	}
}

// ipUDP builds an IPv4 or IPv6 packet carrying one UDP datagram.
func ipUDP(src, dst netip.AddrPort, payload []byte) []byte {
	udp := binary.BigEndian.AppendUint16(nil, src.Port())
	udp = binary.BigEndian.AppendUint16(udp, dst.Port())
	udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(payload)))
	udp = append(udp, 0, 0)
	udp = append(udp, payload...)
	sum := func(b []byte, acc uint32) uint32 {
		for i := 0; i+1 < len(b); i += 2 {
			acc += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			acc += uint32(b[len(b)-1]) << 8
		}
		return acc
	}
	fold := func(acc uint32) uint16 {
		for acc>>16 != 0 {
			acc = acc&0xffff + acc>>16
		}
		return ^uint16(acc)
	}
	s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
	pseudo := slices.Concat(s, d, []byte{0, unix.IPPROTO_UDP}, binary.BigEndian.AppendUint16(nil, uint16(len(udp))))
	binary.BigEndian.PutUint16(udp[6:], fold(sum(udp, sum(pseudo, 0))))
	if src.Addr().Is4() {
		h := []byte{0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, unix.IPPROTO_UDP, 0, 0}
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(udp)))
		h = slices.Concat(h, s, d)
		binary.BigEndian.PutUint16(h[10:], fold(sum(h, 0)))
		return append(h, udp...)
	}
	h := []byte{0x60, 0, 0, 0, 0, 0, unix.IPPROTO_UDP, 64}
	binary.BigEndian.PutUint16(h[4:], uint16(len(udp)))
	return slices.Concat(h, s, d, udp)
}

// dnatFlows returns the original destinations of the node's UDP
// conntrack entries that were translated to another address.
func dnatFlows(t *testing.T, n *topo.Node) []netip.AddrPort {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(n.NS.Fd()), unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var out []netip.AddrPort
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			t.Fatalf("%s: list conntrack: %v", n.Name, err)
		}
		for _, f := range flows {
			dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
			reply, _ := netip.AddrFromSlice(f.Reverse.SrcIP)
			if f.Forward.Protocol == unix.IPPROTO_UDP && dst.Unmap() != reply.Unmap() {
				out = append(out, netip.AddrPortFrom(dst.Unmap(), f.Forward.DstPort))
			}
		}
	}
	return out
}

// Source ranges.

// TestSourceRangesEveryFrontend checks loadBalancerSourceRanges on every
// frontend they apply to and on none they do not: three services on
// node-a, each load-balancer IP of which admits only the listed sources
// (the client's primary addresses, through overlapping ranges) and drops
// the client's other addresses and the node itself (whose own traffic
// takes the output path), under the Cluster policy, under the Local
// policy with ClientIP affinity (other chains), and with ranges of one
// family only (which leave the other family's load-balancer IPs open).
// The same services' external IPs, NodePort and cluster IP ignore the
// ranges. The conformance case External/SourceRanges checks one
// load-balancer IP per family.
func TestSourceRangesEveryFrontend(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		c := newCluster(t, 2*time.Minute)
		web1, web2 := c.pod(0, "web-1", podPort), c.pod(1, "web-2", podPort)
		client := c.topo.Client
		other4, other6 := addr("192.0.2.150"), addr("2001:db8::150")
		for _, a := range []netip.Addr{other4, other6} {
			if err := client.AddAddress(netip.PrefixFrom(a, a.BitLen())); err != nil {
				t.Fatal(err)
			}
		}
		eps := []dataplane.Endpoint{readyEndpoint(web1), readyEndpoint(web2),
			{Addr: web1.IPv6, Port: podPort, NodeName: "node-a", Ready: true, Serving: true},
			{Addr: web2.IPv6, Port: podPort, NodeName: "node-b", Ready: true, Serving: true}}
		svc := func(i int, lb []netip.Addr, ranges ...netip.Prefix) dataplane.ServicePort {
			return dataplane.ServicePort{
				Name:     dataplane.PortName{Namespace: "default", Name: fmt.Sprintf("lb-%d", i)},
				Protocol: dataplane.TCP, Port: 80, NodePort: uint16(30090 + i),
				ClusterIPs:      []netip.Addr{netip.AddrFrom4([4]byte{198, 19, 0, byte(20 + i)}), netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 15: byte(20 + i)})},
				ExternalIPs:     []netip.Addr{netip.AddrFrom4([4]byte{203, 0, 113, byte(30 + i)})},
				LoadBalancerIPs: lb, SourceRanges: ranges, Endpoints: eps,
			}
		}
		overlapping := []netip.Prefix{prefix("192.0.2.96/28"), prefix("192.0.2.100/32"), prefix("2001:db8::100/128"), prefix("2001:db8::/120")}
		cluster := svc(0, []netip.Addr{addr("203.0.113.20"), addr("203.0.113.21"), addr("2001:db8:beef::20"), addr("2001:db8:beef::21")}, overlapping...)
		local := svc(1, []netip.Addr{addr("203.0.113.22"), addr("2001:db8:beef::22")}, overlapping...)
		local.ExternalLocal, local.Affinity = true, time.Minute
		oneFamily := svc(2, []netip.Addr{addr("203.0.113.23"), addr("2001:db8:beef::23")}, prefix("192.0.2.100/32"))
		dp := c.open(b)
		if err := dp.Sync(c.ctx, &dataplane.State{Ports: []dataplane.ServicePort{cluster, local, oneFamily}}); err != nil {
			t.Fatal(err)
		}

		type check struct {
			from  *topo.Host
			src   netip.Addr // zero: routing picks
			dst   netip.AddrPort
			admit bool
			why   string
		}
		var checks []check
		for _, p := range []dataplane.ServicePort{cluster, local, oneFamily} {
			for _, lb := range p.LoadBalancerIPs {
				allowed, other, restricted := client.IPv4, other4, true
				if lb.Is6() {
					allowed, other, restricted = client.IPv6, other6, p.Name.Name != "lb-2"
				}
				dst := netip.AddrPortFrom(lb, p.Port)
				checks = append(checks,
					check{client, allowed, dst, true, "the source is in the ranges"},
					check{client, other, dst, !restricted, map[bool]string{true: "the source is outside the ranges", false: "the ranges have no address of this family"}[restricted]})
				if lb.Is4() {
					checks = append(checks, check{&c.node.Host, netip.Addr{}, dst, false, "the node's own address is outside the ranges"})
				}
			}
			checks = append(checks,
				check{client, other4, netip.AddrPortFrom(p.ExternalIPs[0], p.Port), true, "external IPs ignore source ranges"},
				check{client, other4, netip.AddrPortFrom(c.node.IPv4, p.NodePort), true, "NodePorts ignore source ranges"},
				check{client, other6, netip.AddrPortFrom(c.node.IPv6, p.NodePort), true, "NodePorts ignore source ranges"},
				check{&c.client.Host, netip.Addr{}, netip.AddrPortFrom(p.ClusterIPs[0], p.Port), true, "cluster IPs ignore source ranges"})
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, ck := range checks {
			wg.Go(func() {
				opt := topo.RequestOptions{LocalAddr: ck.src, Timeout: time.Second}
				if !ck.admit {
					opt.Timeout = 300 * time.Millisecond
				}
				ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
				defer cancel()
				r, err := ck.from.Request(ctx, dataplane.TCP, ck.dst, opt)
				mu.Lock()
				defer mu.Unlock()
				from := ck.from.Name
				if ck.src.IsValid() {
					from += " from " + ck.src.String()
				}
				switch {
				case ck.admit && (err != nil || c.topo.Pod(r.Pod) == nil):
					t.Errorf("%s → %s: %v (answered by %q); want an endpoint to answer: %s", from, ck.dst, err, r.Pod, ck.why)
				case !ck.admit && err == nil:
					t.Errorf("%s → %s answered by %s; want it dropped: %s", from, ck.dst, r.Pod, ck.why)
				case !ck.admit && !topo.IsTimeout(err):
					t.Errorf("%s → %s: %v; want it dropped silently: %s", from, ck.dst, err, ck.why)
				}
			})
		}
		wg.Wait()
		t.Logf("%s: %d frontend checks", b.name, len(checks))
	})
}
