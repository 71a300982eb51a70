package nft

import (
	"fmt"
	"net/netip"
	"testing"
)

func eps(n int) []netip.AddrPort {
	var out []netip.AddrPort
	for i := range n {
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)}), 8080))
	}
	return out
}

func counts(g *group) map[netip.AddrPort]int {
	c := make(map[netip.AddrPort]int)
	for _, i := range g.slots {
		c[g.eps[i]]++
	}
	return c
}

// writes counts the element writes that turn a's slots into b's: slots
// whose endpoint changed, and slots added or removed.
func writes(a, b *group) int {
	n := 0
	for i := range max(len(a.slots), len(b.slots)) {
		if i >= len(a.slots) || i >= len(b.slots) || a.eps[a.slots[i]] != b.eps[b.slots[i]] {
			n++
		}
	}
	return n
}

// Every endpoint gets slots/n slots, or one more: load is even to within
// one slot. Without affinity that is one slot per endpoint (up to 64);
// with it, 64 slots shared.
func TestAssignBalanced(t *testing.T) {
	for _, affinity := range []bool{false, true} {
		for n := 1; n <= 70; n++ {
			g := &group{eps: eps(n)}
			s := slotCount(n, affinity)
			g.slots = assign(nil, g.eps, s)
			if len(g.slots) != s {
				t.Fatalf("affinity %v, n=%d: %d slots, want %d", affinity, n, len(g.slots), s)
			}
			if want := min(n, buckets); !affinity && s != want {
				t.Fatalf("n=%d without affinity: %d slots, want %d", n, s, want)
			}
			c := counts(g)
			for ep, k := range c {
				if k < s/n || k > s/n+1 {
					t.Fatalf("affinity %v, n=%d: %s has %d slots, want %d or %d", affinity, n, ep, k, s/n, s/n+1)
				}
			}
			if n <= buckets && len(c) != n {
				t.Fatalf("affinity %v, n=%d: %d endpoints have slots, want all", affinity, n, len(c))
			}
		}
	}
}

// A change of one endpoint moves only the slots that must change hands,
// so an endpoint change costs few element writes.
func TestAssignStable(t *testing.T) {
	for _, tc := range []struct {
		from, to  []netip.AddrPort
		affinity  bool
		maxWrites int
	}{
		{eps(4), eps(4)[:3], false, 2},                // removing one of 4: its slot takes the last one's endpoint; the last slot goes
		{eps(4), eps(4)[1:], false, 2},                // removing the first of 4: the same
		{eps(3), eps(4), false, 1},                    // adding a 4th: one new slot
		{eps(5), append(eps(4), eps(6)[5]), false, 1}, // replacing one of 5: its slot
		{eps(1), eps(2), false, 1},
		{eps(4), eps(4)[:3], true, 16},                // removing one of 4: only its 16 slots move
		{eps(3), eps(4), true, 16},                    // adding a 4th: 16 slots come to it
		{eps(5), append(eps(4), eps(6)[5]), true, 13}, // replacing one of 5: its 12-13 slots
		{eps(1), eps(2), true, 32},
	} {
		t.Run(fmt.Sprintf("%d→%d,affinity=%v", len(tc.from), len(tc.to), tc.affinity), func(t *testing.T) {
			a := &group{eps: tc.from}
			a.slots = assign(nil, a.eps, slotCount(len(a.eps), tc.affinity))
			b := &group{eps: tc.to}
			b.slots = assign(a, b.eps, slotCount(len(b.eps), tc.affinity))
			if w := writes(a, b); w > tc.maxWrites {
				t.Fatalf("%d slot writes, want at most %d (from %v to %v)", w, tc.maxWrites, a.slots, b.slots)
			}
		})
	}
}
