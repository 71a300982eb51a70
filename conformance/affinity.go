package conformance

import (
	"net/netip"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// The Affinity group: sessionAffinity ClientIP. A client's new
// connections keep landing on the endpoint its first one reached, for the
// affinity timeout after its last one.
//
// The numbers: each case balances over 4 endpoints, so without affinity
// 15 connections in a row land on one endpoint with probability
// 4·4⁻¹⁵ ≈ 4e-9 (a backend ignoring affinity fails); with affinity,
// clients whose first connections are independent all land on one
// endpoint with probability 4^(1-k), so k = 12 clients spread over more
// than one endpoint except with probability 2.4e-7.
const (
	stickyRun     = 15
	affinityPeers = 12
	// longAffinity is the timeout where expiry must not matter
	// (Kubernetes' default, 3 hours).
	longAffinity = 3 * time.Hour
)

// webs adds web-1 .. web-4, alternately on node-a and node-b, and returns
// their endpoints on port 8080.
func webs(e *env) []dataplane.Endpoint {
	var eps []dataplane.Endpoint
	for i, name := range podNames("web", 4) {
		eps = append(eps, ready(e.pod(i%2, name, 8080), 8080))
	}
	return eps
}

// clientPods adds n client pods, alternately on node-a and node-b.
func clientPods(e *env, n int) []*topo.Host {
	var out []*topo.Host
	for i, name := range podNames("client", n) {
		out = append(out, &e.pod(i%2, name).Host)
	}
	return out
}

// affine returns a copy of p with ClientIP affinity for d.
func affine(p dataplane.ServicePort, d time.Duration) dataplane.ServicePort {
	p.Affinity = d
	return p
}

// sticky sends n requests in a row from one client and requires them all
// to land on one endpoint, which it returns.
func (e *env) sticky(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, opt topo.RequestOptions, n int) string {
	e.t.Helper()
	got := e.tallyFrom(from, proto, dst, opt, n)
	if len(got) != 1 {
		e.t.Fatalf("%d %s requests %sfrom %s → %s landed on %v; want all on one endpoint (ClientIP affinity)", n, proto, source(opt), from.Name, dst, got)
	}
	for pod := range got {
		return pod
	}
	return ""
}

// spreads sends one request from each client (a host, with options) and
// requires more than one endpoint to answer: affinity pins each client,
// not all of them to one endpoint.
func (e *env) spreads(proto dataplane.Protocol, dst netip.AddrPort, from []*topo.Host, opts []topo.RequestOptions) {
	e.t.Helper()
	got := make(map[string]int)
	for i, h := range from {
		got[e.request(h, proto, dst, opts[i]).Pod]++
	}
	if len(got) < 2 {
		e.t.Fatalf("first requests of %d clients → %s all landed on %v; want them spread over the endpoints", len(from), dst, got)
	}
}

// notSticky sends n requests and requires more than one endpoint to
// answer (no affinity): with 4 endpoints, n = 15 fails by chance with
// probability 4e-9.
func (e *env) notSticky(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, n int, why string) {
	e.t.Helper()
	if got := e.tally(from, proto, dst, n); len(got) < 2 {
		e.t.Fatalf("%d requests from %s → %s all landed on %v; want them spread: %s", n, from.Name, dst, got, why)
	}
}

func init() {
	for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
		name := "ClusterIP"
		if proto == dataplane.UDP {
			name = "UDP"
		}
		register("Affinity", name, func(e *env) {
			// Through a cluster IP: stickyRun connections (UDP: datagrams
			// from new source ports) in a row from one pod land on one
			// endpoint, and affinityPeers pods' first ones spread.
			eps := webs(e)
			clients := clientPods(e, affinityPeers)
			e.sync(state(affine(svc("web", "http", proto, 80, ips(cip4(10)), eps...), longAffinity)))
			e.sticky(clients[0], proto, ap(cip4(10), 80), topo.RequestOptions{}, stickyRun)
			e.spreads(proto, ap(cip4(10), 80), clients, make([]topo.RequestOptions, len(clients)))
		})
	}

	register("Affinity", "NodePort", func(e *env) {
		// The same through a NodePort from the external client, whose
		// source addresses are the clients: affinity follows the
		// client's address before any masquerading.
		eps := webs(e)
		c := e.topo.Client
		srcs := e.addAddrs(c, netip.MustParseAddr("192.0.2.110"), affinityPeers)
		e.sync(state(affine(npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10)), eps...), longAffinity)))
		dst := ap(e.topo.Nodes[0].IPv4, nodePort)
		e.sticky(c, dataplane.TCP, dst, topo.RequestOptions{}, stickyRun)
		var from []*topo.Host
		var opts []topo.RequestOptions
		for _, a := range srcs {
			from = append(from, c)
			opts = append(opts, topo.RequestOptions{LocalAddr: a})
		}
		e.spreads(dataplane.TCP, dst, from, opts)
	})

	register("Affinity", "Timeout", func(e *env) {
		// With a 2 s timeout, a client idle for longer than that is
		// balanced afresh. affinityPeers clients each first show they are
		// sticky (3 connections on one endpoint, within milliseconds);
		// after 2.5 s idle each connects again, and at least one must land
		// elsewhere. A fresh choice repeats the old endpoint with
		// probability 1/4, so all 12 do with probability 4⁻¹² ≈ 6e-8; a
		// second round (5 s in all) makes a false failure ~4e-15. A
		// backend that ignores the timeout keeps every client where it
		// was.
		//
		// With Profile.AffinityOutlivesConnections (IPVS), affinity lasts
		// until its timeout has passed and every connection it placed has
		// expired; closed TCP connections linger in IPVS for minutes, so
		// the case uses UDP flows, which the backend is configured to
		// expire within 1 s.
		const timeout = 2 * time.Second
		idle := timeout + 500*time.Millisecond
		proto := dataplane.TCP
		if e.profile.AffinityOutlivesConnections {
			proto, idle = dataplane.UDP, timeout+1500*time.Millisecond
		}
		eps := webs(e)
		clients := clientPods(e, affinityPeers)
		dst := ap(cip4(10), 80)
		e.sync(state(affine(svc("web", "http", proto, 80, ips(cip4(10)), eps...), timeout)))
		was := make([]string, len(clients))
		for i, c := range clients {
			was[i] = e.sticky(c, proto, dst, topo.RequestOptions{}, 3)
		}
		for round := 1; ; round++ {
			time.Sleep(idle)
			moved := 0
			now := make([]string, len(clients))
			for i, c := range clients {
				now[i] = e.hit(c, proto, dst).Pod
				if now[i] != was[i] {
					moved++
				}
			}
			if moved > 0 {
				return
			}
			if round == 2 {
				e.t.Fatalf("after %v idle, twice, every one of %d clients landed on its old endpoint again (%v); want affinity to expire after %v",
					idle, len(clients), now, timeout)
			}
			was = now
		}
	})

	register("Affinity", "Switch", func(e *env) {
		// Turning affinity on and off on a live service takes effect for
		// the next connections: None spreads one client's connections,
		// ClientIP pins them, None spreads them again.
		eps := webs(e)
		c := clientPods(e, 1)[0]
		dst := ap(cip4(10), 80)
		p := svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), eps...)
		e.sync(state(p))
		e.notSticky(c, dataplane.TCP, dst, stickyRun, "the service has no affinity yet")
		e.sync(state(affine(p, longAffinity)))
		e.sticky(c, dataplane.TCP, dst, topo.RequestOptions{}, stickyRun)
		e.sync(state(p))
		e.notSticky(c, dataplane.TCP, dst, stickyRun, "affinity was switched off")
	})

	register("Affinity", "EndpointRemoved", func(e *env) {
		// When the endpoint a client sticks to is removed, the client's
		// next connections go to another endpoint, and stick there. The
		// removed pod keeps running, so a stale affinity entry would show.
		eps := webs(e)
		c := clientPods(e, 1)[0]
		dst := ap(cip4(10), 80)
		e.sync(state(affine(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), eps...), longAffinity)))
		gone := e.sticky(c, dataplane.TCP, dst, topo.RequestOptions{}, 5)
		var kept []dataplane.Endpoint
		for _, ep := range eps {
			if p := e.topo.Pod(gone); p == nil || ep.Addr != p.IPv4 {
				kept = append(kept, ep)
			}
		}
		if len(kept) != 3 {
			e.t.Fatalf("cannot find the endpoint of %s", gone)
		}
		e.sync(state(affine(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), kept...), longAffinity)))
		if now := e.sticky(c, dataplane.TCP, dst, topo.RequestOptions{}, stickyRun); now == gone {
			e.t.Fatalf("the client still lands on %s after its endpoint was removed", gone)
		}
	})
}
