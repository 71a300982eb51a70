package nft

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/prefixes"
)

// FuzzDiff drives the diff engine (the element store of store.go and the
// slot assignment of services.go) through random sequences of States,
// in memory, without the kernel. After each State it applies the pending
// changes to a model of the kernel that refuses what nf_tables refuses
// (deleting a missing element, adding over an existing key, overlapping
// intervals, jumps to missing chains, deleting a chain still jumped to)
// and checks:
//
//   - the kernel model equals what the store says is applied, and that
//     equals what the services want; a second pass of the same State
//     sends nothing;
//   - the endpoint maps hold, for exactly the frontends an independent
//     reading of the State gives, slots 0 to S-1 and no others (S: one
//     per endpoint up to 64, or 64 for a port with ClientIP affinity),
//     every endpoint holding its share (S/n, or one more for the first
//     S%n) and none other;
//   - a change moves no more slots than must change hands;
//   - every load-balancer frontend's allowed sources are exactly the
//     union of its source ranges;
//   - the result equals, slot placement aside, a fresh Dataplane's
//     for the same State.
//
// The model mirrors the in-memory half of Dataplane.prepare (fzSync);
// the kernel half is proven by reliability.FuzzSyncSequence.
func FuzzDiff(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{3, 2, 0, 1, 1, 0, 0, 0, 0, 1, 3, 1, 4, 2, 5, 3, 6, 0, 1, 2, 2, 0, 1, 1, 0, 0, 0, 0, 1, 2, 1, 4})
	f.Add([]byte{2, 3, 1, 2, 2, 1, 1, 2, 3, 1, 2, 2, 1, 6, 6, 6, 6, 6, 6, 1, 3, 1, 2, 2, 1, 1, 2, 3, 1, 2, 2, 1, 2, 0, 1})
	f.Add([]byte{1, 1, 0, 0, 2, 1, 2, 1, 3, 2, 0, 3, 1, 6, 7})
	f.Fuzz(func(t *testing.T, data []byte) {
		b := fzBytes(data)
		d := fzDataplane()
		k := newFzKernel()
		steps := 1 + b.count(6)
		for range steps {
			st := fuzzDiffState(&b)
			fzCheckValidate(t, d, st)
			if st.Validate() != nil {
				continue // Sync refuses it before touching anything
			}
			before := fzSlotOwners(d)
			fzSync(d, st)
			k.apply(t, d)
			fzCheckStore(t, d, k)
			fzCheckSlots(t, d, st, before)
			fzCheckFirewall(t, d, st, k)
			// Idempotent: the same State again sends nothing.
			fzSync(d, st)
			if _, n := d.st.pending(len(d.sets)); n != 0 {
				t.Fatalf("a second pass of the same State has %d element changes, want 0", n)
			}
			if add, del := d.affinityChanges(false); len(add)+len(del) != 0 {
				t.Fatalf("a second pass of the same State changes affinity timeouts %v, %v", add, del)
			}
			// History-independent, slot placement aside.
			fresh := fzDataplane()
			fzSync(fresh, st)
			fk := newFzKernel()
			fk.apply(t, fresh)
			if a, b := k.normalised(d), fk.normalised(fresh); !slices.Equal(a, b) {
				t.Fatalf("after this history the kernel differs from a fresh Sync of the same State:\n%s", fzLineDiff(a, b))
			}
		}
	})
}

// fzDataplane is a Dataplane with no kernel: New without the netlink
// connection.
func fzDataplane() *Dataplane {
	cfg := Config{
		Node: dataplane.Node{Name: "node-a", Zone: "zone-a", LocalPodCIDRs: []netip.Prefix{
			netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:db8:1::/64")}},
		Table: DefaultTable, MasqueradeMark: DefaultMasqueradeMark,
	}
	d := &Dataplane{cfg: cfg, nsFd: -1}
	d.table = &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}
	d.sets = newSets(d.table)
	d.st = newStore()
	d.svcs = make(map[dataplane.PortName]*svcState)
	return d
}

// fzSync is the in-memory half of Dataplane.prepare for a Dataplane
// whose store is known: it brings the services and the store to desired,
// after validate has told which ports are unchanged.
func fzSync(d *Dataplane, desired *dataplane.State) {
	same, err := d.validate(desired)
	if err != nil {
		panic(err) // fzSync is only given valid States
	}
	d.applyState(desired, same, false) // staleFlows must not panic
}

// fzCheckValidate: the Dataplane's validation, which checks only what
// changed since the synced ports, answers exactly as State.Validate; the
// ports it reports unchanged equal the synced ones; and its frontend
// owners and affinity counts describe the synced ports.
func fzCheckValidate(t *testing.T, d *Dataplane, st *dataplane.State) {
	t.Helper()
	same, err := d.validate(st)
	want := st.Validate()
	if fmt.Sprint(err) != fmt.Sprint(want) {
		t.Fatalf("validate = %v, State.Validate = %v", err, want)
	}
	for i, s := range same {
		if s != nil && (!equalPort(&s.port, &st.Ports[i]) || d.svcs[s.port.Name] != s) {
			t.Fatalf("port %d reported unchanged, but it differs from the synced %+v", i, s.port)
		}
	}
	fronts, aff := map[frontKey]*svcState{}, map[int64]int{}
	for _, s := range d.svcs {
		for _, f := range frontKeys(&s.port) {
			fronts[f] = s
		}
		if s.port.Affinity > 0 && len(s.port.ClusterIPs) > 0 {
			aff[int64(s.port.Affinity/time.Second)]++
		}
	}
	if !maps.Equal(fronts, d.fronts) && len(fronts)+len(d.fronts) > 0 {
		t.Fatalf("frontend owners %v, want %v", d.fronts, fronts)
	}
	if !maps.Equal(aff, d.affCount) && len(aff)+len(d.affCount) > 0 {
		t.Fatalf("affinity counts %v, want %v", d.affCount, aff)
	}
}

// fzKernel is what nf_tables would hold: elements and affinity chains.
type fzKernel struct {
	elems  map[elemKey]elemVal
	chains map[string]bool // affinity chains
}

func newFzKernel() *fzKernel {
	return &fzKernel{elems: map[elemKey]elemVal{}, chains: map[string]bool{}}
}

// apply sends d's pending changes in Sync's order (affinity objects
// added, element deletions, element additions, affinity objects deleted)
// and commits them, failing where the kernel would refuse the batch.
func (k *fzKernel) apply(t *testing.T, d *Dataplane) {
	t.Helper()
	changes, n := d.st.pending(len(d.sets))
	affAdd, affDel := d.affinityChanges(false)
	sent := 0
	for _, s := range affAdd {
		a := d.affinityObjects(s)
		if k.chains[a.chain.Name] {
			t.Fatalf("adds affinity chain %s, which exists", a.chain.Name)
		}
		k.chains[a.chain.Name], k.chains[a.npChain.Name] = true, true
	}
	for i, c := range changes {
		for _, e := range c.del {
			key := elemKey{setID(i), string(e.Key)}
			if _, ok := k.elems[key]; !ok {
				t.Fatalf("deletes missing element %x from %s (ENOENT)", e.Key, d.sets[i].Name)
			}
			delete(k.elems, key)
			sent++
		}
	}
	for i, c := range changes {
		for _, e := range c.add {
			key := elemKey{setID(i), string(e.Key)}
			if old, ok := k.elems[key]; ok {
				t.Fatalf("adds element %x to %s over an existing one (%+v)", e.Key, d.sets[i].Name, old)
			}
			v := fromKernel(setID(i), e)
			if e.VerdictData != nil {
				if !k.chains[v.val] {
					t.Fatalf("element %x of %s jumps to missing chain %s", e.Key, d.sets[i].Name, v.val)
				}
			}
			if len(e.KeyEnd) > 0 {
				for o, ov := range k.elems {
					if o.set == key.set && fzOverlaps(o.key, ov.val, key.key, v.val) {
						t.Fatalf("adds interval %x-%x to %s, overlapping %x-%x (EEXIST)", key.key, v.val, d.sets[i].Name, o.key, ov.val)
					}
				}
			}
			k.elems[key] = v
			sent++
		}
	}
	for _, s := range affDel {
		a := d.affinityObjects(s)
		for key, v := range k.elems {
			if kindOf(key.set) == verdictMap && (v.val == a.chain.Name || v.val == a.npChain.Name) {
				t.Fatalf("deletes chain %s, still jumped to by %x of %s (EBUSY)", v.val, key.key, d.sets[key.set].Name)
			}
		}
		delete(k.chains, a.chain.Name)
		delete(k.chains, a.npChain.Name)
	}
	if sent != n {
		t.Fatalf("pending counted %d element changes, sent %d", n, sent)
	}
	d.st.committed()
	d.affChains = d.wantAffinity()
}

// fzOverlaps reports whether two intervals of one set overlap: the same
// fixed fields and intersecting address ranges in the last one.
func fzOverlaps(aStart, aEnd, bStart, bEnd string) bool {
	n := 4
	if len(aStart) > 16 {
		n = 16
	}
	if len(aStart) != len(bStart) || aStart[:len(aStart)-n] != bStart[:len(bStart)-n] {
		return false
	}
	lo := func(s string) string { return s[len(s)-n:] }
	return lo(aStart) <= lo(bEnd) && lo(bStart) <= lo(aEnd)
}

// fzCheckStore: the kernel holds what the store says is applied, which is
// what the services want.
func fzCheckStore(t *testing.T, d *Dataplane, k *fzKernel) {
	t.Helper()
	if len(d.st.dirty) != 0 {
		t.Fatalf("%d keys still dirty after a commit", len(d.st.dirty))
	}
	for key, v := range k.elems {
		w, ok := d.st.want[key]
		if !ok || w.elemVal != v || w.refs <= 0 {
			t.Fatalf("%s %x: kernel %+v, wanted %+v (%v)", d.sets[key.set].Name, key.key, v, w, ok)
		}
	}
	if len(d.st.want) != len(k.elems) {
		t.Fatalf("the services want %d elements, the kernel holds %d", len(d.st.want), len(k.elems))
	}
}

// fzFront is one key prefix of an endpoint map: which map, and the
// frontend's bytes.
type fzFront struct {
	set setID
	key string
}

// fzSlotOwners returns, per frontend of the endpoint maps, the endpoint
// of each slot, as applied: between Syncs, what is wanted ("" for a
// missing slot).
func fzSlotOwners(d *Dataplane) map[fzFront][]string {
	out := map[fzFront][]string{}
	for key, v := range d.st.want {
		if !fzSlotMap(key.set) {
			continue
		}
		f := fzFront{key.set, key.key[:len(key.key)-4]}
		b := int(binaryutil.NativeEndian.Uint32([]byte(key.key[len(key.key)-4:])))
		arr := out[f]
		for len(arr) <= b {
			arr = append(arr, "")
		}
		arr[b] = v.val
		out[f] = arr
	}
	return out
}

func fzSlotMap(s setID) bool {
	switch s % setsPerFamily {
	case setEndpoints, setLocalEndpoints, setNodePortEndpoints, setNodePortLocalEps:
		return true
	}
	return false
}

// fzSlots is what one frontend of an endpoint map should hold: its
// endpoints, in order, over how many slots.
type fzSlots struct {
	eps   []netip.AddrPort
	slots int
}

// fzExpectedSlots reads, independently of services.go, which endpoint
// maps a State fills: per frontend, the endpoints that share its slots,
// in order, and how many slots: one per endpoint up to 64, or 64 with
// ClientIP affinity.
func fzExpectedSlots(d *Dataplane, st *dataplane.State) map[fzFront]fzSlots {
	out := map[fzFront]fzSlots{}
	fam := func(a netip.Addr) int {
		if a.Is4() {
			return v4
		}
		return v6
	}
	of := func(eps []dataplane.Endpoint, f int) []netip.AddrPort {
		var l []netip.AddrPort
		for _, e := range eps {
			if ap := e.AddrPort(); fam(e.Addr) == f && !slices.Contains(l, ap) {
				l = append(l, ap)
			}
		}
		return l
	}
	for i := range st.Ports {
		p := &st.Ports[i]
		put := func(f int, s setID, key []byte, eps []netip.AddrPort) {
			if len(eps) == 0 {
				return
			}
			n := min(len(eps), 64)
			if p.Affinity > 0 {
				n = 64
			}
			out[fzFront{sid(f, s), string(key)}] = fzSlots{eps, n}
		}
		cat := dataplane.Categorize(p, &d.cfg.Node)
		external := p.NodePort != 0 || len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0
		for _, cip := range p.ClusterIPs {
			f := fam(cip)
			put(f, setEndpoints, frontendKey(cip, p.Protocol, p.Port), of(cat.Internal(p), f))
			if !external || !cat.Any {
				continue
			}
			cluster, local := of(cat.Cluster, f), []netip.AddrPort(nil)
			if p.ExternalLocal {
				local = of(cat.Local, f)
			}
			for _, a := range slices.Concat(p.ExternalIPs, p.LoadBalancerIPs) {
				if fam(a) == f {
					put(f, setEndpoints, frontendKey(a, p.Protocol, p.Port), cluster)
					put(f, setLocalEndpoints, frontendKey(a, p.Protocol, p.Port), local)
				}
			}
			if p.NodePort != 0 {
				put(f, setNodePortEndpoints, nodePortKey(p.Protocol, p.NodePort), cluster)
				put(f, setNodePortLocalEps, nodePortKey(p.Protocol, p.NodePort), local)
			}
		}
	}
	return out
}

// fzCheckSlots: the endpoint maps hold exactly the expected frontends,
// each with its slots and no more, shared as assign promises, and no
// more slots moved than had to.
func fzCheckSlots(t *testing.T, d *Dataplane, st *dataplane.State, before map[fzFront][]string) {
	t.Helper()
	want := fzExpectedSlots(d, st)
	got := fzSlotOwners(d)
	for f, w := range want {
		arr, ok := got[f]
		if !ok {
			t.Fatalf("%s has no slots for fzFront %x; want %d shared by %v", d.sets[f.set].Name, f.key, w.slots, w.eps)
		}
		if len(arr) != w.slots {
			t.Fatalf("%s fzFront %x: slots up to %d, want %d for %v", d.sets[f.set].Name, f.key, len(arr)-1, w.slots, w.eps)
		}
		count := map[string]int{}
		for b, v := range arr {
			if v == "" {
				t.Fatalf("%s fzFront %x: slot %d is missing", d.sets[f.set].Name, f.key, b)
			}
			count[v]++
		}
		n := len(w.eps)
		share := func(i int) int {
			s := w.slots / n
			if i < w.slots%n {
				s++
			}
			return s
		}
		for i, ep := range w.eps {
			if c := count[string(addrPort(ep))]; c != share(i) {
				t.Fatalf("%s fzFront %x: endpoint %d of %d (%s) holds %d slots, want %d", d.sets[f.set].Name, f.key, i, n, ep, c, share(i))
			}
			delete(count, string(addrPort(ep)))
		}
		if len(count) != 0 {
			t.Fatalf("%s fzFront %x: slots held by endpoints not in %v: %x", d.sets[f.set].Name, f.key, w.eps, count)
		}
		// Stability: a slot that remains keeps its endpoint when that
		// endpoint stays and still has room.
		if prev, ok := before[f]; ok {
			pc := map[string]int{}
			for _, v := range prev[:min(len(prev), w.slots)] {
				pc[v]++
			}
			keep := 0
			for i, ep := range w.eps {
				keep += min(pc[string(addrPort(ep))], share(i))
			}
			moved := 0
			for b := range arr {
				if b >= len(prev) || arr[b] != prev[b] {
					moved++
				}
			}
			if moved > w.slots-keep {
				t.Fatalf("%s fzFront %x: %d slots moved, but only %d had to", d.sets[f.set].Name, f.key, moved, w.slots-keep)
			}
		}
	}
	for f := range got {
		if _, ok := want[f]; !ok {
			t.Fatalf("%s holds slots for fzFront %x, which the State does not forward there", d.sets[f.set].Name, f.key)
		}
	}
}

// fzCheckFirewall: each load-balancer frontend's allowed source intervals
// cover exactly its source ranges of that family.
func fzCheckFirewall(t *testing.T, d *Dataplane, st *dataplane.State, k *fzKernel) {
	t.Helper()
	type iv struct{ lo, hi netip.Addr }
	show := func(l []iv) string {
		var s []string
		for _, x := range l {
			s = append(s, x.lo.String()+"-"+x.hi.String())
		}
		return fmt.Sprint(s)
	}
	merge := func(l []iv) []iv {
		slices.SortFunc(l, func(a, b iv) int { return a.lo.Compare(b.lo) })
		var out []iv
		for _, x := range l {
			if n := len(out); n > 0 && (!out[n-1].hi.Next().IsValid() || x.lo.Compare(out[n-1].hi.Next()) <= 0) {
				if x.hi.Compare(out[n-1].hi) > 0 {
					out[n-1].hi = x.hi
				}
				continue
			}
			out = append(out, x)
		}
		return out
	}
	want := map[string][]iv{}
	for _, p := range st.Ports {
		if len(p.ClusterIPs) == 0 || !dataplane.Categorize(&p, &d.cfg.Node).Any {
			continue // no frontends, or all rejected
		}
		for _, a := range p.LoadBalancerIPs {
			var l []iv
			for _, r := range p.SourceRanges {
				if r.Addr().Is4() == a.Is4() {
					l = append(l, iv{r.Masked().Addr(), prefixes.Last(r.Masked())})
				}
			}
			if len(l) > 0 {
				want[string(frontendKey(a, p.Protocol, p.Port))] = merge(l)
			}
		}
	}
	got := map[string][]iv{}
	for key, v := range k.elems {
		if key.set%setsPerFamily != setFirewallAllow {
			continue
		}
		n := 4
		if key.set/setsPerFamily == v6 {
			n = 16
		}
		lo, _ := netip.AddrFromSlice([]byte(key.key[len(key.key)-n:]))
		hi, _ := netip.AddrFromSlice([]byte(v.val[len(v.val)-n:]))
		front := key.key[:len(key.key)-n]
		got[front] = append(got[front], iv{lo, hi})
	}
	for front, l := range got {
		got[front] = merge(l)
	}
	for front, w := range want {
		if g := got[front]; !slices.Equal(g, w) {
			t.Fatalf("load-balancer fzFront %x allows sources %s, want %s", front, show(g), show(w))
		}
		delete(got, front)
	}
	for front, g := range got {
		t.Fatalf("fzFront %x allows sources %s, but has no source ranges", front, show(g))
	}
}

// normalised describes the kernel model with each frontend's slots
// summarised as how many each endpoint holds.
func (k *fzKernel) normalised(d *Dataplane) []string {
	var out []string
	counts := map[string]int{}
	for key, v := range k.elems {
		name := d.sets[key.set].Name
		if fzSlotMap(key.set) {
			counts[fmt.Sprintf("%s %x → %x", name, key.key[:len(key.key)-4], v.val)]++
			continue
		}
		out = append(out, fmt.Sprintf("%s %x %+v", name, key.key, v))
	}
	for l, n := range counts {
		out = append(out, fmt.Sprintf("%s ×%d", l, n))
	}
	for c := range k.chains {
		out = append(out, "chain "+c)
	}
	slices.Sort(out)
	return out
}

func fzLineDiff(a, b []string) string {
	var out []string
	for _, l := range a {
		if !slices.Contains(b, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range b {
		if !slices.Contains(a, l) {
			out = append(out, "+ "+l)
		}
	}
	if len(out) > 30 {
		out = out[:30]
	}
	return fmt.Sprint(out)
}

// fzBytes hands out fuzz input a byte at a time; past the end it
// returns zeros, so every input builds some States.
type fzBytes []byte

func (b *fzBytes) next() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

func fzPick[T any](b *fzBytes, choices ...T) T { return choices[int(b.next())%len(choices)] }

func (b *fzBytes) count(n int) int { return int(b.next()) % n }

// Small pools, so that States collide: the same names, frontends and
// endpoints come back with other settings.
var (
	diffNames = []dataplane.PortName{
		{Namespace: "default", Name: "web", Port: "http"}, {Namespace: "default", Name: "web", Port: "dns"},
		{Namespace: "default", Name: "db"}, {Namespace: "kube-system", Name: "dns", Port: "dns"},
	}
	diffClusterIPs = [][]netip.Addr{
		{fzAddr("198.19.0.10")}, {fzAddr("198.19.0.11")}, {fzAddr("2001:db8:ffff::10")},
		{fzAddr("198.19.0.10"), fzAddr("2001:db8:ffff::10")}, {fzAddr("198.19.0.12"), fzAddr("2001:db8:ffff::12")}, nil,
	}
	diffExternal = [][]netip.Addr{nil, nil, {fzAddr("203.0.113.10")}, {fzAddr("2001:db8:beef::10")}, {fzAddr("203.0.113.10"), fzAddr("2001:db8:beef::10")}, {fzAddr("203.0.113.11")}}
	diffRanges   = []netip.Prefix{
		fzPrefix("192.0.2.0/24"), fzPrefix("192.0.2.0/25"), fzPrefix("192.0.2.128/25"), fzPrefix("0.0.0.0/0"),
		fzPrefix("192.0.2.7/32"), fzPrefix("198.51.100.0/24"), fzPrefix("2001:db8::/64"), fzPrefix("2001:db8::/32"), fzPrefix("::/0"),
	}
	diffEndpoints = []netip.Addr{
		fzAddr("198.18.1.10"), fzAddr("198.18.1.11"), fzAddr("198.18.2.10"), fzAddr("198.18.2.11"),
		fzAddr("2001:db8:1::a"), fzAddr("2001:db8:2::a"),
	}
	diffAffinity = []time.Duration{0, 0, 10 * time.Second, 30 * time.Second}
)

func fzAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }
func fzPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// fuzzDiffState builds one State from fuzz input.
func fuzzDiffState(b *fzBytes) *dataplane.State {
	st := &dataplane.State{}
	for range b.count(5) {
		p := dataplane.ServicePort{
			Name:            fzPick(b, diffNames...),
			Protocol:        fzPick(b, dataplane.TCP, dataplane.UDP),
			Port:            fzPick[uint16](b, 80, 53),
			NodePort:        fzPick[uint16](b, 0, 0, 30080, 30081),
			ClusterIPs:      fzPick(b, diffClusterIPs...),
			ExternalIPs:     fzPick(b, diffExternal...),
			LoadBalancerIPs: fzPick(b, diffExternal...),
			Affinity:        fzPick(b, diffAffinity...),
		}
		for range b.count(4) {
			p.SourceRanges = append(p.SourceRanges, fzPick(b, diffRanges...))
		}
		flags := b.next()
		p.InternalLocal, p.ExternalLocal = flags&1 != 0, flags&2 != 0
		n := b.count(8)
		if n == 7 {
			n = 70 // more endpoints than buckets
		}
		for i := range n {
			c := b.next()
			a := fzPick(b, diffEndpoints...)
			port := fzPick[uint16](b, 8080, 8081)
			if n == 70 {
				a, port = netip.AddrFrom4([4]byte{198, 18, 1 + byte(i%2), byte(20 + i)}), 8080
			}
			ep := dataplane.Endpoint{
				Addr: a, Port: port,
				NodeName: fzPick(b, "node-a", "node-b", ""),
				Ready:    c&1 != 0, Serving: c&2 != 0, Terminating: c&4 != 0,
			}
			if c&8 != 0 {
				ep.ForZones = []string{fzPick(b, "zone-a", "zone-b")}
			}
			if c&16 != 0 {
				ep.ForNodes = []string{fzPick(b, "node-a", "node-b")}
			}
			p.Endpoints = append(p.Endpoints, ep)
		}
		st.Ports = append(st.Ports, p)
	}
	return st
}
