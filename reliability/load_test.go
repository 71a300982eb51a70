package reliability

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/nstest"
)

// cluster is a throwaway topology (conformance/topo) whose node-a a
// backend programs, with a client pod on node-a.
type cluster struct {
	t      *testing.T
	ctx    context.Context
	topo   *topo.Topology
	node   *topo.Node // node-a, the node programmed
	client *topo.Pod  // on node-a
}

// newCluster builds the topology; timeout bounds the test's requests and
// Syncs (multiplied by topo.TimeScale under emulation).
func newCluster(t *testing.T, timeout time.Duration) *cluster {
	t.Helper()
	nstest.NeedRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scale(timeout))
	t.Cleanup(cancel)
	tp, err := topo.New(ctx, topo.Options{})
	if err != nil {
		t.Fatalf("build topology: %v", err)
	}
	t.Cleanup(func() {
		if err := tp.Close(); err != nil {
			t.Errorf("tear down topology: %v", err)
		}
	})
	c := &cluster{t: t, ctx: ctx, topo: tp, node: tp.Nodes[0]}
	c.client = c.pod(0, "client")
	return c
}

// pod adds a pod with echo servers on ports to node i (0: node-a).
func (c *cluster) pod(node int, name string, ports ...uint16) *topo.Pod {
	c.t.Helper()
	p, err := c.topo.AddPod(c.topo.Nodes[node], name, ports...)
	if err != nil {
		c.t.Fatalf("add pod %s: %v", name, err)
	}
	return p
}

// freshDump is freshDump for node-a: in a namespace with its addresses.
func (c *cluster) freshDump(b backend, st *dataplane.State) string {
	c.t.Helper()
	return freshDumpLike(c.t, b, c.node.NodeModel(), st, c.node.NS.Fd())
}

func (c *cluster) open(b backend) dataplane.Dataplane {
	c.t.Helper()
	return open(c.t, b, c.node.NS.Path(), c.node.NodeModel())
}

// The address every load test balances: a cluster IP and its ports.
var (
	loadIP   = netip.MustParseAddr("198.19.0.10")
	loadTCP  = netip.AddrPortFrom(loadIP, 80)
	loadUDP  = netip.AddrPortFrom(loadIP, 53)
	podPort  = uint16(8080)
	loadName = dataplane.PortName{Namespace: "default", Name: "web"}
)

// loadPorts returns the TCP and UDP ports of the service under load,
// forwarding to eps.
func loadPorts(eps []dataplane.Endpoint) []dataplane.ServicePort {
	var out []dataplane.ServicePort
	for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
		port := loadTCP.Port()
		if proto == dataplane.UDP {
			port = loadUDP.Port()
		}
		n := loadName
		n.Port = proto.String()
		out = append(out, dataplane.ServicePort{
			Name: n, Protocol: proto, Port: port,
			ClusterIPs: []netip.Addr{loadIP},
			Endpoints:  slices.Clone(eps),
		})
	}
	return out
}

func readyEndpoint(p *topo.Pod) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: p.IPv4, Port: podPort, NodeName: p.Node.Name, Ready: true, Serving: true}
}

// attempt is one request of the load: when it was sent and answered,
// by whom, or how it failed.
type attempt struct {
	flow       int // UDP flow index; -1 for a new connection or flow
	start, end time.Time
	pod        string
	err        error
}

// load sends requests from a host to a service at a fixed pace, bounded
// in count and time, and records every attempt.
type load struct {
	from    *topo.Host
	proto   dataplane.Protocol
	dst     netip.AddrPort
	rate    int           // requests per second over all workers
	workers int           // concurrent requesters
	max     int           // stop after this many requests
	timeout time.Duration // per request
	// flows, when set, makes each worker one UDP flow: a fixed source
	// port, flowPort+worker, kept for the whole run.
	flows    bool
	flowPort uint16
	// freshPort, when set, gives each request of a load of new UDP
	// flows its own source port: freshPort, freshPort+1, … (max ports,
	// then it stops). An ephemeral port may be one an earlier request
	// used within the kernel's memory of that flow (IPVS keeps a UDP
	// connection 5 minutes, conntrack 30 s or more), and its datagram
	// then continues that flow, to the endpoint it had: it is not new.
	freshPort uint16
	nextPort  atomic.Uint32

	mu       sync.Mutex
	attempts []attempt
	inflight map[int]time.Time // worker → start of its request in flight
	stop     chan struct{}
	wg       sync.WaitGroup
	began    time.Time
	ended    time.Time
}

func (l *load) start(ctx context.Context) {
	l.inflight = make(map[int]time.Time)
	l.stop = make(chan struct{})
	l.began = time.Now()
	interval := time.Duration(l.workers) * time.Second / time.Duration(l.rate)
	perWorker := (l.max + l.workers - 1) / l.workers
	for w := range l.workers {
		l.wg.Go(func() {
			next := l.began.Add(time.Duration(w) * interval / time.Duration(l.workers))
			opt := topo.RequestOptions{Timeout: l.timeout, Payload: []byte("ping")}
			flow := -1
			if l.flows {
				flow = w
				opt.LocalPort = l.flowPort + uint16(w)
			}
			for range perWorker {
				if d := time.Until(next); d > 0 {
					select {
					case <-l.stop:
						return
					case <-time.After(d):
					}
				}
				select {
				case <-l.stop:
					return
				default:
				}
				next = next.Add(interval)
				if l.freshPort != 0 {
					n := l.nextPort.Add(1) - 1
					if n >= uint32(l.max) || uint32(l.freshPort)+n > 65535 {
						return
					}
					opt.LocalPort = l.freshPort + uint16(n)
				}
				a := attempt{flow: flow, start: time.Now()}
				l.mu.Lock()
				l.inflight[w] = a.start
				l.mu.Unlock()
				r, err := l.from.Request(ctx, l.proto, l.dst, opt)
				a.end, a.pod, a.err = time.Now(), r.Pod, err
				l.mu.Lock()
				delete(l.inflight, w)
				l.attempts = append(l.attempts, a)
				l.mu.Unlock()
			}
		})
	}
}

// finish stops the load and waits for requests in flight.
func (l *load) finish() {
	close(l.stop)
	l.wg.Wait()
	l.ended = time.Now()
}

// settle waits until every request sent before t has ended: after it, no
// request that an earlier State routed is still in flight. It waits at
// most the request timeout and a second.
func (l *load) settle(t time.Time) {
	deadline := time.Now().Add(l.timeout + time.Second)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		busy := false
		for _, s := range l.inflight {
			busy = busy || !s.After(t)
		}
		l.mu.Unlock()
		if !busy {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func (l *load) snapshot() []attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.attempts)
}

// lastStart is when the last request of the flow that stopped first
// started: the load is known to have run until then.
func (l *load) lastStart() time.Time {
	last := map[int]time.Time{}
	for _, a := range l.snapshot() {
		if a.start.After(last[a.flow]) {
			last[a.flow] = a.start
		}
	}
	var out time.Time
	for _, s := range last {
		if out.IsZero() || s.Before(out) {
			out = s
		}
	}
	return out
}

func (l *load) rateAchieved() float64 {
	return float64(len(l.snapshot())) / l.ended.Sub(l.began).Seconds()
}

// stats summarises attempts.
type stats struct {
	attempted, failed, slow int
	maxLatency              time.Duration
	perPod                  map[string]int
	failures                []string // the first few
}

// slowAfter is the latency counted as slow: a lost SYN or datagram
// shows up as a second or more.
const slowAfter = 500 * time.Millisecond

func summarise(as []attempt) stats {
	s := stats{perPod: map[string]int{}}
	for _, a := range as {
		s.attempted++
		lat := a.end.Sub(a.start)
		s.maxLatency = max(s.maxLatency, lat)
		if lat > slowAfter {
			s.slow++
		}
		if a.err != nil {
			s.failed++
			if len(s.failures) < 5 {
				s.failures = append(s.failures, fmt.Sprintf("%s: %v", a.start.Format("15:04:05.000"), a.err))
			}
			continue
		}
		s.perPod[a.pod]++
	}
	return s
}

// life is when a pod was part of the State: from the start of the Sync
// that added it to the end of the Sync that removed it; and when the
// Sync that marked it terminating ended (zero: never).
type life struct {
	added, terminating, removed time.Time
}

// lives records the lives of pods and when each Sync ended.
type lives struct {
	mu    sync.Mutex
	pods  map[string]*life
	syncs []time.Time
}

func newLives() *lives { return &lives{pods: map[string]*life{}} }

func (l *lives) set(pod string, f func(*life)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pods[pod] == nil {
		l.pods[pod] = &life{}
	}
	f(l.pods[pod])
}

func (l *lives) synced(t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.syncs = append(l.syncs, t)
}

// live reports whether pod was in the State at some moment of [from, to].
func (l *lives) live(pod string, from, to time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.pods[pod]
	if p == nil || p.added.IsZero() || p.added.After(to) {
		return false
	}
	return p.removed.IsZero() || !p.removed.Before(from)
}

// misrouted returns descriptions of the attempts answered by a pod that
// was not in the State while they ran or, with newConns, that reached a
// pod already marked terminating when they started (ready endpoints were
// there to take them), and how many there were.
func (l *lives) misrouted(as []attempt, newConns bool) ([]string, int) {
	var out []string
	n := 0
	for _, a := range as {
		if a.err != nil {
			continue
		}
		why := ""
		l.mu.Lock()
		p := l.pods[a.pod]
		terminating := p != nil && !p.terminating.IsZero() && p.terminating.Before(a.start)
		l.mu.Unlock()
		switch {
		case !l.live(a.pod, a.start, a.end):
			why = "was not in the State"
		case newConns && terminating:
			why = "was terminating before the request started"
		}
		if why != "" {
			n++
			if len(out) < 5 {
				out = append(out, fmt.Sprintf("%s answered a request sent at %s, but it %s", a.pod, a.start.Format("15:04:05.000"), why))
			}
		}
	}
	return out, n
}

// unanswered checks UDP flows: for each Sync and each flow, a request of
// the flow sent after the Sync ended must be answered, by a pod in the
// State, within the given time of the Sync. It returns descriptions of
// the (Sync, flow) pairs that were not, their number, and how many pairs
// were checked. Syncs too close to until are not checked.
func (l *lives) unanswered(as []attempt, flows int, within time.Duration, until time.Time) ([]string, int, int) {
	byFlow := make([][]attempt, flows)
	for _, a := range as {
		if a.flow >= 0 && a.err == nil && l.live(a.pod, a.start, a.end) {
			byFlow[a.flow] = append(byFlow[a.flow], a)
		}
	}
	for _, f := range byFlow {
		slices.SortFunc(f, func(a, b attempt) int { return a.start.Compare(b.start) })
	}
	l.mu.Lock()
	syncs := slices.Clone(l.syncs)
	l.mu.Unlock()
	var out []string
	bad, checked := 0, 0
	for _, s := range syncs {
		if s.Add(within).After(until) {
			continue
		}
		for f, good := range byFlow {
			checked++
			i, _ := slices.BinarySearchFunc(good, s, func(a attempt, t time.Time) int { return a.start.Compare(t) })
			if i < len(good) && !good[i].end.After(s.Add(within)) {
				continue
			}
			bad++
			if len(out) < 5 {
				out = append(out, fmt.Sprintf("flow %d: no answer from a live endpoint within %v of the Sync that ended at %s", f, within, s.Format("15:04:05.000")))
			}
		}
	}
	return out, bad, checked
}

// startLoads starts every load and returns a function that finishes them
// all, once however often it is called.
func startLoads(ctx context.Context, loads []*load) (stop func()) {
	for _, l := range loads {
		l.start(ctx)
	}
	stopped := false
	return func() {
		if !stopped {
			stopped = true
			for _, l := range loads {
				l.finish()
			}
		}
	}
}
