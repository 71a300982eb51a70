package dataplane_test

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/svcplane/svcplane/dataplane"
)

// fuzzBytes hands out fuzz input a byte at a time; past the end it returns
// zeros, so every input builds some State.
type fuzzBytes []byte

func (b *fuzzBytes) next() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

// pick returns one of choices.
func pick[T any](b *fuzzBytes, choices ...T) T { return choices[int(b.next())%len(choices)] }

// count returns 0..max-1.
func (b *fuzzBytes) count(max int) int { return int(b.next()) % max }

// The pools are small so that fuzzing hits collisions (duplicate names,
// frontends and endpoints) often, and hold every kind of invalid value
// Validate knows about.
var (
	fuzzAddrs = []netip.Addr{
		ip("198.19.0.10"), ip("198.19.0.11"), ip("2001:db8:ffff::10"), ip("2001:db8:ffff::11"),
		ip("203.0.113.10"), ip("2001:db8:beef::10"), ip("198.18.1.10"), ip("198.18.1.11"),
		ip("2001:db8:1::10"), {}, ip("::ffff:198.19.0.10"), ip("fe80::1%eth0"),
		ip("0.0.0.0"), ip("::"), ip("224.0.0.1"), ip("ff02::1"),
	}
	fuzzPrefixes = []netip.Prefix{
		pfx("192.0.2.0/24"), pfx("2001:db8::/64"), pfx("0.0.0.0/0"), {},
		pfx("::ffff:192.0.2.0/120"), netip.PrefixFrom(ip("192.0.2.1"), 40), pfx("192.0.2.1/32"),
	}
	fuzzNames   = []string{"", "default", "web", "dns", "kube-system"}
	fuzzPorts   = []uint16{0, 80, 53, 8080, 65535}
	fuzzProtos  = []dataplane.Protocol{dataplane.TCP, dataplane.UDP, dataplane.SCTP, 0, 1}
	fuzzAffines = []time.Duration{0, time.Second, 3 * time.Hour, dataplane.MaxAffinity, -time.Second,
		time.Millisecond, 1500 * time.Millisecond, dataplane.MaxAffinity + time.Second}
	fuzzStrings = []string{"", "node-a", "node-b", "zone-a"}
)

func fuzzAddrList(b *fuzzBytes) []netip.Addr {
	n := b.count(4)
	if n == 0 {
		return nil
	}
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = pick(b, fuzzAddrs...)
	}
	return out
}

func fuzzStringList(b *fuzzBytes) []string {
	var out []string
	for range b.count(3) {
		out = append(out, pick(b, fuzzStrings...))
	}
	return out
}

// fuzzState builds a State from fuzz input.
func fuzzState(data []byte) *dataplane.State {
	b := fuzzBytes(data)
	s := &dataplane.State{}
	for range b.count(5) {
		p := dataplane.ServicePort{
			Name: dataplane.PortName{
				Namespace: pick(&b, fuzzNames...), Name: pick(&b, fuzzNames...), Port: pick(&b, fuzzNames...),
			},
			Protocol:            pick(&b, fuzzProtos...),
			Port:                pick(&b, fuzzPorts...),
			NodePort:            pick[uint16](&b, 0, 0, 30080, 30081),
			ClusterIPs:          fuzzAddrList(&b),
			ExternalIPs:         fuzzAddrList(&b),
			LoadBalancerIPs:     fuzzAddrList(&b),
			Affinity:            pick(&b, fuzzAffines...),
			HealthCheckNodePort: pick[uint16](&b, 0, 30081, 65535),
		}
		for range b.count(3) {
			p.SourceRanges = append(p.SourceRanges, pick(&b, fuzzPrefixes...))
		}
		flags := b.next()
		p.InternalLocal, p.ExternalLocal = flags&1 != 0, flags&2 != 0
		for range b.count(5) {
			c := b.next()
			p.Endpoints = append(p.Endpoints, dataplane.Endpoint{
				Addr:     pick(&b, fuzzAddrs...),
				Port:     pick(&b, fuzzPorts...),
				NodeName: pick(&b, fuzzStrings...),
				Zone:     pick(&b, fuzzStrings...),
				Ready:    c&1 != 0, Serving: c&2 != 0, Terminating: c&4 != 0,
				ForZones: fuzzStringList(&b),
				ForNodes: fuzzStringList(&b),
			})
		}
		s.Ports = append(s.Ports, p)
	}
	return s
}

func FuzzValidate(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 1, 2, 3, 0, 1, 2, 2, 0, 2, 1, 2, 0, 0, 1, 0, 3, 0, 1, 6, 1, 1, 2, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		s := fuzzState(data)
		again := fuzzState(data)
		err := s.Validate()
		if !reflect.DeepEqual(s, again) {
			t.Fatal("Validate changed its State")
		}
		node := &dataplane.Node{Name: "node-a", Zone: "zone-a"}
		for i := range s.Ports {
			checkCategorize(t, &s.Ports[i], node)
		}
		if err != nil {
			errs := dataplane.FieldErrors(err)
			if len(errs) == 0 {
				t.Fatalf("Validate returned %v without FieldErrors", err)
			}
			for _, fe := range errs {
				if !strings.HasPrefix(fe.Path, "ports[") || fe.Detail == "" {
					t.Errorf("malformed FieldError %q", fe)
				}
			}
			return
		}
		checkValid(t, s)
	})
}

// checkValid checks, independently of Validate, invariants a valid State
// must hold.
func checkValid(t *testing.T, s *dataplane.State) {
	t.Helper()
	names := map[dataplane.PortName]bool{}
	type frontend struct {
		addr  netip.Addr
		port  uint16
		proto dataplane.Protocol
	}
	owner := map[frontend]int{}
	claim := func(i int, f frontend) {
		if o, ok := owner[f]; ok && o != i {
			t.Errorf("ports[%d] and ports[%d] share frontend %v port %d/%v", o, i, f.addr, f.port, f.proto)
		}
		owner[f] = i
	}
	unicast := func(a netip.Addr) bool {
		return a.IsValid() && a.Zone() == "" && !a.Is4In6() && !a.IsUnspecified() && !a.IsMulticast()
	}
	for i, p := range s.Ports {
		if names[p.Name] || p.Name.Namespace == "" || p.Name.Name == "" {
			t.Errorf("ports[%d]: name %v is empty or not unique", i, p.Name)
		}
		names[p.Name] = true
		if !p.Protocol.Valid() || p.Port == 0 {
			t.Errorf("ports[%d]: bad protocol or port %v/%d", i, p.Protocol, p.Port)
		}
		if p.Affinity < 0 || p.Affinity > dataplane.MaxAffinity || p.Affinity%time.Second != 0 {
			t.Errorf("ports[%d]: bad affinity %v", i, p.Affinity)
		}
		var fam [2]int
		for _, a := range p.ClusterIPs {
			if !unicast(a) {
				t.Errorf("ports[%d]: bad cluster IP %v", i, a)
			}
			if a.Is4() {
				fam[0]++
			} else {
				fam[1]++
			}
			claim(i, frontend{a, p.Port, p.Protocol})
		}
		if fam[0] > 1 || fam[1] > 1 {
			t.Errorf("ports[%d]: more than one cluster IP of a family: %v", i, p.ClusterIPs)
		}
		served := func(a netip.Addr) bool {
			if len(p.ClusterIPs) == 0 {
				return true
			}
			if a.Is4() {
				return fam[0] == 1
			}
			return fam[1] == 1
		}
		for _, a := range append(append([]netip.Addr(nil), p.ExternalIPs...), p.LoadBalancerIPs...) {
			if !unicast(a) || !served(a) {
				t.Errorf("ports[%d]: bad external or load-balancer IP %v", i, a)
			}
			claim(i, frontend{a, p.Port, p.Protocol})
		}
		if p.NodePort != 0 {
			claim(i, frontend{port: p.NodePort, proto: p.Protocol})
		}
		for _, r := range p.SourceRanges {
			if !r.IsValid() || r.Addr().Is4In6() {
				t.Errorf("ports[%d]: bad source range %v", i, r)
			}
		}
		eps := map[netip.AddrPort]bool{}
		for _, e := range p.Endpoints {
			if !unicast(e.Addr) || !served(e.Addr) || e.Port == 0 || eps[e.AddrPort()] {
				t.Errorf("ports[%d]: bad or duplicate endpoint %v", i, e.AddrPort())
			}
			eps[e.AddrPort()] = true
		}
	}
}

// checkCategorize checks properties of Categorize that hold for any port.
func checkCategorize(t *testing.T, p *dataplane.ServicePort, node *dataplane.Node) {
	t.Helper()
	e := dataplane.Categorize(p, node)
	usable := false
	for _, ep := range p.Endpoints {
		usable = usable || ep.Ready || (ep.Serving && ep.Terminating)
	}
	if e.Any != usable {
		t.Errorf("%v: Any = %v, want %v", p.Name, e.Any, usable)
	}
	if (e.Local != nil) != (p.InternalLocal || p.ExternalLocal) {
		t.Errorf("%v: Local computed = %v", p.Name, e.Local != nil)
	}
	for _, ep := range e.Local {
		if ep.NodeName != node.Name {
			t.Errorf("%v: Local holds %v of node %q", p.Name, ep.AddrPort(), ep.NodeName)
		}
	}
	for _, ep := range append(append([]dataplane.Endpoint(nil), e.Cluster...), e.Local...) {
		if !ep.Ready && !(ep.Serving && ep.Terminating) {
			t.Errorf("%v: unusable endpoint %v chosen", p.Name, ep.AddrPort())
		}
	}
	if e.Cluster != nil && usable && len(e.Cluster) == 0 {
		t.Errorf("%v: Cluster empty with usable endpoints", p.Name)
	}
}
