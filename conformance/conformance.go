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

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/ipvsnl"
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

// Profile declares where a backend departs, by design, from kube-proxy's
// nftables mode, which the suite checks by default. Each case that depends
// on a field encodes the departure by name and says why; nothing is
// skipped. The zero Profile is the nftables behaviour.
type Profile struct {
	// Name names the backend's behaviour in messages, e.g. "IPVS".
	Name string
	// NoLocalEndpointsRejects: where a Local traffic policy leaves a node
	// without endpoints, the node rejects the traffic at once instead of
	// dropping it. IPVS keeps the virtual server with no real servers and
	// answers ICMP port unreachable when it has nowhere to send a
	// connection, as kube-proxy's IPVS mode does.
	NoLocalEndpointsRejects bool
	// AffinityOutlivesConnections: ClientIP affinity expires after its
	// timeout only once every connection it placed has expired too (IPVS
	// persistence templates live as long as the connections they control,
	// and a closed TCP connection stays in IPVS's TIME_WAIT for 2
	// minutes). Affinity/Timeout then uses UDP flows, and the backend must
	// be configured to expire idle UDP flows within 1 s.
	AffinityOutlivesConnections bool
}

// Run runs every case of the suite against the backend f builds, with
// kube-proxy's nftables behaviour as the reference.
func Run(t *testing.T, f Factory) {
	t.Helper()
	RunProfile(t, f, Profile{})
}

// RunProfile is Run for a backend whose documented departures p
// declares.
func RunProfile(t *testing.T, f Factory, p Profile) {
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
					runCase(t, f, p, c)
				})
			}
		})
	}
}

// env is one case's world: the topology and a Dataplane per node.
type env struct {
	profile Profile
	t       *testing.T
	ctx     context.Context
	topo    *topo.Topology
	dps     []dataplane.Dataplane
	nodes   []dataplane.Node
	// factory and targets build a node's Dataplane again (restart).
	factory Factory
	targets []Target
}

func runCase(t *testing.T, f Factory, p Profile, c testCase) {
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scale(caseTimeout))
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
	e := &env{t: t, ctx: ctx, topo: tp, factory: f, profile: p}
	for i, n := range tp.Nodes {
		model := n.NodeModel()
		if c.nodeSetup != nil {
			c.nodeSetup(&model)
		}
		target := Target{NetNS: n.NS.Path(), Node: model}
		dp, err := f(t, target)
		if errors.Is(err, dataplane.ErrUnsupported) {
			t.Skipf("backend unsupported on this kernel: %v", err)
		}
		if err != nil {
			t.Fatalf("Factory for %s: %v", n.Name, err)
		}
		t.Cleanup(func() {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			dp := e.dps[i] // the node's current Dataplane: restart replaces it
			if err := dp.Cleanup(cctx); err != nil {
				t.Errorf("Cleanup on %s: %v", model.Name, err)
			}
			if err := dp.Close(); err != nil {
				t.Errorf("Close on %s: %v", model.Name, err)
			}
		})
		e.dps = append(e.dps, dp)
		e.nodes = append(e.nodes, model)
		e.targets = append(e.targets, target)
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

// dropWait is how long a check that expects no answer waits. An answer or
// a reject crosses this topology in well under a millisecond, so a
// request left unanswered this long was dropped; a shorter wait than
// topo.DefaultTimeout keeps those checks cheap.
const dropWait = 300 * time.Millisecond

// request sends one request with options and requires an answer.
func (e *env) request(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, opt topo.RequestOptions) topo.Reply {
	e.t.Helper()
	r, err := e.req(from, proto, dst, opt)
	if err != nil {
		e.t.Fatalf("%s %s %s→ %s: %v, want an answer from an endpoint", from.Name, proto, source(opt), dst, err)
	}
	return r
}

// tallyFrom is tally with request options (a source address or port).
func (e *env) tallyFrom(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, opt topo.RequestOptions, n int) map[string]int {
	e.t.Helper()
	out := make(map[string]int)
	for i := 0; i < n; i++ {
		out[e.request(from, proto, dst, opt).Pod]++
	}
	return out
}

// dropped requires that a request is neither answered nor rejected: it
// times out, as where kube-proxy drops (a Local policy without local
// endpoints, a source outside loadBalancerSourceRanges).
func (e *env) dropped(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, opt topo.RequestOptions, why string) {
	e.t.Helper()
	opt.Timeout = dropWait
	r, err := e.req(from, proto, dst, opt)
	switch {
	case err == nil:
		e.t.Fatalf("%s %s %s→ %s answered by %s from %s; want it dropped: %s", from.Name, proto, source(opt), dst, r.Pod, r.From, why)
	case !topo.IsTimeout(err):
		e.t.Fatalf("%s %s %s→ %s: %v; want it dropped silently (a timeout), not refused: %s", from.Name, proto, source(opt), dst, err, why)
	}
}

// noLocalEndpoint requires what happens to traffic a Local policy leaves
// without an endpoint on this node: dropped, or with
// Profile.NoLocalEndpointsRejects rejected at once.
func (e *env) noLocalEndpoint(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, opt topo.RequestOptions, why string) {
	e.t.Helper()
	if !e.profile.NoLocalEndpointsRejects {
		e.dropped(from, proto, dst, opt, why)
		return
	}
	r, err := e.req(from, proto, dst, opt)
	switch {
	case err == nil:
		e.t.Fatalf("%s %s → %s answered by %s; want it rejected (%s rejects where a Local policy leaves no endpoint): %s", from.Name, proto, dst, r.Pod, e.profile.Name, why)
	case !topo.IsRejected(err):
		e.t.Fatalf("%s %s → %s: %v; want it rejected at once (%s rejects where a Local policy leaves no endpoint): %s", from.Name, proto, dst, err, e.profile.Name, why)
	}
}

// notForwarded requires that no pod answers a request: it may be
// rejected, time out, or be answered by a host service on a node, but it
// must not reach an endpoint.
func (e *env) notForwarded(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, opt topo.RequestOptions, why string) {
	e.t.Helper()
	if opt.Timeout == 0 {
		opt.Timeout = dropWait
	}
	r, err := e.req(from, proto, dst, opt)
	if err == nil && e.topo.Pod(r.Pod) != nil {
		e.t.Fatalf("%s %s %s→ %s forwarded to pod %s (which saw %s); want it not forwarded: %s", from.Name, proto, source(opt), dst, r.Pod, r.From, why)
	}
}

// source describes a request's fixed source, for messages.
func source(opt topo.RequestOptions) string {
	switch {
	case opt.LocalAddr.IsValid() && opt.LocalPort != 0:
		return "from " + netip.AddrPortFrom(opt.LocalAddr, opt.LocalPort).String() + " "
	case opt.LocalAddr.IsValid():
		return "from " + opt.LocalAddr.String() + " "
	case opt.LocalPort != 0:
		return fmt.Sprintf("from port %d ", opt.LocalPort)
	}
	return ""
}

// addAddrs gives h n more addresses, first, first+1, ..., as /32 or /128
// on its eth0, and returns them: distinct client sources for one host.
func (e *env) addAddrs(h *topo.Host, first netip.Addr, n int) []netip.Addr {
	e.t.Helper()
	var out []netip.Addr
	for a := first; len(out) < n; a = a.Next() {
		if err := h.AddAddress(netip.PrefixFrom(a, a.BitLen())); err != nil {
			e.t.Fatalf("add address: %v", err)
		}
		out = append(out, a)
	}
	return out
}

// serveHost starts echo servers for TCP and UDP on port in every node's
// own namespace: host services that answer with the node's name whatever
// reaches the node's stack on that port, so a check sees at once that a
// packet was not forwarded (instead of waiting for a timeout), or that it
// was delivered to the host when it should have been intercepted.
func (e *env) serveHost(port uint16) {
	e.t.Helper()
	for _, n := range e.topo.Nodes {
		for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
			if err := n.ServeEcho(proto, port); err != nil {
				e.t.Fatalf("host service on %s: %v", n.Name, err)
			}
		}
	}
}

// restart replaces node i's Dataplane as a restarted proxy would: it
// closes the old one, which leaves its kernel state in place, and builds a
// new one for the same target from the Factory. The case's teardown
// cleans up the new one.
func (e *env) restart(node int) {
	e.t.Helper()
	if err := e.dps[node].Close(); err != nil {
		e.t.Fatalf("Close on %s: %v", e.nodes[node].Name, err)
	}
	dp, err := e.factory(e.t, e.targets[node])
	if err != nil {
		e.t.Fatalf("Factory for %s after Close: %v", e.nodes[node].Name, err)
	}
	e.dps[node] = dp
}

// nftTables lists node i's nftables tables as "family name" strings.
func (e *env) nftTables(node int) []string {
	e.t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(e.topo.Nodes[node].NS.Fd()))
	if err != nil {
		e.t.Fatalf("nftables connection: %v", err)
	}
	ts, err := c.ListTables()
	if err != nil {
		e.t.Fatalf("list nftables tables of %s: %v", e.nodes[node].Name, err)
	}
	var out []string
	for _, t := range ts {
		out = append(out, tableID(t))
	}
	return out
}

func tableID(t *nftables.Table) string { return fmt.Sprintf("%d %s", t.Family, t.Name) }

// deleteTables deletes node i's nftables tables named in ids (as
// nftTables returns them), behind the backend's back.
func (e *env) deleteTables(node int, ids []string) {
	e.t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(e.topo.Nodes[node].NS.Fd()))
	if err != nil {
		e.t.Fatalf("nftables connection: %v", err)
	}
	ts, err := c.ListTables()
	if err != nil {
		e.t.Fatalf("list nftables tables of %s: %v", e.nodes[node].Name, err)
	}
	for _, t := range ts {
		if contains(ids, tableID(t)) {
			c.DelTable(t)
		}
	}
	if err := c.Flush(); err != nil {
		e.t.Fatalf("delete tables %v on %s: %v", ids, e.nodes[node].Name, err)
	}
}

// addForeignTable creates, on node i, a table as another program (a
// firewall) would: table inet name with a filter base chain on input
// (policy accept), a regular chain, a set of addresses with elements, and
// rules that jump and look up the set. It drops only traffic from
// 192.0.2.250 and 2001:db8::250, which no host of the topology uses, so it
// changes no case's traffic. It returns the table's id (see nftTables).
func (e *env) addForeignTable(node int, name string) string {
	e.t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(e.topo.Nodes[node].NS.Fd()))
	if err != nil {
		e.t.Fatalf("nftables connection: %v", err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	accept := nftables.ChainPolicyAccept
	input := c.AddChain(&nftables.Chain{
		Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	blocked := c.AddChain(&nftables.Chain{Name: "blocked", Table: t})
	// A fixed set id (ids are per batch): google/nftables allocates
	// missing ones from an unguarded global counter.
	set := &nftables.Set{Table: t, Name: "blocklist-v4", KeyType: nftables.TypeIPAddr, ID: 1}
	if err := c.AddSet(set, []nftables.SetElement{
		{Key: netip.MustParseAddr("192.0.2.250").AsSlice()},
		{Key: netip.MustParseAddr("192.0.2.251").AsSlice()},
	}); err != nil {
		e.t.Fatalf("foreign set: %v", err)
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: blocked.Name},
	}})
	c.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: netip.MustParseAddr("2001:db8::250").AsSlice()},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: blocked.Name},
	}})
	c.AddRule(&nftables.Rule{Table: t, Chain: blocked, Exprs: []expr.Any{
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := c.Flush(); err != nil {
		e.t.Fatalf("create foreign table inet %s on %s: %v", name, e.nodes[node].Name, err)
	}
	return tableID(t)
}

// tableSnapshot returns the part of a kstate snapshot that describes the
// table id (see nftTables): its chains, rules, sets and elements; "" when
// it has none.
func tableSnapshot(snapshot, id string) string {
	var b strings.Builder
	in := false
	for _, l := range strings.SplitAfter(snapshot, "\n") {
		if !strings.HasPrefix(l, " ") {
			in = strings.HasPrefix(l, "table "+id+" ")
		}
		if in {
			b.WriteString(l)
		}
	}
	return b.String()
}

// flushTables empties node i's nftables tables named in ids behind the
// backend's back: every named set loses its elements and every chain its
// rules, while the tables, chains and sets themselves stay.
func (e *env) flushTables(node int, ids []string) {
	e.t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(e.topo.Nodes[node].NS.Fd()))
	if err != nil {
		e.t.Fatalf("nftables connection: %v", err)
	}
	ts, err := c.ListTables()
	if err != nil {
		e.t.Fatalf("list nftables tables of %s: %v", e.nodes[node].Name, err)
	}
	chains, err := c.ListChains()
	if err != nil {
		e.t.Fatalf("list nftables chains of %s: %v", e.nodes[node].Name, err)
	}
	for _, t := range ts {
		if !contains(ids, tableID(t)) {
			continue
		}
		sets, err := c.GetSets(t)
		if err != nil {
			e.t.Fatalf("list sets of %s: %v", tableID(t), err)
		}
		for _, s := range sets {
			if !s.Anonymous && !strings.HasPrefix(s.Name, "__") {
				c.FlushSet(s)
			}
		}
		for _, ch := range chains {
			if ch.Table.Name == t.Name && ch.Table.Family == t.Family {
				c.FlushChain(ch)
			}
		}
	}
	if err := c.Flush(); err != nil {
		e.t.Fatalf("flush tables %v on %s: %v", ids, e.nodes[node].Name, err)
	}
}

// added returns the entries of now that are not in before.
func added(before, now []string) []string {
	var out []string
	for _, s := range now {
		if !contains(before, s) {
			out = append(out, s)
		}
	}
	return out
}

// rejectedFrom is rejected with request options (a fixed source port).
func (e *env) rejectedFrom(from *topo.Host, proto dataplane.Protocol, dst netip.AddrPort, opt topo.RequestOptions, why string) {
	e.t.Helper()
	r, err := e.req(from, proto, dst, opt)
	switch {
	case err == nil:
		e.t.Fatalf("%s %s %s→ %s answered by %s from %s; want rejected: %s", from.Name, proto, source(opt), dst, r.Pod, r.From, why)
	case !topo.IsRejected(err):
		e.t.Fatalf("%s %s %s→ %s: %v; want rejected at once (reset or ICMP unreachable): %s", from.Name, proto, source(opt), dst, err, why)
	}
}

// flushIPVS deletes every IPVS virtual server in node i's namespace, when
// the kernel has IPVS.
func (e *env) flushIPVS(node int) {
	e.t.Helper()
	c, err := ipvsnl.Dial(e.topo.Nodes[node].NS.Fd())
	if errors.Is(err, ipvsnl.ErrNoIPVS) {
		return
	}
	if err != nil {
		e.t.Fatalf("open IPVS netlink: %v", err)
	}
	defer c.Close()
	if err := c.Flush(); err != nil {
		e.t.Fatalf("flush IPVS: %v", err)
	}
}
