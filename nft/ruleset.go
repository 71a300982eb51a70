package nft

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Address families, as indexes.
const (
	v4 = 0
	v6 = 1
)

var famSuffix = [2]string{"-v4", "-v6"}

// setID indexes Dataplane.sets: setsPerFamily sets for IPv4, then the
// same for IPv6.
type setID uint8

const (
	setClusterIPs          setID = iota // every cluster IP
	setServiceIPs                       // cluster-IP frontends with endpoints
	setEndpoints                        // frontend . slot → endpoint (internal/Cluster)
	setExternalCluster                  // external/LB frontends, Cluster policy
	setExternalLocal                    // external/LB frontends, Local policy
	setLocalEndpoints                   // frontend . slot → local endpoint
	setNodePortsCluster                 // NodePorts (proto . port), Cluster policy
	setNodePortsLocal                   // NodePorts, Local policy
	setNodePortEndpoints                // proto . port . slot → endpoint
	setNodePortLocalEps                 // proto . port . slot → local endpoint
	setNoEndpoints                      // frontends with no endpoints: reject
	setNoLocalEndpoints                 // frontends with no usable local endpoints: drop
	setNoEndpointNodePorts              // NodePorts with no endpoints: reject
	setFirewall                         // LB frontends with source ranges
	setFirewallAllow                    // frontend . allowed source range
	setHairpin                          // endpoint . endpoint
	setAffinityFrontends                // frontend → jump affinity-<T>s
	setAffinityNodePorts                // NodePort → jump affinity-<T>s-nodeports
	setsPerFamily
)

func sid(f int, s setID) setID { return setID(f)*setsPerFamily + s }

// buckets is the most endpoint slots a frontend has. A frontend has one
// slot per endpoint, up to buckets; a frontend with ClientIP affinity
// always has buckets slots, since its clients are remembered by slot.
const buckets = 64

// pickMaps are the endpoint maps, frontend . slot → endpoint. Each has a
// pick chain per family that DNATs to one of a frontend's slots.
var pickMaps = [...]setID{setEndpoints, setLocalEndpoints, setNodePortEndpoints, setNodePortLocalEps}

func isNodePortMap(m setID) bool { return m == setNodePortEndpoints || m == setNodePortLocalEps }

// Registers: keys are loaded from reg0 on, one 32-bit register per field
// so that concatenations line up; scratch is for tests that must not
// disturb a key.
const (
	reg0    = unix.NFT_REG32_00
	scratch = unix.NFT_REG32_08
)

func newSets(t *nftables.Table) []*nftables.Set {
	addr := [2]nftables.SetDatatype{nftables.TypeIPAddr, nftables.TypeIP6Addr}
	var out []*nftables.Set
	for f := v4; f <= v6; f++ {
		front := nftables.MustConcatSetType(addr[f], nftables.TypeInetProto, nftables.TypeInetService)
		frontBucket := nftables.MustConcatSetType(addr[f], nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
		nodePort := nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
		nodePortBucket := nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
		ep := nftables.MustConcatSetType(addr[f], nftables.TypeInetService)
		set := func(name string, key nftables.SetDatatype, comment string) *nftables.Set {
			return &nftables.Set{Table: t, Name: name + famSuffix[f], KeyType: key, Concatenation: len(key.Name) > len(addr[f].Name), Comment: comment}
		}
		epMap := func(name string, key nftables.SetDatatype, comment string) *nftables.Set {
			s := set(name, key, comment)
			s.IsMap, s.Concatenation, s.DataType = true, true, ep
			return s
		}
		sets := make([]*nftables.Set, setsPerFamily)
		sets[setClusterIPs] = set("cluster-ips", addr[f], "cluster IPs: a new connection still addressed to one after DNAT is rejected")
		sets[setServiceIPs] = set("service-ips", front, "cluster IP frontends (address . protocol . port) with endpoints; comments name the service port")
		sets[setEndpoints] = epMap("endpoints", frontBucket, "frontend . slot to endpoint, for cluster IPs and for external IPs under the Cluster policy or from pods and the node; a frontend has one slot per endpoint (64 with ClientIP affinity)")
		sets[setExternalCluster] = set("external-cluster", front, "external and load-balancer IP frontends, externalTrafficPolicy Cluster: always masqueraded")
		sets[setExternalLocal] = set("external-local", front, "external and load-balancer IP frontends, externalTrafficPolicy Local: outside clients keep their address and reach local endpoints only")
		sets[setLocalEndpoints] = epMap("local-endpoints", frontBucket, "frontend . slot to a local endpoint, for externalTrafficPolicy Local")
		sets[setNodePortsCluster] = set("nodeports-cluster", nodePort, "NodePorts (protocol . port), externalTrafficPolicy Cluster")
		sets[setNodePortsLocal] = set("nodeports-local", nodePort, "NodePorts (protocol . port), externalTrafficPolicy Local")
		sets[setNodePortEndpoints] = epMap("nodeport-endpoints", nodePortBucket, "NodePort . slot to endpoint")
		sets[setNodePortLocalEps] = epMap("nodeport-local-endpoints", nodePortBucket, "NodePort . slot to a local endpoint, for externalTrafficPolicy Local")
		sets[setNoEndpoints] = set("no-endpoints", front, "frontends of services without endpoints: rejected")
		sets[setNoLocalEndpoints] = set("no-local-endpoints", front, "cluster IP frontends with internalTrafficPolicy Local and no local endpoint: dropped")
		sets[setNoEndpointNodePorts] = set("no-endpoint-nodeports", nodePort, "NodePorts of services without endpoints: rejected")
		sets[setFirewall] = set("firewall", front, "load-balancer IP frontends with loadBalancerSourceRanges")
		allow := set("firewall-allow", nftables.MustConcatSetType(addr[f], nftables.TypeInetProto, nftables.TypeInetService, addr[f]), "load-balancer IP frontend . allowed source range")
		allow.Interval, allow.Concatenation = true, true
		sets[setFirewallAllow] = allow
		sets[setHairpin] = set("hairpin", nftables.MustConcatSetType(addr[f], addr[f]), "endpoint . endpoint: an endpoint reaching itself through a service is masqueraded")
		vmap := func(name string, key nftables.SetDatatype, comment string) *nftables.Set {
			s := set(name, key, comment)
			s.IsMap, s.DataType = true, nftables.TypeVerdict
			return s
		}
		sets[setAffinityFrontends] = vmap("affinity-frontends", front, "frontends of services with ClientIP affinity: jump to the chain for the service's timeout")
		sets[setAffinityNodePorts] = vmap("affinity-nodeports", nodePort, "NodePorts of services with ClientIP affinity: jump to the chain for the service's timeout")
		out = append(out, sets...)
	}
	return out
}

// chains of the table. Base chains hook into netfilter; services is
// jumped to from both DNAT hooks, and jumps to a pick chain to DNAT.
type chains struct {
	natPrerouting, natOutput, services, natPostrouting *nftables.Chain
	filterPrerouting, filterOutput                     *nftables.Chain
	filterInput, filterForward, filterOutputPostDNAT   *nftables.Chain
	// pick holds, per family and endpoint map (pickMaps order), the
	// chain that picks one of a frontend's slots.
	pick [2][len(pickMaps)]*nftables.Chain
}

// pickChainName is the pick chain of endpoint map m in family f:
// pick-endpoints-v4 for endpoints-v4.
func pickChainName(f int, m setID) string {
	return "pick-" + setBaseNames[m] + famSuffix[f]
}

// setBaseNames are the names of the endpoint maps, without family.
var setBaseNames = map[setID]string{
	setEndpoints:         "endpoints",
	setLocalEndpoints:    "local-endpoints",
	setNodePortEndpoints: "nodeport-endpoints",
	setNodePortLocalEps:  "nodeport-local-endpoints",
}

func newChains(t *nftables.Table) chains {
	prio := func(p int32) *nftables.ChainPriority { return nftables.ChainPriorityRef(nftables.ChainPriority(p)) }
	accept := nftables.ChainPolicyAccept
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, p int32) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio(p), Policy: &accept}
	}
	c := chains{
		natPrerouting:  base("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, -100),
		natOutput:      base("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, -100),
		services:       &nftables.Chain{Name: "services", Table: t},
		natPostrouting: base("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, 100),
		// Source ranges are checked before DNAT.
		filterPrerouting: base("filter-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, -110),
		filterOutput:     base("filter-output", nftables.ChainTypeFilter, nftables.ChainHookOutput, -110),
		// Rejects are decided after DNAT: what is still addressed to a
		// frontend matched no endpoint.
		filterInput:          base("filter-input", nftables.ChainTypeFilter, nftables.ChainHookInput, -110),
		filterForward:        base("filter-forward", nftables.ChainTypeFilter, nftables.ChainHookForward, -110),
		filterOutputPostDNAT: base("filter-output-post-dnat", nftables.ChainTypeFilter, nftables.ChainHookOutput, -90),
	}
	for f := v4; f <= v6; f++ {
		for i, m := range pickMaps {
			c.pick[f][i] = &nftables.Chain{Name: pickChainName(f, m), Table: t}
		}
	}
	return c
}

func (c chains) all() []*nftables.Chain {
	out := []*nftables.Chain{c.natPrerouting, c.natOutput, c.services, c.natPostrouting,
		c.filterPrerouting, c.filterOutput, c.filterInput, c.filterForward, c.filterOutputPostDNAT}
	for f := range c.pick {
		out = append(out, c.pick[f][:]...)
	}
	return out
}

// pickChain returns the pick chain of endpoint map m in family f.
func (c chains) pickChain(f int, m setID) *nftables.Chain {
	for i, pm := range pickMaps {
		if pm == m {
			return c.pick[f][i]
		}
	}
	panic("nft: no pick chain for set " + setBaseNames[m])
}

// rule is a rule with its comment.
type rule struct {
	chain   *nftables.Chain
	comment string
	exprs   []expr.Any
}

var nfproto = [2]byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6}

// addrLen and the offsets describe where the addresses sit in each
// family's network header.
var (
	addrLen   = [2]uint32{4, 16}
	saddrOffs = [2]uint32{12, 8}
	daddrOffs = [2]uint32{16, 24}
	loopback  = [2]prefixBytes{
		{addr: []byte{127, 0, 0, 0}, mask: []byte{255, 0, 0, 0}},
		{addr: append(make([]byte, 15), 1), mask: []byte{255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255}},
	}
)

func regsFor(n uint32) uint32 { return (n + 3) / 4 }

var zero4 = []byte{0, 0, 0, 0}

// exprs is a rule under construction.
type exprs []expr.Any

func (e exprs) add(x ...expr.Any) exprs { return append(e, x...) }

func matchFamily(f int) exprs {
	return exprs{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: scratch},
		&expr.Cmp{Op: expr.CmpOpEq, Register: scratch, Data: []byte{nfproto[f]}},
	}
}

func loadAddr(f int, offs [2]uint32, reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offs[f], Len: addrLen[f]}
}

// loadFrontend loads daddr . l4proto . th dport from reg0 on and returns
// the register after them.
func loadFrontend(f int) (exprs, uint32) {
	a := regsFor(addrLen[f])
	return exprs{
		loadAddr(f, daddrOffs, reg0),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg0 + a},
		&expr.Payload{DestRegister: reg0 + a + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}, reg0 + a + 2
}

// loadNodePort loads l4proto . th dport from reg0 on.
func loadNodePort() (exprs, uint32) {
	return exprs{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg0},
		&expr.Payload{DestRegister: reg0 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}, reg0 + 2
}

type prefixBytes struct{ addr, mask []byte }

// inPrefix matches (or, with neq, excludes) an address in a prefix.
func inPrefix(f int, offs [2]uint32, p prefixBytes, neq bool) exprs {
	op := expr.CmpOpEq
	if neq {
		op = expr.CmpOpNeq
	}
	return exprs{
		loadAddr(f, offs, scratch),
		&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: addrLen[f], Mask: p.mask, Xor: make([]byte, addrLen[f])},
		&expr.Cmp{Op: op, Register: scratch, Data: p.addr},
	}
}

// fibLocal matches packets whose source (or destination) address is, or
// with neq is not, an address of this node.
func fibLocal(saddr, neq bool) exprs {
	op := expr.CmpOpEq
	if neq {
		op = expr.CmpOpNeq
	}
	return exprs{
		&expr.Fib{Register: scratch, ResultADDRTYPE: true, FlagSADDR: saddr, FlagDADDR: !saddr},
		&expr.Cmp{Op: op, Register: scratch, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

func ctStateNew() exprs {
	return exprs{
		&expr.Ct{Key: expr.CtKeySTATE, Register: scratch},
		&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: scratch, Data: zero4},
	}
}

// ctStatusDNAT is IPS_DST_NAT.
const ctStatusDNAT = 0x20

var rejectExpr = &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}

func (d *Dataplane) lookup(f int, s setID, sreg uint32, invert bool) *expr.Lookup {
	set := d.sets[sid(f, s)]
	return &expr.Lookup{SourceRegister: sreg, SetName: set.Name, SetID: set.ID, Invert: invert}
}

// slot appends slot number k to a key ending at next. nft accepts no
// constant inside a concatenation, so it is written as a numgen whose
// only value is k: "numgen random mod 1 offset k", which nft prints.
func slot(next, k uint32) *expr.Numgen {
	return &expr.Numgen{Register: next, Modulus: 1, Offset: k, Type: unix.NFT_NG_RANDOM}
}

// toPick jumps to the pick chain of endpoint map m when the key in reg0
// (ending at next) has endpoints there, that is, a slot 0.
func (d *Dataplane) toPick(c chains, f int, m setID, next uint32) exprs {
	set := d.sets[sid(f, m)]
	return exprs{
		slot(next, 0),
		&expr.Lookup{SourceRegister: reg0, SetName: set.Name, SetID: set.ID},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: c.pickChain(f, m).Name},
	}
}

// pickRules are the rules of endpoint map m's pick chain in family f. A
// frontend has slots 0 to n-1; rule n matches when slot n is missing
// (the first that matches ends the chain) and DNATs to slot "numgen
// random mod n". So a new connection to a frontend with n endpoints
// costs n lookups, and no rule or chain is per service.
func (d *Dataplane) pickRules(c chains, f int, m setID) []rule {
	ch := c.pickChain(f, m)
	set := d.sets[sid(f, m)]
	key, next := loadFrontend(f)
	if isNodePortMap(m) {
		key, next = loadNodePort()
	}
	var rs []rule
	for n := uint32(1); n <= buckets; n++ {
		e := matchFamily(f).add(key...)
		comment := fmt.Sprintf("%s frontends with %d endpoint slots: DNAT to one at random", famSuffix[f][1:], n)
		if n < buckets {
			e = e.add(slot(next, n), &expr.Lookup{SourceRegister: reg0, SetName: set.Name, SetID: set.ID, Invert: true})
		} else {
			comment = fmt.Sprintf("%s frontends with %d endpoint slots (the most): DNAT to one at random", famSuffix[f][1:], n)
		}
		rs = append(rs, rule{ch, comment, e.add(
			&expr.Numgen{Register: next, Modulus: n, Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: reg0, DestRegister: reg0, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(nfproto[f]), RegAddrMin: reg0, RegProtoMin: reg0 + regsFor(addrLen[f])},
		)})
	}
	return rs
}

func (d *Dataplane) markMasq() exprs {
	m := d.cfg.MasqueradeMark
	return exprs{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: scratch},
		&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^m), Xor: binaryutil.NativeEndian.PutUint32(m)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: scratch},
	}
}

// fromOutside matches sources that are neither local pods nor the node.
func (d *Dataplane) fromOutside(f int) exprs {
	var e exprs
	for _, p := range d.podPrefixes(f) {
		e = e.add(inPrefix(f, saddrOffs, p, true)...)
	}
	return e.add(fibLocal(true, true)...)
}

// nodePortAddrs returns one match per place NodePorts listen in family f:
// every local non-loopback address, or each NodePortAddrs prefix.
func (d *Dataplane) nodePortAddrs(f int) []exprs {
	if len(d.cfg.Node.NodePortAddrs) == 0 {
		return []exprs{append(fibLocal(false, false), inPrefix(f, daddrOffs, loopback[f], true)...)}
	}
	var out []exprs
	for _, p := range d.nodePortPrefixes(f) {
		out = append(out, append(fibLocal(false, false), inPrefix(f, daddrOffs, p, false)...))
	}
	return out
}

func (d *Dataplane) rules(c chains) []rule {
	masq := &expr.Masq{FullyRandom: true}
	mark := binaryutil.NativeEndian.PutUint32(d.cfg.MasqueradeMark)
	jump := func(ch *nftables.Chain) []expr.Any {
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}
	}
	rs := []rule{
		{c.natPrerouting, "service DNAT for traffic arriving at the node", jump(c.services)},
		{c.natOutput, "service DNAT for traffic from the node itself", jump(c.services)},
		{c.natPostrouting, "masquerade connections marked for it", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: scratch},
			&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: 4, Mask: mark, Xor: zero4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: scratch, Data: zero4},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: scratch},
			&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^d.cfg.MasqueradeMark), Xor: zero4},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: scratch},
			masq,
		}},
	}
	add := func(ch *nftables.Chain, comment string, e exprs) { rs = append(rs, rule{ch, comment, e}) }
	for f := v4; f <= v6; f++ {
		fam := famSuffix[f][1:]
		front, next := loadFrontend(f)
		np, npNext := loadNodePort()

		// Masquerade marks (the rules go on).
		var notPods exprs
		if !d.cfg.Node.MasqueradeAll {
			for _, p := range d.podPrefixes(f) {
				notPods = notPods.add(inPrefix(f, saddrOffs, p, true)...)
			}
		}
		what := "not from a local pod"
		if d.cfg.Node.MasqueradeAll {
			what = "from anywhere (masqueradeAll)"
		}
		add(c.services, "mark "+fam+" cluster IP traffic "+what+" for masquerading",
			matchFamily(f).add(notPods...).add(front...).add(d.lookup(f, setServiceIPs, reg0, false)).add(d.markMasq()...))
		add(c.services, "mark "+fam+" traffic to external IPs with externalTrafficPolicy Cluster for masquerading",
			matchFamily(f).add(front...).add(d.lookup(f, setExternalCluster, reg0, false)).add(d.markMasq()...))
		add(c.services, "mark "+fam+" traffic from the node to external IPs with externalTrafficPolicy Local for masquerading",
			matchFamily(f).add(fibLocal(true, false)...).add(front...).add(d.lookup(f, setExternalLocal, reg0, false)).add(d.markMasq()...))
		for _, where := range d.nodePortAddrs(f) {
			add(c.services, "mark "+fam+" NodePort traffic with externalTrafficPolicy Cluster for masquerading",
				matchFamily(f).add(where...).add(np...).add(d.lookup(f, setNodePortsCluster, reg0, false)).add(d.markMasq()...))
			add(c.services, "mark "+fam+" NodePort traffic from the node with externalTrafficPolicy Local for masquerading",
				matchFamily(f).add(where...).add(fibLocal(true, false)...).add(np...).add(d.lookup(f, setNodePortsLocal, reg0, false)).add(d.markMasq()...))
		}

		// ClientIP affinity: services with it jump to the chain for their
		// timeout, which DNATs remembered and new clients alike.
		add(c.services, "send "+fam+" traffic to services with ClientIP affinity to the chain for their timeout",
			matchFamily(f).add(front...).add(d.vmapJump(f, setAffinityFrontends, reg0)))
		for _, where := range d.nodePortAddrs(f) {
			add(c.services, "send "+fam+" NodePort traffic to services with ClientIP affinity to the chain for their timeout",
				matchFamily(f).add(where...).add(np...).add(d.vmapJump(f, setAffinityNodePorts, reg0)))
		}

		// DNAT (the first that matches ends the chain).
		outsideLocal := matchFamily(f).add(d.fromOutside(f)...).add(front...).add(d.lookup(f, setExternalLocal, reg0, false))
		add(c.services, "DNAT "+fam+" outside traffic to external IPs with externalTrafficPolicy Local to a local endpoint",
			outsideLocal.add(d.toPick(c, f, setLocalEndpoints, next)...))
		add(c.services, "drop "+fam+" outside traffic to external IPs with externalTrafficPolicy Local when no endpoint is local",
			slicesClone(outsideLocal).add(&expr.Verdict{Kind: expr.VerdictDrop}))
		add(c.services, "DNAT "+fam+" service traffic to a random endpoint",
			matchFamily(f).add(front...).add(d.toPick(c, f, setEndpoints, next)...))
		for _, where := range d.nodePortAddrs(f) {
			npLocal := matchFamily(f).add(where...).add(d.fromOutside(f)...).add(np...).add(d.lookup(f, setNodePortsLocal, reg0, false))
			add(c.services, "DNAT "+fam+" outside NodePort traffic with externalTrafficPolicy Local to a local endpoint",
				npLocal.add(d.toPick(c, f, setNodePortLocalEps, npNext)...))
			add(c.services, "drop "+fam+" outside NodePort traffic with externalTrafficPolicy Local when no endpoint is local",
				slicesClone(npLocal).add(&expr.Verdict{Kind: expr.VerdictDrop}))
			add(c.services, "DNAT "+fam+" NodePort traffic to a random endpoint",
				matchFamily(f).add(where...).add(np...).add(d.toPick(c, f, setNodePortEndpoints, npNext)...))
		}
		for _, m := range pickMaps {
			rs = append(rs, d.pickRules(c, f, m)...)
		}

		// Hairpin: an endpoint reaching itself through a service.
		add(c.natPostrouting, "masquerade "+fam+" hairpin connections (an endpoint reaching itself)", matchFamily(f).add(
			&expr.Ct{Key: expr.CtKeySTATUS, Register: scratch},
			&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT), Xor: zero4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: scratch, Data: zero4},
			loadAddr(f, saddrOffs, reg0),
			loadAddr(f, daddrOffs, reg0+regsFor(addrLen[f])),
			d.lookup(f, setHairpin, reg0, false),
			masq,
		))

		// Source ranges, before DNAT.
		saddrReg := next // after daddr . proto . port
		for _, ch := range []*nftables.Chain{c.filterPrerouting, c.filterOutput} {
			add(ch, "drop "+fam+" new connections to load-balancer IPs from outside their loadBalancerSourceRanges",
				matchFamily(f).add(ctStateNew()...).add(front...).add(d.lookup(f, setFirewall, reg0, false)).add(
					loadAddr(f, saddrOffs, saddrReg),
					d.lookup(f, setFirewallAllow, reg0, true),
					&expr.Verdict{Kind: expr.VerdictDrop}))
		}

		// After DNAT: what is still addressed to a frontend found no
		// endpoint.
		for _, ch := range []*nftables.Chain{c.filterForward, c.filterOutputPostDNAT, c.filterInput} {
			add(ch, "drop "+fam+" new connections to cluster IPs with internalTrafficPolicy Local and no local endpoint",
				matchFamily(f).add(ctStateNew()...).add(front...).add(d.lookup(f, setNoLocalEndpoints, reg0, false), &expr.Verdict{Kind: expr.VerdictDrop}))
			add(ch, "reject "+fam+" new connections to services without endpoints",
				matchFamily(f).add(ctStateNew()...).add(front...).add(d.lookup(f, setNoEndpoints, reg0, false), rejectExpr))
			add(ch, "reject "+fam+" new connections to cluster IPs on ports no service defines",
				matchFamily(f).add(ctStateNew()...).add(loadAddr(f, daddrOffs, reg0), d.lookup(f, setClusterIPs, reg0, false), rejectExpr))
		}
		for _, ch := range []*nftables.Chain{c.filterInput, c.filterOutputPostDNAT} {
			for _, where := range d.nodePortAddrs(f) {
				add(ch, "reject "+fam+" new connections to NodePorts of services without endpoints",
					matchFamily(f).add(ctStateNew()...).add(where...).add(np...).add(d.lookup(f, setNoEndpointNodePorts, reg0, false), rejectExpr))
			}
		}
	}
	return rs
}

func slicesClone(e exprs) exprs { return append(exprs(nil), e...) }

func maskBytes(bits, n int) []byte {
	mask := make([]byte, n)
	for i := range mask {
		switch {
		case bits >= 8:
			mask[i] = 0xff
			bits -= 8
		case bits > 0:
			mask[i] = byte(0xff << (8 - bits))
			bits = 0
		}
	}
	return mask
}

func (d *Dataplane) podPrefixes(f int) []prefixBytes {
	var out []prefixBytes
	for _, p := range d.podCIDRs(f) {
		out = append(out, prefixBytes{addr: p.Addr().AsSlice(), mask: maskBytes(p.Bits(), int(addrLen[f]))})
	}
	return out
}

func (d *Dataplane) nodePortPrefixes(f int) []prefixBytes {
	var out []prefixBytes
	for _, p := range d.cfg.Node.NodePortAddrs {
		if famOf(p.Addr()) == f {
			p = p.Masked()
			out = append(out, prefixBytes{addr: p.Addr().AsSlice(), mask: maskBytes(p.Bits(), int(addrLen[f]))})
		}
	}
	return out
}
