package nft

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/prefixes"
)

// Programmed is what a Dataplane's table holds, read back from the kernel
// by [Dataplane.Show]: the service ports it forwards, each with its
// frontends and their endpoints.
type Programmed struct {
	// Table is the name of the inet table that was read.
	Table string
	// Exists is false when the namespace has no such table; Ports is
	// then empty.
	Exists bool
	// Ports are the programmed service ports, sorted by name.
	Ports []ProgrammedPort
}

// ProgrammedPort is one service port as the table forwards it.
type ProgrammedPort struct {
	// Name is the port's namespace/name:port, as the element comments
	// carry it. Elements without a comment (which svcplane never writes)
	// are gathered under the name "".
	Name string
	// Frontends are where the port is reached, sorted: cluster IPs, then
	// external and load-balancer IPs, then NodePorts, each by address,
	// protocol and port.
	Frontends []Frontend
}

// FrontendKind says how a frontend is reached.
type FrontendKind uint8

// The kinds of frontend.
const (
	// ClusterIP is a cluster IP and port.
	ClusterIP FrontendKind = iota + 1
	// ExternalIP is an external or load-balancer IP and port; the table
	// does not tell the two apart, except that only load-balancer IPs
	// have source ranges.
	ExternalIP
	// NodePort is a NodePort, answered on the node's NodePort addresses.
	NodePort
)

// String returns "cluster IP", "external IP" or "NodePort".
func (k FrontendKind) String() string {
	switch k {
	case ClusterIP:
		return "cluster IP"
	case ExternalIP:
		return "external IP"
	case NodePort:
		return "NodePort"
	}
	return fmt.Sprintf("FrontendKind(%d)", uint8(k))
}

// Frontend is one address, protocol and port the table forwards.
type Frontend struct {
	Kind FrontendKind
	// Addr is the cluster, external or load-balancer IP. For a NodePort it
	// is the unspecified address of its family (0.0.0.0 or ::): the
	// NodePort answers on the node's NodePort addresses of that family.
	Addr     netip.Addr
	Protocol dataplane.Protocol
	Port     uint16
	// Local is set for external IPs and NodePorts under
	// externalTrafficPolicy Local. (A cluster IP under
	// internalTrafficPolicy Local looks like any other in the table: it
	// simply forwards to local endpoints only.)
	Local bool
	// Reject is set when the service has no usable endpoint anywhere: new
	// connections are rejected.
	Reject bool
	// Drop is set for a cluster IP whose service has endpoints, but none
	// usable here under internalTrafficPolicy Local: new connections are
	// dropped.
	Drop bool
	// Endpoints share the frontend's traffic; for a Local frontend, the
	// traffic from pods and from the node itself.
	Endpoints []Share
	// LocalEndpoints share the traffic of outside clients of a Local
	// frontend. Empty for a Local frontend without local endpoints: that
	// traffic is dropped.
	LocalEndpoints []Share
	// SourceRanges are the loadBalancerSourceRanges a load-balancer IP
	// admits; empty admits any source.
	SourceRanges []netip.Prefix
	// Affinity is the ClientIP affinity timeout; 0 means none.
	Affinity time.Duration
}

// String returns the frontend as address:port/protocol, e.g.
// "198.19.0.10:80/TCP" or "0.0.0.0:30123/TCP".
func (f Frontend) String() string {
	return netip.AddrPortFrom(f.Addr, f.Port).String() + "/" + f.Protocol.String()
}

// Share is one endpoint of a frontend and the part of the frontend's new
// connections it receives: Slots out of Of. A frontend has one slot per
// endpoint (up to 64), or 64 slots shared when it has ClientIP affinity.
type Share struct {
	Endpoint netip.AddrPort
	Slots    int // the frontend's slots that point at Endpoint
	Of       int // the frontend's slots
}

// Show reads the Dataplane's table from the kernel and returns what it
// forwards, per service port. It reads only, and works on a table written
// by another Dataplane (another process) with the same Config.Table. A
// missing table is not an error: the result has Exists false.
//
// The nft backend keeps no per-service packet counters, so Show reports
// none.
func (d *Dataplane) Show(ctx context.Context) (*Programmed, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.connected(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := &Programmed{Table: d.cfg.Table}
	if _, err := d.conn.ListTableOfFamily(d.cfg.Table, nftables.TableFamilyINet); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return out, nil
		}
		return nil, fmt.Errorf("nft: read table inet %s: %w", d.cfg.Table, err)
	}
	out.Exists = true
	sets, err := d.conn.GetSets(d.table)
	if err != nil {
		return nil, fmt.Errorf("nft: list sets of table inet %s: %w", d.cfg.Table, err)
	}
	r := &reader{d: d, fronts: make(map[frontID]*shownFront), present: make(map[string]bool, len(sets))}
	for _, s := range sets {
		r.present[s.Name] = true
	}
	for f := v4; f <= v6; f++ {
		if err := r.family(f); err != nil {
			return nil, fmt.Errorf("nft: read table inet %s: %w", d.cfg.Table, err)
		}
	}
	out.Ports = r.ports()
	return out, nil
}

// frontID identifies a frontend across the sets that mention it.
type frontID struct {
	nodePort bool
	addr     netip.Addr // for NodePorts: the family's unspecified address
	proto    uint8
	port     uint16
}

type shownFront struct {
	Frontend
	name           string
	eps, localEps  map[netip.AddrPort]int
	total, localTo int
}

type reader struct {
	d       *Dataplane
	fronts  map[frontID]*shownFront
	present map[string]bool // the sets the kernel's table has
}

// set returns the Dataplane's set called name in family f, or nil when
// the Dataplane or the kernel's table lacks it.
func (r *reader) set(name string, f int) *nftables.Set {
	full := name + famSuffix[f]
	if !r.present[full] {
		return nil
	}
	for _, s := range r.d.sets {
		if s.Name == full {
			return s
		}
	}
	return nil
}

// elements reads the elements of the set called name in family f, with
// their keys decoded. A set the table lacks has no elements.
func (r *reader) elements(name string, f int) ([]shownElem, error) {
	s := r.set(name, f)
	if s == nil {
		return nil, nil
	}
	keyTypes := nftables.ConcatSetTypeElements(s.KeyType)
	var out []shownElem
	if s.DataType == nftables.TypeVerdict {
		elems, err := r.d.verdictElements(s)
		if err != nil {
			return nil, err
		}
		for k, v := range elems {
			if key, ok := decodeFields(keyTypes, []byte(k)); ok {
				out = append(out, shownElem{key: key, jump: v.val, comment: v.comment})
			}
		}
		return out, nil
	}
	elems, err := r.d.conn.GetSetElements(s)
	if err != nil {
		return nil, fmt.Errorf("list elements of %s: %w", s.Name, err)
	}
	var valTypes []nftables.SetDatatype
	if s.IsMap {
		valTypes = nftables.ConcatSetTypeElements(s.DataType)
	}
	for _, e := range elems {
		if e.IntervalEnd {
			continue
		}
		key, ok := decodeFields(keyTypes, e.Key)
		if !ok {
			continue
		}
		el := shownElem{key: key, comment: e.Comment}
		if len(e.KeyEnd) > 0 {
			if el.keyEnd, ok = decodeFields(keyTypes, e.KeyEnd); !ok {
				continue
			}
		}
		if valTypes != nil {
			if el.val, ok = decodeFields(valTypes, e.Val); !ok {
				continue
			}
		}
		out = append(out, el)
	}
	return out, nil
}

// shownElem is a set element with its fields decoded.
type shownElem struct {
	key, keyEnd, val []field
	jump, comment    string
}

// field is one field of a concatenation: an address, or a number
// (protocol, port, mark).
type field struct {
	addr netip.Addr
	num  uint32
}

// decodeFields splits a concatenated key or value into its fields, each
// padded to 4 bytes, as the kernel stores them.
func decodeFields(types []nftables.SetDatatype, b []byte) ([]field, bool) {
	var out []field
	for _, t := range types {
		n := int(t.Bytes)
		if n > len(b) {
			return nil, false
		}
		raw := b[:n]
		var fl field
		switch {
		case t.Name == "ipv4_addr" || t.Name == "ipv6_addr":
			a, ok := netip.AddrFromSlice(raw)
			if !ok {
				return nil, false
			}
			fl.addr = a
		case n == 1:
			fl.num = uint32(raw[0])
		case n == 2:
			fl.num = uint32(binary.BigEndian.Uint16(raw))
		case n == 4:
			fl.num = binary.NativeEndian.Uint32(raw)
		}
		out = append(out, fl)
		pad := (n + 3) / 4 * 4
		if pad > len(b) {
			pad = len(b)
		}
		b = b[pad:]
	}
	return out, true
}

// front returns the frontend for address . protocol . port fields (or
// protocol . port for NodePorts), creating it as kind.
func (r *reader) front(f int, kind FrontendKind, key []field) *shownFront {
	id := frontID{nodePort: kind == NodePort}
	if kind == NodePort {
		if len(key) < 2 {
			return nil
		}
		id.addr = [2]netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}[f]
		id.proto, id.port = uint8(key[0].num), uint16(key[1].num)
	} else {
		if len(key) < 3 || !key[0].addr.IsValid() {
			return nil
		}
		id.addr, id.proto, id.port = key[0].addr, uint8(key[1].num), uint16(key[2].num)
	}
	sf := r.fronts[id]
	if sf == nil {
		sf = &shownFront{
			Frontend: Frontend{Kind: kind, Addr: id.addr, Protocol: dataplane.Protocol(id.proto), Port: id.port},
			eps:      make(map[netip.AddrPort]int),
			localEps: make(map[netip.AddrPort]int),
		}
		r.fronts[id] = sf
	}
	// A frontend named by a more specific set keeps that kind: an
	// external IP in no-endpoints is not a cluster IP.
	if kind != ClusterIP || sf.Kind == 0 {
		sf.Kind = kind
	}
	return sf
}

func (sf *shownFront) named(comment string) {
	if comment != "" {
		sf.name = comment
	}
}

// family reads one family's sets into r.fronts.
func (r *reader) family(f int) error {
	clusterIPs := make(map[netip.Addr]bool)
	els, err := r.elements("cluster-ips", f)
	if err != nil {
		return err
	}
	for _, e := range els {
		clusterIPs[e.key[0].addr] = true
	}
	// frontOf finds key's frontend: the cluster-IP sets and maps hold
	// external and load-balancer IPs too, told apart by cluster-ips.
	frontOf := func(kind FrontendKind, key []field) *shownFront {
		if kind == ClusterIP && len(key) > 0 && !clusterIPs[key[0].addr] {
			kind = ExternalIP
		}
		return r.front(f, kind, key)
	}

	// Sets of frontends, each element naming its service port.
	for _, s := range []struct {
		name         string
		kind         FrontendKind
		local        bool
		reject, drop bool
	}{
		{name: "service-ips", kind: ClusterIP},
		{name: "external-cluster", kind: ExternalIP},
		{name: "external-local", kind: ExternalIP, local: true},
		{name: "nodeports-cluster", kind: NodePort},
		{name: "nodeports-local", kind: NodePort, local: true},
		{name: "no-endpoints", kind: ClusterIP, reject: true},
		{name: "no-local-endpoints", kind: ClusterIP, drop: true},
		{name: "no-endpoint-nodeports", kind: NodePort, reject: true},
	} {
		els, err := r.elements(s.name, f)
		if err != nil {
			return err
		}
		for _, e := range els {
			sf := frontOf(s.kind, e.key)
			if sf == nil {
				continue
			}
			sf.named(e.comment)
			sf.Local = sf.Local || s.local
			sf.Reject = sf.Reject || s.reject
			sf.Drop = sf.Drop || s.drop
		}
	}

	// Endpoint maps: frontend . slot → endpoint.
	for _, m := range []struct {
		name  string
		kind  FrontendKind
		local bool
	}{
		{name: "endpoints", kind: ClusterIP},
		{name: "local-endpoints", kind: ExternalIP, local: true},
		{name: "nodeport-endpoints", kind: NodePort},
		{name: "nodeport-local-endpoints", kind: NodePort, local: true},
	} {
		els, err := r.elements(m.name, f)
		if err != nil {
			return err
		}
		for _, e := range els {
			if len(e.key) < 2 || len(e.val) < 2 || !e.val[0].addr.IsValid() {
				continue
			}
			sf := frontOf(m.kind, e.key[:len(e.key)-1])
			if sf == nil {
				continue
			}
			ep := netip.AddrPortFrom(e.val[0].addr, uint16(e.val[1].num))
			if m.local {
				sf.localEps[ep]++
				sf.localTo++
			} else {
				sf.eps[ep]++
				sf.total++
			}
		}
	}

	// Source ranges: frontend . range, as intervals over the last field.
	els, err = r.elements("firewall-allow", f)
	if err != nil {
		return err
	}
	for _, e := range els {
		if len(e.key) < 4 || len(e.keyEnd) < 4 {
			continue
		}
		sf := r.front(f, ExternalIP, e.key[:3])
		if sf == nil {
			continue
		}
		sf.named(e.comment)
		if p, ok := rangePrefix(e.key[3].addr, e.keyEnd[3].addr); ok {
			sf.SourceRanges = append(sf.SourceRanges, p)
		}
	}

	// Affinity: frontend → jump affinity-<T>s.
	for _, m := range []struct {
		name string
		kind FrontendKind
	}{{"affinity-frontends", ClusterIP}, {"affinity-nodeports", NodePort}} {
		els, err := r.elements(m.name, f)
		if err != nil {
			return err
		}
		for _, e := range els {
			sf := frontOf(m.kind, e.key)
			if sf == nil {
				continue
			}
			sf.named(e.comment)
			var secs int64
			if _, err := fmt.Sscanf(strings.TrimSuffix(strings.TrimPrefix(e.jump, "affinity-"), "-nodeports"), "%ds", &secs); err == nil {
				sf.Affinity = time.Duration(secs) * time.Second
			}
		}
	}
	return nil
}

// rangePrefix returns the prefix from first to last, when they span one.
func rangePrefix(first, last netip.Addr) (netip.Prefix, bool) {
	for bits := 0; bits <= first.BitLen(); bits++ {
		if p := netip.PrefixFrom(first, bits); p.Masked().Addr() == first && prefixes.Last(p) == last {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// ports groups the frontends by service port and sorts everything.
func (r *reader) ports() []ProgrammedPort {
	byName := make(map[string]*ProgrammedPort)
	for _, sf := range r.fronts {
		fr := sf.Frontend
		fr.Endpoints = shares(sf.eps, sf.total)
		fr.LocalEndpoints = shares(sf.localEps, sf.localTo)
		slices.SortFunc(fr.SourceRanges, func(a, b netip.Prefix) int {
			return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
		})
		p := byName[sf.name]
		if p == nil {
			p = &ProgrammedPort{Name: sf.name}
			byName[sf.name] = p
		}
		p.Frontends = append(p.Frontends, fr)
	}
	out := make([]ProgrammedPort, 0, len(byName))
	for _, p := range byName {
		slices.SortFunc(p.Frontends, func(a, b Frontend) int {
			return cmp.Or(cmp.Compare(a.Kind, b.Kind), a.Addr.Compare(b.Addr), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
		})
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b ProgrammedPort) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func shares(counts map[netip.AddrPort]int, total int) []Share {
	var out []Share
	for ep, n := range counts {
		out = append(out, Share{Endpoint: ep, Slots: n, Of: total})
	}
	slices.SortFunc(out, func(a, b Share) int { return a.Endpoint.Compare(b.Endpoint) })
	return out
}
