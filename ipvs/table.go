package ipvs

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
)

// The nftables table does what IPVS does not: masquerading and rejecting
// undefined ports. Sets per family, indexed by setID.
type setID uint8

const (
	setVIPs             setID = iota // service IPs on the device
	setFrontends                     // address . protocol . port of every service port on them
	setClusterFronts                 // cluster-IP frontends: masquerade sources outside the pod CIDRs
	setExternalCluster               // external/LB frontends, Cluster policy: always masquerade
	setNodePortsCluster              // NodePorts (protocol . port), Cluster policy
	setHairpin                       // endpoint . endpoint
	setFirewall                      // LB frontends with source ranges
	setFirewallAllow                 // LB frontend . allowed source range
	setNodePorts                     // every NodePort (protocol . port): how a restart knows its virtual servers on node addresses
	setsPerFamily
)

func sid(f int, s setID) setID { return setID(f)*setsPerFamily + s }

const (
	v4 = 0
	v6 = 1
)

var famSuffix = [2]string{"-v4", "-v6"}

func famOf(a netip.Addr) int {
	if a.Is4() {
		return v4
	}
	return v6
}

func newSets(t *nftables.Table) []*nftables.Set {
	addr := [2]nftables.SetDatatype{nftables.TypeIPAddr, nftables.TypeIP6Addr}
	var out []*nftables.Set
	for f := v4; f <= v6; f++ {
		front := nftables.MustConcatSetType(addr[f], nftables.TypeInetProto, nftables.TypeInetService)
		set := func(name string, key nftables.SetDatatype, comment string) *nftables.Set {
			return &nftables.Set{Table: t, Name: name + famSuffix[f], KeyType: key, Concatenation: len(key.Name) > len(addr[f].Name), Comment: comment}
		}
		s := make([]*nftables.Set, setsPerFamily)
		s[setVIPs] = set("service-ips", addr[f], "service IPs on the IPVS device")
		s[setFrontends] = set("frontends", front, "service ports on the service IPs; other ports of those IPs are rejected")
		s[setClusterFronts] = set("cluster-frontends", front, "cluster IP frontends: traffic from outside the pod CIDRs is masqueraded")
		s[setExternalCluster] = set("external-cluster", front, "external and load-balancer IP frontends, externalTrafficPolicy Cluster: masqueraded")
		s[setNodePortsCluster] = set("nodeports-cluster", nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService), "NodePorts, externalTrafficPolicy Cluster: masqueraded")
		s[setHairpin] = set("hairpin", nftables.MustConcatSetType(addr[f], addr[f]), "endpoint . endpoint: an endpoint reaching itself through a service is masqueraded")
		s[setFirewall] = set("firewall", front, "load-balancer IP frontends with loadBalancerSourceRanges")
		allow := set("firewall-allow", nftables.MustConcatSetType(addr[f], nftables.TypeInetProto, nftables.TypeInetService, addr[f]), "load-balancer IP frontend . allowed source range")
		allow.Interval, allow.Concatenation = true, true
		s[setFirewallAllow] = allow
		s[setNodePorts] = set("nodeports", nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService), "every NodePort, any policy: the virtual servers on node addresses at these ports are svcplane's")
		out = append(out, s...)
	}
	return out
}

// elemKey is one element of one of our sets.
type elemKey struct {
	set setID
	key string
}

// frontendKey is address . protocol . port, each padded to 4 bytes.
func frontendKey(a netip.Addr, proto dataplane.Protocol, port uint16) string {
	var b [24]byte
	return string(appendNodePortKey(appendAddr(b[:0], a), proto, port))
}

// hairpinKey is endpoint . endpoint.
func hairpinKey(a netip.Addr) string {
	var b [32]byte
	return string(appendAddr(appendAddr(b[:0], a), a))
}

// appendAddr appends a's 4 or 16 bytes.
func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		a4 := a.As4()
		return append(b, a4[:]...)
	}
	a16 := a.As16()
	return append(b, a16[:]...)
}

func nodePortKey(proto dataplane.Protocol, port uint16) []byte {
	return appendNodePortKey(make([]byte, 0, 8), proto, port)
}

func appendNodePortKey(b []byte, proto dataplane.Protocol, port uint16) []byte {
	b = append(b, byte(proto), 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, port)
	return append(b, 0, 0)
}

const (
	reg0    = unix.NFT_REG32_00
	scratch = unix.NFT_REG32_08
)

var (
	nfproto   = [2]byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6}
	addrLen   = [2]uint32{4, 16}
	saddrOffs = [2]uint32{12, 8}
	daddrOffs = [2]uint32{16, 24}
	zero4     = []byte{0, 0, 0, 0}
)

type exprs []expr.Any

func (e exprs) add(x ...expr.Any) exprs { return append(e, x...) }

func family(f int) exprs {
	return exprs{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: scratch},
		&expr.Cmp{Op: expr.CmpOpEq, Register: scratch, Data: []byte{nfproto[f]}},
	}
}

func loadAddr(f int, offs [2]uint32, reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offs[f], Len: addrLen[f]}
}

func frontend(f int) exprs {
	a := (addrLen[f] + 3) / 4
	return exprs{
		loadAddr(f, daddrOffs, reg0),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg0 + a},
		&expr.Payload{DestRegister: reg0 + a + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

func ctNew() exprs {
	return exprs{
		&expr.Ct{Key: expr.CtKeySTATE, Register: scratch},
		&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: scratch, Data: zero4},
	}
}

func (d *Dataplane) in(f int, s setID, reg uint32, invert bool) *expr.Lookup {
	set := d.sets[sid(f, s)]
	return &expr.Lookup{SourceRegister: reg, SetName: set.Name, SetID: set.ID, Invert: invert}
}

func (d *Dataplane) mark() exprs {
	m := d.cfg.MasqueradeMark
	return exprs{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: scratch},
		&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^m), Xor: binaryutil.NativeEndian.PutUint32(m)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: scratch},
	}
}

func (d *Dataplane) notFromPods(f int) exprs {
	var e exprs
	if d.cfg.Node.MasqueradeAll {
		return e
	}
	for _, p := range d.cfg.Node.LocalPodCIDRs {
		if famOf(p.Addr()) != f {
			continue
		}
		p = p.Masked()
		mask := make([]byte, addrLen[f])
		for i, bits := 0, p.Bits(); i < len(mask); i, bits = i+1, bits-8 {
			switch {
			case bits >= 8:
				mask[i] = 0xff
			case bits > 0:
				mask[i] = byte(0xff << (8 - bits))
			}
		}
		e = e.add(loadAddr(f, saddrOffs, scratch),
			&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: addrLen[f], Mask: mask, Xor: make([]byte, addrLen[f])},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: scratch, Data: p.Addr().AsSlice()})
	}
	return e
}

// ruleDef is a rule of the table.
type ruleDef struct {
	chain   *nftables.Chain
	comment string
	exprs   exprs
}

// tableShape returns the table's chains and rules.
func (d *Dataplane) tableShape() ([]*nftables.Chain, []ruleDef) {
	t := d.table
	accept := nftables.ChainPolicyAccept
	prio := func(p int32) *nftables.ChainPriority { return nftables.ChainPriorityRef(nftables.ChainPriority(p)) }
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, p int32) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio(p), Policy: &accept}
	}
	natPre := base("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, -100)
	natOut := base("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, -100)
	natPost := base("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, 100)
	// IPVS takes packets for its services at LOCAL_IN (priority 98) and
	// LOCAL_OUT (-99); these chains run first.
	filterPre := base("filter-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, -110)
	input := base("filter-input", nftables.ChainTypeFilter, nftables.ChainHookInput, -110)
	output := base("filter-output", nftables.ChainTypeFilter, nftables.ChainHookOutput, -110)
	chains := []*nftables.Chain{natPre, natOut, natPost, filterPre, input, output}

	var rules []ruleDef
	rule := func(ch *nftables.Chain, comment string, e exprs) { rules = append(rules, ruleDef{ch, comment, e}) }
	mark := binaryutil.NativeEndian.PutUint32(d.cfg.MasqueradeMark)
	masq := &expr.Masq{FullyRandom: true}
	rule(natPost, "masquerade connections marked for it", exprs{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: scratch},
		&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: 4, Mask: mark, Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: scratch, Data: zero4},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: scratch},
		&expr.Bitwise{SourceRegister: scratch, DestRegister: scratch, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^d.cfg.MasqueradeMark), Xor: zero4},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: scratch},
		masq,
	})
	for f := v4; f <= v6; f++ {
		fam := famSuffix[f][1:]
		a := (addrLen[f] + 3) / 4
		for _, ch := range []*nftables.Chain{natPre, natOut} {
			rule(ch, "mark "+fam+" cluster IP traffic not from a local pod for masquerading",
				family(f).add(d.notFromPods(f)...).add(frontend(f)...).add(d.in(f, setClusterFronts, reg0, false)).add(d.mark()...))
			rule(ch, "mark "+fam+" traffic to external IPs with externalTrafficPolicy Cluster for masquerading",
				family(f).add(frontend(f)...).add(d.in(f, setExternalCluster, reg0, false)).add(d.mark()...))
			rule(ch, "mark "+fam+" NodePort traffic with externalTrafficPolicy Cluster for masquerading",
				family(f).add(
					&expr.Fib{Register: scratch, ResultADDRTYPE: true, FlagDADDR: true},
					&expr.Cmp{Op: expr.CmpOpEq, Register: scratch, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg0},
					&expr.Payload{DestRegister: reg0 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
					d.in(f, setNodePortsCluster, reg0, false)).add(d.mark()...))
		}
		rule(natPost, "masquerade "+fam+" hairpin connections (an endpoint reaching itself)", family(f).add(
			loadAddr(f, saddrOffs, reg0), loadAddr(f, daddrOffs, reg0+a), d.in(f, setHairpin, reg0, false), masq))
		for _, ch := range []*nftables.Chain{filterPre, output} {
			rule(ch, "drop "+fam+" new connections to load-balancer IPs from outside their loadBalancerSourceRanges",
				family(f).add(ctNew()...).add(frontend(f)...).add(d.in(f, setFirewall, reg0, false),
					loadAddr(f, saddrOffs, reg0+a+2), d.in(f, setFirewallAllow, reg0, true),
					&expr.Verdict{Kind: expr.VerdictDrop}))
		}
		for _, ch := range []*nftables.Chain{input, output} {
			rule(ch, "reject "+fam+" new connections to service IPs on ports no service defines",
				family(f).add(ctNew()...).add(loadAddr(f, daddrOffs, reg0), d.in(f, setVIPs, reg0, false)).add(frontend(f)...).add(
					d.in(f, setFrontends, reg0, true),
					&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}))
		}
	}
	return chains, rules
}

// fingerprintPrefix starts the comment of the table's first rule, which
// names the table's shape so that a later Dataplane can adopt it.
const fingerprintPrefix = "svcplane ruleset "

// fingerprint hashes the table's shape for this Dataplane's Config.
func (d *Dataplane) fingerprint() string {
	h := sha256.New()
	chains, rules := d.tableShape()
	for _, ch := range chains {
		fmt.Fprintf(h, "chain %s\n", ch.Name)
	}
	for _, s := range d.sets {
		fmt.Fprintf(h, "set %s %s %v\n", s.Name, s.KeyType.Name, s.Interval)
	}
	for _, r := range rules {
		j, _ := json.Marshal(r.exprs)
		fmt.Fprintf(h, "rule %s %s %s\n", r.chain.Name, r.comment, j)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// queueTable queues the whole table afresh in the current batch.
func (d *Dataplane) queueTable() {
	d.nft.AddTable(d.table)
	d.nft.DelTable(d.table)
	d.nft.AddTable(d.table)
	for i, s := range d.sets {
		s.ID = uint32(setIDBase + i)
	}
	chains, rules := d.tableShape()
	for _, ch := range chains {
		d.nft.AddChain(ch)
	}
	for _, s := range d.sets {
		d.nft.AddSet(s, nil)
	}
	for i, r := range rules {
		c := r.comment
		if i == 0 {
			c += " (" + fingerprintPrefix + d.fp + ")"
		}
		d.nft.AddRule(&nftables.Rule{Table: d.table, Chain: r.chain, Exprs: r.exprs, UserData: userdata.AppendString(nil, userdata.TypeComment, c)})
	}
}

// setIDBase keeps our batch-local set ids clear of google/nftables' own
// (unguarded, global) counter.
const setIDBase = 0x5c00
