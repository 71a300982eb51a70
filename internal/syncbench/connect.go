package syncbench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// connectTarget is the ClusterIP the Connect benchmark dials: outside the
// addresses State generates (198.19.0.1 up to 198.19.195.x for 50000
// ports).
var connectTarget = netip.AddrPortFrom(netip.MustParseAddr("198.19.255.1"), 80)

// connectEnv is the topology of BenchmarkConnect, built once for every
// size: a client pod and two server pods on node-a, which the backend
// programs.
type connectEnv struct {
	tp     *topo.Topology
	client *topo.Pod
	dp     dataplane.Dataplane
	target dataplane.ServicePort
}

func (c *connectEnv) close() {
	if c == nil {
		return
	}
	if c.dp != nil {
		c.dp.Close()
	}
	c.tp.Close()
}

func newConnectEnv(be Backend) (*connectEnv, error) {
	ctx := context.Background()
	tp, err := topo.New(ctx, topo.Options{})
	if err != nil {
		return nil, err
	}
	c := &connectEnv{tp: tp}
	node := tp.Nodes[0]
	if c.client, err = tp.AddPod(node, "client"); err != nil {
		c.close()
		return nil, err
	}
	c.target = dataplane.ServicePort{
		Name:       dataplane.PortName{Namespace: "bench", Name: "target", Port: "http"},
		Protocol:   dataplane.TCP,
		Port:       connectTarget.Port(),
		ClusterIPs: []netip.Addr{connectTarget.Addr()},
	}
	for _, name := range []string{"web-1", "web-2"} {
		p, err := tp.AddPod(node, name, 8080)
		if err != nil {
			c.close()
			return nil, err
		}
		c.target.Endpoints = append(c.target.Endpoints, dataplane.Endpoint{Addr: p.IPv4, Port: 8080, NodeName: node.Name, Ready: true, Serving: true})
	}
	if c.dp, err = be.New(node.NS.Path(), node.NodeModel()); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// Connect runs BenchmarkConnect/<backend>/services=<N>: new TCP
// connections, one after another, from a pod to one ClusterIP while N
// service ports are programmed (N-1 generated ones and the target, whose
// two endpoints are pods on the same node). An op is one connection:
// connect, read the server's greeting, close with a reset (so that no
// TIME_WAIT piles up). Reported: conns/s and the p50 and p99 of the
// connect (handshake) latency.
func Connect(r R, be Backend) {
	maxN := envInt("SVCPLANE_BENCH_MAX", 0)
	r.Run(be.Name, func(r R) {
		if r.Once() {
			newNS(r).Close() // skips when not root
		}
		var c *connectEnv
		defer func() { c.close() }()
		for _, n := range sizes(r, ConnectSizes, func(n int) int { return n }, maxN) {
			r.Run(fmt.Sprintf("services=%d", n), func(r R) {
				if c == nil {
					var err error
					if c, err = newConnectEnv(be); err != nil {
						r.Fatal(err)
					}
				}
				connect(r, c, n)
			})
		}
	})
}

func connect(r R, c *connectEnv, n int) {
	st := State(n-1, 5, n)
	st.Ports = append(st.Ports, c.target)
	if err := c.dp.Sync(context.Background(), st); err != nil {
		r.Fatal(err)
	}
	ops := r.N()
	lat := make([]time.Duration, ops)
	dial := func(i int) error {
		d := net.Dialer{Timeout: 2 * time.Second}
		t0 := time.Now()
		conn, err := d.Dial("tcp4", connectTarget.String())
		if err != nil {
			return err
		}
		if i >= 0 {
			lat[i] = time.Since(t0)
		}
		tc := conn.(*net.TCPConn)
		defer func() {
			tc.SetLinger(0)
			tc.Close()
		}()
		tc.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(tc).ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the greeting: %w", err)
		}
		if !strings.HasPrefix(line, "You've hit web-") {
			return fmt.Errorf("unexpected greeting %q", line)
		}
		return nil
	}
	var elapsed time.Duration
	err := c.client.Do(func() error {
		for range 20 { // warm up: ARP, caches
			if err := dial(-1); err != nil {
				return err
			}
		}
		r.ResetTimer()
		t0 := time.Now()
		for i := range ops {
			if err := dial(i); err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
		}
		elapsed = time.Since(t0)
		r.StopTimer()
		return nil
	})
	if err != nil {
		r.Fatal(err)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds()) / 1e3
	}
	r.ReportMetric(float64(ops)/elapsed.Seconds(), "conns/s")
	r.ReportMetric(pct(0.50), "p50-us")
	r.ReportMetric(pct(0.99), "p99-us")
}
