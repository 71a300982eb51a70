package nft

import (
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

// setID indexes Dataplane.sets.
type setID uint8

const (
	setServiceIPs setID = iota // frontends
	setEndpoints               // frontend . bucket → endpoint
	setClusterIPs              // every cluster IP
	setHairpin                 // endpoint . endpoint
	setsPerFamily
)

func sid(f int, s setID) setID { return setID(f)*setsPerFamily + s }

// buckets is how many endpoint slots each service id has. Endpoints share
// them evenly, so weights come in steps of 1/buckets.
const buckets = 64

// Registers. A 32-bit register per field, so concatenations line up.
const (
	reg0 = unix.NFT_REG32_00
)

func newSets(t *nftables.Table) []*nftables.Set {
	addr := [2]nftables.SetDatatype{nftables.TypeIPAddr, nftables.TypeIP6Addr}
	var out []*nftables.Set
	for f := v4; f <= v6; f++ {
		out = append(out,
			&nftables.Set{
				Table: t, Name: "service-ips" + famSuffix[f], Concatenation: true,
				KeyType: nftables.MustConcatSetType(addr[f], nftables.TypeInetProto, nftables.TypeInetService),
				Comment: "service frontends (address . protocol . port); comments name the service port",
			},
			&nftables.Set{
				Table: t, Name: "endpoints" + famSuffix[f], IsMap: true, Concatenation: true,
				KeyType:  nftables.MustConcatSetType(addr[f], nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
				DataType: nftables.MustConcatSetType(addr[f], nftables.TypeInetService),
				Comment:  "frontend . bucket (0-63) to endpoint address . port",
			},
			&nftables.Set{
				Table: t, Name: "cluster-ips" + famSuffix[f], KeyType: addr[f],
				Comment: "cluster IPs: a new connection still addressed to one after DNAT is rejected",
			},
			&nftables.Set{
				Table: t, Name: "hairpin" + famSuffix[f], Concatenation: true,
				KeyType: nftables.MustConcatSetType(addr[f], addr[f]),
				Comment: "endpoint . endpoint: an endpoint reaching itself through a service is masqueraded",
			},
		)
	}
	return out
}

// chains of the table. Base chains hook into netfilter; services is
// jumped to from both DNAT hooks.
type chains struct {
	natPrerouting, natOutput, services, natPostrouting, filterForward, filterOutput *nftables.Chain
}

func newChains(t *nftables.Table) chains {
	prio := func(p int32) *nftables.ChainPriority { return nftables.ChainPriorityRef(nftables.ChainPriority(p)) }
	accept := nftables.ChainPolicyAccept
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, p int32) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio(p), Policy: &accept}
	}
	return chains{
		natPrerouting:  base("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, -100),
		natOutput:      base("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, -100),
		services:       &nftables.Chain{Name: "services", Table: t},
		natPostrouting: base("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, 100),
		// Forwarded packets are seen after prerouting DNAT.
		filterForward: base("filter-forward", nftables.ChainTypeFilter, nftables.ChainHookForward, -110),
		// Local packets are seen after output DNAT (-100).
		filterOutput: base("filter-output-post-dnat", nftables.ChainTypeFilter, nftables.ChainHookOutput, -90),
	}
}

func (c chains) all() []*nftables.Chain {
	return []*nftables.Chain{c.natPrerouting, c.natOutput, c.services, c.natPostrouting, c.filterForward, c.filterOutput}
}

// rule is a rule with its comment.
type rule struct {
	chain   *nftables.Chain
	comment string
	exprs   []expr.Any
}

var nfproto = [2]byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6}

// addrLen and addrOffset describe where the addresses sit in each family's
// network header.
var (
	addrLen   = [2]uint32{4, 16}
	saddrOffs = [2]uint32{12, 8}
	daddrOffs = [2]uint32{16, 24}
)

func regsFor(n uint32) uint32 { return (n + 3) / 4 }

func matchFamily(f int) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg0},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg0, Data: []byte{nfproto[f]}},
	}
}

func loadAddr(f int, offs [2]uint32, reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offs[f], Len: addrLen[f]}
}

// loadFrontend loads daddr . l4proto . th dport into consecutive registers
// from reg0 and returns the register after them.
func loadFrontend(f int) ([]expr.Any, uint32) {
	r := uint32(reg0)
	a := regsFor(addrLen[f])
	return []expr.Any{
		loadAddr(f, daddrOffs, r),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: r + a},
		&expr.Payload{DestRegister: r + a + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}, r + a + 2
}

// notFromPods matches sources outside every prefix of the family.
func notFromPods(f int, pods []prefixBytes) []expr.Any {
	var out []expr.Any
	for _, p := range pods {
		out = append(out,
			loadAddr(f, saddrOffs, reg0),
			&expr.Bitwise{SourceRegister: reg0, DestRegister: reg0, Len: addrLen[f], Mask: p.mask, Xor: make([]byte, addrLen[f])},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg0, Data: p.addr},
		)
	}
	return out
}

type prefixBytes struct{ addr, mask []byte }

func (d *Dataplane) rules(c chains) []rule {
	mark := binaryutil.NativeEndian.PutUint32(d.cfg.MasqueradeMark)
	notMark := binaryutil.NativeEndian.PutUint32(^d.cfg.MasqueradeMark)
	zero4 := []byte{0, 0, 0, 0}
	masq := &expr.Masq{FullyRandom: true}

	rs := []rule{
		{c.natPrerouting, "service DNAT for traffic arriving at the node", []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: c.services.Name}}},
		{c.natOutput, "service DNAT for traffic from the node itself", []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: c.services.Name}}},
		{c.natPostrouting, "masquerade connections marked for it", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg0},
			&expr.Bitwise{SourceRegister: reg0, DestRegister: reg0, Len: 4, Mask: mark, Xor: zero4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg0, Data: zero4},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg0},
			&expr.Bitwise{SourceRegister: reg0, DestRegister: reg0, Len: 4, Mask: notMark, Xor: zero4},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg0},
			masq,
		}},
	}
	for f := v4; f <= v6; f++ {
		fam := famSuffix[f][1:]
		front, next := loadFrontend(f)
		// Mark for masquerading: service traffic not from a local pod.
		var masqMatch []expr.Any
		masqMatch = append(masqMatch, matchFamily(f)...)
		if !d.cfg.Node.MasqueradeAll {
			masqMatch = append(masqMatch, notFromPods(f, d.podPrefixes(f))...)
		}
		masqMatch = append(masqMatch, front...)
		masqMatch = append(masqMatch,
			&expr.Lookup{SourceRegister: reg0, SetName: d.sets[sid(f, setServiceIPs)].Name, SetID: d.sets[sid(f, setServiceIPs)].ID},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: next},
			&expr.Bitwise{SourceRegister: next, DestRegister: next, Len: 4, Mask: notMark, Xor: mark},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: next},
		)
		what := "from outside the local pod CIDRs"
		if d.cfg.Node.MasqueradeAll {
			what = "(masqueradeAll)"
		}
		rs = append(rs, rule{c.services, "mark " + fam + " service traffic " + what + " for masquerading", masqMatch})

		// DNAT: frontend . random bucket → endpoint.
		dnat := append(matchFamily(f), front...)
		dnat = append(dnat,
			&expr.Numgen{Register: next, Modulus: buckets, Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: reg0, DestRegister: reg0, IsDestRegSet: true, SetName: d.sets[sid(f, setEndpoints)].Name, SetID: d.sets[sid(f, setEndpoints)].ID},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(nfproto[f]), RegAddrMin: reg0, RegProtoMin: reg0 + regsFor(addrLen[f])},
		)
		rs = append(rs, rule{c.services, "DNAT " + fam + " service traffic to a random endpoint bucket", dnat})

		// Hairpin: an endpoint reaching itself through a service.
		hp := append(matchFamily(f),
			&expr.Ct{Key: expr.CtKeySTATUS, Register: reg0},
			&expr.Bitwise{SourceRegister: reg0, DestRegister: reg0, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT), Xor: zero4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg0, Data: zero4},
			loadAddr(f, saddrOffs, reg0),
			loadAddr(f, daddrOffs, reg0+regsFor(addrLen[f])),
			&expr.Lookup{SourceRegister: reg0, SetName: d.sets[sid(f, setHairpin)].Name, SetID: d.sets[sid(f, setHairpin)].ID},
			masq,
		)
		rs = append(rs, rule{c.natPostrouting, "masquerade " + fam + " hairpin connections (an endpoint reaching itself)", hp})

		// Reject new connections still addressed to a cluster IP after DNAT.
		for _, ch := range []*nftables.Chain{c.filterForward, c.filterOutput} {
			rej := append(matchFamily(f),
				&expr.Ct{Key: expr.CtKeySTATE, Register: reg0},
				&expr.Bitwise{SourceRegister: reg0, DestRegister: reg0, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: zero4},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg0, Data: zero4},
				loadAddr(f, daddrOffs, reg0),
				&expr.Lookup{SourceRegister: reg0, SetName: d.sets[sid(f, setClusterIPs)].Name, SetID: d.sets[sid(f, setClusterIPs)].ID},
				&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH},
			)
			rs = append(rs, rule{ch, "reject " + fam + " cluster IP traffic no service port matched (no endpoints, or an undefined port)", rej})
		}
	}
	return rs
}

// ctStatusDNAT is IPS_DST_NAT.
const ctStatusDNAT = 0x20

func (d *Dataplane) podPrefixes(f int) []prefixBytes {
	var out []prefixBytes
	for _, p := range d.podCIDRs(f) {
		bits := p.Bits()
		mask := make([]byte, addrLen[f])
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
		out = append(out, prefixBytes{addr: p.Addr().AsSlice(), mask: mask})
	}
	return out
}
