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
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/internal/nstest"
	"github.com/svcplane/svcplane/internal/prefixes"
)

func testPort(n int) dataplane.ServicePort {
	p := dataplane.ServicePort{
		Name:       dataplane.PortName{Namespace: "default", Name: fmt.Sprintf("svc-%d", n), Port: "http"},
		Protocol:   dataplane.TCP,
		Port:       80,
		ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 19, byte(n / 256), byte(n % 256)}), netip.MustParseAddr(fmt.Sprintf("2001:db8:ffff::%x", n))},
	}
	for i := range 3 {
		p.Endpoints = append(p.Endpoints,
			dataplane.Endpoint{Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)}), Port: 8080, Ready: true, Serving: true},
			dataplane.Endpoint{Addr: netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%x", 10+i)), Port: 8080, Ready: true, Serving: true})
	}
	return p
}

func newDP(t *testing.T, ns *netnsutil.NS) *Dataplane {
	t.Helper()
	d, err := New(Config{NetNS: ns.Path(), Node: dataplane.Node{Name: "node-a", LocalPodCIDRs: []netip.Prefix{
		netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:db8:1::/64")}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// What an operator reads with `nft list` must parse and lead from the
// service name to its elements.
func TestRulesetReadable(t *testing.T) {
	ns := nstest.New(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("the nft tool is not installed (make test installs it)")
	}
	d := newDP(t, ns)
	// Every kind of frontend and policy, so that every rule and set
	// exists and must print.
	p := testPort(1)
	p.NodePort = 30123
	p.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.5")}
	p.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.6"), netip.MustParseAddr("2001:db8:beef::6")}
	p.SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/25")}
	p.Affinity = 10800 * time.Second
	q := testPort(2)
	q.ExternalLocal, q.NodePort, q.Affinity = true, 30124, 10*time.Second
	q.Endpoints[0].NodeName = "node-a"
	if err := d.Sync(context.Background(), &dataplane.State{Ports: []dataplane.ServicePort{p, q}}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nsenter", "--net="+ns.Path(), "nft", "list", "table", "inet", DefaultTable).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	for _, want := range []string{
		`198.19.0.1 . tcp . 80 comment "default/svc-1:http"`,
		`2001:db8:ffff::1 . tcp . 80 comment "default/svc-1:http"`,
		`dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 64 map @endpoints-v4`,
		`ip daddr . meta l4proto . th dport . numgen random mod 1 @endpoints-v4 jump pick-endpoints-v4`,
		`chain pick-nodeport-local-endpoints-v6 {`,
		`ip6 daddr . meta l4proto . th dport . numgen random mod 1 offset 3 != @endpoints-v6 dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints-v6`,
		`198.19.0.1 . tcp . 80 . 0x0000003f : 198.18.1.12 . 8080`,
		`firewall-allow-v4`,
		`203.0.113.6 . tcp . 80 . 192.0.2.0/25`,
		`chain affinity-10800s {`,
		`chain affinity-10s-nodeports {`,
		`numgen random mod 1 offset 63`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("nft list table lacks %q:\n%s", want, out)
		}
	}
}

// Later Syncs send only what changed: nothing for an equal State, a few
// slots for one endpoint, however many services there are.
func TestSyncSendsOnlyChanges(t *testing.T) {
	ns := nstest.New(t)
	d := newDP(t, ns)
	ctx := context.Background()
	st := &dataplane.State{}
	for i := 1; i <= 200; i++ {
		st.Ports = append(st.Ports, testPort(i))
	}
	if err := d.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if d.lastElems != 0 {
		t.Fatalf("an unchanged State sent %d element changes, want 0", d.lastElems)
	}
	// Remove the first IPv4 endpoint of one service: its slot takes the
	// last slot's endpoint (delete + add) and the last slot goes; its
	// hairpin pair stays (others share it).
	st.Ports[7].Endpoints = st.Ports[7].Endpoints[1:]
	if err := d.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if d.lastElems != 3 {
		t.Fatalf("one endpoint removal sent %d element changes, want 3", d.lastElems)
	}
	// Remove a whole service: its 2 frontends, 6 slots (3 endpoints per
	// family), 2 cluster IPs.
	st.Ports = append(st.Ports[:3], st.Ports[4:]...)
	if err := d.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if want := 2 + 6 + 2; d.lastElems != want {
		t.Fatalf("removing a service sent %d element changes, want %d", d.lastElems, want)
	}
}

// An invalid State changes nothing and names the field.
func TestSyncInvalid(t *testing.T) {
	ns := nstest.New(t)
	d := newDP(t, ns)
	p := testPort(1)
	p.Port = 0
	err := d.Sync(context.Background(), &dataplane.State{Ports: []dataplane.ServicePort{p}})
	if err == nil || !strings.Contains(err.Error(), "ports[0].port") {
		t.Fatalf("Sync = %v, want an error naming ports[0].port", err)
	}
}

func TestConfigErrors(t *testing.T) {
	_, err := New(Config{MasqueradeMark: 0x3, Node: dataplane.Node{LocalPodCIDRs: []netip.Prefix{{}}}})
	if err == nil || !strings.Contains(err.Error(), "masqueradeMark") || !strings.Contains(err.Error(), "node.localPodCIDRs[0]") {
		t.Fatalf("New = %v, want errors naming masqueradeMark and node.localPodCIDRs[0]", err)
	}
	_, err = New(Config{NetNS: "/nonexistent/netns"})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/netns") {
		t.Fatalf("New = %v, want an error naming the namespace path", err)
	}
}

// Overlapping loadBalancerSourceRanges (a /0 beside a /32, a /24 beside
// its /25) are legal in Kubernetes; they must not make the interval set
// clash (EEXIST froze every later Sync) or overwrite each other.
func TestOverlappingSourceRanges(t *testing.T) {
	ns := nstest.New(t)
	d := newDP(t, ns)
	p := testPort(1)
	p.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.6")}
	for _, r := range []string{"0.0.0.0/0", "192.0.2.7/32", "198.51.100.0/24", "198.51.100.0/25", "198.51.100.0/24"} {
		p.SourceRanges = append(p.SourceRanges, netip.MustParsePrefix(r))
	}
	if err := d.Sync(context.Background(), &dataplane.State{Ports: []dataplane.ServicePort{p}}); err != nil {
		t.Fatalf("Sync with overlapping source ranges: %v", err)
	}
	if got := prefixes.Outermost(p.SourceRanges); len(got) != 1 || got[0] != netip.MustParsePrefix("0.0.0.0/0") {
		t.Fatalf("outermost = %v, want [0.0.0.0/0]", got)
	}
}
