package conformance

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/kstate"
)

// Target is what a Factory programs: one node of a fresh topology.
type Target struct {
	// NetNS is the path of the node's network namespace.
	NetNS string
	// Node describes the node: its name, and its pod CIDRs as
	// LocalPodCIDRs. Cases may set other fields (MasqueradeAll, ...).
	Node dataplane.Node
}

// Factory returns a new Dataplane that programs target. The suite closes
// it (after Cleanup) when the case ends. An error wrapping
// dataplane.ErrUnsupported skips the case with that error as the reason.
type Factory func(t testing.TB, target Target) (dataplane.Dataplane, error)

// caseTimeout bounds one case, topology included.
const caseTimeout = 60 * time.Second

// testCase is one behaviour: Group/Name and the function checking it.
type testCase struct {
	group, name string
	run         func(e *env)
	// nodeSetup, when set, adjusts each node's model before the Factory
	// builds its Dataplane.
	nodeSetup func(n *dataplane.Node)
}

var cases []testCase

func register(group, name string, run func(e *env)) *testCase {
	cases = append(cases, testCase{group: group, name: name, run: run})
	return &cases[len(cases)-1]
}

// Run runs every case of the suite against the backend f builds.
func Run(t *testing.T, f Factory) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("conformance: needs root to create network namespaces; run `sudo make test` (or `make test-vm` for kernels this machine lacks)")
	}
	groups := make(map[string][]testCase)
	var order []string
	for _, c := range cases {
		if _, ok := groups[c.group]; !ok {
			order = append(order, c.group)
		}
		groups[c.group] = append(groups[c.group], c)
	}
	for _, g := range order {
		t.Run(g, func(t *testing.T) {
			for _, c := range groups[g] {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					runCase(t, f, c)
				})
			}
		})
	}
}

// env is one case's world: the topology and a Dataplane per node.
type env struct {
	t     *testing.T
	ctx   context.Context
	topo  *topo.Topology
	dps   []dataplane.Dataplane
	nodes []dataplane.Node
}

func runCase(t *testing.T, f Factory, c testCase) {
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	t.Cleanup(cancel)
	tp, err := topo.New(ctx, topo.Options{})
	if err != nil {
		t.Fatalf("build topology: %v", err)
	}
	t.Cleanup(func() {
		if err := tp.Close(); err != nil {
			t.Errorf("tear down topology: %v", err)
		}
	})
	e := &env{t: t, ctx: ctx, topo: tp}
	for _, n := range tp.Nodes {
		model := n.NodeModel()
		if c.nodeSetup != nil {
			c.nodeSetup(&model)
		}
		dp, err := f(t, Target{NetNS: n.NS.Path(), Node: model})
		if errors.Is(err, dataplane.ErrUnsupported) {
			t.Skipf("backend unsupported on this kernel: %v", err)
		}
		if err != nil {
			t.Fatalf("Factory for %s: %v", n.Name, err)
		}
		t.Cleanup(func() {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := dp.Cleanup(cctx); err != nil {
				t.Errorf("Cleanup on %s: %v", model.Name, err)
			}
			if err := dp.Close(); err != nil {
				t.Errorf("Close on %s: %v", model.Name, err)
			}
		})
		e.dps = append(e.dps, dp)
		e.nodes = append(e.nodes, model)
	}
	c.run(e)
}

// sync syncs st into every node, failing the case on error.
func (e *env) sync(st *dataplane.State) {
	e.t.Helper()
	for i, dp := range e.dps {
		if err := dp.Sync(e.ctx, st); err != nil {
			e.t.Fatalf("Sync on %s: %v", e.nodes[i].Name, err)
		}
	}
}

// pod adds a pod serving the given ports on node i (0: node-a, 1: node-b).
func (e *env) pod(node int, name string, ports ...uint16) *topo.Pod {
	e.t.Helper()
	p, err := e.topo.AddPod(e.topo.Nodes[node], name, ports...)
	if err != nil {
		e.t.Fatalf("add pod %s: %v", name, err)
	}
	return p
}

func (e *env) req(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, opt topo.RequestOptions) (topo.Reply, error) {
	return from.Request(e.ctx, proto, dst, opt)
}

// hit sends one request and requires an answer.
func (e *env) hit(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort) topo.Reply {
	e.t.Helper()
	r, err := e.req(from, proto, dst, topo.RequestOptions{})
	if err != nil {
		e.t.Fatalf("%s %s → %s: %v, want an answer from an endpoint", from.Name, proto, dst, err)
	}
	return r
}

// tally sends n requests and counts answers per pod; every one must be
// answered.
func (e *env) tally(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, n int) map[string]int {
	e.t.Helper()
	out := make(map[string]int)
	for i := 0; i < n; i++ {
		out[e.hit(from, proto, dst).Pod]++
	}
	return out
}

// rejected requires that a request is refused at once (TCP reset or ICMP
// unreachable), not answered and not left to time out.
func (e *env) rejected(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, why string) {
	e.t.Helper()
	r, err := e.req(from, proto, dst, topo.RequestOptions{})
	switch {
	case err == nil:
		e.t.Fatalf("%s %s → %s answered by %s from %s; want rejected: %s", from.Name, proto, dst, r.Pod, r.From, why)
	case !topo.IsRejected(err):
		e.t.Fatalf("%s %s → %s: %v; want rejected at once (reset or ICMP unreachable): %s", from.Name, proto, dst, err, why)
	}
}

// generation returns the nftables generation of node i's namespace.
func (e *env) generation(node int) uint32 {
	e.t.Helper()
	g, err := kstate.Generation(e.topo.Nodes[node].NS.Fd())
	if err != nil {
		e.t.Fatalf("read nftables generation: %v", err)
	}
	return g
}

// snapshot describes node i's kernel state.
func (e *env) snapshot(node int) string {
	e.t.Helper()
	s, err := kstate.Snapshot(e.topo.Nodes[node].NS.Fd())
	if err != nil {
		e.t.Fatalf("snapshot kernel state: %v", err)
	}
	return s
}

// onlyPods requires every answer to come from the named pods.
func onlyPods(t *testing.T, got map[string]int, want ...string) {
	t.Helper()
	for pod := range got {
		if !contains(want, pod) {
			t.Fatalf("answers per pod = %v; want only %s", got, strings.Join(want, ", "))
		}
	}
}

// allPods requires every named pod to have answered.
func allPods(t *testing.T, got map[string]int, want ...string) {
	t.Helper()
	for _, pod := range want {
		if got[pod] == 0 {
			t.Fatalf("answers per pod = %v; want each of %s to answer", got, strings.Join(want, ", "))
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func describe(got map[string]int) string { return fmt.Sprint(got) }
