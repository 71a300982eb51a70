package topo_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// Build the topology, start a pod on each node and talk from one to the
// other. Needs root.
func Example() {
	ctx := context.Background()
	t, err := topo.New(ctx, topo.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	nodeA, nodeB := t.Nodes[0], t.Nodes[1]
	web1, err := t.AddPod(nodeA, "web-1", 8080)
	if err != nil {
		log.Fatal(err)
	}
	web2, err := t.AddPod(nodeB, "web-2", 8080)
	if err != nil {
		log.Fatal(err)
	}
	r, err := web2.Request(ctx, dataplane.TCP, netip.AddrPortFrom(web1.IPv4, 8080), topo.RequestOptions{Payload: []byte("hi")})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Pod, r.From.Addr(), string(r.Payload))

	// Nothing handles the service CIDR yet: the request times out.
	_, err = web2.Request(ctx, dataplane.UDP, netip.MustParseAddrPort("198.19.0.1:80"), topo.RequestOptions{})
	fmt.Println(topo.IsTimeout(err))

	// A backend would now program the nodes through nodeA.NS.Path() and
	// nodeA.NodeModel().
}
