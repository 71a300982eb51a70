package conformance

import (
	"fmt"
	"net/netip"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// Cluster IPs come from the service CIDRs of DESIGN.md.
func cip4(n byte) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, n}) }

func cip6(n byte) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 15: n})
}

// ready returns a ready endpoint at the pod's address of the family of
// want (IPv4 when want is invalid).
func ready(p *topo.Pod, port uint16) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: p.IPv4, Port: port, NodeName: p.Node.Name, Ready: true, Serving: true}
}

func ready6(p *topo.Pod, port uint16) dataplane.Endpoint {
	e := ready(p, port)
	e.Addr = p.IPv6
	return e
}

// svc returns a ClusterIP service port default/name:port.
func svc(name, port string, proto dataplane.Protocol, svcPort uint16, cips []netip.Addr, eps ...dataplane.Endpoint) dataplane.ServicePort {
	return dataplane.ServicePort{
		Name:       dataplane.PortName{Namespace: "default", Name: name, Port: port},
		Protocol:   proto,
		Port:       svcPort,
		ClusterIPs: cips,
		Endpoints:  eps,
	}
}

func ips(a ...netip.Addr) []netip.Addr { return a }

func state(ports ...dataplane.ServicePort) *dataplane.State {
	return &dataplane.State{Ports: ports}
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// External and load-balancer IPs come from 203.0.113.0/24 and
// 2001:db8:beef::/64, which the client routes via node-a
// (topo.RouteExternalVia switches).
func eip4(n byte) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, n}) }

func eip6(n byte) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xbe, 0xef, 15: n})
}

// nodePort is the NodePort the cases use (in Kubernetes' default range).
const nodePort = 30080

// npSvc returns svc(...) with a NodePort.
func npSvc(name, port string, proto dataplane.Protocol, svcPort, np uint16, cips []netip.Addr, eps ...dataplane.Endpoint) dataplane.ServicePort {
	p := svc(name, port, proto, svcPort, cips, eps...)
	p.NodePort = np
	return p
}

// terminating returns ep as an endpoint of a terminating pod: not ready,
// serving as given (still passing its readiness probe, or not).
func terminating(ep dataplane.Endpoint, serving bool) dataplane.Endpoint {
	ep.Ready, ep.Serving, ep.Terminating = false, serving, true
	return ep
}

// podNames returns names of n pods: prefix-1 ... prefix-n.
func podNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i+1)
	}
	return out
}

// Request counts for spread checks. A correct backend spreads new
// connections uniformly, so a check that every endpoint answers fails by
// chance with probability at most k·(1-1/k)^n for k endpoints and n
// requests.
const (
	// seeBoth requests see both of 2 endpoints: 2·2⁻²⁸ ≈ 7e-9.
	seeBoth = 28
	// seeAll4 requests see all of 4 endpoints: 4·(3/4)⁶⁴ ≈ 4e-8.
	seeAll4 = 64
)
