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
	for _, i := range g.buckets {
		c[g.eps[i]]++
	}
	return c
}

func moved(a, b *group) int {
	n := 0
	for i := range a.buckets {
		if a.eps[a.buckets[i]] != b.eps[b.buckets[i]] {
			n++
		}
	}
	return n
}

// Every endpoint gets buckets/n buckets, or one more: load is even to
// within 1/64.
func TestAssignBalanced(t *testing.T) {
	for n := 1; n <= 70; n++ {
		g := &group{eps: eps(n)}
		g.buckets = assign(nil, g.eps)
		c := counts(g)
		for ep, k := range c {
			if k < buckets/n || k > buckets/n+1 {
				t.Fatalf("n=%d: %s has %d buckets, want %d or %d", n, ep, k, buckets/n, buckets/n+1)
			}
		}
		if n <= buckets && len(c) != n {
			t.Fatalf("n=%d: %d endpoints have buckets, want all", n, len(c))
		}
	}
}

// A change of one endpoint moves only the buckets that must change hands,
// so an endpoint change costs few element writes.
func TestAssignStable(t *testing.T) {
	for _, tc := range []struct {
		from, to []netip.AddrPort
		maxMoved int
	}{
		{eps(4), eps(4)[:3], 16},                // removing one of 4: only its 16 buckets move
		{eps(3), eps(4), 16},                    // adding a 4th: 16 buckets come to it
		{eps(5), append(eps(4), eps(6)[5]), 13}, // replacing one of 5: its 12-13 buckets
		{eps(1), eps(2), 32},
	} {
		t.Run(fmt.Sprintf("%d→%d", len(tc.from), len(tc.to)), func(t *testing.T) {
			a := &group{eps: tc.from}
			a.buckets = assign(nil, a.eps)
			b := &group{eps: tc.to}
			b.buckets = assign(a, b.eps)
			if m := moved(a, b); m > tc.maxMoved {
				t.Fatalf("%d buckets moved, want at most %d", m, tc.maxMoved)
			}
		})
	}
}
