package conformance

import (
	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// The Policy group: which endpoints a node uses — traffic policies,
// terminating endpoints and topology hints, as kube-proxy chooses them.
func init() {
	register("Policy", "InternalLocal", func(e *env) {
		// internalTrafficPolicy Local: pods reach only endpoints on their
		// own node (node-local services such as a DNS cache or a log
		// agent). On a node without one the traffic is dropped, not
		// rejected: the service has endpoints, just none here, as in
		// kube-proxy.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		cA, cB := e.pod(0, "client-a"), e.pod(1, "client-b")
		both := svc("both", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080))
		both.InternalLocal = true
		onlyA := svc("only-a", "http", dataplane.TCP, 80, ips(cip4(11)), ready(web1, 8080))
		onlyA.InternalLocal = true
		e.sync(state(both, onlyA))
		// 10 requests: a backend ignoring the policy sends each to the
		// other node with probability 1/2, so it passes with 2⁻¹⁰ at most.
		onlyPods(e.t, e.tally(&cA.Host, dataplane.TCP, ap(cip4(10), 80), 10), "web-1")
		onlyPods(e.t, e.tally(&cB.Host, dataplane.TCP, ap(cip4(10), 80), 10), "web-2")
		onlyPods(e.t, e.tally(&cA.Host, dataplane.TCP, ap(cip4(11), 80), 3), "web-1")
		e.noLocalEndpoint(&cB.Host, dataplane.TCP, ap(cip4(11), 80), topo.RequestOptions{}, "node-b has no local endpoint of only-a under internalTrafficPolicy Local")
	})

	register("Policy", "TerminatingFallback", func(e *env) {
		// When a service has no ready endpoint, its serving and
		// terminating ones take the traffic (a rolling update that would
		// otherwise drop connections), and only those: an endpoint that
		// is not serving, or not ready and not terminating, never does.
		// Once a ready endpoint exists, terminating ones stop getting new
		// connections. The fallback is decided per policy: under
		// externalTrafficPolicy Local over the node's own endpoints.
		termA := terminating(ready(e.pod(0, "term-a", 8080), 8080), true)
		termB := terminating(ready(e.pod(1, "term-b", 8080), 8080), true)
		goneA := terminating(ready(e.pod(0, "gone-a", 8080), 8080), false)
		unready := ready(e.pod(1, "unready-b", 8080), 8080)
		unready.Ready = false // serving but not terminating: never used
		readyB := ready(e.pod(1, "ready-b", 8080), 8080)
		c := e.pod(0, "client")

		// Cluster policy, from a pod to the cluster IP.
		p := svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), termA, termB, goneA, unready)
		e.sync(state(p))
		got := e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), seeBoth)
		onlyPods(e.t, got, "term-a", "term-b")
		allPods(e.t, got, "term-a", "term-b")
		p.Endpoints = append(p.Endpoints, readyB)
		e.sync(state(p))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 10), "ready-b")

		// externalTrafficPolicy Local, through a NodePort: node-a has
		// only terminating endpoints of its own and uses the serving
		// one, although node-b has a ready one; node-b uses its ready one.
		p = npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10)), termA, goneA, unready, readyB)
		p.ExternalLocal = true
		e.sync(state(p))
		for i, want := range []string{"term-a", "ready-b"} {
			onlyPods(e.t, e.tally(e.topo.Client, dataplane.TCP, ap(e.topo.Nodes[i].IPv4, nodePort), 10), want)
		}
	})

	register("Policy", "TopologyHints", func(e *env) {
		// Topology-aware routing: when every ready endpoint carries zone
		// hints, a node uses only the endpoints hinted for its zone
		// (keeping traffic in the zone), wherever they run; if any ready
		// endpoint lacks hints, hints are ignored and all are used.
		// node-a is in zone-a, node-b in zone-b.
		a1 := ready(e.pod(0, "a-1", 8080), 8080)
		a2 := ready(e.pod(1, "a-2", 8080), 8080) // on node-b, hinted for zone-a
		b1 := ready(e.pod(1, "b-1", 8080), 8080)
		a1.ForZones, a2.ForZones, b1.ForZones = []string{"zone-a"}, []string{"zone-a"}, []string{"zone-b"}
		cA, cB := e.pod(0, "client-a"), e.pod(1, "client-b")
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), a1, a2, b1)))
		got := e.tally(&cA.Host, dataplane.TCP, ap(cip4(10), 80), seeBoth)
		onlyPods(e.t, got, "a-1", "a-2")
		allPods(e.t, got, "a-1", "a-2")
		onlyPods(e.t, e.tally(&cB.Host, dataplane.TCP, ap(cip4(10), 80), 10), "b-1")

		unhinted := ready(e.pod(0, "any-1", 8080), 8080)
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), a1, a2, b1, unhinted)))
		for _, c := range []*topo.Pod{cA, cB} {
			allPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), seeAll4), "a-1", "a-2", "b-1", "any-1")
		}
	}).nodeSetup = func(n *dataplane.Node) {
		switch n.Name {
		case "node-a":
			n.Zone = "zone-a"
		case "node-b":
			n.Zone = "zone-b"
		}
	}
}
