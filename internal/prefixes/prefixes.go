// Package prefixes holds the address-prefix arithmetic both backends
// need to put loadBalancerSourceRanges into an nftables interval set.
package prefixes

import (
	"net/netip"
	"slices"
)

// Outermost returns the prefixes of rs that no other one contains, each
// once. Their union is rs's (prefixes nest or are disjoint), and they do
// not overlap: the kernel refuses overlapping intervals in one set, and
// two prefixes with one first address would share an element key.
func Outermost(rs []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for i, r := range rs {
		contains := func(strict bool) func(o netip.Prefix) bool {
			return func(o netip.Prefix) bool {
				return o.Contains(r.Addr()) && (o.Bits() < r.Bits() || !strict && o.Bits() == r.Bits())
			}
		}
		if !slices.ContainsFunc(rs[:i], contains(false)) && !slices.ContainsFunc(rs[i+1:], contains(true)) {
			out = append(out, r)
		}
	}
	return out
}

// Last returns the last address of a masked prefix.
func Last(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
