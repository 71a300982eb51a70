package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
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

type validator struct{ errs []error }

func (v *validator) addf(path, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: path, Detail: fmt.Sprintf(format, args...)})
}

// frontend is one address:port/protocol a service port claims.
type frontend struct {
	addr  netip.Addr // zero for NodePorts
	port  uint16
	proto Protocol
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
	v := &validator{}
	names := make(map[PortName]int, len(s.Ports))
	fronts := make(map[frontend]string, len(s.Ports))
	for i := range s.Ports {
		v.port(fmt.Sprintf("ports[%d]", i), &s.Ports[i], names, i, fronts)
	}
	return errors.Join(v.errs...)
}

func (v *validator) port(path string, p *ServicePort, names map[PortName]int, idx int, fronts map[frontend]string) {
	if p.Name.Namespace == "" {
		v.addf(path+".name.namespace", "is empty")
	}
	if p.Name.Name == "" {
		v.addf(path+".name.name", "is empty")
	}
	if j, dup := names[p.Name]; dup {
		v.addf(path+".name", "%s is also the name of ports[%d]", p.Name, j)
	} else {
		names[p.Name] = idx
	}
	if !p.Protocol.Valid() {
		v.addf(path+".protocol", "%s is not a known protocol (want TCP, UDP or SCTP)", p.Protocol)
	}
	if p.Port == 0 {
		v.addf(path+".port", "0 is not a valid port (want 1-65535)")
	}
	if p.Affinity != 0 {
		switch {
		case p.Affinity < time.Second || p.Affinity > MaxAffinity:
			v.addf(path+".affinity", "%s is out of range (want 0 for none, or 1s to %s)", p.Affinity, MaxAffinity)
		case p.Affinity%time.Second != 0:
			v.addf(path+".affinity", "%s is not a whole number of seconds", p.Affinity)
		}
	}

	var families [2]bool // [0]: IPv4, [1]: IPv6
	for i, a := range p.ClusterIPs {
		fp := fmt.Sprintf("%s.clusterIPs[%d]", path, i)
		if !v.addr(fp, a) {
			continue
		}
		f := family(a)
		if families[f] {
			v.addf(fp, "%s is a second %s cluster IP (want at most one per family)", a, familyName(f))
		}
		families[f] = true
	}
	served := func(fp string, a netip.Addr, what string) {
		if len(p.ClusterIPs) > 0 && !families[family(a)] {
			v.addf(fp, "%s is %s but the port has no %s cluster IP; drop the %s or add a cluster IP of that family", a, familyName(family(a)), familyName(family(a)), what)
		}
	}
	claim := func(fp string, f frontend) {
		other, dup := fronts[f]
		switch {
		case !dup:
			fronts[f] = fp
		case !strings.HasPrefix(other, path+"."):
			// The same frontend twice within one port is harmless.
			v.addf(fp, "%s is already used by %s", describeFrontend(f), other)
		}
	}
	if p.Protocol.Valid() && p.Port != 0 {
		for i, a := range p.ClusterIPs {
			if a.IsValid() {
				claim(fmt.Sprintf("%s.clusterIPs[%d]", path, i), frontend{a.Unmap(), p.Port, p.Protocol})
			}
		}
	}
	for _, list := range []struct {
		name  string
		addrs []netip.Addr
	}{{"externalIPs", p.ExternalIPs}, {"loadBalancerIPs", p.LoadBalancerIPs}} {
		for i, a := range list.addrs {
			fp := fmt.Sprintf("%s.%s[%d]", path, list.name, i)
			if !v.addr(fp, a) {
				continue
			}
			served(fp, a, "address")
			if p.Protocol.Valid() && p.Port != 0 {
				claim(fp, frontend{a, p.Port, p.Protocol})
			}
		}
	}
	if p.NodePort != 0 && p.Protocol.Valid() {
		claim(path+".nodePort", frontend{port: p.NodePort, proto: p.Protocol})
	}
	for i, pre := range p.SourceRanges {
		fp := fmt.Sprintf("%s.sourceRanges[%d]", path, i)
		if !pre.IsValid() {
			v.addf(fp, "is not a valid prefix")
		} else if pre.Addr().Is4In6() {
			v.addf(fp, "%s is an IPv4-mapped IPv6 prefix; write it as IPv4", pre)
		}
	}
	seen := make(map[netip.AddrPort]int, len(p.Endpoints))
	for i, ep := range p.Endpoints {
		fp := fmt.Sprintf("%s.endpoints[%d]", path, i)
		if v.addr(fp+".addr", ep.Addr) {
			served(fp+".addr", ep.Addr, "endpoint")
		}
		if ep.Port == 0 {
			v.addf(fp+".port", "0 is not a valid port (want 1-65535)")
		}
		if j, dup := seen[ep.AddrPort()]; dup {
			v.addf(fp, "%s is listed twice (also endpoints[%d])", ep.AddrPort(), j)
		} else {
			seen[ep.AddrPort()] = i
		}
	}
}

// addr reports whether a is a usable unicast address, recording why not.
func (v *validator) addr(path string, a netip.Addr) bool {
	switch {
	case !a.IsValid():
		v.addf(path, "is not a valid IP address")
	case a.Zone() != "":
		v.addf(path, "%s has a zone; service addresses take none", a)
	case a.Is4In6():
		v.addf(path, "%s is an IPv4-mapped IPv6 address; write it as IPv4 (%s)", a, a.Unmap())
	case a.IsUnspecified() || a.IsMulticast():
		v.addf(path, "%s is not a unicast address", a)
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
