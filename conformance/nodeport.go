package conformance

import (
	"net/netip"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// The NodePort group: a service's NodePort on the node addresses forwards
// to the service's endpoints, for the external client, pods and the nodes
// themselves, honouring externalTrafficPolicy.
func init() {
	for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
		register("NodePort", proto.String(), func(e *env) {
			// The external client reaches nodeIP:nodePort on each node, and
			// each node forwards to endpoints on both nodes: the local one
			// and, masqueraded so the reply comes back through it, the
			// remote one.
			web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
			e.sync(state(npSvc("web", "http", proto, 80, nodePort, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080))))
			for _, n := range e.topo.Nodes {
				got := e.tally(e.topo.Client, proto, ap(n.IPv4, nodePort), seeBoth)
				onlyPods(e.t, got, "web-1", "web-2")
				allPods(e.t, got, "web-1", "web-2")
			}
		})
	}

	register("NodePort", "FromPod", func(e *env) {
		// Pods reach the NodePort on their own node's address and on the
		// other node's, and both endpoints answer there.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		cA, cB := e.pod(0, "client-a"), e.pod(1, "client-b")
		e.sync(state(npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080))))
		for _, c := range []*topo.Pod{cA, cB} {
			for _, n := range e.topo.Nodes {
				got := e.tally(&c.Host, dataplane.TCP, ap(n.IPv4, nodePort), seeBoth)
				onlyPods(e.t, got, "web-1", "web-2")
				allPods(e.t, got, "web-1", "web-2")
			}
		}
	})

	register("NodePort", "FromNode", func(e *env) {
		// A process in a node's own namespace (a host-network pod, a
		// kubelet probe) reaches the NodePort on its own address, which
		// only the output path sees, and on the other node's.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		e.sync(state(npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080))))
		for _, from := range e.topo.Nodes {
			for _, to := range e.topo.Nodes {
				got := e.tally(&from.Host, dataplane.TCP, ap(to.IPv4, nodePort), seeBoth)
				onlyPods(e.t, got, "web-1", "web-2")
				allPods(e.t, got, "web-1", "web-2")
			}
		}
	})

	register("NodePort", "Addresses", func(e *env) {
		// NodePorts answer where Node.NodePortAddrs says: node-a has it
		// set to its primary addresses only, node-b leaves it empty,
		// which means every local address. Each node gets a second
		// address of each family; node-b answers there too, node-a must
		// leave its second address alone. Loopback never forwards a
		// NodePort (as in kube-proxy's nftables mode). A host service
		// listens on the NodePort on both nodes, so a packet left alone
		// is answered by the node itself, at once.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		nodeA, nodeB := e.topo.Nodes[0], e.topo.Nodes[1]
		extraA := e.addAddrs(&nodeA.Host, netip.MustParseAddr("192.0.2.201"), 1)
		extraA = append(extraA, e.addAddrs(&nodeA.Host, netip.MustParseAddr("2001:db8::201"), 1)...)
		extraB := e.addAddrs(&nodeB.Host, netip.MustParseAddr("192.0.2.202"), 1)
		extraB = append(extraB, e.addAddrs(&nodeB.Host, netip.MustParseAddr("2001:db8::202"), 1)...)
		e.serveHost(nodePort)
		e.sync(state(npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10), cip6(10)),
			ready(web1, 8080), ready(web2, 8080), ready6(web1, 8080), ready6(web2, 8080))))

		forwarded := func(from *topo.Host, dst netip.Addr, why string) {
			e.t.Helper()
			for range 3 {
				if r := e.hit(from, dataplane.TCP, ap(dst, nodePort)); e.topo.Pod(r.Pod) == nil {
					e.t.Fatalf("%s → %s answered by the host service of %s; want an endpoint: %s", from.Name, ap(dst, nodePort), r.Pod, why)
				}
			}
		}
		leftAlone := func(from *topo.Host, dst netip.Addr, node *topo.Node, why string) {
			e.t.Helper()
			r, err := e.req(from, dataplane.TCP, ap(dst, nodePort), topo.RequestOptions{})
			if err != nil || r.Pod != node.Name {
				e.t.Fatalf("%s → %s: answered by %q, error %v; want the host service of %s (the NodePort must not be forwarded there): %s",
					from.Name, ap(dst, nodePort), r.Pod, err, node.Name, why)
			}
		}
		c := e.topo.Client
		for _, a := range []netip.Addr{nodeB.IPv4, nodeB.IPv6} {
			forwarded(c, a, "node-b's primary address, NodePortAddrs empty")
		}
		for _, a := range extraB {
			forwarded(c, a, "node-b's second address: with NodePortAddrs empty, every local address answers")
		}
		for _, a := range []netip.Addr{nodeA.IPv4, nodeA.IPv6} {
			forwarded(c, a, "node-a's primary address is in its NodePortAddrs")
		}
		for _, a := range extraA {
			leftAlone(c, a, nodeA, "node-a's second address is outside its NodePortAddrs")
		}
		for _, n := range e.topo.Nodes {
			for _, lo := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
				leftAlone(&n.Host, lo, n, "NodePorts are never served on loopback")
			}
		}
	}).nodeSetup = func(n *dataplane.Node) {
		if n.Name == "node-a" {
			n.NodePortAddrs = []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::1/128")}
		}
	}

	register("NodePort", "Removed", func(e *env) {
		// After the service is deleted its NodePort no longer forwards,
		// on either node, while another service's NodePort keeps working.
		web, other := e.pod(0, "web-1", 8080), e.pod(1, "other-1", 8080)
		keep := npSvc("other", "http", dataplane.TCP, 80, nodePort+1, ips(cip4(11)), ready(other, 8080))
		e.sync(state(npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10)), ready(web, 8080)), keep))
		for _, n := range e.topo.Nodes {
			onlyPods(e.t, e.tally(e.topo.Client, dataplane.TCP, ap(n.IPv4, nodePort), 3), "web-1")
		}
		e.sync(state(keep))
		for _, n := range e.topo.Nodes {
			e.notForwarded(e.topo.Client, dataplane.TCP, ap(n.IPv4, nodePort), topo.RequestOptions{}, "the service was deleted")
			onlyPods(e.t, e.tally(e.topo.Client, dataplane.TCP, ap(n.IPv4, nodePort+1), 3), "other-1")
		}
	})

	register("NodePort", "NoEndpointsRejected", func(e *env) {
		// A NodePort of a service without usable endpoints rejects TCP
		// and UDP at once, as its cluster IP does. A host service listens
		// on the ports, so a backend that lets the packets through to the
		// node's stack is caught: the node would answer.
		web := e.pod(0, "web-1", 8080)
		notReady := ready(web, 8080)
		notReady.Ready, notReady.Serving = false, false
		e.serveHost(nodePort)
		e.serveHost(nodePort + 1)
		e.sync(state(
			npSvc("empty", "tcp", dataplane.TCP, 80, nodePort, ips(cip4(10))),
			npSvc("empty", "udp", dataplane.UDP, 80, nodePort, ips(cip4(10))),
			npSvc("unready", "tcp", dataplane.TCP, 80, nodePort+1, ips(cip4(11)), notReady),
		))
		for _, n := range e.topo.Nodes {
			e.rejected(e.topo.Client, dataplane.TCP, ap(n.IPv4, nodePort), "the service has no endpoints")
			e.rejected(e.topo.Client, dataplane.UDP, ap(n.IPv4, nodePort), "the service has no endpoints")
			e.rejected(e.topo.Client, dataplane.TCP, ap(n.IPv4, nodePort+1), "the service's only endpoint is not ready")
		}
	})

	register("NodePort", "ClusterPolicyMasqueraded", func(e *env) {
		// externalTrafficPolicy Cluster: a node forwarding the client to
		// an endpoint on the other node masquerades it, so the endpoint
		// sees the node's address and its reply returns through the node
		// that translated the request.
		web := e.pod(1, "web-2", 8080)
		e.sync(state(npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10)), ready(web, 8080))))
		nodeA := e.topo.Nodes[0]
		if r := e.hit(e.topo.Client, dataplane.TCP, ap(nodeA.IPv4, nodePort)); r.From.Addr() != nodeA.IPv4 {
			e.t.Fatalf("endpoint on node-b saw the client as %s, want node-a's address %s (masqueraded)", r.From.Addr(), nodeA.IPv4)
		}
	})

	register("NodePort", "LocalPolicyKeepsSource", func(e *env) {
		// externalTrafficPolicy Local: each node forwards only to its own
		// endpoints and does not masquerade, so they see the client's
		// real address (what users choose Local for).
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		p := npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080))
		p.ExternalLocal = true
		e.sync(state(p))
		for i, n := range e.topo.Nodes {
			local := n.Pods[0].Name
			for range 10 {
				r := e.hit(e.topo.Client, dataplane.TCP, ap(n.IPv4, nodePort))
				if r.Pod != local || r.From.Addr() != e.topo.Client.IPv4 {
					e.t.Fatalf("client → %s:%d answered by %s seeing %s; want only %s's local endpoint %s, seeing the client's address %s",
						e.nodes[i].Name, nodePort, r.Pod, r.From.Addr(), e.nodes[i].Name, local, e.topo.Client.IPv4)
				}
			}
		}
	})

	register("NodePort", "LocalPolicyNoLocalEndpoints", func(e *env) {
		// externalTrafficPolicy Local on a node without local endpoints:
		// the node does not forward, and drops (kube-proxy's nftables mode
		// drops; it rejects only when the service has no endpoints at
		// all), so a load balancer's health check, not the client, learns
		// that the node is out. Backends whose Profile says
		// NoLocalEndpointsRejects (IPVS) reject instead. The node with the endpoint answers.
		web := e.pod(1, "web-2", 8080)
		var ports []dataplane.ServicePort
		for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
			p := npSvc("web", proto.String(), proto, 80, nodePort, ips(cip4(10)), ready(web, 8080))
			p.ExternalLocal = true
			ports = append(ports, p)
		}
		e.sync(state(ports...))
		nodeA, nodeB := e.topo.Nodes[0], e.topo.Nodes[1]
		for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
			if r := e.hit(e.topo.Client, proto, ap(nodeB.IPv4, nodePort)); r.Pod != "web-2" {
				e.t.Fatalf("client → node-b %s: answered by %s, want web-2", proto, r.Pod)
			}
			e.noLocalEndpoint(e.topo.Client, proto, ap(nodeA.IPv4, nodePort), topo.RequestOptions{}, "node-a has no local endpoint under externalTrafficPolicy Local")
		}
	})

	register("NodePort", "IPv6", func(e *env) {
		// The same on the nodes' IPv6 addresses: TCP and UDP reach
		// endpoints on both nodes through either node.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
			e.sync(state(npSvc("web", "http", proto, 80, nodePort, ips(cip6(10)), ready6(web1, 8080), ready6(web2, 8080))))
			for _, n := range e.topo.Nodes {
				got := e.tally(e.topo.Client, proto, ap(n.IPv6, nodePort), seeBoth)
				onlyPods(e.t, got, "web-1", "web-2")
				allPods(e.t, got, "web-1", "web-2")
			}
		}
	})
}
