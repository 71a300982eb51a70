package nft

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/svcplane/svcplane/dataplane"
)

// newTestNS returns the path of a fresh, unnamed network namespace that
// lives as long as the test.
func newTestNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run `sudo make test`")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err2 := netns.Set(orig); err2 != nil {
		t.Fatalf("cannot return to the original namespace: %v", err2) // thread stays locked
	}
	runtime.UnlockOSThread()
	orig.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))
}

func nftList(t *testing.T, path string) string {
	out, err := exec.Command("nsenter", "--net="+path, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v\n%s", err, out)
	}
	return string(out)
}

func TestSmoke(t *testing.T) {
	path := newTestNS(t)
	d, err := New(Config{NetNS: path, Node: dataplane.Node{Name: "node-a", LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:db8:1::/64")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st := &dataplane.State{Ports: []dataplane.ServicePort{{
		Name: dataplane.PortName{Namespace: "default", Name: "svc-web", Port: "http"}, Protocol: dataplane.TCP, Port: 80,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10"), netip.MustParseAddr("2001:db8:ffff::10")},
		Endpoints: []dataplane.Endpoint{
			{Addr: netip.MustParseAddr("198.18.1.10"), Port: 8080, Ready: true, Serving: true},
			{Addr: netip.MustParseAddr("198.18.1.11"), Port: 8080, Ready: true, Serving: true},
			{Addr: netip.MustParseAddr("2001:db8:1::10"), Port: 8080, Ready: true, Serving: true},
		},
	}}}
	if err := d.Sync(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"nat-prerouting", "services", "nat-postrouting", "filter-forward"} {
		out, err := exec.Command("nsenter", "--net="+path, "nft", "list", "chain", "inet", "svcplane", c).CombinedOutput()
		t.Logf("%s: %v\n%s", c, err, out)
	}
	out, err := exec.Command("nsenter", "--net="+path, "nft", "list", "sets").CombinedOutput()
	t.Logf("sets: %v\n%s", err, out)
	out, err = exec.Command("nsenter", "--net="+path, "nft", "list", "map", "inet", "svcplane", "endpoints-v4").CombinedOutput()
	t.Logf("map: %v\n%s", err, out)
	st.Ports[0].Endpoints = st.Ports[0].Endpoints[1:]
	if err := d.Sync(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Log(nftList(t, path))
}
