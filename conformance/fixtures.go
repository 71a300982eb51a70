package conformance

import (
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
