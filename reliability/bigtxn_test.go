package reliability

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/nstest"
	"github.com/svcplane/svcplane/nft"
)

// bigServices is how many service ports the element test syncs: each
// dual-stack, with an external IP and a NodePort under
// externalTrafficPolicy Local and bigEndpoints local endpoints per
// family, so each fills 648 elements (the 64 slots, one per endpoint, of
// 5 frontends in 4 maps per family, and 4 set elements per family) and
// the State 648·n + 2·64 (the hairpin pairs).
const bigServices = 330

// bigEndpoints is how many endpoints each port of the element test has
// per family: 64, the most slots a frontend has.
const bigEndpoints = 64

// bigState returns the element test's State, its endpoints on port
// epPort.
func bigState(epPort uint16) *dataplane.State {
	st := &dataplane.State{}
	for i := range bigServices {
		v6 := func(prefix [6]byte) netip.Addr {
			var a [16]byte
			copy(a[:], prefix[:])
			a[14], a[15] = byte(i>>8), byte(i)
			return netip.AddrFrom16(a)
		}
		p := dataplane.ServicePort{
			Name:     dataplane.PortName{Namespace: "big", Name: fmt.Sprintf("svc-%d", i)},
			Protocol: dataplane.TCP, Port: uint16(1000 + i), NodePort: uint16(30000 + i), ExternalLocal: true,
			ClusterIPs:  []netip.Addr{netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), v6([6]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff})},
			ExternalIPs: []netip.Addr{netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), v6([6]byte{0x20, 0x01, 0x0d, 0xb8, 0xbe, 0xef})},
		}
		if i >= 256 { // 203.0.113.0/24 has 256 addresses
			p.ExternalIPs[0] = netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		}
		for e := range bigEndpoints {
			p.Endpoints = append(p.Endpoints,
				dataplane.Endpoint{Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + e)}), Port: epPort, NodeName: "node-a", Ready: true, Serving: true},
				dataplane.Endpoint{Addr: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 15: byte(10 + e)}), Port: epPort, NodeName: "node-a", Ready: true, Serving: true})
		}
		st.Ports = append(st.Ports, p)
	}
	return st
}

// dumpSet lists a set's elements. A dump of a large hash set can return
// a key twice while the kernel is still resizing the table after a big
// batch (the walk crosses the resize); a set cannot hold a key twice, so
// such a dump is read again.
func dumpSet(t *testing.T, c *nftables.Conn, s *nftables.Set) []nftables.SetElement {
	t.Helper()
	for try := 1; ; try++ {
		elems, err := c.GetSetElements(s)
		if err != nil {
			t.Fatalf("list elements of %s: %v", s.Name, err)
		}
		seen := make(map[string]bool, len(elems))
		dup := ""
		for _, e := range elems {
			if k := string(e.Key) + "/" + string(e.KeyEnd); seen[k] {
				dup = k
			} else {
				seen[k] = true
			}
		}
		if dup == "" {
			return elems
		}
		if try == 5 {
			t.Fatalf("5 dumps of %s each listed a key twice (last: %x)", s.Name, dup)
		}
		t.Logf("a dump of %s listed key %x twice; reading it again", s.Name, dup)
		time.Sleep(200 * time.Millisecond)
	}
}

// kernelBuckets reads every element of the backend's table back from
// the kernel and checks the endpoint maps: each frontend has exactly the
// 64 slots 0-63, each pointing at a different one of want's endpoints.
// It returns the number of elements per set.
func kernelBuckets(t *testing.T, fd int, want map[int][]netip.AddrPort) map[string]int {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	table := &nftables.Table{Name: nft.DefaultTable, Family: nftables.TableFamilyINet}
	sets, err := c.GetSets(table)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, s := range sets {
		elems := dumpSet(t, c, s)
		out[s.Name] = len(elems)
		if !bucketMap.MatchString("  set " + s.Name + " ") {
			continue
		}
		fam := 4
		if strings.HasSuffix(s.Name, "-v6") {
			fam = 16
		}
		fronts := map[string]map[uint32]netip.AddrPort{}
		for _, e := range elems {
			front, b := string(e.Key[:len(e.Key)-4]), binaryutil.NativeEndian.Uint32(e.Key[len(e.Key)-4:])
			a, _ := netip.AddrFromSlice(e.Val[:fam])
			if fronts[front] == nil {
				fronts[front] = map[uint32]netip.AddrPort{}
			}
			if _, dup := fronts[front][b]; dup || b >= 64 {
				t.Fatalf("%s frontend %x: slot %d twice or out of range", s.Name, front, b)
			}
			fronts[front][b] = netip.AddrPortFrom(a, binary.BigEndian.Uint16(e.Val[fam:]))
		}
		for front, bs := range fronts {
			if len(bs) != 64 {
				t.Fatalf("%s frontend %x has %d slots, want 64", s.Name, front, len(bs))
			}
			count := map[netip.AddrPort]int{}
			for _, ep := range bs {
				count[ep]++
			}
			for _, ep := range want[fam] {
				if count[ep] != 1 {
					t.Fatalf("%s frontend %x: endpoint %s holds %d slots, want 1 (all: %v)", s.Name, front, ep, count[ep], count)
				}
			}
		}
	}
	return out
}

// TestBigTransactions syncs, each in one Sync (one netlink batch), a
// State of more than 200,000 map elements into an empty namespace, then
// one that rewrites every slot (more than 400,000 element changes),
// then the empty State; and a State with 40 distinct affinity timeouts
// (20,800 rules), then 40 other timeouts (20,800 rules added and as many
// deleted), then none. Every Sync must succeed (no EMSGSIZE, no
// ENOBUFS, no truncation: NETLINK-NOTES.md) and the kernel must then
// hold exactly the intended objects, counted back one by one.
func TestBigTransactions(t *testing.T) {
	b, _ := backendByName("nft") // maps and rules are the nft backend's
	t.Run("Elements", func(t *testing.T) {
		ns := nstest.New(t)
		dp := open(t, b, ns.Path(), nodeA())
		eps := map[int][]netip.AddrPort{}
		for e := range bigEndpoints {
			eps[4] = append(eps[4], netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + e)}), 0))
			eps[16] = append(eps[16], netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 15: byte(10 + e)}), 0))
		}
		withPort := func(port uint16) map[int][]netip.AddrPort {
			out := map[int][]netip.AddrPort{}
			for f, l := range eps {
				for _, ep := range l {
					out[f] = append(out[f], netip.AddrPortFrom(ep.Addr(), port))
				}
			}
			return out
		}
		n := bigServices
		want := map[string]int{}
		for _, f := range []string{"-v4", "-v6"} {
			want["endpoints"+f] = 2 * 64 * n // cluster IP and external IP
			want["local-endpoints"+f] = 64 * n
			want["nodeport-endpoints"+f] = 64 * n
			want["nodeport-local-endpoints"+f] = 64 * n
			want["service-ips"+f] = n
			want["cluster-ips"+f] = n
			want["external-local"+f] = n
			want["nodeports-local"+f] = n
			want["hairpin"+f] = bigEndpoints
		}
		total := 0
		for _, v := range want {
			total += v
		}
		check := func(what string, want map[string]int, eps map[int][]netip.AddrPort) {
			t.Helper()
			got := kernelBuckets(t, ns.Fd(), eps)
			sum := 0
			for name, k := range got {
				sum += k
				if k != want[name] {
					t.Errorf("%s: set %s holds %d elements, want %d", what, name, k, want[name])
				}
			}
			for name, k := range want {
				if _, ok := got[name]; !ok && k > 0 {
					t.Errorf("%s: set %s is missing", what, name)
				}
			}
			t.Logf("%s: counted back %d elements", what, sum)
		}
		for _, step := range []struct {
			what    string
			st      *dataplane.State
			changes int
			want    map[string]int
			eps     map[int][]netip.AddrPort
		}{
			{"first Sync", bigState(8080), total, want, withPort(8080)},
			{"every slot rewritten", bigState(9090), 2 * (total - 4*n - 2*bigEndpoints), want, withPort(9090)},
			{"everything deleted", &dataplane.State{}, total, map[string]int{}, nil},
		} {
			start := time.Now()
			if err := dp.Sync(t.Context(), step.st); err != nil {
				t.Fatalf("%s (~%d element changes in one batch): %v%s", step.what, step.changes, err, errnoHint(err))
			}
			t.Logf("%s: ~%d element changes in one Sync took %v", step.what, step.changes, time.Since(start).Round(time.Millisecond))
			check(step.what, step.want, step.eps)
		}
	})

	t.Run("Rules", func(t *testing.T) {
		ns := nstest.New(t)
		dp := newDP(t, b, ns.Path(), nodeA())
		wedged := false // Close would wait for a hung Sync for good
		t.Cleanup(func() {
			if !wedged {
				dp.Close()
			}
		})
		base := &dataplane.State{}
		timeouts := func(from int) *dataplane.State {
			st := &dataplane.State{}
			for i := range 40 {
				st.Ports = append(st.Ports, dataplane.ServicePort{
					Name:     dataplane.PortName{Namespace: "aff", Name: fmt.Sprintf("svc-%d", i)},
					Protocol: dataplane.TCP, Port: 80, NodePort: uint16(30000 + i),
					ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 19, 2, byte(i)})},
					Affinity:   time.Duration(from+i) * time.Second,
					Endpoints:  []dataplane.Endpoint{{Addr: netip.AddrFrom4([4]byte{198, 18, 1, 10}), Port: 8080, Ready: true, Serving: true}},
				})
			}
			return st
		}
		// The fixed rules, from a Sync without affinity.
		if err := dp.Sync(t.Context(), base); err != nil {
			t.Fatal(err)
		}
		baseRules, _ := countRules(t, ns.Fd())
		for _, step := range []struct {
			what string
			from int // first timeout, seconds; 0: none
		}{{"40 timeouts", 1}, {"40 other timeouts", 41}, {"no timeout", 0}} {
			st := base
			if step.from > 0 {
				st = timeouts(step.from)
			}
			start := time.Now()
			if err := dp.Sync(t.Context(), st); err != nil {
				// What did the kernel keep, and does the Dataplane still
				// work?
				held, _ := countRules(t, ns.Fd())
				next := make(chan error, 1)
				go func() { next <- dp.Sync(context.Background(), base) }()
				var after string
				select {
				case err := <-next:
					after = fmt.Sprintf("the next Sync returned %v", err)
				case <-time.After(15 * time.Second):
					wedged = true
					after = "the next Sync hung for 15 s: the Dataplane is wedged"
				}
				t.Fatalf("%s: %v%s; the kernel holds %d rules after it; %s", step.what, err, errnoHint(err), held, after)
			}
			took := time.Since(start)
			total, chains := countRules(t, ns.Fd())
			want := baseRules
			for i := range 40 {
				if step.from == 0 {
					break
				}
				want += 520
				for _, ch := range []string{fmt.Sprintf("affinity-%ds", step.from+i), fmt.Sprintf("affinity-%ds-nodeports", step.from+i)} {
					if chains[ch] != 260 {
						t.Errorf("%s: chain %s has %d rules, want 260", step.what, ch, chains[ch])
					}
				}
			}
			if total != want {
				t.Errorf("%s: the table holds %d rules, want %d", step.what, total, want)
			}
			for ch := range chains {
				var s int
				if n, _ := fmt.Sscanf(ch, "affinity-%ds", &s); n == 1 && (step.from == 0 || s < step.from || s >= step.from+40) {
					t.Errorf("%s: chain %s is left over", step.what, ch)
				}
			}
			t.Logf("%s: Sync took %v; counted back %d rules in %d chains", step.what, took.Round(time.Millisecond), total, len(chains))
		}
	})
}

// countRules counts the rules of the backend's table, in all and per
// chain.
func countRules(t *testing.T, fd int) (int, map[string]int) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	total, per := 0, map[string]int{}
	for _, ch := range chains {
		if ch.Table.Name != nft.DefaultTable {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			t.Fatalf("list rules of %s: %v", ch.Name, err)
		}
		per[ch.Name] = len(rules)
		total += len(rules)
	}
	return total, per
}

// errnoHint names the netlink errors NETLINK-NOTES.md warns of.
func errnoHint(err error) string {
	switch {
	case errors.Is(err, unix.EMSGSIZE):
		return " (EMSGSIZE: the batch did not fit the socket's send buffer)"
	case errors.Is(err, unix.ENOBUFS):
		return " (ENOBUFS: the acks overflowed the receive buffer; the kernel may have committed)"
	}
	return ""
}
