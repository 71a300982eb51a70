package dataplane_test

import (
	"fmt"
	"net/netip"

	"github.com/svcplane/svcplane/dataplane"
)

func ExampleState_Validate() {
	s := &dataplane.State{Ports: []dataplane.ServicePort{{
		Name:       dataplane.PortName{Namespace: "default", Name: "svc-web", Port: "http"},
		Protocol:   dataplane.TCP,
		Port:       80,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10")},
		Endpoints: []dataplane.Endpoint{
			{Addr: netip.MustParseAddr("198.18.1.10"), Port: 8080, Ready: true, Serving: true},
			{Addr: netip.MustParseAddr("2001:db8:1::10"), Port: 8080, Ready: true, Serving: true},
			{Addr: netip.MustParseAddr("198.18.2.10"), Port: 0, Ready: true, Serving: true},
		},
	}}}
	err := s.Validate()
	for _, fe := range dataplane.FieldErrors(err) {
		fmt.Println(fe.Path)
	}
	fmt.Println(err)
	// Output:
	// ports[0].endpoints[1].addr
	// ports[0].endpoints[2].port
	// ports[0].endpoints[1].addr: 2001:db8:1::10 is IPv6 but the port has no IPv6 cluster IP; drop the endpoint or add a cluster IP of that family
	// ports[0].endpoints[2].port: 0 is not a valid port (want 1-65535)
}

func ExampleCategorize() {
	ep := func(addr, node string, ready, terminating bool) dataplane.Endpoint {
		return dataplane.Endpoint{
			Addr: netip.MustParseAddr(addr), Port: 8080, NodeName: node,
			Ready: ready, Serving: true, Terminating: terminating,
		}
	}
	p := &dataplane.ServicePort{
		Name:          dataplane.PortName{Namespace: "default", Name: "svc-web-node", Port: "http"},
		Protocol:      dataplane.TCP,
		Port:          80,
		NodePort:      30123,
		ClusterIPs:    []netip.Addr{netip.MustParseAddr("198.19.0.11")},
		ExternalLocal: true, // externalTrafficPolicy: Local
		Endpoints: []dataplane.Endpoint{
			ep("198.18.1.10", "node-a", false, true), // web-1: terminating
			ep("198.18.1.11", "node-a", false, true), // web-2: terminating
			ep("198.18.2.10", "node-b", true, false), // web-3: ready
		},
	}
	e := dataplane.Categorize(p, &dataplane.Node{Name: "node-a"})
	// Inside the cluster, the ready endpoint anywhere; from outside, node-a
	// has no ready endpoint, so its terminating ones.
	fmt.Println("internal:", addrs(e.Internal(p)))
	fmt.Println("external:", addrs(e.External(p)))
	fmt.Println("any:", e.Any)
	// Output:
	// internal: [198.18.2.10]
	// external: [198.18.1.10 198.18.1.11]
	// any: true
}

func addrs(eps []dataplane.Endpoint) []netip.Addr {
	var out []netip.Addr
	for _, e := range eps {
		out = append(out, e.Addr)
	}
	return out
}
