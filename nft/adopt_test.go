package nft

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/kstate"
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/internal/nstest"
)

func manyPorts(n int) *dataplane.State {
	st := &dataplane.State{}
	for i := 1; i <= n; i++ {
		st.Ports = append(st.Ports, testPort(i))
	}
	return st
}

func gen(t *testing.T, ns *netnsutil.NS) uint32 {
	t.Helper()
	g, err := kstate.Generation(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// A restarted proxy's first Sync of an unchanged State adopts the table
// and writes nothing, even after a history of changes moved buckets.
func TestAdoptWritesNothing(t *testing.T) {
	ns := nstest.New(t)
	ctx := context.Background()
	st := manyPorts(50)
	// Every kind of frontend and policy, affinity included.
	st.Ports[0].NodePort = 30100
	st.Ports[0].LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.6")}
	st.Ports[0].SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/25")}
	st.Ports[0].Affinity = 30 * time.Second
	st.Ports[1].ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.7")}
	st.Ports[1].ExternalLocal, st.Ports[1].NodePort = true, 30101
	st.Ports[1].Endpoints[0].NodeName = "node-a"
	st.Ports[2].InternalLocal = true
	d1 := newDP(t, ns)
	if err := d1.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	// A history: remove an endpoint, add another, so buckets are no
	// longer where a fresh assignment would put them.
	st.Ports[3].Endpoints = st.Ports[3].Endpoints[2:]
	if err := d1.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	st.Ports[3].Endpoints = append(st.Ports[3].Endpoints, testPort(3).Endpoints[:2]...)
	if err := d1.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	d1.Close()

	before := gen(t, ns)
	d2 := newDP(t, ns)
	if err := d2.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if g := gen(t, ns); g != before || d2.lastElems != 0 {
		t.Fatalf("adopting an unchanged table committed (generation %d → %d, %d element changes); want nothing written", before, g, d2.lastElems)
	}
	// And then only differences.
	st.Ports[7].Endpoints = st.Ports[7].Endpoints[1:]
	if err := d2.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if d2.lastElems == 0 || d2.lastElems > 2*22 {
		t.Fatalf("one endpoint removal after adoption sent %d element changes, want 1 to %d", d2.lastElems, 2*22)
	}
}

// A table written for another configuration is not adopted but rebuilt.
func TestAdoptOtherShapeRebuilds(t *testing.T) {
	ns := nstest.New(t)
	ctx := context.Background()
	st := manyPorts(3)
	d1 := newDP(t, ns)
	if err := d1.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	d1.Close()
	d2, err := New(Config{NetNS: ns.Path(), Node: dataplane.Node{Name: "node-a", MasqueradeAll: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if err := d2.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if d2.adopted || d2.lastElems == 0 {
		t.Fatalf("a table with other rules was adopted (%d element changes); want it rebuilt", d2.lastElems)
	}
}

// A table deleted behind the Dataplane's back is restored by the next
// Sync; one whose rules were flushed too.
func TestTamperRepaired(t *testing.T) {
	ns := nstest.New(t)
	ctx := context.Background()
	st := manyPorts(3)
	d := newDP(t, ns)
	if err := d.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	other, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	for _, tamper := range []func(){
		func() { other.DelTable(d.table) },
		func() { other.FlushChain(&nftables.Chain{Name: "services", Table: d.table}) },
		func() { other.DelChain(&nftables.Chain{Name: "filter-prerouting", Table: d.table}) },
	} {
		tamper()
		if err := other.Flush(); err != nil {
			t.Fatal(err)
		}
		if ok, _ := d.verify(); ok {
			t.Fatal("tampering went unnoticed by verify")
		}
		if err := d.Sync(ctx, st); err != nil {
			t.Fatal(err)
		}
		if ok, err := d.verify(); !ok || err != nil {
			t.Fatalf("after Sync the table is still not whole (%v)", err)
		}
	}
}
