package nft

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/google/nftables/binaryutil"

	"github.com/svcplane/svcplane/dataplane"
)

// svcState is what one service port contributes to the table.
type svcState struct {
	port  dataplane.ServicePort // as last synced
	elems []elemKey             // every element it added to the store
	// groups are its endpoint lists, one per family (and, later, per
	// traffic policy), each spread over the buckets.
	groups []*group
}

// group is one endpoint list spread over the buckets; every frontend that
// forwards to the list gets the same bucket assignment.
type group struct {
	fam     int
	eps     []netip.AddrPort // index → endpoint
	buckets [buckets]int     // bucket → index into eps
}

func famOf(a netip.Addr) int {
	if a.Is4() {
		return v4
	}
	return v6
}

// assign spreads eps over the buckets, keeping as many buckets as it can
// where prev had them so that a change of one endpoint rewrites few
// elements. Each endpoint gets buckets/len(eps) buckets, or one more.
func assign(prev *group, eps []netip.AddrPort) (out [buckets]int) {
	n := len(eps)
	if n == 0 {
		return out
	}
	index := make(map[netip.AddrPort]int, n)
	for i, e := range eps {
		index[e] = i
	}
	quota := make([]int, n)
	for i := range quota {
		quota[i] = buckets / n
		if i < buckets%n {
			quota[i]++
		}
	}
	count := make([]int, n)
	var spare []int
	for b := range out {
		if prev != nil && len(prev.eps) > 0 {
			if i, ok := index[prev.eps[prev.buckets[b]]]; ok && count[i] < quota[i] {
				out[b] = i
				count[i]++
				continue
			}
		}
		spare = append(spare, b)
	}
	i := 0
	for _, b := range spare {
		for count[i] >= quota[i] {
			i++
		}
		out[b] = i
		count[i]++
	}
	return out
}

// groupsFor computes p's endpoint groups, one per family it has a cluster
// IP of, reusing old's bucket assignment.
func (d *Dataplane) groupsFor(old *svcState, p *dataplane.ServicePort) []*group {
	eps := dataplane.Categorize(p, &d.cfg.Node).Internal(p)
	var out []*group
	for _, cip := range p.ClusterIPs {
		f := famOf(cip)
		g := &group{fam: f}
		seen := make(map[netip.AddrPort]bool)
		for _, e := range eps {
			if ap := e.AddrPort(); famOf(ap.Addr()) == f && !seen[ap] {
				seen[ap] = true
				g.eps = append(g.eps, ap)
			}
		}
		var prev *group
		if old != nil {
			for _, o := range old.groups {
				if o.fam == f {
					prev = o
				}
			}
		}
		g.buckets = assign(prev, g.eps)
		out = append(out, g)
	}
	return out
}

// elements computes the elements for port p, given its groups.
func (d *Dataplane) elements(p *dataplane.ServicePort, groups []*group) []element {
	var out []element
	comment := p.Name.String()
	for _, g := range groups {
		for _, ep := range g.eps {
			a := ep.Addr().AsSlice()
			out = append(out, element{elemKey{sid(g.fam, setHairpin), string(slices.Concat(a, a))}, elemVal{}})
		}
	}
	for _, cip := range p.ClusterIPs {
		f := famOf(cip)
		out = append(out, element{elemKey{sid(f, setClusterIPs), string(cip.AsSlice())}, elemVal{}})
		for _, g := range groups {
			if g.fam != f || len(g.eps) == 0 {
				continue
			}
			front := frontendKey(cip, p.Protocol, p.Port)
			out = append(out, element{elemKey{sid(f, setServiceIPs), string(front)}, elemVal{comment: comment}})
			for b, i := range g.buckets {
				out = append(out, element{
					elemKey{sid(f, setEndpoints), string(bucketKey(front, uint32(b)))},
					elemVal{val: string(addrPort(g.eps[i]))},
				})
			}
		}
	}
	return out
}

// frontendKey encodes address . protocol . port, each field padded to 4
// bytes.
func frontendKey(a netip.Addr, proto dataplane.Protocol, port uint16) []byte {
	b := a.AsSlice()
	b = append(b, byte(proto), 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, port)
	return append(b, 0, 0)
}

// bucketKey appends a bucket number, in the byte order numgen writes it.
func bucketKey(front []byte, bucket uint32) []byte {
	return slices.Concat(front, binaryutil.NativeEndian.PutUint32(bucket))
}

func addrPort(ap netip.AddrPort) []byte {
	b := ap.Addr().AsSlice()
	b = binary.BigEndian.AppendUint16(b, ap.Port())
	return append(b, 0, 0)
}
