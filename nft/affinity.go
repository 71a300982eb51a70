package nft

import (
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ClientIP affinity.
//
// A client of a service with ClientIP affinity keeps reaching the same
// endpoint until it has been idle for the service's timeout. svcplane
// remembers the client's bucket, not its endpoint: the frontends of such
// a service always have 64 slots (buckets) in their endpoint map, shared
// by the endpoints; a dynamic set per timeout and family holds (client .
// frontend . bucket) with that timeout, and the client is DNATed through
// the frontend's endpoint map. So when an endpoint goes, its buckets (and
// the clients remembered in them) move to the remaining endpoints and
// stay there; nothing needs deleting.
//
// Services with affinity jump, through the affinity-frontends and
// affinity-nodeports verdict maps, to the chain for their timeout,
// affinity-<T>s (and affinity-<T>s-nodeports). There, for each traffic path
// (outside clients under externalTrafficPolicy Local, everyone else), 64
// rules look the client up with each bucket number, refresh its entry and
// DNAT; a last rule places a new client in the bucket a hash of its
// address and source port picks, remembers it, and DNATs. Every statement
// is one the nft tool (1.0.6 and later) can print: the bucket number is
// written as "numgen random mod 1 offset K" because nft accepts no
// constant inside a concatenation.
//
// Each distinct timeout costs 2 sets and 2 chains of 260 rules; a service
// with affinity costs one verdict-map element per frontend.

// affinity names the objects of one timeout.
type affinity struct {
	seconds int64
	sets    [2]*nftables.Set
	chain   *nftables.Chain // cluster IPs, external and LB IPs
	npChain *nftables.Chain // NodePorts
}

func (d *Dataplane) affinityObjects(seconds int64) affinity {
	a := affinity{
		seconds: seconds,
		chain:   &nftables.Chain{Name: fmt.Sprintf("affinity-%ds", seconds), Table: d.table},
		npChain: &nftables.Chain{Name: fmt.Sprintf("affinity-%ds-nodeports", seconds), Table: d.table},
	}
	addr := [2]nftables.SetDatatype{nftables.TypeIPAddr, nftables.TypeIP6Addr}
	for f := v4; f <= v6; f++ {
		a.sets[f] = &nftables.Set{
			Table: d.table, Name: fmt.Sprintf("affinity-%ds%s", seconds, famSuffix[f]),
			KeyType:       nftables.MustConcatSetType(addr[f], addr[f], nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
			Concatenation: true, Dynamic: true, HasTimeout: true,
			Timeout: time.Duration(seconds) * time.Second,
			Size:    affinitySize,
			Comment: fmt.Sprintf("ClientIP affinity, %ds: client . frontend . bucket its connections go to", seconds),
		}
	}
	return a
}

// affinitySize bounds each affinity set: one entry per client and
// frontend seen within the timeout.
const affinitySize = 1 << 20

// hashIn holds the input of the new-client hash, clear of the key's
// registers.
const hashIn = unix.NFT_REG32_11

// affinityRules returns the rules of a timeout's two chains.
func (d *Dataplane) affinityRules(a affinity) []rule {
	var rs []rule
	for f := v4; f <= v6; f++ {
		fam := famSuffix[f][1:]
		front, _ := loadFrontend(f)
		np, _ := loadNodePort()
		type path struct {
			chain *nftables.Chain
			guard exprs
			m     setID
			what  string
		}
		paths := []path{
			{a.chain, matchFamily(f).add(d.fromOutside(f)...).add(front...).add(d.lookup(f, setExternalLocal, reg0, false)), setLocalEndpoints, "outside client of an externalTrafficPolicy Local frontend, local endpoints"},
			{a.chain, matchFamily(f), setEndpoints, "client"},
		}
		for _, where := range d.nodePortAddrs(f) {
			paths = append(paths,
				path{a.npChain, matchFamily(f).add(where...).add(d.fromOutside(f)...).add(np...).add(d.lookup(f, setNodePortsLocal, reg0, false)), setNodePortLocalEps, "outside NodePort client, externalTrafficPolicy Local, local endpoints"},
				path{a.npChain, matchFamily(f).add(where...), setNodePortEndpoints, "NodePort client"})
		}
		for _, p := range paths {
			for k := uint32(0); k < buckets; k++ {
				bucket := &expr.Numgen{Type: unix.NFT_NG_RANDOM, Modulus: 1, Offset: k}
				rs = append(rs, rule{p.chain, fmt.Sprintf("%s %s remembered in bucket %d", fam, p.what, k),
					slicesClone(p.guard).add(d.affinityKey(f, a, bucket, p.m, false)...)})
			}
			rs = append(rs, rule{p.chain, fmt.Sprintf("%s new %s: remember the bucket a hash of its address and port picks", fam, p.what),
				slicesClone(p.guard).add(d.affinityKey(f, a, nil, p.m, true)...)})
		}
	}
	return rs
}

// affinityKey loads client . frontend . bucket, then either checks it is
// remembered (bucket given) or picks the bucket from a hash of the
// client's address and source port (isNew), remembers or refreshes it, and
// DNATs through the bucket map m.
func (d *Dataplane) affinityKey(f int, a affinity, bucket *expr.Numgen, m setID, isNew bool) exprs {
	n := regsFor(addrLen[f])
	b := reg0 + 2*n + 2 // after saddr . daddr . proto . dport
	var e exprs
	if isNew {
		e = e.add(
			loadAddr(f, saddrOffs, hashIn),
			&expr.Payload{DestRegister: hashIn + n, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
			&expr.Hash{SourceRegister: hashIn, DestRegister: b, Length: 4*n + 4, Modulus: buckets, Seed: hashSeed, Type: expr.HashTypeJenkins},
		)
	} else {
		bucket.Register = b
		e = e.add(bucket)
	}
	e = e.add(
		loadAddr(f, saddrOffs, reg0),
		loadAddr(f, daddrOffs, reg0+n),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg0 + 2*n},
		&expr.Payload{DestRegister: reg0 + 2*n + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	)
	set := a.sets[f]
	if !isNew {
		e = e.add(&expr.Lookup{SourceRegister: reg0, SetName: set.Name, SetID: set.ID})
	}
	e = e.add(&expr.Dynset{SrcRegKey: reg0, SetName: set.Name, SetID: set.ID, Operation: unix.NFT_DYNSET_OP_UPDATE})
	// The bucket map's key is the tail of ours: daddr . proto . port .
	// bucket, or for NodePorts proto . port . bucket.
	key := reg0 + n
	if m == setNodePortEndpoints || m == setNodePortLocalEps {
		key = reg0 + 2*n
	}
	ms := d.sets[sid(f, m)]
	return e.add(
		&expr.Lookup{SourceRegister: key, DestRegister: reg0, IsDestRegSet: true, SetName: ms.Name, SetID: ms.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(nfproto[f]), RegAddrMin: reg0, RegProtoMin: reg0 + n},
	)
}

// hashSeed seeds the hash that places new clients.
const hashSeed = 0x5c9a1e

func (d *Dataplane) vmapJump(f int, s setID, sreg uint32) *expr.Lookup {
	set := d.sets[sid(f, s)]
	return &expr.Lookup{SourceRegister: sreg, DestRegister: 0, IsDestRegSet: true, SetName: set.Name, SetID: set.ID}
}
