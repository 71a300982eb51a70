package nft_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/nft"
)

// webState is the classroom Service svc-web: 198.19.0.10:80 → three pods
// on port 8080.
func webState() *dataplane.State {
	p := dataplane.ServicePort{
		Name:       dataplane.PortName{Namespace: "default", Name: "svc-web", Port: "http"},
		Protocol:   dataplane.TCP,
		Port:       80,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10")},
	}
	for _, a := range []string{"198.18.1.10", "198.18.1.11", "198.18.2.10"} {
		p.Endpoints = append(p.Endpoints, dataplane.Endpoint{Addr: netip.MustParseAddr(a), Port: 8080, Ready: true, Serving: true})
	}
	return &dataplane.State{Ports: []dataplane.ServicePort{p}}
}

// New programs node-a's network namespace; Sync makes its kernel forward
// the State. This needs root (CAP_NET_ADMIN in the namespace), so the
// example is compiled but not run by go test.
func ExampleNew() {
	node := dataplane.Node{
		Name:          "node-a",
		LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
	}
	dp, err := nft.New(nft.Config{Node: node, NetNS: "/run/netns/node-a"})
	if err != nil {
		log.Fatal(err) // errors.Is(err, dataplane.ErrUnsupported): no nf_tables
	}
	defer dp.Close() // leaves the table in place for the next run to adopt

	ctx := context.Background()
	if err := dp.Sync(ctx, webState()); err != nil {
		log.Fatal(err)
	}
	// Sync again whenever the State changes; only the changed elements
	// are written. dp.Cleanup(ctx) removes the table.
}

// Plan shows what a Sync would change, as nft commands, without changing
// anything. After a Sync of the same State it is empty, also in a new
// process: New adopts the table it finds.
func ExampleDataplane_Plan() {
	dp, err := nft.New(nft.Config{Node: dataplane.Node{Name: "node-a"}, NetNS: "/run/netns/node-a"})
	if err != nil {
		log.Fatal(err)
	}
	defer dp.Close()
	plan, err := dp.Plan(context.Background(), webState())
	if err != nil {
		log.Fatal(err)
	}
	if plan.Empty() {
		fmt.Println("nothing to change")
		return
	}
	fmt.Print(plan) // e.g. add element inet svcplane service-ips-v4 { 198.19.0.10 . tcp . 80 comment "default/svc-web:http" }
}

// Show reads back what the table forwards: service ports, their
// frontends, and each endpoint's share of the frontend's slots.
func ExampleDataplane_Show() {
	dp, err := nft.New(nft.Config{NetNS: "/run/netns/node-a"})
	if err != nil {
		log.Fatal(err)
	}
	defer dp.Close()
	prog, err := dp.Show(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	if !prog.Exists {
		fmt.Println("no table inet", prog.Table)
		return
	}
	for _, p := range prog.Ports {
		fmt.Println(p.Name)
		for _, f := range p.Frontends {
			fmt.Println("  ", f.Kind, f)
			for _, s := range f.Endpoints {
				fmt.Printf("     → %s %d/%d\n", s.Endpoint, s.Slots, s.Of)
			}
		}
	}
	// default/svc-web:http
	//    cluster IP 198.19.0.10:80/TCP
	//      → 198.18.1.10:8080 1/3
	//      → 198.18.1.11:8080 1/3
	//      → 198.18.2.10:8080 1/3
}
