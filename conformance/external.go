package conformance

import (
	"net/netip"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// The External group: externalIPs and load-balancer IPs. The client routes
// 203.0.113.0/24 and 2001:db8:beef::/64 to one node, as a router or a
// load balancer in front of the cluster would; every node must handle
// them.
func init() {
	for _, kind := range []string{"ExternalIP", "LoadBalancerIP"} {
		register("External", kind, func(e *env) {
			// The external client reaches the IP on the service's port,
			// in both families, whichever node its route points at, and
			// that node forwards to endpoints on both nodes (masquerading
			// towards the remote one, so the reply comes back through it).
			web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
			p := svc("web", "http", dataplane.TCP, 80, ips(cip4(10), cip6(10)),
				ready(web1, 8080), ready(web2, 8080), ready6(web1, 8080), ready6(web2, 8080))
			front := ips(eip4(10), eip6(10))
			if kind == "ExternalIP" {
				p.ExternalIPs = front
			} else {
				p.LoadBalancerIPs = front
			}
			e.sync(state(p))
			for _, n := range e.topo.Nodes {
				if err := e.topo.RouteExternalVia(n); err != nil {
					e.t.Fatal(err)
				}
				for _, ip := range front {
					got := e.tally(e.topo.Client, dataplane.TCP, ap(ip, 80), seeBoth)
					onlyPods(e.t, got, "web-1", "web-2")
					allPods(e.t, got, "web-1", "web-2")
				}
			}
		})
	}

	register("External", "SourceRanges", func(e *env) {
		// loadBalancerSourceRanges admit only the listed sources to the
		// load-balancer IPs: the client's primary addresses are listed,
		// its second addresses are not, and are dropped (kube-proxy drops
		// them: to the client the IP looks firewalled). The NodePort of
		// the same service ignores the ranges, as in Kubernetes.
		web := e.pod(1, "web-2", 8080)
		c := e.topo.Client
		other4 := e.addAddrs(c, netip.MustParseAddr("192.0.2.150"), 1)[0]
		other6 := e.addAddrs(c, netip.MustParseAddr("2001:db8::150"), 1)[0]
		p := npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10), cip6(10)), ready(web, 8080), ready6(web, 8080))
		p.LoadBalancerIPs = ips(eip4(20), eip6(20))
		p.SourceRanges = []netip.Prefix{netip.PrefixFrom(c.IPv4, 32), netip.PrefixFrom(c.IPv6, 128)}
		e.sync(state(p))
		for _, f := range []struct{ lb, allowed, other, node netip.Addr }{
			{eip4(20), c.IPv4, other4, e.topo.Nodes[0].IPv4},
			{eip6(20), c.IPv6, other6, e.topo.Nodes[0].IPv6},
		} {
			e.request(c, dataplane.TCP, ap(f.lb, 80), topo.RequestOptions{LocalAddr: f.allowed})
			e.dropped(c, dataplane.TCP, ap(f.lb, 80), topo.RequestOptions{LocalAddr: f.other}, "the source is outside loadBalancerSourceRanges")
			e.request(c, dataplane.TCP, ap(f.node, nodePort), topo.RequestOptions{LocalAddr: f.other})
		}
	})

	register("External", "LocalPolicyKeepsSource", func(e *env) {
		// externalTrafficPolicy Local on a load-balancer IP: the node the
		// client's route points at forwards only to its own endpoint, and
		// the endpoint sees the client's real address.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		p := svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080))
		p.LoadBalancerIPs = ips(eip4(20))
		p.ExternalLocal = true
		e.sync(state(p))
		for i, n := range e.topo.Nodes {
			if err := e.topo.RouteExternalVia(n); err != nil {
				e.t.Fatal(err)
			}
			local := n.Pods[0].Name
			for range 10 {
				r := e.hit(e.topo.Client, dataplane.TCP, ap(eip4(20), 80))
				if r.Pod != local || r.From.Addr() != e.topo.Client.IPv4 {
					e.t.Fatalf("client → %s via %s answered by %s seeing %s; want only %s's local endpoint %s, seeing the client's address %s",
						eip4(20), e.nodes[i].Name, r.Pod, r.From.Addr(), e.nodes[i].Name, local, e.topo.Client.IPv4)
				}
			}
		}
	})
}
