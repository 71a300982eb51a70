// Command demo is svcplane's guided tour. It builds a throwaway two-node
// cluster out of network namespaces, programs the classroom Services into
// both nodes' kernels, and shows, with real packets:
//
//  1. ClusterIP balancing: svc-web (198.19.0.10:80 → 3 pods on :8080)
//     answers a pod and a node from all three pods, with a tally;
//  2. a NodePort: svc-web-node answers the external client on port 30123
//     of either node;
//  3. ClientIP affinity: svc-web-sticky holds each client on one pod;
//  4. an endpoint removed: web-2 leaves svc-web, one Sync moves its share
//     of the traffic to the others, and open connections elsewhere are
//     left alone.
//
// Each step is announced, and a progress line runs while it waits. It
// takes a few seconds and tears everything down at the end, also when
// interrupted (Ctrl-C): the namespaces are held only by this process, so
// even a killed demo leaves nothing behind.
//
// Run it as root: `make demo` or `sudo go run ./examples/demo`.
// -backend ipvs runs it on the IPVS backend, on a kernel that has IPVS;
// `make demo BACKEND=ipvs` does that, or, where this kernel has no IPVS,
// runs the demo inside a VM booting Debian's 6.1 kernel (scripts/vm).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/ipvs"
	"github.com/svcplane/svcplane/nft"
)

func main() {
	n := flag.Int("n", 30, "requests per client in each step")
	backend := flag.String("backend", "nft", "kernel backend: nft or ipvs (ipvs needs a kernel with IPVS)")
	progress := flag.Bool("progress", true, "draw a progress line while waiting, when stdout is a terminal (make demo turns it off inside the VM when its own output is not a terminal)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root to create network namespaces; run `sudo make demo`")
		os.Exit(1)
	}
	if *backend != "nft" && *backend != "ipvs" {
		fmt.Fprintf(os.Stderr, "demo: -backend %q: want nft or ipvs\n", *backend)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{n: max(*n, 1), backend: *backend, out: os.Stdout, tty: *progress && isTerminal(os.Stdout)}
	if err := d.run(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "demo: interrupted; everything it built is gone")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type demo struct {
	n       int
	backend string
	out     io.Writer
	tty     bool // out is a terminal: draw progress lines
	drawn   int  // columns of the progress line on screen

	topo   *topo.Topology
	dps    []dataplane.Dataplane
	state  *dataplane.State
	client *topo.Pod
}

var (
	webIP    = netip.MustParseAddr("198.19.0.10")
	nodeIP   = netip.MustParseAddr("198.19.0.11")
	stickyIP = netip.MustParseAddr("198.19.0.12")
)

const nodePort = 30123

func (d *demo) step(format string, args ...any) { fmt.Fprintf(d.out, "\n==> "+format+"\n", args...) }

func (d *demo) run(ctx context.Context) (err error) {
	start := time.Now()
	d.step("Building a throwaway cluster: node-a, node-b and an external client, each in its own network namespace")
	stopSpin := d.spin("creating namespaces, veths and routes")
	t, err := topo.New(ctx, topo.Options{})
	stopSpin()
	if err != nil {
		return fmt.Errorf("build topology: %w", err)
	}
	d.topo = t
	defer func() {
		d.step("Tearing everything down")
		for _, dp := range d.dps {
			dp.Close()
		}
		if cerr := t.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Fprintf(d.out, "    done in %s: namespaces, links, rules and servers are gone\n", time.Since(start).Round(100*time.Millisecond))
	}()
	fmt.Fprintln(d.out, "    node-a 192.0.2.1, node-b 192.0.2.2, external client 192.0.2.100, on one bridge")

	var eps []dataplane.Endpoint
	for i, name := range []string{"web-1", "web-2", "web-3"} {
		node := t.Nodes[i/2] // web-1, web-2 on node-a; web-3 on node-b
		p, err := t.AddPod(node, name, 8080)
		if err != nil {
			return fmt.Errorf("start pod %s: %w", name, err)
		}
		fmt.Fprintf(d.out, "    pod %-6s on %s at %-12s echo server on :8080\n", name, node.Name, p.IPv4)
		eps = append(eps, dataplane.Endpoint{Addr: p.IPv4, Port: 8080, NodeName: node.Name, Ready: true, Serving: true})
	}
	if d.client, err = t.AddPod(t.Nodes[1], "client"); err != nil {
		return fmt.Errorf("start client pod: %w", err)
	}
	fmt.Fprintf(d.out, "    pod client on node-b at %s sends requests\n", d.client.IPv4)

	port := func(name string, ip netip.Addr) dataplane.ServicePort {
		return dataplane.ServicePort{
			Name:     dataplane.PortName{Namespace: "default", Name: name, Port: "http"},
			Protocol: dataplane.TCP, Port: 80, ClusterIPs: []netip.Addr{ip},
			Endpoints: slices.Clone(eps),
		}
	}
	web, webNode, sticky := port("svc-web", webIP), port("svc-web-node", nodeIP), port("svc-web-sticky", stickyIP)
	webNode.NodePort = nodePort
	sticky.Affinity = 10800 * time.Second
	d.state = &dataplane.State{Ports: []dataplane.ServicePort{web, webNode, sticky}}

	d.step("Programming three Services into both nodes' kernels with the %s backend", d.backend)
	fmt.Fprintf(d.out, "    svc-web         %s:80 → web-1, web-2, web-3 :8080\n", webIP)
	fmt.Fprintf(d.out, "    svc-web-node    %s:80 and NodePort %d → the same pods\n", nodeIP, nodePort)
	fmt.Fprintf(d.out, "    svc-web-sticky  %s:80 with ClientIP affinity → the same pods\n", stickyIP)
	for _, node := range t.Nodes {
		dp, err := d.newDataplane(node)
		if err != nil {
			return err
		}
		d.dps = append(d.dps, dp)
	}
	if err := d.sync(ctx); err != nil {
		return err
	}

	dst := netip.AddrPortFrom(webIP, 80)
	for _, from := range []*topo.Host{&d.client.Host, &t.Nodes[0].Host} {
		d.step("ClusterIP balancing: %d requests from %s (%s) to svc-web %s", d.n, from.Name, from.IPv4, dst)
		tally, err := d.send(ctx, from, dst, true)
		if err != nil {
			return err
		}
		d.printTally(tally)
		if from == &d.client.Host {
			fmt.Fprintln(d.out, "    Pods see the client pod's own address: pod traffic is not masqueraded.")
		} else {
			fmt.Fprintln(d.out, "    Pods see an address of node-a: a node's own service traffic is masqueraded.")
		}
		if err := d.wantPods(tally, "web-1", "web-2", "web-3"); err != nil {
			return err
		}
	}

	d.step("NodePort: the external client calls port %d of node-a and of node-b", nodePort)
	total := map[string]int{}
	for _, node := range t.Nodes {
		tally, err := d.send(ctx, t.Client, netip.AddrPortFrom(node.IPv4, nodePort), false)
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "    via %s (%s:%d):\n", node.Name, node.IPv4, nodePort)
		d.printTally(tally)
		for p, c := range tally {
			total[p] += c
		}
	}
	fmt.Fprintln(d.out, "    Either node reaches every pod, wherever it runs; the pods see the node's address.")
	if err := d.wantPods(total, "web-1", "web-2", "web-3"); err != nil {
		return err
	}

	d.step("ClientIP affinity: two clients call svc-web-sticky %s:80 %d times each", stickyIP, d.n)
	for _, from := range []*topo.Host{&d.client.Host, &t.Nodes[0].Host} {
		tally, err := d.send(ctx, from, netip.AddrPortFrom(stickyIP, 80), false)
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "    from %s (%s):\n", from.Name, from.IPv4)
		d.printTally(tally)
		if len(tally) != 1 {
			return fmt.Errorf("affinity: %s reached %d pods, want 1", from.Name, len(tally))
		}
	}
	fmt.Fprintln(d.out, "    Each client stays on one pod (for 3 hours of silence, the Kubernetes default).")

	d.step("An endpoint goes: web-2 leaves svc-web, and one Sync moves its traffic")
	conn, err := d.dialPod(ctx, dst, "web-2")
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprintf(d.out, "    (a connection from client to web-2 is open: %s)\n", conn.From)
	d.state.Ports[0].Endpoints = slices.DeleteFunc(d.state.Ports[0].Endpoints, func(e dataplane.Endpoint) bool { return e.Addr == t.Pod("web-2").IPv4 })
	if p, ok := d.dps[0].(*nft.Dataplane); ok {
		plan, err := p.Plan(ctx, d.state)
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "    nft plan for node-a: %d element changes (web-2's buckets move to web-1 and web-3; nothing else is touched)\n", len(plan.Lines))
	}
	if err := d.sync(ctx); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "    %d requests from client to svc-web now:\n", d.n)
	tally, err := d.send(ctx, &d.client.Host, dst, false)
	if err != nil {
		return err
	}
	d.printTally(tally)
	if err := d.wantPods(tally, "web-1", "web-3"); err != nil {
		return err
	}
	if err := conn.Echo([]byte("still there?"), time.Second); err != nil {
		fmt.Fprintf(d.out, "    The connection to web-2 opened before the change is gone (%v):\n", err)
		fmt.Fprintln(d.out, "    this backend ends flows to removed endpoints.")
	} else {
		fmt.Fprintln(d.out, "    The connection to web-2 opened before the change still works: established flows")
		fmt.Fprintln(d.out, "    drain on the old endpoint, as with kube-proxy; only new ones avoid it.")
	}
	return ctx.Err()
}

// dialPod opens TCP connections from the client pod to dst until one
// reaches pod.
func (d *demo) dialPod(ctx context.Context, dst netip.AddrPort, pod string) (*topo.Stream, error) {
	for range 50 {
		conn, err := d.client.DialTCP(ctx, dst)
		if err != nil {
			return nil, fmt.Errorf("open a connection to %s: %w", dst, err)
		}
		if conn.Pod == pod {
			return conn, nil
		}
		conn.Close()
	}
	return nil, fmt.Errorf("50 connections to %s, none reached %s", dst, pod)
}

func (d *demo) newDataplane(node *topo.Node) (dataplane.Dataplane, error) {
	switch d.backend {
	case "ipvs":
		dp, err := ipvs.New(ipvs.Config{Node: node.NodeModel(), NetNS: node.NS.Path()})
		if errors.Is(err, dataplane.ErrUnsupported) {
			return nil, fmt.Errorf("-backend ipvs: this kernel has no IPVS; `make demo BACKEND=ipvs` runs the tour in a VM whose kernel has it, or use the nft backend: %w", err)
		}
		return dp, err
	default:
		dp, err := nft.New(nft.Config{Node: node.NodeModel(), NetNS: node.NS.Path()})
		if err != nil {
			return nil, fmt.Errorf("nft backend on %s: %w", node.Name, err)
		}
		return dp, nil
	}
}

// sync programs the State into both nodes.
func (d *demo) sync(ctx context.Context) error {
	for i, dp := range d.dps {
		start := time.Now()
		if err := dp.Sync(ctx, d.state); err != nil {
			return fmt.Errorf("sync %s: %w", d.topo.Nodes[i].Name, err)
		}
		fmt.Fprintf(d.out, "    %s: synced in %s\n", d.topo.Nodes[i].Name, time.Since(start).Round(time.Microsecond))
	}
	return nil
}

// send sends d.n requests from h to dst and counts the answers per pod.
// With verbose, it prints every answer; otherwise a progress line.
func (d *demo) send(ctx context.Context, h *topo.Host, dst netip.AddrPort, verbose bool) (map[string]int, error) {
	tally := map[string]int{}
	for i := 1; i <= d.n; i++ {
		r, err := h.Request(ctx, dataplane.TCP, dst, topo.RequestOptions{})
		if err != nil {
			d.clearLine()
			return nil, fmt.Errorf("request %d from %s to %s: %w", i, h.Name, dst, err)
		}
		tally[r.Pod]++
		if verbose {
			fmt.Fprintf(d.out, "    %2d  You've hit %s from %s\n", i, r.Pod, r.From)
		} else {
			d.progress(fmt.Sprintf("%s → %s", h.Name, dst), i, d.n)
		}
	}
	d.clearLine()
	return tally, nil
}

// wantPods checks that exactly pods answered, when enough requests were
// sent for that to be all but certain.
func (d *demo) wantPods(tally map[string]int, pods ...string) error {
	if d.n < 30 {
		return nil
	}
	var got []string
	for p := range tally {
		got = append(got, p)
	}
	slices.Sort(got)
	if !slices.Equal(got, pods) {
		return fmt.Errorf("answers came from %v, want %v", got, pods)
	}
	return nil
}

// progress draws a progress bar on one terminal line.
func (d *demo) progress(what string, i, n int) {
	if !d.tty {
		return
	}
	const width = 30
	done := i * width / n
	d.draw(fmt.Sprintf("    [%s%s] %3d/%d  %s", strings.Repeat("#", done), strings.Repeat(".", width-done), i, n, what))
}

// draw replaces the progress line with line.
func (d *demo) draw(line string) {
	pad := max(d.drawn-utf8.RuneCountInString(line), 0)
	fmt.Fprintf(d.out, "\r%s%s", line, strings.Repeat(" ", pad))
	d.drawn = utf8.RuneCountInString(line) + pad
}

// clearLine blanks the progress line with spaces rather than an escape
// sequence, so that it also works on a serial console whose escapes are
// filtered (the VM run of make demo BACKEND=ipvs).
func (d *demo) clearLine() {
	if d.tty && d.drawn > 0 {
		fmt.Fprintf(d.out, "\r%s\r", strings.Repeat(" ", d.drawn))
		d.drawn = 0
	}
}

// spin shows a spinner with what until the returned function is called.
func (d *demo) spin(what string) func() {
	if !d.tty {
		fmt.Fprintf(d.out, "    %s ...\n", what)
		return func() {}
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		frames := `|/-\`
		t := time.NewTicker(80 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			d.draw(fmt.Sprintf("    %c %s ...", frames[i%len(frames)], what))
			select {
			case <-stop:
				d.clearLine()
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(stop); <-done }
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (d *demo) printTally(tally map[string]int) {
	pods := make([]string, 0, len(tally))
	total := 0
	for p, c := range tally {
		pods = append(pods, p)
		total += c
	}
	slices.Sort(pods)
	for _, p := range pods {
		fmt.Fprintf(d.out, "      %-6s %3d  %s\n", p, tally[p], strings.Repeat("█", tally[p]*40/total))
	}
}
