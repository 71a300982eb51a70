package nft

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/nstest"
)

// showState has every kind of frontend Show tells apart: cluster, external
// and load-balancer IPs and NodePorts of both families; source ranges;
// ClientIP affinity; externalTrafficPolicy Local with and without local
// endpoints; internalTrafficPolicy Local without local endpoints (drop);
// a service without endpoints (reject); and one without affinity, whose
// frontends have one slot per endpoint instead of 64.
func showState() *dataplane.State {
	full := testPort(1)
	full.NodePort = 30123
	full.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.5")}
	full.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.6"), netip.MustParseAddr("2001:db8:beef::6")}
	full.SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/25"), netip.MustParsePrefix("192.0.2.200/32")}
	full.Affinity = 10800 * time.Second

	local := testPort(2)
	local.ExternalLocal, local.NodePort = true, 30124
	local.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.7")}
	local.Affinity = 10 * time.Second
	local.Endpoints[0].NodeName = "node-a" // 198.18.1.10; no IPv6 endpoint is local

	internal := testPort(3)
	internal.ClusterIPs = internal.ClusterIPs[:1]
	internal.Endpoints = ipv4Only(internal.Endpoints)
	internal.InternalLocal = true // and no endpoint on node-a: dropped

	none := testPort(4)
	none.ClusterIPs = none.ClusterIPs[:1]
	none.NodePort = 30125
	none.Endpoints = nil

	plain := testPort(5)
	plain.ClusterIPs = plain.ClusterIPs[:1]
	plain.Endpoints = ipv4Only(plain.Endpoints)
	plain.NodePort = 30126
	return &dataplane.State{Ports: []dataplane.ServicePort{full, local, internal, none, plain}}
}

func ipv4Only(eps []dataplane.Endpoint) []dataplane.Endpoint {
	var out []dataplane.Endpoint
	for _, e := range eps {
		if e.Addr.Is4() {
			out = append(out, e)
		}
	}
	return out
}

// showText renders p for comparison, one line per frontend and endpoint.
func showText(p *Programmed) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s exists=%v\n", p.Table, p.Exists)
	for _, port := range p.Ports {
		fmt.Fprintf(&b, "%s\n", port.Name)
		for _, f := range port.Frontends {
			fmt.Fprintf(&b, "  %s %s", f.Kind, f)
			for _, a := range []struct {
				on   bool
				text string
			}{{f.Local, "local"}, {f.Reject, "reject"}, {f.Drop, "drop"}, {f.Affinity > 0, "affinity=" + f.Affinity.String()}, {len(f.SourceRanges) > 0, fmt.Sprint("ranges=", f.SourceRanges)}} {
				if a.on {
					b.WriteString(" " + a.text)
				}
			}
			b.WriteByte('\n')
			for _, s := range f.Endpoints {
				fmt.Fprintf(&b, "    %s %d/%d\n", s.Endpoint, s.Slots, s.Of)
			}
			for _, s := range f.LocalEndpoints {
				fmt.Fprintf(&b, "    local %s %d/%d\n", s.Endpoint, s.Slots, s.Of)
			}
		}
	}
	return b.String()
}

const wantShow = `table svcplane exists=true
default/svc-1:http
  cluster IP 198.19.0.1:80/TCP affinity=3h0m0s
    198.18.1.10:8080 22/64
    198.18.1.11:8080 21/64
    198.18.1.12:8080 21/64
  cluster IP [2001:db8:ffff::1]:80/TCP affinity=3h0m0s
    [2001:db8:1::a]:8080 22/64
    [2001:db8:1::b]:8080 21/64
    [2001:db8:1::c]:8080 21/64
  external IP 203.0.113.5:80/TCP affinity=3h0m0s
    198.18.1.10:8080 22/64
    198.18.1.11:8080 21/64
    198.18.1.12:8080 21/64
  external IP 203.0.113.6:80/TCP affinity=3h0m0s ranges=[192.0.2.0/25 192.0.2.200/32]
    198.18.1.10:8080 22/64
    198.18.1.11:8080 21/64
    198.18.1.12:8080 21/64
  external IP [2001:db8:beef::6]:80/TCP affinity=3h0m0s
    [2001:db8:1::a]:8080 22/64
    [2001:db8:1::b]:8080 21/64
    [2001:db8:1::c]:8080 21/64
  NodePort 0.0.0.0:30123/TCP affinity=3h0m0s
    198.18.1.10:8080 22/64
    198.18.1.11:8080 21/64
    198.18.1.12:8080 21/64
  NodePort [::]:30123/TCP affinity=3h0m0s
    [2001:db8:1::a]:8080 22/64
    [2001:db8:1::b]:8080 21/64
    [2001:db8:1::c]:8080 21/64
default/svc-2:http
  cluster IP 198.19.0.2:80/TCP affinity=10s
    198.18.1.10:8080 22/64
    198.18.1.11:8080 21/64
    198.18.1.12:8080 21/64
  cluster IP [2001:db8:ffff::2]:80/TCP affinity=10s
    [2001:db8:1::a]:8080 22/64
    [2001:db8:1::b]:8080 21/64
    [2001:db8:1::c]:8080 21/64
  external IP 203.0.113.7:80/TCP local affinity=10s
    198.18.1.10:8080 22/64
    198.18.1.11:8080 21/64
    198.18.1.12:8080 21/64
    local 198.18.1.10:8080 64/64
  NodePort 0.0.0.0:30124/TCP local affinity=10s
    198.18.1.10:8080 22/64
    198.18.1.11:8080 21/64
    198.18.1.12:8080 21/64
    local 198.18.1.10:8080 64/64
  NodePort [::]:30124/TCP local affinity=10s
    [2001:db8:1::a]:8080 22/64
    [2001:db8:1::b]:8080 21/64
    [2001:db8:1::c]:8080 21/64
default/svc-3:http
  cluster IP 198.19.0.3:80/TCP drop
default/svc-4:http
  cluster IP 198.19.0.4:80/TCP reject
  NodePort 0.0.0.0:30125/TCP reject
default/svc-5:http
  cluster IP 198.19.0.5:80/TCP
    198.18.1.10:8080 1/3
    198.18.1.11:8080 1/3
    198.18.1.12:8080 1/3
  NodePort 0.0.0.0:30126/TCP
    198.18.1.10:8080 1/3
    198.18.1.11:8080 1/3
    198.18.1.12:8080 1/3
`

// Show reads back, per service port, every frontend with its policy and
// its endpoints' shares — also from a Dataplane that did not write the
// table (another process) and whose node configuration differs.
func TestShow(t *testing.T) {
	ns := nstest.New(t)
	ctx := context.Background()
	d := newDP(t, ns)
	p, err := d.Show(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.Exists || len(p.Ports) != 0 || p.Table != DefaultTable {
		t.Fatalf("Show before any Sync = %+v, want table %s not existing", p, DefaultTable)
	}
	if err := d.Sync(ctx, showState()); err != nil {
		t.Fatal(err)
	}
	p, err = d.Show(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := showText(p); got != wantShow {
		t.Errorf("Show =\n%s\nwant\n%s", got, wantShow)
	}

	reader, err := New(Config{NetNS: ns.Path()}) // another node configuration
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	p, err = reader.Show(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := showText(p); got != wantShow {
		t.Errorf("Show from a second Dataplane =\n%s\nwant\n%s", got, wantShow)
	}

	// An endpoint leaves: the others share its slots.
	st := showState()
	st.Ports[0].Endpoints = st.Ports[0].Endpoints[2:] // 198.18.1.10 and 2001:db8:1::a
	if err := d.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if p, err = reader.Show(ctx); err != nil {
		t.Fatal(err)
	}
	fr := p.Ports[0].Frontends[0]
	if len(fr.Endpoints) != 2 || fr.Endpoints[0].Slots+fr.Endpoints[1].Slots != fr.Endpoints[0].Of || fr.Endpoints[0].Endpoint.Addr().String() != "198.18.1.11" {
		t.Errorf("after removing 198.18.1.10, %s has %+v; want 198.18.1.11 and 198.18.1.12 sharing the slots", fr, fr.Endpoints)
	}

	if err := d.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err = reader.Show(ctx); err != nil || p.Exists || len(p.Ports) != 0 {
		t.Fatalf("Show after Cleanup = %+v, %v; want no table", p, err)
	}

	if err := reader.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Show(ctx); err == nil {
		t.Fatal("Show on a closed Dataplane succeeded")
	}
}

// Show decodes the table through the sets, chains and jumps its rules
// use (the affinity-frontends verdict maps jump to affinity-<T>s chains,
// whose names carry the timeout), while operators read the same table
// with `nft list table`. Every rule of a table with every feature must
// print: nft 1.0.6 and later say "unknown" or "invalid", or fail, on an
// expression they cannot print.
//
// (The listing does not load back with `nft -f`, and is not meant to:
// nft's parser rejects comments over 128 characters, which the kernel
// takes, and types a bare numgen as an integer where the bucket maps
// expect a packet mark.)
func TestShowTablePrintable(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("the nft tool is not installed (make test installs it)")
	}
	ns := nstest.New(t)
	d := newDP(t, ns)
	if err := d.Sync(context.Background(), showState()); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nsenter", "--net="+ns.Path(), "nft", "list", "table", "inet", DefaultTable).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	listing := string(out)
	for i, l := range strings.Split(listing, "\n") {
		if j := strings.Index(l, ` comment "`); j >= 0 {
			l = l[:j]
		}
		for _, bad := range []string{"unknown", "invalid", "[", "#"} {
			if strings.Contains(l, bad) {
				t.Errorf("line %d of the listing has %q, something nft could not print:\n%s", i+1, bad, l)
			}
		}
	}
	for _, want := range []string{
		"chain affinity-10800s {", "chain affinity-10s-nodeports {",
		"map affinity-frontends-v4 {", "map affinity-nodeports-v6 {",
		`comment "default/svc-1:http" : jump affinity-10800s`,
		`comment "default/svc-2:http" : jump affinity-10s-nodeports`,
		"set firewall-allow-v4 {", "203.0.113.6 . tcp . 80 . 192.0.2.200",
		"map local-endpoints-v4 {", "map nodeport-local-endpoints-v4 {",
		"set no-local-endpoints-v4 {", "set no-endpoint-nodeports-v4 {",
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("the listing lacks %q", want)
		}
	}
}
