package nft

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables/binaryutil"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/prefixes"
)

// role says which traffic an endpoint group serves.
type role uint8

const (
	roleInternal role = iota // cluster IPs (internalTrafficPolicy)
	roleCluster              // external IPs, LB IPs and NodePorts from pods and the node, and from outside under the Cluster policy
	roleLocal                // external traffic under externalTrafficPolicy Local
)

// svcState is what one service port contributes to the table.
type svcState struct {
	port dataplane.ServicePort // as last synced
	// groups are its endpoint lists, one per family and role, and any
	// whether any endpoint is usable anywhere: with port, what its
	// elements are computed from (elements).
	groups []*group
	any    bool
	// seen is the Dataplane's epoch when a validation last found the
	// port in a State, and pos its index in the last State synced
	// (validate.go).
	seen uint64
	pos  int
}

// group is one endpoint list spread over its frontends' slots; every
// frontend that forwards to the list gets the same slot assignment.
type group struct {
	fam   int
	role  role
	eps   []netip.AddrPort // index → endpoint
	slots []uint8          // slot → index into eps; at most buckets slots
}

func famOf(a netip.Addr) int {
	if a.Is4() {
		return v4
	}
	return v6
}

// slotCount is how many slots a group of n endpoints has: one per
// endpoint, up to buckets, or buckets for a port with ClientIP affinity,
// whose clients are remembered by slot (affinity.go).
func slotCount(n int, affinity bool) int {
	switch {
	case n == 0:
		return 0
	case affinity || n > buckets:
		return buckets
	}
	return n
}

// assign spreads eps over n slots, keeping every slot it can where prev
// had it so that a change of one endpoint rewrites few elements. Each
// endpoint gets n/len(eps) slots, or one more; with more endpoints than
// slots, the first n get one each.
func assign(prev *group, eps []netip.AddrPort, n int) []uint8 {
	out := make([]uint8, n)
	if len(eps) == 0 || n == 0 {
		return out[:0]
	}
	index := make(map[netip.AddrPort]int, len(eps))
	for i, e := range eps {
		index[e] = i
	}
	quota := make([]int, len(eps))
	for i := range quota {
		quota[i] = n / len(eps)
		if i < n%len(eps) {
			quota[i]++
		}
	}
	count := make([]int, len(eps))
	var spare []int
	for b := range out {
		if prev != nil && b < len(prev.slots) {
			if i, ok := index[prev.eps[prev.slots[b]]]; ok && count[i] < quota[i] {
				out[b] = uint8(i)
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
		out[b] = uint8(i)
		count[i]++
	}
	return out
}

func findGroup(gs []*group, f int, r role) *group {
	for _, g := range gs {
		if g.fam == f && g.role == r {
			return g
		}
	}
	return nil
}

// plan is what one port programs: its groups and whether any endpoint is
// usable anywhere.
type plan struct {
	groups []*group
	any    bool
}

// planPort computes p's endpoint groups for each family it has a cluster
// IP of, reusing old's slot assignments.
func (d *Dataplane) planPort(old *svcState, p *dataplane.ServicePort) plan {
	cat := dataplane.Categorize(p, &d.cfg.Node)
	// The roles this port has, and each one's endpoints.
	lists := [...][]dataplane.Endpoint{roleInternal: cat.Internal(p), roleCluster: cat.Cluster, roleLocal: cat.Local}
	roles := 1
	if p.NodePort != 0 || len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0 {
		roles = 2
		if p.ExternalLocal {
			roles = 3
		}
	}
	out := plan{any: cat.Any}
	for _, cip := range p.ClusterIPs {
		f := famOf(cip)
		for r := range role(roles) {
			eps := lists[r]
			// Validate has made sure no endpoint is listed twice.
			g := &group{fam: f, role: r, eps: make([]netip.AddrPort, 0, len(eps))}
			for _, e := range eps {
				if ap := e.AddrPort(); famOf(ap.Addr()) == f {
					g.eps = append(g.eps, ap)
				}
			}
			var prev *group
			if old != nil {
				prev = findGroup(old.groups, f, r)
			} else if d.adopted {
				prev = d.adoptedGroup(p, f, r)
			}
			g.slots = assign(prev, g.eps, slotCount(len(g.eps), p.Affinity > 0))
			out.groups = append(out.groups, g)
		}
	}
	return out
}

// adoptedGroup returns the slot assignment an adopted table holds for
// p's role r in family f, or nil.
func (d *Dataplane) adoptedGroup(p *dataplane.ServicePort, f int, r role) *group {
	for _, cip := range p.ClusterIPs {
		if famOf(cip) != f {
			continue
		}
		switch r {
		case roleInternal:
			return d.kernelGroup(setEndpoints, frontendKey(cip, p.Protocol, p.Port), f, r)
		case roleCluster, roleLocal:
			m, npm := setEndpoints, setNodePortEndpoints
			if r == roleLocal {
				m, npm = setLocalEndpoints, setNodePortLocalEps
			}
			for _, a := range slices.Concat(p.ExternalIPs, p.LoadBalancerIPs) {
				if famOf(a) == f {
					return d.kernelGroup(m, frontendKey(a, p.Protocol, p.Port), f, r)
				}
			}
			if p.NodePort != 0 {
				return d.kernelGroup(npm, nodePortKey(p.Protocol, p.NodePort), f, r)
			}
		}
	}
	return nil
}

// elements computes the elements port p contributes, given its plan.
func (d *Dataplane) elements(p *dataplane.ServicePort, pl plan) []element {
	out := make([]element, 0, elementsHint(p))
	comment := p.Name.String()
	el := func(f int, s setID, key []byte, v elemVal) {
		out = append(out, element{elemKey{sid(f, s), string(key)}, v})
	}
	// Each group's endpoints, encoded once for all its slots.
	vals := make(map[*group][]string, len(pl.groups))
	// slotsOf adds the elements of key's slots in map s. Their keys
	// share one string: one allocation per frontend, not per slot.
	slotsOf := func(s setID, key []byte, g *group) {
		v := vals[g]
		if v == nil {
			v = make([]string, len(g.eps))
			for i, ep := range g.eps {
				v[i] = string(addrPort(ep))
			}
			vals[g] = v
		}
		n := len(key) + 4
		buf := make([]byte, 0, len(g.slots)*n)
		for b := range uint32(len(g.slots)) {
			buf = append(buf, key...)
			buf = binary.NativeEndian.AppendUint32(buf, b)
		}
		all := string(buf)
		for b, i := range g.slots {
			out = append(out, element{elemKey{sid(g.fam, s), all[b*n : (b+1)*n]}, elemVal{val: v[i]}})
		}
	}
	for _, g := range pl.groups {
		for _, ep := range g.eps {
			a := ep.Addr().AsSlice()
			el(g.fam, setHairpin, slices.Concat(a, a), elemVal{})
		}
	}
	for _, cip := range p.ClusterIPs {
		f := famOf(cip)
		internal := findGroup(pl.groups, f, roleInternal)
		front := frontendKey(cip, p.Protocol, p.Port)
		el(f, setClusterIPs, cip.AsSlice(), elemVal{})
		switch {
		case len(internal.eps) > 0:
			el(f, setServiceIPs, front, elemVal{comment: comment})
			slotsOf(setEndpoints, front, internal)
		case pl.any:
			el(f, setNoLocalEndpoints, front, elemVal{comment: comment})
		default:
			el(f, setNoEndpoints, front, elemVal{comment: comment})
		}

		cluster, local := findGroup(pl.groups, f, roleCluster), findGroup(pl.groups, f, roleLocal)
		external := func(a netip.Addr, lb bool) {
			front := frontendKey(a, p.Protocol, p.Port)
			if !pl.any {
				el(f, setNoEndpoints, front, elemVal{comment: comment})
				return
			}
			if len(cluster.eps) > 0 {
				slotsOf(setEndpoints, front, cluster)
			}
			if local != nil {
				el(f, setExternalLocal, front, elemVal{comment: comment})
				if len(local.eps) > 0 {
					slotsOf(setLocalEndpoints, front, local)
				}
			} else {
				el(f, setExternalCluster, front, elemVal{comment: comment})
			}
			if !lb {
				return
			}
			var ranges []netip.Prefix
			for _, r := range p.SourceRanges {
				if famOf(r.Addr()) == f {
					ranges = append(ranges, r.Masked())
				}
			}
			if len(ranges) == 0 {
				return // no ranges of this family: any source
			}
			el(f, setFirewall, front, elemVal{comment: comment})
			for _, r := range prefixes.Outermost(ranges) {
				el(f, setFirewallAllow, slices.Concat(front, r.Addr().AsSlice()),
					elemVal{val: string(slices.Concat(front, prefixes.Last(r).AsSlice())), comment: comment})
			}
		}
		for _, a := range p.ExternalIPs {
			if famOf(a) == f {
				external(a, false)
			}
		}
		for _, a := range p.LoadBalancerIPs {
			if famOf(a) == f {
				external(a, true)
			}
		}
		if p.Affinity > 0 {
			a := d.affinityObjects(int64(p.Affinity / time.Second))
			el(f, setAffinityFrontends, front, elemVal{val: a.chain.Name, comment: comment})
			for _, x := range slices.Concat(p.ExternalIPs, p.LoadBalancerIPs) {
				if famOf(x) == f {
					el(f, setAffinityFrontends, frontendKey(x, p.Protocol, p.Port), elemVal{val: a.chain.Name, comment: comment})
				}
			}
			if p.NodePort != 0 {
				el(f, setAffinityNodePorts, nodePortKey(p.Protocol, p.NodePort), elemVal{val: a.npChain.Name, comment: comment})
			}
		}
		if p.NodePort != 0 {
			np := nodePortKey(p.Protocol, p.NodePort)
			switch {
			case !pl.any:
				el(f, setNoEndpointNodePorts, np, elemVal{comment: comment})
			case local != nil:
				el(f, setNodePortsLocal, np, elemVal{comment: comment})
				if len(cluster.eps) > 0 {
					slotsOf(setNodePortEndpoints, np, cluster)
				}
				if len(local.eps) > 0 {
					slotsOf(setNodePortLocalEps, np, local)
				}
			default:
				el(f, setNodePortsCluster, np, elemVal{comment: comment})
				if len(cluster.eps) > 0 {
					slotsOf(setNodePortEndpoints, np, cluster)
				}
			}
		}
	}
	return out
}

// elementsHint is about how many elements p contributes: its slots and
// a few more.
func elementsHint(p *dataplane.ServicePort) int {
	fronts := len(p.ClusterIPs) + len(p.ExternalIPs) + len(p.LoadBalancerIPs)
	if p.NodePort != 0 {
		fronts++
	}
	return fronts*(slotCount(len(p.Endpoints), p.Affinity > 0)+4) + len(p.Endpoints)
}

// frontendKey encodes address . protocol . port, each field padded to 4
// bytes.
func frontendKey(a netip.Addr, proto dataplane.Protocol, port uint16) []byte {
	return slices.Concat(a.AsSlice(), nodePortKey(proto, port))
}

// nodePortKey encodes protocol . port.
func nodePortKey(proto dataplane.Protocol, port uint16) []byte {
	b := []byte{byte(proto), 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, port)
	return append(b, 0, 0)
}

// bucketKey appends a slot number, in the byte order numgen writes it.
func bucketKey(key []byte, bucket uint32) []byte {
	return slices.Concat(key, binaryutil.NativeEndian.PutUint32(bucket))
}

func addrPort(ap netip.AddrPort) []byte {
	b := ap.Addr().AsSlice()
	b = binary.BigEndian.AppendUint16(b, ap.Port())
	return append(b, 0, 0)
}
