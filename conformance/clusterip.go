package conformance

import (
	"bytes"
	"fmt"
	"net/netip"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// The ClusterIP group: traffic from pods and nodes to a service's cluster
// IPs reaches the service's endpoints, and only those.
func init() {
	for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP, dataplane.SCTP} {
		register("ClusterIP", proto.String(), func(e *env) {
			// A pod reaches ClusterIP:port and an endpoint's target port
			// answers, from either node.
			if proto == dataplane.SCTP && !e.topo.SCTP() {
				e.t.Skip("this kernel has no SCTP sockets; run `make test-vm` to test SCTP")
			}
			web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
			cA, cB := e.pod(0, "client-a"), e.pod(1, "client-b")
			e.sync(state(svc("web", "http", proto, 80, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080))))
			for _, c := range []*topo.Pod{cA, cB} {
				got := e.tally(&c.Host, proto, ap(cip4(10), 80), 20)
				onlyPods(e.t, got, "web-1", "web-2")
			}
		})
	}

	register("ClusterIP", "Spread", func(e *env) {
		// New connections spread over every endpoint: with 4 endpoints,
		// 200 connections reach each, none more than 40% of them.
		var eps []dataplane.Endpoint
		for i, name := range []string{"web-1", "web-2", "web-3", "web-4"} {
			eps = append(eps, ready(e.pod(i%2, name, 8080), 8080))
		}
		c := e.pod(0, "client")
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), eps...)))
		got := e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 200)
		allPods(e.t, got, "web-1", "web-2", "web-3", "web-4")
		for pod, n := range got {
			if n > 80 {
				e.t.Fatalf("answers per pod = %v: %s took %d of 200, want at most 40%%", got, pod, n)
			}
		}
	})

	register("ClusterIP", "MultiPort", func(e *env) {
		// Two named ports of one service map to their own target ports.
		// Each target pod listens only on its own port, so a swapped
		// mapping is refused instead of answered.
		web, metrics := e.pod(0, "web-1", 8080), e.pod(1, "metrics-1", 9090)
		c := e.pod(0, "client")
		e.sync(state(
			svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080)),
			svc("web", "metrics", dataplane.TCP, 81, ips(cip4(10)), ready(metrics, 9090)),
		))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 5), "web-1")
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 81), 5), "metrics-1")
	})

	register("ClusterIP", "SamePortTwoProtocols", func(e *env) {
		// TCP and UDP on one port go to their own targets; removing one
		// leaves the other working.
		dnsT, dnsU := e.pod(0, "dns-tcp", 5353), e.pod(1, "dns-udp", 5353)
		c := e.pod(0, "client")
		tcp := svc("dns", "dns-tcp", dataplane.TCP, 53, ips(cip4(10)), ready(dnsT, 5353))
		udp := svc("dns", "dns-udp", dataplane.UDP, 53, ips(cip4(10)), ready(dnsU, 5353))
		e.sync(state(tcp, udp))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 53), 5), "dns-tcp")
		onlyPods(e.t, e.tally(&c.Host, dataplane.UDP, ap(cip4(10), 53), 5), "dns-udp")
		e.sync(state(tcp))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 53), 5), "dns-tcp")
		e.rejected(&c.Host, dataplane.UDP, ap(cip4(10), 53), "the UDP port was removed; the cluster IP still belongs to the service")
	})

	register("ClusterIP", "EndpointAdded", func(e *env) {
		// After one Sync, new connections include the new endpoint.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		c := e.pod(0, "client")
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web1, 8080))))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 5), "web-1")
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080))))
		allPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 40), "web-1", "web-2")
	})

	register("ClusterIP", "EndpointRemoved", func(e *env) {
		// After one Sync, new connections never reach a removed endpoint.
		web1, web2, web3 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080), e.pod(1, "web-3", 8080)
		c := e.pod(0, "client")
		e.sync(state(svc("web", "http", dataplane.UDP, 80, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080), ready(web3, 8080))))
		allPods(e.t, e.tally(&c.Host, dataplane.UDP, ap(cip4(10), 80), 60), "web-1", "web-2", "web-3")
		e.sync(state(svc("web", "http", dataplane.UDP, 80, ips(cip4(10)), ready(web1, 8080), ready(web3, 8080))))
		got := e.tally(&c.Host, dataplane.UDP, ap(cip4(10), 80), 60)
		onlyPods(e.t, got, "web-1", "web-3")
		allPods(e.t, got, "web-1", "web-3")
	})

	register("ClusterIP", "PortAddedRemoved", func(e *env) {
		// A port added to a live service works at once; once removed, it is
		// rejected while the service's other port keeps working.
		web := e.pod(0, "web-1", 8080, 8443)
		c := e.pod(1, "client")
		http := svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080))
		https := svc("web", "https", dataplane.TCP, 443, ips(cip4(10)), ready(web, 8443))
		e.sync(state(http))
		e.rejected(&c.Host, dataplane.TCP, ap(cip4(10), 443), "port 443 is not defined yet")
		e.sync(state(http, https))
		e.hit(&c.Host, dataplane.TCP, ap(cip4(10), 443))
		e.sync(state(http))
		e.rejected(&c.Host, dataplane.TCP, ap(cip4(10), 443), "port 443 was removed")
		e.hit(&c.Host, dataplane.TCP, ap(cip4(10), 80))
	})

	register("ClusterIP", "ServiceRecreated", func(e *env) {
		// A deleted service stops answering; recreated with another
		// endpoint, it answers from that one only.
		old, neu := e.pod(0, "old-1", 8080), e.pod(1, "new-1", 8080)
		c := e.pod(0, "client")
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(old, 8080))))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 3), "old-1")
		e.sync(state())
		if r, err := e.req(&c.Host, dataplane.TCP, ap(cip4(10), 80), topo.RequestOptions{}); err == nil {
			e.t.Fatalf("deleted service still answered by %s", r.Pod)
		}
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(neu, 8080))))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 10), "new-1")
	})

	register("ClusterIP", "UpDown", func(e *env) {
		// Deleting one service leaves the others working; bringing it back
		// restores it.
		a, b := e.pod(0, "a-1", 8080), e.pod(1, "b-1", 8080)
		c := e.pod(0, "client")
		sa := svc("svc-a", "http", dataplane.TCP, 80, ips(cip4(10)), ready(a, 8080))
		sb := svc("svc-b", "http", dataplane.TCP, 80, ips(cip4(11)), ready(b, 8080))
		e.sync(state(sa, sb))
		e.hit(&c.Host, dataplane.TCP, ap(cip4(10), 80))
		e.sync(state(sb))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(11), 80), 5), "b-1")
		if r, err := e.req(&c.Host, dataplane.TCP, ap(cip4(10), 80), topo.RequestOptions{}); err == nil {
			e.t.Fatalf("deleted svc-a still answered by %s", r.Pod)
		}
		e.sync(state(sa, sb))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 5), "a-1")
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(11), 80), 5), "b-1")
	})

	register("ClusterIP", "NoEndpointsRejected", func(e *env) {
		// A service with no usable endpoints rejects TCP and UDP at once
		// (kube-proxy's behaviour), so clients fail fast instead of
		// waiting for a timeout. Endpoints that are not ready and not
		// serving-terminating do not count.
		web := e.pod(0, "web-1", 8080)
		c := e.pod(1, "client")
		notReady := ready(web, 8080)
		notReady.Ready, notReady.Serving = false, false
		e.sync(state(
			svc("empty", "tcp", dataplane.TCP, 80, ips(cip4(10))),
			svc("empty", "udp", dataplane.UDP, 80, ips(cip4(10))),
			svc("unready", "tcp", dataplane.TCP, 80, ips(cip4(11)), notReady),
		))
		e.rejected(&c.Host, dataplane.TCP, ap(cip4(10), 80), "the service has no endpoints")
		e.rejected(&c.Host, dataplane.UDP, ap(cip4(10), 80), "the service has no endpoints")
		e.rejected(&c.Host, dataplane.TCP, ap(cip4(11), 80), "the service's only endpoint is not ready")
	})

	register("ClusterIP", "UndefinedPortRejected", func(e *env) {
		// A cluster IP on a port the service does not define is rejected,
		// and never reaches a host service listening on that port on the
		// node.
		web := e.pod(0, "web-1", 8080)
		c := e.pod(0, "client")
		for _, n := range e.topo.Nodes {
			for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
				if err := n.ServeEcho(proto, 81); err != nil {
					e.t.Fatalf("host service on %s: %v", n.Name, err)
				}
			}
		}
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080))))
		e.hit(&c.Host, dataplane.TCP, ap(cip4(10), 80))
		e.rejected(&c.Host, dataplane.TCP, ap(cip4(10), 81), "port 81 is not a port of the service")
		e.rejected(&c.Host, dataplane.UDP, ap(cip4(10), 81), "port 81 is not a port of the service")
		e.rejected(&c.Host, dataplane.UDP, ap(cip4(10), 80), "the service defines TCP 80, not UDP 80")
	})

	register("ClusterIP", "Headless", func(e *env) {
		// A port without a cluster IP (a headless service) programs
		// nothing and disturbs nothing.
		web := e.pod(0, "web-1", 8080)
		c := e.pod(1, "client")
		normal := svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080))
		headless := svc("web-headless", "http", dataplane.TCP, 80, nil, ready(web, 8080))
		e.sync(state(normal))
		before := []uint32{e.generation(0), e.generation(1)}
		e.sync(state(normal, headless))
		for i := range e.topo.Nodes {
			if g := e.generation(i); g != before[i] {
				e.t.Fatalf("%s: adding a headless service changed the kernel (nftables generation %d → %d); want no change", e.nodes[i].Name, before[i], g)
			}
		}
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 5), "web-1")
	})

	register("ClusterIP", "FromNode", func(e *env) {
		// A process in a node's own namespace reaches the cluster IP, also
		// when the endpoint is on the other node.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080))))
		for _, n := range e.topo.Nodes {
			allPods(e.t, e.tally(&n.Host, dataplane.TCP, ap(cip4(10), 80), 40), "web-1", "web-2")
		}
	})

	register("ClusterIP", "PodSourcePreserved", func(e *env) {
		// pod on node-b → cluster IP → endpoint on node-a sees the pod's
		// own address: pod-to-service traffic is not masqueraded.
		web := e.pod(0, "web-1", 8080)
		c := e.pod(1, "client")
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080))))
		if r := e.hit(&c.Host, dataplane.TCP, ap(cip4(10), 80)); r.From.Addr() != c.IPv4 {
			e.t.Fatalf("endpoint saw the client as %s, want the pod's own address %s", r.From.Addr(), c.IPv4)
		}
	})

	register("ClusterIP", "NodeSourceMasqueraded", func(e *env) {
		// node → cluster IP → endpoint on the other node sees the node's
		// address, so the reply comes back through the node that DNATed.
		// The client binds a secondary node address (as a host-network
		// process may), so only masquerading makes the endpoint see the
		// node's primary address.
		web := e.pod(0, "web-1", 8080)
		nodeB := e.topo.Nodes[1]
		second := netip.MustParseAddr("192.0.2.202")
		if err := nodeB.AddAddress(netip.PrefixFrom(second, 32)); err != nil {
			e.t.Fatal(err)
		}
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080))))
		r, err := e.req(&nodeB.Host, dataplane.TCP, ap(cip4(10), 80), topo.RequestOptions{LocalAddr: second})
		if err != nil {
			e.t.Fatalf("node-b (bound to %s) → cluster IP: %v", second, err)
		}
		if r.From.Addr() != nodeB.IPv4 {
			e.t.Fatalf("endpoint saw the client as %s, want node-b's address %s (masqueraded)", r.From.Addr(), nodeB.IPv4)
		}
	})

	register("ClusterIP", "MasqueradeAll", func(e *env) {
		// With Node.MasqueradeAll, pods' service traffic is masqueraded too.
		web := e.pod(0, "web-1", 8080)
		c := e.pod(1, "client")
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080))))
		nodeB := e.topo.Nodes[1]
		if r := e.hit(&c.Host, dataplane.TCP, ap(cip4(10), 80)); r.From.Addr() != nodeB.IPv4 {
			e.t.Fatalf("endpoint saw the client pod as %s, want node-b's address %s (masqueradeAll)", r.From.Addr(), nodeB.IPv4)
		}
	}).nodeSetup = func(n *dataplane.Node) { n.MasqueradeAll = true }

	register("ClusterIP", "Hairpin", func(e *env) {
		// An endpoint reaches itself through its own service: the
		// connection is masqueraded, so the reply returns through the node.
		web := e.pod(0, "web-1", 8080)
		e.sync(state(
			svc("web", "tcp", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080)),
			svc("web", "udp", dataplane.UDP, 80, ips(cip4(10)), ready(web, 8080)),
		))
		for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
			r := e.hit(&web.Host, proto, ap(cip4(10), 80))
			if r.Pod != "web-1" || r.From.Addr() == web.IPv4 {
				e.t.Fatalf("hairpin %s: answered by %s seeing %s; want web-1 seeing a node address, not its own", proto, r.Pod, r.From.Addr())
			}
		}
	})

	register("ClusterIP", "LargePayload", func(e *env) {
		// A 2000-byte UDP datagram (IP-fragmented on a 1500 MTU) and a
		// 1 MiB TCP transfer arrive whole through the service.
		web := e.pod(1, "web-1", 8080)
		c := e.pod(0, "client")
		e.sync(state(
			svc("web", "tcp", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080)),
			svc("web", "udp", dataplane.UDP, 80, ips(cip4(10)), ready(web, 8080)),
		))
		for _, tc := range []struct {
			proto dataplane.Protocol
			size  int
		}{{dataplane.UDP, 2000}, {dataplane.TCP, 1 << 20}} {
			payload := bytes.Repeat([]byte("svcplane"), tc.size/8)
			r, err := e.req(&c.Host, tc.proto, ap(cip4(10), 80), topo.RequestOptions{Payload: payload})
			if err != nil {
				e.t.Fatalf("%s %d bytes: %v", tc.proto, tc.size, err)
			}
			if !bytes.Equal(r.Payload, payload) {
				e.t.Fatalf("%s: sent %d bytes, got %d back, or different bytes", tc.proto, len(payload), len(r.Payload))
			}
		}
	})

	register("ClusterIP", "EstablishedSurvivesSync", func(e *env) {
		// An open TCP connection to a kept endpoint keeps working across
		// 10 Syncs that change other endpoints and services: a proxy's
		// updates must never break connections they do not concern.
		pods := []*topo.Pod{e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080), e.pod(0, "web-3", 8080), e.pod(1, "web-4", 8080)}
		other := e.pod(1, "other-1", 8080)
		c := e.pod(0, "client")
		var all []dataplane.Endpoint
		for _, p := range pods {
			all = append(all, ready(p, 8080))
		}
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), all...)))
		s, err := c.DialTCP(e.ctx, ap(cip4(10), 80))
		if err != nil {
			e.t.Fatalf("open a connection: %v", err)
		}
		defer s.Close()
		var kept dataplane.Endpoint
		for i, p := range pods {
			if p.Name == s.Pod {
				kept = all[i]
			}
		}
		for i := range 10 {
			// Keep the connected endpoint; vary the others and add or
			// remove a second service.
			eps := []dataplane.Endpoint{kept}
			for j, ep := range all {
				if ep.Addr != kept.Addr && (i+j)%2 == 0 {
					eps = append(eps, ep)
				}
			}
			ports := []dataplane.ServicePort{svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), eps...)}
			if i%2 == 0 {
				ports = append(ports, svc("other", "http", dataplane.TCP, 80, ips(cip4(11)), ready(other, 8080)))
			}
			e.sync(state(ports...))
			if err := s.Echo([]byte(fmt.Sprintf("after sync %d\n", i+1)), 0); err != nil {
				e.t.Fatalf("after Sync %d: %v", i+1, err)
			}
		}
	})

	register("ClusterIP", "IPv6", func(e *env) {
		// The same through IPv6 only.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		c := e.pod(0, "client")
		for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
			e.sync(state(svc("web", "http", proto, 80, ips(cip6(10)), ready6(web1, 8080), ready6(web2, 8080))))
			got := e.tally(&c.Host, proto, ap(cip6(10), 80), 40)
			allPods(e.t, got, "web-1", "web-2")
		}
		e.rejected(&c.Host, dataplane.TCP, ap(cip6(10), 81), "port 81 is not a port of the service")
		if r := e.hit(&c.Host, dataplane.UDP, ap(cip6(10), 80)); r.From.Addr() != c.IPv6 {
			e.t.Fatalf("endpoint saw %s, want the pod's IPv6 address %s", r.From.Addr(), c.IPv6)
		}
	})

	register("ClusterIP", "DualStack", func(e *env) {
		// One service with a cluster IP of each family forwards each
		// family to that family's endpoints.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		c := e.pod(0, "client")
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10), cip6(10)),
			ready(web1, 8080), ready6(web1, 8080), ready6(web2, 8080))))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 10), "web-1")
		allPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip6(10), 80), 40), "web-1", "web-2")
	})
}
