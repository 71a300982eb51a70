package topo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/netnsutil"
)

const (
	port      = 80
	freePort  = 81 // no server listens here
	shortWait = 300 * time.Millisecond
)

var (
	serviceV4 = netip.MustParseAddrPort("198.19.0.1:80")
	serviceV6 = netip.MustParseAddrPort("[2001:db8:ffff::1]:80")
)

// needRoot skips unless network namespaces can be created here.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("topo needs root to create network namespaces: run as root, or in the VM (make test-vm)")
	}
	ns, err := netnsutil.New()
	if err != nil {
		t.Skipf("cannot create network namespaces here (%v): run as root on Linux with network namespaces, or in the VM (make test-vm)", err)
	}
	ns.Close()
}

// newTopo builds a topology with web-1, web-2 on node-a and web-3, web-4
// on node-b, all serving port 80, and closes it when the test ends.
func newTopo(t testing.TB) *Topology {
	t.Helper()
	needRoot(t)
	top, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() {
		if err := top.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	for i, node := range []*Node{top.Nodes[0], top.Nodes[0], top.Nodes[1], top.Nodes[1]} {
		if _, err := top.AddPod(node, fmt.Sprintf("web-%d", i+1), port); err != nil {
			t.Fatalf("AddPod() = %v", err)
		}
	}
	return top
}

func addrOf(h *Host, v6 bool) netip.Addr {
	if v6 {
		return h.IPv6
	}
	return h.IPv4
}

func family(v6 bool) string {
	if v6 {
		return "v6"
	}
	return "v4"
}

// expectReply makes a request and checks who answered and whom it saw.
func expectReply(t *testing.T, from *Host, proto dataplane.Protocol, dst netip.AddrPort, opt RequestOptions, wantName string, wantFrom netip.Addr) Reply {
	t.Helper()
	r, err := from.Request(context.Background(), proto, dst, opt)
	if err != nil {
		t.Errorf("%s → %s %s: %v", from.Name, proto, dst, err)
		return r
	}
	if r.Pod != wantName || r.From.Addr() != wantFrom {
		t.Errorf("%s → %s %s: answered by %s, seeing %s; want %s, seeing %s", from.Name, proto, dst, r.Pod, r.From, wantName, wantFrom)
	}
	return r
}

func TestTopology(t *testing.T) {
	top := newTopo(t)
	nodeA, nodeB := top.Nodes[0], top.Nodes[1]
	pods := append(append([]*Pod{}, nodeA.Pods...), nodeB.Pods...)

	t.Run("Addresses", func(t *testing.T) {
		want := []string{"web-1 198.18.1.10 2001:db8:1::a veth-web-1", "web-2 198.18.1.11 2001:db8:1::b veth-web-2",
			"web-3 198.18.2.10 2001:db8:2::a veth-web-3", "web-4 198.18.2.11 2001:db8:2::b veth-web-4"}
		for i, p := range pods {
			if got := fmt.Sprintf("%s %s %s %s", p.Name, p.IPv4, p.IPv6, p.VethName); got != want[i] {
				t.Errorf("pod %d = %s, want %s", i, got, want[i])
			}
		}
		m := nodeB.NodeModel()
		if m.Name != "node-b" || len(m.LocalPodCIDRs) != 2 || m.LocalPodCIDRs[0].String() != "198.18.2.0/24" || m.LocalPodCIDRs[1].String() != "2001:db8:2::/64" {
			t.Errorf("NodeModel() = %+v", m)
		}
		if nodeA.IPv4.String() != "192.0.2.1" || nodeB.IPv6.String() != "2001:db8::2" || top.Client.IPv4.String() != "192.0.2.100" {
			t.Errorf("node/client addresses: %s %s %s", nodeA.IPv4, nodeB.IPv6, top.Client.IPv4)
		}
	})

	t.Run("PodToPod", func(t *testing.T) {
		for _, src := range pods {
			for _, dst := range pods {
				if src == dst {
					continue
				}
				for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
					for _, v6 := range []bool{false, true} {
						expectReply(t, &src.Host, proto, netip.AddrPortFrom(addrOf(&dst.Host, v6), port),
							RequestOptions{Payload: []byte("ping")}, dst.Name, addrOf(&src.Host, v6))
					}
				}
			}
		}
	})

	t.Run("PodToItself", func(t *testing.T) {
		p := pods[0]
		for _, v6 := range []bool{false, true} {
			expectReply(t, &p.Host, dataplane.TCP, netip.AddrPortFrom(addrOf(&p.Host, v6), port), RequestOptions{}, p.Name, addrOf(&p.Host, v6))
		}
	})

	t.Run("ClientToPod", func(t *testing.T) {
		for _, dst := range pods {
			for _, v6 := range []bool{false, true} {
				expectReply(t, top.Client, dataplane.UDP, netip.AddrPortFrom(addrOf(&dst.Host, v6), port), RequestOptions{}, dst.Name, addrOf(top.Client, v6))
			}
		}
	})

	t.Run("HostService", func(t *testing.T) {
		for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
			if err := nodeA.ServeEcho(proto, 9000); err != nil {
				t.Fatal(err)
			}
		}
		for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
			for _, v6 := range []bool{false, true} {
				dst := netip.AddrPortFrom(addrOf(&nodeA.Host, v6), 9000)
				expectReply(t, top.Client, proto, dst, RequestOptions{Payload: []byte("x")}, "node-a", addrOf(top.Client, v6))
				expectReply(t, &nodeB.Host, proto, dst, RequestOptions{}, "node-a", addrOf(&nodeB.Host, v6))
				expectReply(t, &pods[2].Host, proto, dst, RequestOptions{}, "node-a", addrOf(&pods[2].Host, v6))
			}
			// The node-side address of a pod's veth answers from itself.
			expectReply(t, &pods[0].Host, proto, netip.MustParseAddrPort("198.18.1.1:9000"), RequestOptions{}, "node-a", pods[0].IPv4)
		}
		if err := nodeA.ServeEcho(dataplane.TCP, 9000); err == nil {
			t.Error("second ServeEcho on the same port = nil error, want address in use")
		}
	})

	t.Run("LargePayload", func(t *testing.T) {
		big := make([]byte, 1<<20)
		for i := range big {
			big[i] = byte(rand.IntN(256))
		}
		dgram := bytes.Repeat([]byte("0123456789"), 200)
		for _, v6 := range []bool{false, true} {
			dst := netip.AddrPortFrom(addrOf(&pods[0].Host, v6), port)
			start := time.Now()
			r := expectReply(t, &pods[3].Host, dataplane.TCP, dst, RequestOptions{Payload: big}, pods[0].Name, addrOf(&pods[3].Host, v6))
			t.Logf("1 MiB TCP %s across nodes: %v", family(v6), time.Since(start))
			if len(r.Payload) != len(big) {
				t.Errorf("TCP echo %d bytes, want %d", len(r.Payload), len(big))
			}
			r = expectReply(t, &pods[3].Host, dataplane.UDP, dst, RequestOptions{Payload: dgram}, pods[0].Name, addrOf(&pods[3].Host, v6))
			if len(r.Payload) != len(dgram) {
				t.Errorf("UDP echo %d bytes, want %d", len(r.Payload), len(dgram))
			}
		}
	})

	t.Run("Rejected", func(t *testing.T) {
		for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
			for _, v6 := range []bool{false, true} {
				for _, dst := range []*Host{&pods[1].Host, &pods[2].Host, &nodeB.Host} {
					d := netip.AddrPortFrom(addrOf(dst, v6), freePort)
					start := time.Now()
					_, err := pods[0].Request(context.Background(), proto, d, RequestOptions{Timeout: time.Second})
					if !IsRejected(err) || IsTimeout(err) {
						t.Errorf("%s %s to a port without server: err = %v; want rejected", proto, d, err)
					}
					if el := time.Since(start); el > 500*time.Millisecond {
						t.Errorf("%s %s: rejection took %v; want it at once", proto, d, el)
					}
				}
			}
		}
	})

	// Nothing handles the service CIDR: the packets leave through the
	// node's default route to the client, which drops them silently.
	t.Run("UnhandledIsTimeout", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, src := range []*Host{&pods[0].Host, &pods[3].Host, &nodeA.Host} {
			for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
				for _, dst := range []netip.AddrPort{serviceV4, serviceV6} {
					wg.Go(func() {
						_, err := src.Request(context.Background(), proto, dst, RequestOptions{Timeout: shortWait})
						if !IsTimeout(err) || IsRejected(err) {
							t.Errorf("%s → %s %s with nothing programmed: err = %v; want a timeout, not a reject", src.Name, proto, dst, err)
						}
					})
				}
			}
		}
		wg.Wait()
		// The client's own main table has no default route.
		_, err := top.Client.Request(context.Background(), dataplane.TCP, serviceV4, RequestOptions{Timeout: shortWait})
		if !IsRejected(err) {
			t.Errorf("client → %s: err = %v; want ENETUNREACH at once", serviceV4, err)
		}
	})

	t.Run("FixedSourcePort", func(t *testing.T) {
		for i := range 3 {
			r := expectReply(t, &pods[0].Host, dataplane.UDP, netip.AddrPortFrom(pods[2].IPv4, port), RequestOptions{LocalPort: 40000}, pods[2].Name, pods[0].IPv4)
			if r.From.Port() != 40000 {
				t.Errorf("try %d: server saw port %d, want 40000", i, r.From.Port())
			}
		}
	})

	t.Run("LocalAddr", func(t *testing.T) {
		extra := netip.MustParseAddr("192.0.2.101")
		if err := top.Client.AddAddress(netip.PrefixFrom(extra, 32)); err != nil {
			t.Fatal(err)
		}
		expectReply(t, top.Client, dataplane.TCP, netip.AddrPortFrom(pods[0].IPv4, port), RequestOptions{LocalAddr: extra}, pods[0].Name, extra)
		expectReply(t, top.Client, dataplane.UDP, netip.AddrPortFrom(pods[0].IPv4, port), RequestOptions{LocalAddr: extra}, pods[0].Name, extra)
	})

	t.Run("RouteExternalVia", func(t *testing.T) {
		ext := netip.MustParseAddr("203.0.113.7")
		if err := nodeB.AddAddress(netip.PrefixFrom(ext, 32)); err != nil {
			t.Fatal(err)
		}
		if err := nodeB.ServeEcho(dataplane.UDP, 7000); err != nil {
			t.Fatal(err)
		}
		dst := netip.AddrPortFrom(ext, 7000)
		// Routed to node-a, which does not have it: dropped.
		if _, err := top.Client.Request(context.Background(), dataplane.UDP, dst, RequestOptions{Timeout: shortWait}); !IsTimeout(err) {
			t.Errorf("client → %s via node-a: err = %v; want a timeout", dst, err)
		}
		if err := top.RouteExternalVia(nodeB); err != nil {
			t.Fatal(err)
		}
		expectReply(t, top.Client, dataplane.UDP, dst, RequestOptions{}, "node-b", top.Client.IPv4)
		if err := top.RouteExternalVia(nodeA); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("SCTP", func(t *testing.T) {
		dst := netip.AddrPortFrom(pods[2].IPv4, port)
		if !top.SCTP() {
			_, err := pods[0].Request(context.Background(), dataplane.SCTP, dst, RequestOptions{})
			if !errors.Is(err, dataplane.ErrUnsupported) {
				t.Errorf("SCTP request on a kernel without SCTP: err = %v; want ErrUnsupported", err)
			}
			if err := nodeA.ServeEcho(dataplane.SCTP, 9000); !errors.Is(err, dataplane.ErrUnsupported) {
				t.Errorf("SCTP ServeEcho on a kernel without SCTP: err = %v; want ErrUnsupported", err)
			}
			t.Skip("the kernel has no SCTP sockets; SCTP traffic is tested in the VM (make test-vm)")
		}
		for _, v6 := range []bool{false, true} {
			d := netip.AddrPortFrom(addrOf(&pods[2].Host, v6), port)
			expectReply(t, &pods[0].Host, dataplane.SCTP, d, RequestOptions{Payload: bytes.Repeat([]byte("s"), 100000)}, pods[2].Name, addrOf(&pods[0].Host, v6))
			_, err := pods[0].Request(context.Background(), dataplane.SCTP, netip.AddrPortFrom(d.Addr(), freePort), RequestOptions{})
			if !IsRejected(err) {
				t.Errorf("SCTP to a port without server: err = %v; want rejected", err)
			}
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Go(func() {
				src, dst := pods[i%4], pods[(i+1)%4]
				proto := []dataplane.Protocol{dataplane.TCP, dataplane.UDP}[i/4%2]
				v6 := i/8%2 == 1
				expectReply(t, &src.Host, proto, netip.AddrPortFrom(addrOf(&dst.Host, v6), port), RequestOptions{Payload: []byte("c")}, dst.Name, addrOf(&src.Host, v6))
			})
		}
		wg.Wait()
	})

	t.Run("RemovePod", func(t *testing.T) {
		p, err := top.AddPod(nodeB, "gone", port)
		if err != nil {
			t.Fatal(err)
		}
		if p.IPv4.String() != "198.18.2.12" {
			t.Errorf("fifth pod address = %s, want 198.18.2.12", p.IPv4)
		}
		dst := netip.AddrPortFrom(p.IPv4, port)
		expectReply(t, &pods[0].Host, dataplane.TCP, dst, RequestOptions{}, "gone", pods[0].IPv4)
		if err := top.RemovePod(p); err != nil {
			t.Fatal(err)
		}
		if top.Pod("gone") != nil || len(nodeB.Pods) != 2 {
			t.Errorf("after RemovePod: Pod(gone) = %v, node-b has %d pods; want nil, 2", top.Pod("gone"), len(nodeB.Pods))
		}
		if p.NS.Fd() != -1 {
			t.Error("the removed pod's namespace is still open")
		}
		if _, err := pods[0].Request(context.Background(), dataplane.TCP, dst, RequestOptions{Timeout: shortWait}); !IsTimeout(err) {
			t.Errorf("request to a removed pod: err = %v; want a timeout", err)
		}
		if err := top.RemovePod(p); err == nil {
			t.Error("second RemovePod = nil error")
		}
		q, err := top.AddPod(nodeB, "gone", port)
		if err != nil {
			t.Fatalf("AddPod with a removed pod's name: %v", err)
		}
		if q.IPv4 == p.IPv4 {
			t.Errorf("a new pod reused the removed pod's address %s", p.IPv4)
		}
	})

	t.Run("BadPods", func(t *testing.T) {
		if _, err := top.AddPod(nodeA, "web-1"); err == nil {
			t.Error("AddPod with a duplicate name = nil error")
		}
		if _, err := top.AddPod(nodeA, "bad name"); err == nil {
			t.Error("AddPod with a space in the name = nil error")
		}
		if _, err := top.AddPod(nodeA, "a-very-long-pod-name", port); err != nil {
			t.Errorf("AddPod with a long name: %v", err)
		} else if p := top.Pod("a-very-long-pod-name"); p.VethName != "vpod12" {
			t.Errorf("long pod's veth = %s, want vpod12", p.VethName)
		}
	})
}

// snapshot is what the root namespace looks like to `ip`.
func snapshot(t *testing.T) string {
	t.Helper()
	expires := regexp.MustCompile(`expires \d+sec|(valid|preferred)_lft \S+`)
	var b strings.Builder
	for _, args := range [][]string{
		{"-o", "link"}, {"-o", "addr"}, {"route"}, {"-6", "route"}, {"rule"}, {"-6", "rule"}, {"netns", "list"},
	} {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Skipf("cannot run ip %s to compare the root namespace: %v %s", strings.Join(args, " "), err, out)
		}
		fmt.Fprintf(&b, "## ip %s\n%s", strings.Join(args, " "), expires.ReplaceAllString(string(out), ""))
	}
	for _, s := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv6.conf.all.accept_dad", "net.ipv4.icmp_ratelimit", "net.ipv4.tcp_tw_reuse"} {
		v, err := netnsutil.Sysctl(s)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s = %s\n", s, v)
	}
	return b.String()
}

func TestRootNamespaceUntouched(t *testing.T) {
	needRoot(t)
	before := snapshot(t)
	top, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := top.AddPod(top.Nodes[1], "web-1", port)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := top.Client.Request(context.Background(), dataplane.TCP, netip.AddrPortFrom(p.IPv4, port), RequestOptions{}); err != nil {
		t.Error(err)
	}
	during := snapshot(t)
	if err := top.Close(); err != nil {
		t.Fatal(err)
	}
	after := snapshot(t)
	if during != before {
		t.Errorf("root namespace changed while the topology ran:\nbefore:\n%s\nduring:\n%s", before, during)
	}
	if after != before {
		t.Errorf("root namespace changed after Close:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	needRoot(t)
	before := runtime.NumGoroutine()
	top, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var pods []*Pod
	for i := range 4 {
		p, err := top.AddPod(top.Nodes[i%2], fmt.Sprintf("web-%d", i+1), 80, 8080)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	if err := top.Nodes[0].ServeEcho(dataplane.TCP, 9000); err != nil {
		t.Fatal(err)
	}
	// An idle open connection, which Close must cut.
	if _, err := pods[0].Request(context.Background(), dataplane.TCP, netip.AddrPortFrom(pods[1].IPv4, 8080), RequestOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := top.RemovePod(pods[3]); err != nil {
		t.Fatal(err)
	}
	if err := top.Close(); err != nil {
		t.Fatal(err)
	}
	if err := top.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	if _, err := top.AddPod(top.Nodes[0], "late"); err == nil {
		t.Error("AddPod after Close = nil error")
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before New, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Close of a Topology New never finished must work too.
	if err := (&Topology{}).Close(); err != nil {
		t.Errorf("Close of an empty Topology = %v", err)
	}
}

func TestBuildTime(t *testing.T) {
	needRoot(t)
	start := time.Now()
	top, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	built := time.Since(start)
	for i := range 4 {
		if _, err := top.AddPod(top.Nodes[i%2], fmt.Sprintf("web-%d", i+1), 80); err != nil {
			t.Fatal(err)
		}
	}
	withPods := time.Since(start)
	r, err := top.Nodes[0].Pods[0].Request(context.Background(), dataplane.TCP, netip.AddrPortFrom(top.Nodes[1].Pods[0].IPv4, 80), RequestOptions{})
	firstReq := time.Since(start) - withPods
	if err != nil || r.Pod != "web-2" {
		t.Fatalf("first request: %v %v", r, err)
	}
	cs := time.Now()
	if err := top.Close(); err != nil {
		t.Fatal(err)
	}
	closed := time.Since(cs)
	t.Logf("New: %v; New + 4 pods: %v; first request: %v; Close: %v", built, withPods, firstReq, closed)
	if withPods > 5*time.Second {
		t.Errorf("New + 4 pods took %v; want well under a second", withPods)
	}
}

func TestParseGreeting(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"You've hit web-1 from 198.18.1.5:40312\n", "web-1 198.18.1.5:40312"},
		{"You've hit node-a from [2001:db8::100]:5\n", "node-a [2001:db8::100]:5"},
		{"You've hit web-1 from [::ffff:1.2.3.4]:5\n", "web-1 1.2.3.4:5"},
		{"You've hit  from 1.2.3.4:5\n", "error"},
		{"You've hit web-1 from nowhere\n", "error"},
		{"HTTP/1.1 400 Bad Request\r\n", "error"},
	} {
		r, err := parseGreeting([]byte(tc.in))
		got := "error"
		if err == nil {
			got = r.Pod + " " + r.From.String()
		}
		if got != tc.want {
			t.Errorf("parseGreeting(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
