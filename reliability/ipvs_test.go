package reliability

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/svcplane/svcplane/conformance"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/ipvsnl"
	"github.com/svcplane/svcplane/internal/kstate"
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/ipvs"
)

// The ipvs backend. It runs where the kernel has IPVS and dummy links:
// on this project's development machine, only in the VM (make test-vm);
// elsewhere newDP skips its subtests saying so.

// ipvsFactory builds an ipvs Dataplane. It brings the namespace's lo up
// first, as every real node has it: in a namespace whose lo is down the
// kernel refuses real servers (EINVAL, "address not unicast": it
// classifies their addresses through the local routing table, which
// does not exist yet). IPVS's connection timeouts are the kernel's.
func ipvsFactory(t testing.TB, target conformance.Target) (dataplane.Dataplane, error) {
	if ns, err := netnsutil.Open(target.NetNS); err == nil {
		if h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd())); err == nil {
			if lo, err := h.LinkByName("lo"); err == nil && lo.Attrs().Flags&1 == 0 {
				h.LinkSetUp(lo)
			}
			h.Close()
		}
		ns.Close()
	}
	return ipvs.New(ipvs.Config{Node: target.Node, NetNS: target.NetNS})
}

// ipvsTable is how kstate names the ipvs backend's table.
const ipvsTable = "table 1 " + ipvs.DefaultTable + " "

// ipvsDump describes what the ipvs backend owns in the namespace behind
// fd: its nftables table (as kstate prints it), its dummy device and
// the addresses on it, and the namespace's IPVS virtual servers with
// their scheduler, flags and persistence timeout, and their real
// servers of non-zero weight. Real servers of weight 0 are left out: they
// take no new connections, and whether one is there depends on traffic,
// not on the State (a TCP endpoint that left, or is terminating, drains
// at weight 0 until its connections are gone; a fresh namespace has
// none).
func ipvsDump(fd int) (string, error) {
	s, err := kstate.Snapshot(fd)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	inTable, inDev := false, false
	for _, l := range strings.SplitAfter(s, "\n") {
		if !strings.HasPrefix(l, " ") {
			inTable = strings.HasPrefix(l, ipvsTable)
			inDev = false
			if f := strings.Fields(l); len(f) >= 4 && f[0] == "link" && f[2] == ipvs.DefaultDevice {
				// Without the index: it depends on the namespace.
				inDev = true
				l = "link " + strings.Join(f[2:], " ") + "\n"
			}
		}
		if inTable || inDev {
			b.WriteString(l)
		}
	}
	v, err := ipvsState(fd, false)
	if err != nil {
		return "", err
	}
	return b.String() + v, nil
}

// ipvsState lists the namespace's IPVS virtual and real servers, sorted;
// all real servers with raw, or those of non-zero weight. It is empty
// where the kernel has no IPVS.
func ipvsState(fd int, raw bool) (string, error) {
	c, err := ipvsnl.Dial(fd)
	if errors.Is(err, ipvsnl.ErrNoIPVS) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	svcs, err := c.Services()
	if err != nil {
		return "", err
	}
	var out []string
	for i := range svcs {
		s := &svcs[i]
		var b strings.Builder
		fmt.Fprintf(&b, "ipvs %s/%d sched %s flags %#x timeout %d\n", netip.AddrPortFrom(s.Addr, s.Port), s.Protocol, s.Scheduler, s.Flags, s.Timeout)
		dests, err := c.Dests(s)
		if err != nil {
			return "", err
		}
		var ds []string
		for _, d := range dests {
			if raw || d.Weight != 0 {
				ds = append(ds, fmt.Sprintf("  real %s weight %d\n", netip.AddrPortFrom(d.Addr, d.Port), d.Weight))
			}
		}
		slices.Sort(ds)
		b.WriteString(strings.Join(ds, ""))
		out = append(out, b.String())
	}
	slices.Sort(out)
	return strings.Join(out, ""), nil
}

// run runs a tool in the namespace at nsPath, as another program (an
// admin, a second proxy) would.
func run(t testing.TB, nsPath, tool string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("the %s tool is not installed", tool)
	}
	out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath, tool}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ipvsConflicts are objects another program might create where the ipvs
// backend's next Sync puts its own, or in what it owns.
var ipvsConflicts = []conflict{
	{name: "VirtualServerOfNextService", inject: func(t *testing.T, nsPath string, prev, next *dataplane.State) {
		// The virtual server the Sync creates, already there with
		// another scheduler, no persistence and a real server of its
		// own. IPVS refuses to create it again (EEXIST): the Sync must
		// take it over, as the Service owns its address and port.
		p := added(prev, next)[0]
		vip := netip.AddrPortFrom(p.ClusterIPs[0], p.Port).String()
		run(t, nsPath, "ipvsadm", "-A", "-t", vip, "-s", "wlc")
		run(t, nsPath, "ipvsadm", "-a", "-t", vip, "-r", "198.18.9.9:9", "-m", "-w", "5")
	}},
	{name: "AddressesOnDevice", inject: func(t *testing.T, nsPath string, prev, next *dataplane.State) {
		// On the backend's device: the next service's IP with another
		// prefix length (which would route the whole /24 to the
		// device), and an address no service has.
		p := added(prev, next)[0]
		run(t, nsPath, "ip", "addr", "add", netip.PrefixFrom(p.ClusterIPs[0], 24).String(), "dev", ipvs.DefaultDevice)
		run(t, nsPath, "ip", "addr", "add", "198.19.0.99/32", "dev", ipvs.DefaultDevice)
	}},
	{name: "RouteMakesEndpointNotUnicast", inject: func(t *testing.T, nsPath string, prev, next *dataplane.State) {
		// A broadcast route for the next service's endpoint in the
		// local routing table: IPVS refuses a real server whose
		// address it does not classify as unicast or local (EINVAL),
		// after the Sync created the virtual server. No Sync can
		// succeed while the route is there; fix removes it.
		ep := added(prev, next)[0].Endpoints[0].Addr
		run(t, nsPath, "ip", "route", "add", "broadcast", ep.String(), "dev", "lo", "table", "local")
	}, fix: func(t *testing.T, nsPath string, prev, next *dataplane.State) {
		ep := added(prev, next)[0].Endpoints[0].Addr
		run(t, nsPath, "ip", "route", "del", "broadcast", ep.String(), "dev", "lo", "table", "local")
	}},
	{name: "ChainInTable", inject: func(t *testing.T, nsPath string, prev, next *dataplane.State) {
		// A base chain in the backend's table that drops the next
		// service's traffic.
		p := added(prev, next)[0]
		runNFT(t, nsPath, "add", "chain", "inet", ipvs.DefaultTable, "intruder", "{ type filter hook prerouting priority -300; }")
		runNFT(t, nsPath, "add", "rule", "inet", ipvs.DefaultTable, "intruder", "ip", "daddr", p.ClusterIPs[0].String(), "drop")
	}},
	{name: "ElementsInTable", inject: func(t *testing.T, nsPath string, prev, next *dataplane.State) {
		// Elements in the backend's sets: the next service's frontend
		// (which the Sync adds too) and a service IP no service has
		// (whose other ports would then be rejected).
		p := added(prev, next)[0]
		runNFT(t, nsPath, "add", "element", "inet", ipvs.DefaultTable, "frontends-v4",
			fmt.Sprintf("{ %s . %s . %d }", p.ClusterIPs[0], strings.ToLower(p.Protocol.String()), p.Port))
		runNFT(t, nsPath, "add", "element", "inet", ipvs.DefaultTable, "service-ips-v4", "{ 198.19.0.99 }")
	}},
}
