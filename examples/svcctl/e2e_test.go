package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/ipvsnl"
	"github.com/svcplane/svcplane/ipvs"
)

// mainEnv makes the test binary run svcctl's main instead of the tests,
// so that the end-to-end test runs svcctl as separate processes, the way
// a user does: every invocation starts with no state but the kernel's.
const mainEnv = "SVCCTL_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) != "" {
		main()
		return
	}
	os.Exit(m.Run())
}

// childEnv is the environment of an svcctl process: this one's, with
// mainEnv set, and without the race detector's 1 s sleep at exit (in
// -race builds), which would otherwise dominate the test's time.
func childEnv() []string {
	gorace := "atexit_sleep_ms=0"
	if v := os.Getenv("GORACE"); v != "" {
		gorace = v + " " + gorace
	}
	return append(os.Environ(), mainEnv+"=1", "GORACE="+gorace)
}

// svcctl runs svcctl in a new process and returns its output; it fails
// the test unless the exit code is want.
func svcctl(t *testing.T, want int, args ...string) (stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = childEnv()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run svcctl %v: %v", args, err)
	}
	if code != want {
		t.Fatalf("svcctl %s: exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, o.String(), e.String())
	}
	return o.String(), e.String()
}

// ruleset returns `nft list ruleset` inside h's namespace.
func ruleset(t *testing.T, h *topo.Host) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft is not installed (make deps installs it)")
	}
	var out []byte
	err := h.Do(func() error {
		var err error
		// A child forked from this thread starts in its namespace.
		out, err = exec.Command("nft", "list", "ruleset").CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("nft list ruleset in %s: %v\n%s", h.Name, err, out)
	}
	return string(out)
}

// tally sends n requests from h to dst and counts the answers per pod.
func tally(t *testing.T, ctx context.Context, h *topo.Host, dst netip.AddrPort, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		r, err := h.Request(ctx, dataplane.TCP, dst, topo.RequestOptions{})
		if err != nil {
			t.Fatalf("request %d from %s to %s: %v", i+1, h.Name, dst, err)
		}
		got[r.Pod]++
	}
	return got
}

func requireAll(t *testing.T, what string, got map[string]int, pods ...string) {
	t.Helper()
	for _, p := range pods {
		if got[p] == 0 {
			t.Fatalf("%s: answers per pod %v; want all of %v to answer", what, got, pods)
		}
	}
	if len(got) != len(pods) {
		t.Fatalf("%s: answers per pod %v; want only %v", what, got, pods)
	}
}

// TestEndToEnd is the acceptance test of svcctl: in a throwaway topology
// whose pods have the manifests' addresses, apply the classroom manifests
// to node-a, see every pod answer on every frontend, see plan say "no
// changes", show what is programmed, change one endpoint, and clean up to
// the very ruleset the namespace had before.
func TestEndToEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run `sudo make test`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tp, client := classroom(t, ctx)
	nodeA := tp.Nodes[0]

	before := ruleset(t, &nodeA.Host)
	node := []string{"--netns", nodeA.NS.Path(), "--node-name", "node-a", "--pod-cidr", nodeA.PodCIDRv4.String(), "--pod-cidr", nodeA.PodCIDRv6.String()}
	web := append([]string{"-f", "testdata/svc-web.yaml"}, node...)

	out, _ := svcctl(t, 0, append([]string{"plan"}, web...)...)
	if !strings.Contains(out, "+ default/svc-web:http  cluster IP 198.19.0.10:80/TCP → 3 endpoints") {
		t.Errorf("plan before apply:\n%s\nwant it to add svc-web with 3 endpoints", out)
	}
	if after := ruleset(t, &nodeA.Host); after != before {
		t.Fatalf("plan changed the ruleset:\n%s", after)
	}

	out, _ = svcctl(t, 0, append([]string{"apply"}, web...)...)
	if !strings.Contains(out, "applied") {
		t.Errorf("apply printed:\n%s\nwant it to say it applied", out)
	}
	requireAll(t, "svc-web from a pod", tally(t, ctx, &client.Host, netip.MustParseAddrPort("198.19.0.10:80"), 60), "web-1", "web-2", "web-3")

	out, _ = svcctl(t, 0, append([]string{"plan"}, web...)...)
	if strings.TrimSpace(out) != "table inet svcplane in "+nodeA.NS.Path()+": no changes" {
		t.Errorf("plan after apply:\n%s\nwant no changes", out)
	}
	out, _ = svcctl(t, 0, append([]string{"apply"}, web...)...)
	if !strings.Contains(out, "no changes") {
		t.Errorf("second apply:\n%s\nwant no changes", out)
	}

	out, _ = svcctl(t, 0, append([]string{"show"}, node...)...)
	for _, want := range []string{
		": 1 service port\n",
		"default/svc-web:http\n  cluster IP  198.19.0.10:80/TCP\n",
		"→ 198.18.1.10:8080       1/3\n",
		"→ 198.18.1.11:8080       1/3\n",
		"→ 198.18.2.10:8080       1/3\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("show:\n%s\nwant %q", out, want)
		}
	}

	// Every classroom manifest at once: NodePort and load-balancer IP
	// from the external client, the mirrored Endpoints from a pod.
	all := append(slices.Clone(allManifests), node...)
	out, errOut := svcctl(t, 0, append([]string{"apply"}, all...)...)
	for _, want := range []string{"+ default/svc-web-node:http", "+ default/svc-web-lb:http", "+ default/svc-no-selector:http"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply of every manifest:\n%s\nwant %q", out, want)
		}
	}
	if strings.Contains(out, "svc-web:http") {
		t.Errorf("apply of every manifest lists the unchanged svc-web:\n%s", out)
	}
	for _, want := range []string{"svc-ext: an ExternalName Service", "svc-node-web-headless: a headless Service"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr:\n%s\nwant a note %q", errOut, want)
		}
	}
	pods := []string{"web-1", "web-2", "web-3"}
	requireAll(t, "NodePort from the external client", tally(t, ctx, tp.Client, netip.AddrPortFrom(nodeA.IPv4, 30123), 60), pods...)
	requireAll(t, "load-balancer IP from the external client", tally(t, ctx, tp.Client, netip.MustParseAddrPort("203.0.113.10:80"), 60), pods...)
	requireAll(t, "svc-no-selector from a pod", tally(t, ctx, &client.Host, netip.MustParseAddrPort("198.19.0.12:80"), 60), pods...)
	out, _ = svcctl(t, 0, append([]string{"plan"}, all...)...)
	if !strings.Contains(out, "no changes") {
		t.Errorf("plan after applying every manifest:\n%s\nwant no changes", out)
	}

	// One endpoint goes: plan names it, apply moves its traffic.
	manifest := strings.Replace(mustRead(t, "testdata/svc-web.yaml"), "198.18.1.11", "198.18.9.99", 1)
	one := append([]string{"-f", "-"}, node...)
	cmd := func(args ...string) *exec.Cmd {
		c := exec.Command(os.Args[0], args...)
		c.Env = childEnv()
		c.Stdin = strings.NewReader(manifest)
		return c
	}
	planOut, err := cmd(append([]string{"plan"}, one...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(planOut), "~ default/svc-web:http") || !strings.Contains(string(planOut), "-198.18.1.11:8080") ||
		!strings.Contains(string(planOut), "- default/svc-web-node:http") {
		t.Errorf("plan with web-2 gone and only svc-web: %v\n%s", err, planOut)
	}
	manifest = removeEndpoint(t, mustRead(t, "testdata/svc-web.yaml"), "198.18.1.11")
	if out, err := cmd(append([]string{"apply"}, one...)...).CombinedOutput(); err != nil {
		t.Fatalf("apply without web-2: %v\n%s", err, out)
	}
	requireAll(t, "svc-web without web-2", tally(t, ctx, &client.Host, netip.MustParseAddrPort("198.19.0.10:80"), 60), "web-1", "web-3")

	out, _ = svcctl(t, 0, append([]string{"cleanup"}, node...)...)
	if !strings.Contains(out, "removed") {
		t.Errorf("cleanup:\n%s", out)
	}
	if after := ruleset(t, &nodeA.Host); after != before {
		t.Errorf("after cleanup the ruleset is\n%s\nwant what it was before apply:\n%s", after, before)
	}
	out, _ = svcctl(t, 0, append([]string{"cleanup"}, node...)...)
	if !strings.Contains(out, "nothing to remove") {
		t.Errorf("second cleanup:\n%s", out)
	}
	out, _ = svcctl(t, 0, append([]string{"show"}, node...)...)
	if !strings.Contains(out, "nothing programmed") {
		t.Errorf("show after cleanup:\n%s", out)
	}
}

// classroom builds the topology whose pods have the manifests' addresses:
// web-1 and web-2 on node-a, web-3 on node-b; and a client pod on node-a.
func classroom(t *testing.T, ctx context.Context) (*topo.Topology, *topo.Pod) {
	t.Helper()
	tp, err := topo.New(ctx, topo.Options{})
	if err != nil {
		t.Fatalf("build topology: %v", err)
	}
	t.Cleanup(func() { tp.Close() })
	nodeA, nodeB := tp.Nodes[0], tp.Nodes[1]
	for _, p := range []struct {
		node *topo.Node
		name string
		want string
	}{{nodeA, "web-1", "198.18.1.10"}, {nodeA, "web-2", "198.18.1.11"}, {nodeB, "web-3", "198.18.2.10"}} {
		pod, err := tp.AddPod(p.node, p.name, 8080)
		if err != nil {
			t.Fatal(err)
		}
		if pod.IPv4.String() != p.want {
			t.Fatalf("pod %s got %s; the manifests say %s", p.name, pod.IPv4, p.want)
		}
	}
	client, err := tp.AddPod(nodeA, "client")
	if err != nil {
		t.Fatal(err)
	}
	return tp, client
}

func mustRead(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// removeEndpoint drops the endpoint with address addr from a manifest's
// EndpointSlice (its four lines).
func removeEndpoint(t *testing.T, manifest, addr string) string {
	t.Helper()
	lines := strings.Split(manifest, "\n")
	for i, l := range lines {
		if l == fmt.Sprintf("- addresses: [%s]", addr) {
			return strings.Join(append(lines[:i:i], lines[i+4:]...), "\n")
		}
	}
	t.Fatalf("no endpoint %s in the manifest", addr)
	return ""
}

// ipvsAvailable reports whether this kernel has IPVS.
func ipvsAvailable() bool {
	c, err := ipvsnl.Dial(-1)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// allManifests are the classroom manifests, as -f flags.
var allManifests = []string{"-f", "testdata/svc-web.yaml", "-f", "testdata/svc-web-node.yaml", "-f", "testdata/svc-web-lb.yaml",
	"-f", "testdata/svc-node-web-headless.yaml", "-f", "testdata/svc-ext.yaml",
	"-f", "testdata/svc-no-selector.yaml", "-f", "testdata/endpoints.yaml"}

// TestEndToEndIPVS is TestEndToEnd on the ipvs backend, where the kernel
// has IPVS (make test-vm): plan, apply, traffic, plan says no changes,
// show with connection counters, and a cleanup that leaves nothing.
func TestEndToEndIPVS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run `sudo make test`")
	}
	if !ipvsAvailable() {
		t.Skip("this kernel has no IPVS (make test-vm runs this test in a VM whose kernel has it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tp, client := classroom(t, ctx)
	nodeA := tp.Nodes[0]
	before := ruleset(t, &nodeA.Host)
	node := []string{"--backend", "ipvs", "--netns", nodeA.NS.Path(), "--node-name", "node-a", "--pod-cidr", nodeA.PodCIDRv4.String(), "--pod-cidr", nodeA.PodCIDRv6.String()}
	web := append([]string{"-f", "testdata/svc-web.yaml"}, node...)

	out, _ := svcctl(t, 0, append([]string{"plan"}, web...)...)
	for _, want := range []string{"+ default/svc-web:http  cluster IP 198.19.0.10:80/TCP → 3 endpoints",
		"add virtual server 198.19.0.10:80/TCP (no persistence) → 198.18.1.10:8080, 198.18.1.11:8080, 198.18.2.10:8080"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan before apply:\n%s\nwant %q", out, want)
		}
	}
	svcctl(t, 0, append([]string{"apply"}, web...)...)
	requireAll(t, "svc-web from a pod", tally(t, ctx, &client.Host, netip.MustParseAddrPort("198.19.0.10:80"), 60), "web-1", "web-2", "web-3")
	out, _ = svcctl(t, 0, append([]string{"plan"}, web...)...)
	if !strings.HasSuffix(strings.TrimSpace(out), ": no changes") {
		t.Errorf("plan after apply:\n%s\nwant no changes", out)
	}
	out, _ = svcctl(t, 0, append([]string{"show", "-f", "testdata/svc-web.yaml"}, node...)...)
	for _, want := range []string{"default/svc-web:http\n  cluster IP  198.19.0.10:80/TCP\n", "→ 198.18.1.10:8080       weight 1  0 active, ", " inactive connections"} {
		if !strings.Contains(out, want) {
			t.Errorf("show:\n%s\nwant %q", out, want)
		}
	}
	out, _ = svcctl(t, 0, append([]string{"show"}, node...)...)
	if !strings.Contains(out, "give the manifests (-f) to name them") || !strings.Contains(out, "service IP  198.19.0.10:80/TCP") {
		t.Errorf("show without manifests:\n%s\nwant the unnamed virtual server and a note", out)
	}

	all := append(slices.Clone(allManifests), node...)
	svcctl(t, 0, append([]string{"apply"}, all...)...)
	pods := []string{"web-1", "web-2", "web-3"}
	requireAll(t, "NodePort from the external client", tally(t, ctx, tp.Client, netip.AddrPortFrom(nodeA.IPv4, 30123), 60), pods...)
	requireAll(t, "load-balancer IP from the external client", tally(t, ctx, tp.Client, netip.MustParseAddrPort("203.0.113.10:80"), 60), pods...)
	requireAll(t, "svc-no-selector from a pod", tally(t, ctx, &client.Host, netip.MustParseAddrPort("198.19.0.12:80"), 60), pods...)
	out, _ = svcctl(t, 0, append([]string{"plan"}, all...)...)
	if !strings.Contains(out, "no changes") {
		t.Errorf("plan after applying every manifest:\n%s\nwant no changes", out)
	}

	out, _ = svcctl(t, 0, append([]string{"cleanup"}, all...)...)
	if !strings.Contains(out, "removed") {
		t.Errorf("cleanup:\n%s", out)
	}
	if after := ruleset(t, &nodeA.Host); after != before {
		t.Errorf("after cleanup the ruleset is\n%s\nwant what it was before apply:\n%s", after, before)
	}
	var left []ipvsnl.Service
	var device error
	err := nodeA.Do(func() error {
		// Sockets opened here are in node-a's namespace.
		_, device = net.InterfaceByName(ipvs.DefaultDevice)
		c, err := ipvsnl.Dial(-1)
		if err != nil {
			return err
		}
		defer c.Close()
		left, err = c.Services()
		return err
	})
	if err != nil || len(left) != 0 {
		t.Errorf("IPVS after cleanup: %v %v, want no virtual servers", left, err)
	}
	if device == nil {
		t.Errorf("the device %s is left in node-a", ipvs.DefaultDevice)
	}
	out, _ = svcctl(t, 0, append([]string{"cleanup"}, node...)...)
	if !strings.Contains(out, "nothing to remove") {
		t.Errorf("second cleanup:\n%s", out)
	}
}
