package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"time"
)

// MaxAffinity is the longest ClientIP affinity timeout, as in Kubernetes.
const MaxAffinity = 24 * time.Hour

// FieldError is one problem found by Validate: the path of the offending
// field, such as "ports[2].endpoints[0].port", and what is wrong with it.
type FieldError struct {
	Path   string
	Detail string
}

// Error returns "path: detail".
func (e *FieldError) Error() string { return e.Path + ": " + e.Detail }

// FieldErrors returns every *FieldError in err, which may be a single
// *FieldError or a tree joined with errors.Join.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if fe, ok := err.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		if u := errors.Unwrap(err); u != nil {
			walk(u)
		}
	}
	walk(err)
	return out
}

// validator collects the errors of one Validate call. Validate runs at the
// start of every Sync, so it formats a path only for an error it records,
// and on valid input allocates a few tables for the whole State but nothing
// per port or endpoint.
type validator struct {
	ports []ServicePort
	errs  []error
	seed  maphash.Seed // for names
	keys  [4]uint64    // for addresses; see hashAddr

	names  indexTable // ports by name
	fronts indexTable // claims by frontend
	claims []where    // the fields that claimed a frontend first
	eps    indexTable // one port's endpoints, for lists over shortList
}

// shortList is the longest endpoint list searched for duplicates by
// comparing every pair; a hash table is cheaper only above it.
const shortList = 16

// where names a field of ports[port] without formatting it: paths are only
// built for the fields Validate reports.
type where struct {
	port  int   // index in State.Ports
	field field // which field of the port
	idx   int   // index in the field's list, for list fields
}

type field uint8

const (
	fieldName field = iota
	fieldNamespace
	fieldNameName
	fieldProtocol
	fieldPort
	fieldAffinity
	fieldNodePort
	// The list fields, whose path takes an index.
	fieldClusterIPs
	fieldExternalIPs
	fieldLoadBalancerIPs
	fieldSourceRanges
	fieldEndpoint
	fieldEndpointAddr
	fieldEndpointPort
)

// fieldPaths holds, for each field, its path after "ports[i]": the part
// before the index and, for endpoint fields, the part after it.
var fieldPaths = [...]struct{ before, after string }{
	fieldName:            {".name", ""},
	fieldNamespace:       {".name.namespace", ""},
	fieldNameName:        {".name.name", ""},
	fieldProtocol:        {".protocol", ""},
	fieldPort:            {".port", ""},
	fieldAffinity:        {".affinity", ""},
	fieldNodePort:        {".nodePort", ""},
	fieldClusterIPs:      {".clusterIPs", ""},
	fieldExternalIPs:     {".externalIPs", ""},
	fieldLoadBalancerIPs: {".loadBalancerIPs", ""},
	fieldSourceRanges:    {".sourceRanges", ""},
	fieldEndpoint:        {".endpoints", ""},
	fieldEndpointAddr:    {".endpoints", ".addr"},
	fieldEndpointPort:    {".endpoints", ".port"},
}

// String returns the path, such as "ports[2].endpoints[0].port".
func (w where) String() string {
	fp := fieldPaths[w.field]
	b := make([]byte, 0, 48)
	b = append(b, "ports["...)
	b = strconv.AppendInt(b, int64(w.port), 10)
	b = append(b, ']')
	b = append(b, fp.before...)
	if w.field >= fieldClusterIPs {
		b = append(b, '[')
		b = strconv.AppendInt(b, int64(w.idx), 10)
		b = append(b, ']')
	}
	b = append(b, fp.after...)
	return string(b)
}

// at returns the where of field f of port i, at index idx for list fields.
func at(i int, f field, idx int) where { return where{port: i, field: f, idx: idx} }

func (v *validator) addf(w where, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: w.String(), Detail: fmt.Sprintf(format, args...)})
}

// frontend is one address:port/protocol a service port claims.
type frontend struct {
	addr  netip.Addr // zero for NodePorts
	port  uint16
	proto Protocol
}

// hash hashes f for v's frontend table.
func (f frontend) hash(v *validator) uint64 {
	return v.hashAddr(f.addr, uint64(f.port)|uint64(f.proto)<<16)
}

// hashAddr hashes a, but for its zone (left to equality), and x for an
// indexTable. It is wyhash's multiply-and-fold, with keys drawn afresh for
// every Validate so that colliding addresses cannot be chosen in advance;
// on long endpoint lists it is markedly cheaper than maphash.
func (v *validator) hashAddr(a netip.Addr, x uint64) uint64 {
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	m1, m0 := bits.Mul64(hi^v.keys[0], lo^v.keys[1])
	m1, m0 = bits.Mul64(m1^m0^v.keys[2], x^uint64(a.BitLen())<<32^v.keys[3])
	return m1 ^ m0
}

// Validate checks s and returns nil, or every problem found joined with
// errors.Join, each a *FieldError naming its path. Validate never changes s.
//
// It checks that addresses and prefixes are valid, unzoned and not
// IPv4-mapped; that a port has at most one cluster IP per family and that its
// external IPs, load-balancer IPs and endpoints share a family with one of its
// cluster IPs; that ports are 1-65535 (NodePort and HealthCheckNodePort may
// be 0); that PortNames are unique and named; that no two ports claim the
// same frontend (address, port and protocol, or NodePort and protocol); that
// affinity is 0 or a whole number of seconds up to MaxAffinity; that
// protocols are known; and that no endpoint appears twice in a port.
func (s *State) Validate() error {
	if s == nil {
		return &FieldError{Path: "state", Detail: "is nil"}
	}
	v := &validator{ports: s.Ports, seed: maphash.MakeSeed()}
	for k := range v.keys {
		v.keys[k] = rand.Uint64()
	}
	frontends := 0 // at most
	for i := range s.Ports {
		p := &s.Ports[i]
		frontends += len(p.ClusterIPs) + len(p.ExternalIPs) + len(p.LoadBalancerIPs)
		if p.NodePort != 0 {
			frontends++
		}
	}
	v.names.reset(len(s.Ports))
	v.fronts.reset(frontends)
	v.claims = make([]where, 0, frontends)
	for i := range s.Ports {
		v.port(i, &s.Ports[i])
	}
	return errors.Join(v.errs...)
}

// port checks s.Ports[i], which is p.
func (v *validator) port(i int, p *ServicePort) {
	if p.Name.Namespace == "" {
		v.addf(at(i, fieldNamespace, 0), "is empty")
	}
	if p.Name.Name == "" {
		v.addf(at(i, fieldNameName, 0), "is empty")
	}
	h := maphash.Comparable(v.seed, p.Name)
	if j := v.names.first(h, i, func(j int) bool { return v.ports[j].Name == p.Name }); j >= 0 {
		v.addf(at(i, fieldName, 0), "%s is also the name of ports[%d]", p.Name, j)
	}
	if !p.Protocol.Valid() {
		v.addf(at(i, fieldProtocol, 0), "%s is not a known protocol (want TCP, UDP or SCTP)", p.Protocol)
	}
	if p.Port == 0 {
		v.addf(at(i, fieldPort, 0), "0 is not a valid port (want 1-65535)")
	}
	if p.Affinity != 0 {
		switch {
		case p.Affinity < time.Second || p.Affinity > MaxAffinity:
			v.addf(at(i, fieldAffinity, 0), "%s is out of range (want 0 for none, or 1s to %s)", p.Affinity, MaxAffinity)
		case p.Affinity%time.Second != 0:
			v.addf(at(i, fieldAffinity, 0), "%s is not a whole number of seconds", p.Affinity)
		}
	}

	var families [2]bool // [0]: IPv4, [1]: IPv6
	for k, a := range p.ClusterIPs {
		w := at(i, fieldClusterIPs, k)
		if !v.addr(w, a) {
			continue
		}
		f := family(a)
		if families[f] {
			v.addf(w, "%s is a second %s cluster IP (want at most one per family)", a, familyName(f))
		}
		families[f] = true
	}
	frontends := p.Protocol.Valid() && p.Port != 0
	if frontends {
		for k, a := range p.ClusterIPs {
			if a.IsValid() {
				v.claim(at(i, fieldClusterIPs, k))
			}
		}
	}
	for _, list := range [...]struct {
		field field
		addrs []netip.Addr
	}{{fieldExternalIPs, p.ExternalIPs}, {fieldLoadBalancerIPs, p.LoadBalancerIPs}} {
		for k, a := range list.addrs {
			w := at(i, list.field, k)
			if !v.addr(w, a) {
				continue
			}
			v.served(w, p, families, a, "address")
			if frontends {
				v.claim(w)
			}
		}
	}
	if p.NodePort != 0 && p.Protocol.Valid() {
		v.claim(at(i, fieldNodePort, 0))
	}
	for k, pre := range p.SourceRanges {
		if !pre.IsValid() {
			v.addf(at(i, fieldSourceRanges, k), "is not a valid prefix")
		} else if pre.Addr().Is4In6() {
			v.addf(at(i, fieldSourceRanges, k), "%s is an IPv4-mapped IPv6 prefix; write it as IPv4", pre)
		}
	}
	v.endpoints(i, p, families)
}

// served records an error if a, of port p with cluster IPs of families,
// has a family none of its cluster IPs has. what names a in the message.
func (v *validator) served(w where, p *ServicePort, families [2]bool, a netip.Addr, what string) {
	if len(p.ClusterIPs) > 0 && !families[family(a)] {
		v.addf(w, "%s is %s but the port has no %s cluster IP; drop the %s or add a cluster IP of that family", a, familyName(family(a)), familyName(family(a)), what)
	}
}

// frontendAt returns the frontend that the field w (a cluster, external or
// load-balancer IP, or the NodePort) claims.
func (v *validator) frontendAt(w where) frontend {
	p := &v.ports[w.port]
	switch w.field {
	case fieldClusterIPs:
		return frontend{p.ClusterIPs[w.idx].Unmap(), p.Port, p.Protocol}
	case fieldExternalIPs:
		return frontend{p.ExternalIPs[w.idx], p.Port, p.Protocol}
	case fieldLoadBalancerIPs:
		return frontend{p.LoadBalancerIPs[w.idx], p.Port, p.Protocol}
	}
	return frontend{port: p.NodePort, proto: p.Protocol}
}

// claim records the frontend of the field w as claimed by w, or an error if
// another port claimed it first. The same frontend twice within one port is
// harmless.
func (v *validator) claim(w where) {
	f := v.frontendAt(w)
	j := v.fronts.first(f.hash(v), len(v.claims), func(j int) bool { return v.frontendAt(v.claims[j]) == f })
	switch {
	case j < 0:
		v.claims = append(v.claims, w)
	case v.claims[j].port != w.port:
		v.addf(w, "%s is already used by %s", describeFrontend(f), v.claims[j])
	}
}

// endpoints checks the endpoints of s.Ports[i], which is p.
func (v *validator) endpoints(i int, p *ServicePort, families [2]bool) {
	eps := p.Endpoints
	long := len(eps) > shortList
	if long {
		v.eps.reset(len(eps))
	}
	for k := range eps {
		ep := &eps[k]
		if w := at(i, fieldEndpointAddr, k); v.addr(w, ep.Addr) {
			v.served(w, p, families, ep.Addr, "endpoint")
		}
		if ep.Port == 0 {
			v.addf(at(i, fieldEndpointPort, k), "0 is not a valid port (want 1-65535)")
		}
		// j is the first earlier endpoint equal to this one, or -1.
		ap, j := ep.AddrPort(), -1
		if long {
			j = v.eps.first(v.hashAddr(ep.Addr, uint64(ep.Port)), k, func(j int) bool { return eps[j].AddrPort() == ap })
		} else {
			for e := range k {
				if eps[e].Port == ep.Port && eps[e].Addr == ep.Addr {
					j = e
					break
				}
			}
		}
		if j >= 0 {
			v.addf(at(i, fieldEndpoint, k), "%s is listed twice (also endpoints[%d])", ap, j)
		}
	}
}

// indexTable finds, for each element of a list in turn, the first earlier
// element equal to it. It is an open-addressing hash table of list indices
// tagged with hash bits: unlike a map it holds no copies of keys and no
// pointers, so it is small, one allocation, and costs the garbage collector
// nothing. Lists are shorter than 1<<32-1 elements (they must fit in
// memory).
type indexTable struct {
	slots []uint64 // high half: the hash's high half; low half: index+1; 0: empty
}

// reset empties t for a list of at most n elements, keeping it at most half
// full.
func (t *indexTable) reset(n int) {
	size := 8
	for size < 2*n {
		size *= 2
	}
	if cap(t.slots) < size {
		t.slots = make([]uint64, size)
		return
	}
	t.slots = t.slots[:size]
	clear(t.slots)
}

// first returns the index of the first element added that is equal to
// element i, whose hash is h, or -1 after adding i. equal(j) reports whether
// element j equals element i.
func (t *indexTable) first(h uint64, i int, equal func(j int) bool) int {
	const low = 1<<32 - 1
	mask := uint64(len(t.slots) - 1)
	for s := h & mask; ; s = (s + 1) & mask {
		e := t.slots[s]
		if e == 0 {
			t.slots[s] = h&^low | uint64(i+1)
			return -1
		}
		if e&^low == h&^low && equal(int(e&low)-1) {
			return int(e&low) - 1
		}
	}
}

// addr reports whether a is a usable unicast address, recording why not.
func (v *validator) addr(w where, a netip.Addr) bool {
	switch {
	case !a.IsValid():
		v.addf(w, "is not a valid IP address")
	case a.Zone() != "":
		v.addf(w, "%s has a zone; service addresses take none", a)
	case a.Is4In6():
		v.addf(w, "%s is an IPv4-mapped IPv6 address; write it as IPv4 (%s)", a, a.Unmap())
	case a.IsUnspecified() || a.IsMulticast():
		v.addf(w, "%s is not a unicast address", a)
	default:
		return true
	}
	return false
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func familyName(f int) string {
	if f == 0 {
		return "IPv4"
	}
	return "IPv6"
}

func describeFrontend(f frontend) string {
	if !f.addr.IsValid() {
		return fmt.Sprintf("NodePort %d/%s", f.port, f.proto)
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.addr, f.port), f.proto)
}
