package dataplane_test

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/svcplane/svcplane/dataplane"
)

// Endpoint builders. The last octet of the address names the endpoint in
// the expectations below.
func readyEp(last byte, node string) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: v4(last), Port: 8080, NodeName: node, Ready: true, Serving: true}
}

// termEp is serving and terminating: usable only as a fallback.
func termEp(last byte, node string) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: v4(last), Port: 8080, NodeName: node, Serving: true, Terminating: true}
}

// goneEp is terminating and no longer serving: never usable.
func goneEp(last byte, node string) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: v4(last), Port: 8080, NodeName: node, Terminating: true}
}

// unreadyEp is neither ready nor terminating: never usable.
func unreadyEp(last byte, node string) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: v4(last), Port: 8080, NodeName: node}
}

// servingOnlyEp is serving but neither ready nor terminating (not a state
// Kubernetes produces): never usable.
func servingOnlyEp(last byte, node string) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: v4(last), Port: 8080, NodeName: node, Serving: true}
}

func zones(e dataplane.Endpoint, z ...string) dataplane.Endpoint { e.ForZones = z; return e }
func nodes(e dataplane.Endpoint, n ...string) dataplane.Endpoint { e.ForNodes = n; return e }

func v4(last byte) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 1, last}) }

// lasts turns endpoints into their last octets, keeping nil and empty
// apart.
func lasts(eps []dataplane.Endpoint) []byte {
	if eps == nil {
		return nil
	}
	out := []byte{}
	for _, e := range eps {
		out = append(out, e.Addr.As4()[3])
	}
	return out
}

type categorized struct {
	Cluster, Local []byte
	Any            bool
}

var none = []byte{} // computed but empty, as opposed to nil (not computed)

func TestCategorize(t *testing.T) {
	nodeA := &dataplane.Node{Name: "node-a", Zone: "zone-a"}
	const (
		a, b, c = "node-a", "node-b", "node-c"
	)
	// policy options
	type policy struct{ internalLocal, externalLocal, nodePort bool }
	cluster := policy{}
	internalLocal := policy{internalLocal: true}
	externalLocal := policy{externalLocal: true, nodePort: true}
	bothLocal := policy{internalLocal: true, externalLocal: true}
	bothLocalNodePort := policy{internalLocal: true, externalLocal: true, nodePort: true}

	tests := []struct {
		name   string
		policy policy
		node   *dataplane.Node
		eps    []dataplane.Endpoint
		want   categorized
	}{
		// Readiness and the terminating fallback.
		{"no endpoints", cluster, nodeA, nil, categorized{none, nil, false}},
		{"ready only", cluster, nodeA,
			[]dataplane.Endpoint{readyEp(1, a), termEp(2, a), goneEp(3, b), unreadyEp(4, b), readyEp(5, c), servingOnlyEp(6, c)},
			categorized{[]byte{1, 5}, nil, true}},
		{"ready and terminating counts as ready", cluster, nodeA,
			[]dataplane.Endpoint{func() dataplane.Endpoint { e := readyEp(1, b); e.Terminating = true; return e }(), termEp(2, b)},
			categorized{[]byte{1}, nil, true}},
		{"fallback to serving and terminating", cluster, nodeA,
			[]dataplane.Endpoint{unreadyEp(1, a), termEp(2, b), goneEp(3, a), termEp(4, c), servingOnlyEp(5, a)},
			categorized{[]byte{2, 4}, nil, true}},
		{"never non-serving or non-terminating", cluster, nodeA,
			[]dataplane.Endpoint{unreadyEp(1, a), goneEp(2, a), servingOnlyEp(3, b)},
			categorized{none, nil, false}},
		{"order of p.Endpoints kept", cluster, nodeA,
			[]dataplane.Endpoint{readyEp(9, b), readyEp(3, a), readyEp(7, c)},
			categorized{[]byte{9, 3, 7}, nil, true}},

		// Local policies.
		{"internal Local: only this node's", internalLocal, nodeA,
			[]dataplane.Endpoint{readyEp(1, a), readyEp(2, b), readyEp(3, a), termEp(4, a)},
			categorized{nil, []byte{1, 3}, true}},
		{"Local falls back on its own", externalLocal, nodeA,
			[]dataplane.Endpoint{readyEp(1, b), termEp(2, a), goneEp(3, a), termEp(4, b)},
			categorized{[]byte{1}, []byte{2}, true}},
		{"Cluster falls back on its own", externalLocal, nodeA,
			[]dataplane.Endpoint{readyEp(1, a), termEp(2, b)},
			categorized{[]byte{1}, []byte{1}, true}},
		{"both fall back", externalLocal, nodeA,
			[]dataplane.Endpoint{termEp(1, a), termEp(2, b), unreadyEp(3, a)},
			categorized{[]byte{1, 2}, []byte{1}, true}},
		{"Local with only remote ready endpoints", internalLocal, nodeA,
			[]dataplane.Endpoint{readyEp(1, b), readyEp(2, c), unreadyEp(3, a)},
			categorized{nil, none, true}},
		{"Local with only remote terminating endpoints", bothLocal, nodeA,
			[]dataplane.Endpoint{termEp(1, b), goneEp(2, a)},
			categorized{nil, none, true}},
		{"Local with nothing usable anywhere", internalLocal, nodeA,
			[]dataplane.Endpoint{goneEp(1, a), unreadyEp(2, b)},
			categorized{nil, none, false}},
		{"Local with no endpoints", bothLocal, nodeA, nil, categorized{nil, none, false}},
		{"endpoint without node is never local", internalLocal, &dataplane.Node{},
			[]dataplane.Endpoint{readyEp(1, ""), readyEp(2, b)},
			categorized{nil, none, true}},
		{"both Local without external frontends: no Cluster", bothLocal, nodeA,
			[]dataplane.Endpoint{readyEp(1, a), readyEp(2, b)},
			categorized{nil, []byte{1}, true}},
		{"both Local with a NodePort: Cluster for the short-circuit", bothLocalNodePort, nodeA,
			[]dataplane.Endpoint{readyEp(1, a), readyEp(2, b)},
			categorized{[]byte{1, 2}, []byte{1}, true}},

		// Topology hints.
		{"node hints", cluster, nodeA,
			[]dataplane.Endpoint{nodes(readyEp(1, a), a), nodes(readyEp(2, b), b), nodes(readyEp(3, c), c, a)},
			categorized{[]byte{1, 3}, nil, true}},
		{"node hints win over zone hints", cluster, nodeA,
			[]dataplane.Endpoint{
				zones(nodes(readyEp(1, a), b), "zone-a"),
				zones(nodes(readyEp(2, b), a), "zone-b"),
			},
			categorized{[]byte{2}, nil, true}},
		{"node hints for other nodes: zone hints apply", cluster, nodeA,
			[]dataplane.Endpoint{
				zones(nodes(readyEp(1, b), b), "zone-b"),
				zones(nodes(readyEp(2, c), c), "zone-a"),
			},
			categorized{[]byte{2}, nil, true}},
		{"node hints missing on a ready endpoint: ignored", cluster, nodeA,
			[]dataplane.Endpoint{nodes(readyEp(1, a), a), readyEp(2, b)},
			categorized{[]byte{1, 2}, nil, true}},
		{"zone hints", cluster, nodeA,
			[]dataplane.Endpoint{zones(readyEp(1, a), "zone-a"), zones(readyEp(2, b), "zone-b"), zones(readyEp(3, c), "zone-b", "zone-a")},
			categorized{[]byte{1, 3}, nil, true}},
		{"zone hints missing on a ready endpoint: ignored", cluster, nodeA,
			[]dataplane.Endpoint{zones(readyEp(1, a), "zone-a"), readyEp(2, b)},
			categorized{[]byte{1, 2}, nil, true}},
		{"zone hints for other zones only: ignored", cluster, nodeA,
			[]dataplane.Endpoint{zones(readyEp(1, a), "zone-b"), zones(readyEp(2, b), "zone-c")},
			categorized{[]byte{1, 2}, nil, true}},
		{"zone hints on a node without zone: ignored", cluster, &dataplane.Node{Name: a},
			[]dataplane.Endpoint{zones(readyEp(1, a), "zone-a"), zones(readyEp(2, b), "zone-b")},
			categorized{[]byte{1, 2}, nil, true}},
		{"only ready endpoints' hints count", cluster, nodeA,
			[]dataplane.Endpoint{zones(readyEp(1, a), "zone-a"), unreadyEp(2, a), termEp(3, a), zones(readyEp(4, b), "zone-b")},
			categorized{[]byte{1}, nil, true}},
		{"hints never restrict the terminating fallback", cluster, nodeA,
			[]dataplane.Endpoint{zones(termEp(1, b), "zone-b"), zones(termEp(2, a), "zone-a"), nodes(termEp(3, c), c)},
			categorized{[]byte{1, 2, 3}, nil, true}},
		{"hints never restrict Local", externalLocal, nodeA,
			[]dataplane.Endpoint{zones(readyEp(1, a), "zone-b"), zones(readyEp(2, b), "zone-a")},
			categorized{[]byte{2}, []byte{1}, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &dataplane.ServicePort{
				InternalLocal: tt.policy.internalLocal,
				ExternalLocal: tt.policy.externalLocal,
				Endpoints:     tt.eps,
			}
			if tt.policy.nodePort {
				p.NodePort = 30080
			}
			before := clonePort(p)
			got := dataplane.Categorize(p, tt.node)
			if g := (categorized{lasts(got.Cluster), lasts(got.Local), got.Any}); !reflect.DeepEqual(g, tt.want) {
				t.Errorf("Categorize = %+v, want %+v", g, tt.want)
			}
			if !reflect.DeepEqual(p, before) {
				t.Error("Categorize changed its ServicePort")
			}
		})
	}
}

// TestCategorizeUsesClusterEndpoints checks when Cluster is computed: as
// kube-proxy's UsesClusterEndpoints, unless internal traffic is Local and
// the port has no external frontend.
func TestCategorizeUsesClusterEndpoints(t *testing.T) {
	node := &dataplane.Node{Name: "node-a"}
	eps := []dataplane.Endpoint{readyEp(1, "node-b")}
	for _, tt := range []struct {
		name                   string
		port                   dataplane.ServicePort
		wantCluster, wantLocal bool
	}{
		{"Cluster", dataplane.ServicePort{}, true, false},
		{"internal Local", dataplane.ServicePort{InternalLocal: true}, false, true},
		{"external Local", dataplane.ServicePort{ExternalLocal: true, NodePort: 30080}, true, true},
		{"both Local", dataplane.ServicePort{InternalLocal: true, ExternalLocal: true}, false, true},
		{"both Local, NodePort", dataplane.ServicePort{InternalLocal: true, ExternalLocal: true, NodePort: 30080}, true, true},
		{"both Local, external IP", dataplane.ServicePort{InternalLocal: true, ExternalLocal: true,
			ExternalIPs: []netip.Addr{ip("203.0.113.10")}}, true, true},
		{"both Local, load-balancer IP", dataplane.ServicePort{InternalLocal: true, ExternalLocal: true,
			LoadBalancerIPs: []netip.Addr{ip("203.0.113.20")}}, true, true},
		{"internal Local, external Cluster, NodePort", dataplane.ServicePort{InternalLocal: true, NodePort: 30080}, true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.port.Endpoints = eps
			got := dataplane.Categorize(&tt.port, node)
			if (got.Cluster != nil) != tt.wantCluster || (got.Local != nil) != tt.wantLocal {
				t.Errorf("Cluster computed: %v, Local computed: %v; want %v, %v",
					got.Cluster != nil, got.Local != nil, tt.wantCluster, tt.wantLocal)
			}
			if !got.Any {
				t.Error("Any = false with a ready endpoint")
			}
		})
	}
}

func TestInternalExternal(t *testing.T) {
	node := &dataplane.Node{Name: "node-a"}
	eps := []dataplane.Endpoint{readyEp(1, "node-a"), readyEp(2, "node-b")}
	for _, tt := range []struct {
		internalLocal, externalLocal bool
		wantInternal, wantExternal   []byte
	}{
		{false, false, []byte{1, 2}, []byte{1, 2}},
		{true, false, []byte{1}, []byte{1, 2}},
		{false, true, []byte{1, 2}, []byte{1}},
		{true, true, []byte{1}, []byte{1}},
	} {
		p := &dataplane.ServicePort{InternalLocal: tt.internalLocal, ExternalLocal: tt.externalLocal, NodePort: 30080, Endpoints: eps}
		e := dataplane.Categorize(p, node)
		if got := lasts(e.Internal(p)); !reflect.DeepEqual(got, tt.wantInternal) {
			t.Errorf("internalLocal=%v externalLocal=%v: Internal = %v, want %v", tt.internalLocal, tt.externalLocal, got, tt.wantInternal)
		}
		if got := lasts(e.External(p)); !reflect.DeepEqual(got, tt.wantExternal) {
			t.Errorf("internalLocal=%v externalLocal=%v: External = %v, want %v", tt.internalLocal, tt.externalLocal, got, tt.wantExternal)
		}
	}
}

func clonePort(p *dataplane.ServicePort) *dataplane.ServicePort {
	c := *p
	c.Endpoints = slices.Clone(p.Endpoints)
	for i := range c.Endpoints {
		c.Endpoints[i].ForZones = slices.Clone(c.Endpoints[i].ForZones)
		c.Endpoints[i].ForNodes = slices.Clone(c.Endpoints[i].ForNodes)
	}
	return &c
}
