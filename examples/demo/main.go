// Command demo is svcplane's guided tour: it builds a throwaway two-node
// cluster out of network namespaces, programs the classroom service svc-web
// (3 pods, port 80 → 8080) with the nft backend on both nodes, sends 30
// requests from a pod and 30 from a node, prints every answer and a tally
// per pod, and tears everything down — also when interrupted.
//
// Run it as root: `make demo` or `sudo go run ./examples/demo`.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/nft"
)

func main() {
	n := flag.Int("n", 30, "requests to send from each client")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root to create network namespaces; run `sudo make demo`")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *n); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "demo: interrupted; everything it built is gone")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(ctx context.Context, n int) (err error) {
	step("Building a throwaway cluster: node-a, node-b and a client in their own network namespaces")
	t, err := topo.New(ctx, topo.Options{})
	if err != nil {
		return fmt.Errorf("build topology: %w", err)
	}
	defer func() {
		step("Tearing everything down")
		if cerr := t.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Println("    done: namespaces, links, rules and servers are gone")
	}()

	var eps []dataplane.Endpoint
	for i, name := range []string{"web-1", "web-2", "web-3"} {
		node := t.Nodes[i/2] // web-1, web-2 on node-a; web-3 on node-b
		p, err := t.AddPod(node, name, 8080)
		if err != nil {
			return fmt.Errorf("start pod %s: %w", name, err)
		}
		fmt.Printf("    pod %-6s on %s at %-13s echo server on :8080\n", name, node.Name, p.IPv4)
		eps = append(eps, dataplane.Endpoint{Addr: p.IPv4, Port: 8080, NodeName: node.Name, Ready: true, Serving: true})
	}
	client, err := t.AddPod(t.Nodes[1], "client")
	if err != nil {
		return fmt.Errorf("start client pod: %w", err)
	}

	clusterIP := netip.MustParseAddr("198.19.0.10")
	st := &dataplane.State{Ports: []dataplane.ServicePort{{
		Name:       dataplane.PortName{Namespace: "default", Name: "svc-web", Port: "http"},
		Protocol:   dataplane.TCP,
		Port:       80,
		ClusterIPs: []netip.Addr{clusterIP},
		Endpoints:  eps,
	}}}
	step("Programming svc-web (%s:80 → 3 pods on :8080) with the nft backend on both nodes", clusterIP)
	for _, node := range t.Nodes {
		dp, err := nft.New(nft.Config{Node: node.NodeModel(), NetNS: node.NS.Path()})
		if err != nil {
			return fmt.Errorf("nft backend on %s: %w", node.Name, err)
		}
		defer dp.Close()
		start := time.Now()
		if err := dp.Sync(ctx, st); err != nil {
			return fmt.Errorf("sync %s: %w", node.Name, err)
		}
		fmt.Printf("    %s: synced in %s (one netlink batch)\n", node.Name, time.Since(start).Round(time.Microsecond))
	}

	dst := netip.AddrPortFrom(clusterIP, 80)
	for _, from := range []*topo.Host{&client.Host, &t.Nodes[0].Host} {
		step("%d requests from %s (%s) to %s", n, from.Name, from.IPv4, dst)
		tally := map[string]int{}
		for i := 1; i <= n; i++ {
			r, err := from.Request(ctx, dataplane.TCP, dst, topo.RequestOptions{})
			if err != nil {
				return fmt.Errorf("request %d from %s: %w", i, from.Name, err)
			}
			fmt.Printf("    %2d  You've hit %s from %s\n", i, r.Pod, r.From)
			tally[r.Pod]++
		}
		printTally(tally)
		if from == &client.Host {
			fmt.Println("    (from a pod, endpoints see the pod's own address: pod traffic is not masqueraded)")
		} else {
			fmt.Println("    (from a node, endpoints see a node address: the node masquerades its own service traffic)")
		}
		if n >= 30 && len(tally) != 3 {
			return fmt.Errorf("only %d of 3 pods answered %s", len(tally), from.Name)
		}
	}
	return ctx.Err()
}

func printTally(tally map[string]int) {
	pods := make([]string, 0, len(tally))
	total := 0
	for p, c := range tally {
		pods = append(pods, p)
		total += c
	}
	slices.Sort(pods)
	fmt.Println("    tally:")
	for _, p := range pods {
		fmt.Printf("      %-6s %3d  %s\n", p, tally[p], strings.Repeat("█", tally[p]*40/total))
	}
}
