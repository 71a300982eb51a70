package dataplane_test

import (
	"fmt"
	"net/netip"
	"strconv"
	"testing"

	"github.com/svcplane/svcplane/dataplane"
)

// benchState returns a valid State of n TCP service ports with e endpoints
// each, shaped like a cluster's: one IPv4 cluster IP per port (distinct, in
// 198.19.0.0/16), a NodePort on every tenth port while the NodePort range
// lasts, and endpoints with distinct addresses in 198.18.0.0/16 (the target
// port tells apart the ones that wrap).
func benchState(n, e int) *dataplane.State {
	s := &dataplane.State{Ports: make([]dataplane.ServicePort, n)}
	k := 0
	for i := range s.Ports {
		c := i + 1
		p := dataplane.ServicePort{
			Name:       dataplane.PortName{Namespace: "bench", Name: "svc-" + strconv.Itoa(i), Port: "http"},
			Protocol:   dataplane.TCP,
			Port:       80,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 19, byte(c >> 8), byte(c)})},
			Endpoints:  make([]dataplane.Endpoint, e),
		}
		if i%10 == 0 && 30000+i/10 <= 32767 {
			p.NodePort = uint16(30000 + i/10)
		}
		for j := range p.Endpoints {
			h := k%65534 + 1
			p.Endpoints[j] = dataplane.Endpoint{
				Addr:     netip.AddrFrom4([4]byte{198, 18, byte(h >> 8), byte(h)}),
				Port:     uint16(8080 + k/65534),
				NodeName: "node-b",
				Ready:    true, Serving: true,
			}
			k++
		}
		s.Ports[i] = p
	}
	return s
}

// BenchmarkValidate measures Validate on valid States, the case every Sync
// pays for before it can find that nothing changed.
func BenchmarkValidate(b *testing.B) {
	for _, sz := range []struct{ ports, endpoints int }{
		{1000, 5}, {10000, 5}, {50000, 5}, {5000, 50},
	} {
		b.Run(fmt.Sprintf("ports=%d/endpoints=%d", sz.ports, sz.endpoints), func(b *testing.B) {
			s := benchState(sz.ports, sz.endpoints)
			if err := s.Validate(); err != nil {
				b.Fatalf("benchmark State is invalid: %v", err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Validate(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
