package ipvs_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/ipvsnl"
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/ipvs"
)

// New programs IPVS in a network namespace: with Config.NetNS empty, the
// caller's, as a proxy running on the node does (set NetNS to a path such
// as /run/netns/node-a to program another). It needs root and a kernel
// with IPVS; elsewhere New's error wraps dataplane.ErrUnsupported and
// says what is missing. go test compiles this example but does not check
// its output; TestExampleNew runs it in a throwaway namespace on a kernel
// with IPVS (make test-vm) and checks what it programmed.
func ExampleNew() {
	node := dataplane.Node{
		Name:          "node-a",
		LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
	}
	dp, err := ipvs.New(ipvs.Config{Node: node, Scheduler: "rr"})
	if errors.Is(err, dataplane.ErrUnsupported) {
		log.Fatal(err) // this kernel has no IPVS (CONFIG_IP_VS)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer dp.Close() // leaves IPVS, the device and the table for the next run to adopt

	// svc-web: 198.19.0.10:80 → three pods on port 8080.
	ready := func(addr string) dataplane.Endpoint {
		return dataplane.Endpoint{Addr: netip.MustParseAddr(addr), Port: 8080, Ready: true, Serving: true}
	}
	state := &dataplane.State{Ports: []dataplane.ServicePort{{
		Name:       dataplane.PortName{Namespace: "default", Name: "svc-web", Port: "http"},
		Protocol:   dataplane.TCP,
		Port:       80,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10")},
		Endpoints:  []dataplane.Endpoint{ready("198.18.1.10"), ready("198.18.1.11"), ready("198.18.2.10")},
	}}}
	if err := dp.Sync(context.Background(), state); err != nil {
		log.Fatal(err)
	}
	// IPVS now holds the virtual server TCP 198.19.0.10:80 (rr) with the
	// three pods as masquerading real servers, the dummy device
	// svcplane-ipvs holds 198.19.0.10, and table inet svcplane-ipvs marks
	// traffic for masquerading. Sync again whenever the State changes;
	// only what changed is sent. dp.Cleanup(ctx) removes all of it.
}

// TestExampleNew runs ExampleNew in a fresh network namespace, which is
// the caller's namespace as the example sees it, and checks that the
// kernel holds what the example's closing comment says.
func TestExampleNew(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace: run `sudo go test ./ipvs`")
	}
	ns, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	probe, err := ipvs.New(ipvs.Config{NetNS: ns.Path()})
	if errors.Is(err, dataplane.ErrUnsupported) {
		t.Skipf("this kernel has no IPVS (make test-vm runs this test on Debian's kernels): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	probe.Close()
	// IPVS classifies real servers through the local routing table,
	// which needs lo up, as on any booted node.
	if err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		ExampleNew()
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	c, err := ipvsnl.Dial(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	svcs, err := c.Services()
	if err != nil {
		t.Fatal(err)
	}
	var dump strings.Builder
	for _, s := range svcs {
		proto := map[uint8]string{unix.IPPROTO_TCP: "TCP", unix.IPPROTO_UDP: "UDP", unix.IPPROTO_SCTP: "SCTP"}[s.Protocol]
		fmt.Fprintf(&dump, "%s %s:%d %s\n", proto, s.Addr, s.Port, s.Scheduler)
		ds, err := c.Dests(&s)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(ds, func(a, b ipvsnl.Dest) int { return a.Addr.Compare(b.Addr) })
		for _, d := range ds {
			fmt.Fprintf(&dump, "  -> %s:%d weight %d\n", d.Addr, d.Port, d.Weight)
		}
	}
	t.Logf("IPVS after ExampleNew:\n%s", dump.String())
	want := "TCP 198.19.0.10:80 rr\n" +
		"  -> 198.18.1.10:8080 weight 1\n  -> 198.18.1.11:8080 weight 1\n  -> 198.18.2.10:8080 weight 1\n"
	if dump.String() != want {
		t.Errorf("IPVS holds:\n%swant:\n%s", dump.String(), want)
	}

	h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	dev, err := h.LinkByName(ipvs.DefaultDevice)
	if err != nil {
		t.Fatalf("device %s: %v", ipvs.DefaultDevice, err)
	}
	addrs, err := h.AddrList(dev, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IP.String() != "198.19.0.10" {
		t.Errorf("device %s holds %v, want only 198.19.0.10", ipvs.DefaultDevice, addrs)
	}

	nc, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.CloseLasting()
	if _, err := nc.ListTableOfFamily(ipvs.DefaultTable, nftables.TableFamilyINet); err != nil {
		t.Errorf("table inet %s: %v", ipvs.DefaultTable, err)
	}

	// Cleanup, as the comment says, removes all of it.
	dp, err := ipvs.New(ipvs.Config{NetNS: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if err := dp.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if svcs, err := c.Services(); err != nil || len(svcs) != 0 {
		t.Errorf("after Cleanup, IPVS holds %v (%v), want nothing", svcs, err)
	}
}
