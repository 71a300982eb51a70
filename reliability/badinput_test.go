package reliability

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/internal/nstest"
)

// cancelAfter is a context that reports itself cancelled from its n+1-th
// Err call on: a cancellation that lands inside a Sync, after the checks
// it passed already, wherever the backend looks next.
type cancelAfter struct {
	context.Context
	left atomic.Int32
	once sync.Once
	done chan struct{}
}

func newCancelAfter(n int) *cancelAfter {
	c := &cancelAfter{Context: context.Background(), done: make(chan struct{})}
	c.left.Store(int32(n))
	return c
}

func (c *cancelAfter) Err() error {
	if c.left.Add(-1) < 0 {
		c.once.Do(func() { close(c.done) })
		return context.Canceled
	}
	return nil
}

func (c *cancelAfter) Done() <-chan struct{} { return c.done }

// Pools for generated States: small, so that States collide (names,
// frontends and endpoints come back with other settings), with an
// invalid value here and there.
var (
	genNames = []dataplane.PortName{
		{Namespace: "default", Name: "web", Port: "http"}, {Namespace: "default", Name: "web", Port: "dns"},
		{Namespace: "default", Name: "db"}, {Namespace: "kube-system", Name: "dns", Port: "dns"}, {},
	}
	genClusterIPs = [][]netip.Addr{
		{addr("198.19.0.10")}, {addr("198.19.0.11")}, {addr("2001:db8:ffff::10")},
		{addr("198.19.0.10"), addr("2001:db8:ffff::10")}, {addr("198.19.0.12"), addr("2001:db8:ffff::12")}, nil,
		{addr("198.19.0.10"), addr("198.19.0.11")}, // invalid: two of one family
	}
	genExternal = [][]netip.Addr{nil, nil, {addr("203.0.113.10")}, {addr("2001:db8:beef::10")}, {addr("203.0.113.10"), addr("2001:db8:beef::10")}}
	genRanges   = []netip.Prefix{
		prefix("192.0.2.0/24"), prefix("192.0.2.0/25"), prefix("192.0.2.128/25"), prefix("0.0.0.0/0"),
		prefix("192.0.2.7/32"), prefix("2001:db8::/64"), prefix("::/0"),
	}
	genEndpoints = []netip.Addr{
		addr("198.18.1.10"), addr("198.18.1.11"), addr("198.18.2.10"), addr("198.18.2.11"),
		addr("2001:db8:1::a"), addr("2001:db8:2::a"),
	}
	genAffinity = []time.Duration{0, 0, 10 * time.Second, 30 * time.Second, dataplane.MaxAffinity, 10 * 365 * 24 * time.Hour}
)

func addr(s string) netip.Addr     { return netip.MustParseAddr(s) }
func prefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

type genBytes []byte

func (b *genBytes) next() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

func (b *genBytes) count(n int) int { return int(b.next()) % n }

func pickOf[T any](b *genBytes, choices ...T) T { return choices[int(b.next())%len(choices)] }

// genState builds a State from fuzz input; it may be invalid.
func genState(b *genBytes) *dataplane.State {
	st := &dataplane.State{}
	for range b.count(5) {
		p := dataplane.ServicePort{
			Name:            pickOf(b, genNames...),
			Protocol:        pickOf(b, dataplane.TCP, dataplane.UDP, dataplane.TCP, dataplane.UDP, dataplane.SCTP, 0),
			Port:            pickOf[uint16](b, 80, 53, 80, 53, 65535, 0),
			NodePort:        pickOf[uint16](b, 0, 0, 30080, 30081),
			ClusterIPs:      pickOf(b, genClusterIPs...),
			ExternalIPs:     pickOf(b, genExternal...),
			LoadBalancerIPs: pickOf(b, genExternal...),
			Affinity:        pickOf(b, genAffinity...),
		}
		for range b.count(4) {
			p.SourceRanges = append(p.SourceRanges, pickOf(b, genRanges...))
		}
		flags := b.next()
		p.InternalLocal, p.ExternalLocal = flags&1 != 0, flags&2 != 0
		for range b.count(7) {
			c := b.next()
			ep := dataplane.Endpoint{
				Addr: pickOf(b, genEndpoints...), Port: pickOf[uint16](b, 8080, 8081, 8080, 0),
				NodeName: pickOf(b, "node-a", "node-b", ""),
				Ready:    c&1 != 0, Serving: c&2 != 0, Terminating: c&4 != 0,
			}
			if c&8 != 0 {
				ep.ForZones = []string{pickOf(b, "zone-a", "zone-b")}
			}
			if c&16 != 0 {
				ep.ForNodes = []string{pickOf(b, "node-a", "node-b")}
			}
			p.Endpoints = append(p.Endpoints, ep)
		}
		st.Ports = append(st.Ports, p)
	}
	return st
}

// FuzzSyncSequence is the kernel-side property of the diff engine: after
// any sequence of Syncs (valid or not), restarts (Close, then a new
// Dataplane adopts the namespace) and Syncs cancelled inside, the kernel
// holds exactly what a fresh Dataplane writes for the last State synced
// successfully. An invalid State must return an error and leave the
// namespace's whole nftables state byte-identical; a cancelled Sync
// that returns an error must too.
func FuzzSyncSequence(f *testing.F) {
	f.Add([]byte{0, 3, 0, 1, 1, 1, 0, 0, 0, 0, 1, 2, 1, 4, 2, 5, 3, 1, 0})
	f.Add([]byte{0, 2, 0, 1, 3, 2, 2, 2, 2, 0, 2, 3, 2, 1, 2, 1, 1, 2, 0, 3, 1, 0, 1, 1, 3, 1})
	f.Add([]byte{0, 2, 2, 0, 2, 0, 2, 1, 2, 0, 1, 3, 5, 3, 3, 3, 0, 5, 1, 2, 3, 1, 2, 1, 2, 4, 0, 1, 0, 0, 2})
	f.Add([]byte{2, 1, 3, 1, 0, 4, 3, 3, 0, 1, 0, 0, 1, 2, 3, 1, 0, 1, 1, 5, 3, 2, 3, 3, 1, 2, 1, 1, 5, 2, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		nstest.NeedRoot(t)
		for _, b := range backends {
			if supported(t, b) {
				syncSequence(t, b, genBytes(data))
			}
		}
	})
}

func syncSequence(t *testing.T, b backend, in genBytes) {
	ns := nstest.New(t)
	node := nodeA()
	node.Zone = "zone-a"
	dp := newDP(t, b, ns.Path(), node)
	defer func() { dp.Close() }()
	ctx := context.Background()
	var last *dataplane.State // what the kernel must hold; nil: nothing
	for step := range 1 + in.count(6) {
		op := in.next() % 8
		switch {
		case op == 6: // restart
			if err := dp.Close(); err != nil {
				t.Fatalf("step %d: Close: %v", step, err)
			}
			dp = newDP(t, b, ns.Path(), node)
		case op == 7: // a Sync cancelled inside
			st := genState(&in)
			before := snapshot(t, ns.Fd())
			err := dp.Sync(newCancelAfter(1+in.count(3)), st)
			switch {
			case err == nil:
				last = st
			case st.Validate() == nil && !errors.Is(err, context.Canceled):
				t.Fatalf("step %d: a cancelled Sync failed with %v, want an error wrapping context.Canceled", step, err)
			default:
				if s := snapshot(t, ns.Fd()); s != before {
					t.Fatalf("step %d: a Sync that failed (%v) changed the kernel:\n%s", step, err, diff(before, s))
				}
			}
		default:
			st := genState(&in)
			before := snapshot(t, ns.Fd())
			err := dp.Sync(ctx, st)
			verr := st.Validate()
			switch {
			case verr != nil && err == nil:
				t.Fatalf("step %d: Sync of an invalid State (%v) returned nil", step, verr)
			case verr != nil:
				if s := snapshot(t, ns.Fd()); s != before {
					t.Fatalf("step %d: Sync of an invalid State changed the kernel:\n%s", step, diff(before, s))
				}
			case err != nil:
				t.Fatalf("step %d: Sync of a valid State: %v", step, err)
			default:
				last = st
			}
		}
	}
	want := ""
	if last != nil {
		want = freshDump(t, b, node, last)
	}
	if got := mustDump(t, b, ns.Fd()); got != want {
		t.Fatalf("after the sequence the kernel differs from a fresh Sync of the last State synced:\n%s", diff(want, got))
	}
}

// TestAdversarialStates syncs States a buggy or hostile controller might
// produce. Each returns an error or works, never panics, and never
// applies partly: after an invalid one the namespace's nftables state is
// byte-identical (every table, chain, rule, set and element), after a
// valid one it equals a fresh Sync's.
func TestAdversarialStates(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ns := nstest.New(t)
		node := nodeA()
		dp := open(t, b, ns.Path(), node)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		base := dataplane.ServicePort{
			Name: dataplane.PortName{Namespace: "default", Name: "web", Port: "http"}, Protocol: dataplane.TCP, Port: 80,
			ClusterIPs: []netip.Addr{addr("198.19.0.10"), addr("2001:db8:ffff::10")},
			Endpoints: []dataplane.Endpoint{
				{Addr: addr("198.18.1.10"), Port: 8080, Ready: true, Serving: true},
				{Addr: addr("2001:db8:1::a"), Port: 8080, Ready: true, Serving: true},
			},
		}
		with := func(f func(p *dataplane.ServicePort)) dataplane.ServicePort {
			p := base
			p.Endpoints = append([]dataplane.Endpoint(nil), base.Endpoints...)
			f(&p)
			return p
		}
		// A good State to start from: each invalid one must leave it be.
		good := &dataplane.State{Ports: []dataplane.ServicePort{base}}
		if err := dp.Sync(ctx, good); err != nil {
			t.Fatal(err)
		}
		invalid := []struct {
			name string
			st   *dataplane.State
		}{
			{"NilState", nil},
			{"EmptyNames", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.Name = dataplane.PortName{} })}}},
			{"DuplicateNames", &dataplane.State{Ports: []dataplane.ServicePort{base, with(func(p *dataplane.ServicePort) { p.Port = 81 })}}},
			{"DuplicateFrontends", &dataplane.State{Ports: []dataplane.ServicePort{base, with(func(p *dataplane.ServicePort) { p.Name.Name = "clash" })}}},
			{"DuplicateNodePorts", &dataplane.State{Ports: []dataplane.ServicePort{
				with(func(p *dataplane.ServicePort) { p.NodePort = 30080 }),
				with(func(p *dataplane.ServicePort) { p.Name.Name, p.Port, p.NodePort = "other", 81, 30080 })}}},
			{"MixedFamilies", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.ClusterIPs = p.ClusterIPs[:1]
				p.ExternalIPs = []netip.Addr{addr("2001:db8:beef::1")}
			})}}},
			{"Port0", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.Port = 0 })}}},
			{"EndpointPort0", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.Endpoints[0].Port = 0 })}}},
			{"Affinity10Years", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.Affinity = 10 * 365 * 24 * time.Hour })}}},
			{"AffinityNegative", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.Affinity = -time.Second })}}},
			{"UnknownProtocol", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.Protocol = 1 })}}},
			{"MappedAndZonedAddresses", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.ClusterIPs = []netip.Addr{addr("::ffff:198.19.0.10")}
				p.Endpoints = []dataplane.Endpoint{{Addr: addr("fe80::1%eth0"), Port: 8080, Ready: true}}
			})}}},
			{"UnspecifiedAndMulticast", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.ClusterIPs = []netip.Addr{addr("0.0.0.0")}
				p.LoadBalancerIPs = []netip.Addr{addr("224.0.0.1")}
			})}}},
			{"DuplicateEndpoints", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.Endpoints = append(p.Endpoints, p.Endpoints[0])
			})}}},
			// One bad port among many good ones: nothing of the good
			// ones may be applied either.
			{"OneBadAmong1000", manyPorts(1000, func(i int, p *dataplane.ServicePort) {
				if i == 999 {
					p.Port = 0
				}
			})},
		}
		for _, c := range invalid {
			t.Run(c.name, func(t *testing.T) {
				before, gen := snapshot(t, ns.Fd()), generation(t, ns.Fd())
				err := dp.Sync(ctx, c.st)
				if err == nil {
					t.Fatalf("Sync of an invalid State returned nil")
				}
				if c.st != nil && len(dataplane.FieldErrors(err)) == 0 {
					t.Errorf("Sync error %q names no field (want *dataplane.FieldError)", err)
				}
				if s := snapshot(t, ns.Fd()); s != before {
					t.Fatalf("Sync of an invalid State (%v) changed the kernel:\n%s", err, diff(before, s))
				}
				if g := generation(t, ns.Fd()); g != gen {
					t.Fatalf("Sync of an invalid State committed to the kernel (nftables generation %d → %d)", gen, g)
				}
			})
		}

		valid := []struct {
			name string
			st   *dataplane.State
			same *dataplane.State // when set, must program exactly what this does
		}{
			{"NilPorts", &dataplane.State{}, &dataplane.State{Ports: []dataplane.ServicePort{}}},
			{"NilAndEmptySlices", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.ExternalIPs, p.LoadBalancerIPs, p.SourceRanges = nil, nil, nil
				for i := range p.Endpoints {
					p.Endpoints[i].ForNodes, p.Endpoints[i].ForZones = nil, nil
				}
			})}}, &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.ExternalIPs, p.LoadBalancerIPs, p.SourceRanges = []netip.Addr{}, []netip.Addr{}, []netip.Prefix{}
				for i := range p.Endpoints {
					p.Endpoints[i].ForNodes, p.Endpoints[i].ForZones = []string{}, []string{}
				}
			})}}},
			{"NilAndEmptyEndpoints", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.Endpoints = nil })}},
				&dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.Endpoints = []dataplane.Endpoint{} })}}},
			{"Headless", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.ClusterIPs = nil })}}, &dataplane.State{}},
			{"AffinityMax", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) { p.Affinity = dataplane.MaxAffinity })}}, nil},
			{"HighestPorts", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.Port, p.NodePort, p.HealthCheckNodePort = 65535, 65535, 65534
				p.Endpoints[0].Port = 65535
			})}}, nil},
			{"OverlappingSourceRanges", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.LoadBalancerIPs = []netip.Addr{addr("203.0.113.10"), addr("2001:db8:beef::10")}
				p.SourceRanges = []netip.Prefix{prefix("192.0.2.0/25"), prefix("192.0.2.0/24"), prefix("192.0.2.7/32"),
					prefix("0.0.0.0/0"), prefix("192.0.2.0/24"), prefix("2001:db8::/64"), prefix("2001:db8::/32")}
			})}}, &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.LoadBalancerIPs = []netip.Addr{addr("203.0.113.10"), addr("2001:db8:beef::10")}
				p.SourceRanges = []netip.Prefix{prefix("0.0.0.0/0"), prefix("2001:db8::/32")}
			})}}},
			// Without endpoints: reading 640,000 bucket elements back
			// takes minutes (TestBigTransactions reads 200,000).
			{"TenThousandPortsOneService", manyPorts(10000, func(i int, p *dataplane.ServicePort) { p.Endpoints = nil }), nil},
			{"MillionEndpoints", &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				p.Endpoints = make([]dataplane.Endpoint, 0, 1_000_000)
				for i := range 1_000_000 {
					// 16 addresses × 62,500 ports.
					p.Endpoints = append(p.Endpoints, dataplane.Endpoint{
						Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i%16)}), Port: uint16(i/16) + 1, Ready: true, Serving: true})
				}
			})}}, &dataplane.State{Ports: []dataplane.ServicePort{with(func(p *dataplane.ServicePort) {
				// What it must program: 64 slots hold one endpoint
				// each, so the first 64 endpoints are all that
				// receive traffic (nft: at most 64 per frontend).
				p.Endpoints = nil
				for i := range 64 {
					p.Endpoints = append(p.Endpoints, dataplane.Endpoint{
						Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i%16)}), Port: uint16(i/16) + 1, Ready: true, Serving: true})
				}
			})}}},
		}
		for _, c := range valid {
			t.Run(c.name, func(t *testing.T) {
				if n := maxEndpoints(c.st); b.maxEndpoints > 0 && n > b.maxEndpoints {
					t.Skipf("%s: %d endpoints on one service port: this backend programs one kernel object per endpoint, one netlink request each, with no cap (%d requests here and as many for the fresh namespace compared with); it is tested up to %d", b.name, n, n, b.maxEndpoints)
				}
				start := time.Now()
				if err := dp.Sync(ctx, c.st); err != nil {
					t.Fatalf("Sync: %v", err)
				}
				took := time.Since(start)
				got := mustDump(t, b, ns.Fd())
				want := c.same
				if want == nil {
					want = c.st
				}
				if w := freshDump(t, b, node, want); got != w {
					t.Fatalf("the kernel differs from a fresh Sync of the State it must equal:\n%s", diff(w, got))
				}
				t.Logf("Sync took %v", took.Round(time.Millisecond))
			})
		}
	})
}

// manyPorts returns n ports of one service on one dual-stack cluster IP,
// ports 1..n, each with one endpoint; edit, when set, changes port i.
func manyPorts(n int, edit func(i int, p *dataplane.ServicePort)) *dataplane.State {
	st := &dataplane.State{}
	for i := range n {
		p := dataplane.ServicePort{
			Name: dataplane.PortName{Namespace: "default", Name: "many", Port: fmt.Sprintf("p%d", i+1)}, Protocol: dataplane.TCP, Port: uint16(i + 1),
			ClusterIPs: []netip.Addr{addr("198.19.1.1")},
			Endpoints:  []dataplane.Endpoint{{Addr: addr("198.18.1.10"), Port: uint16(i + 1), Ready: true, Serving: true}},
		}
		if edit != nil {
			edit(i, &p)
		}
		st.Ports = append(st.Ports, p)
	}
	return st
}

func maxEndpoints(st *dataplane.State) int {
	n := 0
	for _, p := range st.Ports {
		n = max(n, len(p.Endpoints))
	}
	return n
}

var (
	supportedMu sync.Mutex
	supportedBy = map[string]bool{}
)

// supported reports whether b runs on this kernel (a Dataplane for a
// fresh namespace can be made), once per backend.
func supported(t testing.TB, b backend) bool {
	supportedMu.Lock()
	defer supportedMu.Unlock()
	ok, known := supportedBy[b.name]
	if !known {
		ns, err := netnsutil.New()
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		dp, err := b.factory(t, conformance.Target{NetNS: ns.Path(), Node: nodeA()})
		if err == nil {
			dp.Close()
		} else if !errors.Is(err, dataplane.ErrUnsupported) {
			t.Fatalf("%s: new Dataplane: %v", b.name, err)
		}
		ok = err == nil
		supportedBy[b.name] = ok
	}
	return ok
}
