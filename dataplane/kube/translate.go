package kube

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcplane/svcplane/dataplane"
)

// LabelServiceProxyName is the label that hands a Service (and its
// EndpointSlices) to another service proxy. Translate ignores objects that
// carry it, whatever its value, as kube-proxy does.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// Translate turns Services and their EndpointSlices into the State every
// node programs, by kube-proxy's rules. It never fails: whatever it cannot
// use is left out, so that its result always passes [dataplane.State.Validate].
// The inputs are only read; the State shares no memory with them.
//
// Services are left out when they are nil, lack a namespace or name, are of
// type ExternalName, are headless (clusterIP None) or have no usable cluster
// IP, or carry the [LabelServiceProxyName] or service.kubernetes.io/headless
// label. Every other Service gives one [dataplane.ServicePort] per port
// (ports with an unknown protocol, a port number outside 1-65535 or a
// repeated name are left out), named namespace/name:port-name. A port
// takes:
//
//   - ClusterIPs from spec.clusterIPs, or spec.clusterIP when that is empty,
//     keeping the first of each family;
//   - ExternalIPs from spec.externalIPs;
//   - LoadBalancerIPs from status.loadBalancer.ingress[].ip, except ingress
//     points whose ipMode is not VIP (Proxy load balancers deliver to the
//     node, not to the IP);
//   - SourceRanges from spec.loadBalancerSourceRanges, with spaces trimmed
//     and bare IPs taken as /32 or /128 prefixes;
//   - NodePort for NodePort and LoadBalancer Services;
//   - Affinity from sessionAffinity ClientIP, with
//     sessionAffinityConfig.clientIP.timeoutSeconds or, when that is unset
//     or outside 1-86400, the Kubernetes default of 10800 seconds;
//   - ExternalLocal from externalTrafficPolicy Local when the Service is
//     reachable from outside (type NodePort or LoadBalancer, or external
//     IPs), InternalLocal from internalTrafficPolicy Local, and
//     HealthCheckNodePort for LoadBalancer Services under ExternalLocal.
//
// Endpoints come from the EndpointSlices in the Service's namespace whose
// kubernetes.io/service-name label names it, of addressType IPv4 or IPv6
// (FQDN slices are ignored), and from the slice ports whose name and
// protocol match the service port (an unset name is "", an unset protocol
// TCP); the target port is the slice port's. Each endpoint contributes its
// first address, as in kube-proxy. An unset ready condition counts as
// ready, an unset serving condition as serving and an unset terminating
// condition as not terminating, as the EndpointSlice API specifies. The
// node name, zone and topology hints are copied. An address that appears in
// several slices is kept once, preferring a ready copy, then a serving and
// terminating one, then the copy from the slice whose name sorts first.
//
// Addresses and prefixes of a family the Service has no cluster IP for are
// dropped: external, load-balancer and endpoint IPs and source ranges alike
// (kube-proxy, which proxies each family on its own, ignores them the same
// way). IPs that do not parse, or are unspecified, multicast or zoned, are
// dropped; IPv4-mapped IPv6 addresses are taken as IPv4, and IPv4 addresses
// with leading zeros as decimal, as Kubernetes reads them.
//
// Kubernetes does not stop two Services from claiming the same external or
// load-balancer IP and port, so Translate resolves conflicting frontends,
// which Validate forbids: cluster IPs are claimed first, then NodePorts,
// then load-balancer IPs, then external IPs, each in PortName order, and a
// frontend already claimed by another port is dropped from the later one
// (a port left without cluster IPs is dropped entirely). User-set external
// IPs therefore never take over a cluster IP.
//
// The result is deterministic: ports are sorted by PortName, endpoints by
// address, then port. It does not depend on the order of the inputs either,
// as long as no two Services (or two EndpointSlices) share a namespace and
// name; of two such Services, the first is used.
//
// node may be nil; Translate does not use it today. Which endpoints a node
// forwards to is decided later, by [dataplane.Categorize], so one State
// serves every node.
func Translate(services []*corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, node *dataplane.Node) *dataplane.State {
	_ = node
	var ports []dataplane.ServicePort
	seen := make(map[objKey]bool, len(services))
	for _, svc := range services {
		if svc == nil || skipService(svc) {
			continue
		}
		k := objKey{svc.Namespace, svc.Name}
		if seen[k] {
			continue
		}
		seen[k] = true
		ports = append(ports, servicePorts(svc)...)
	}
	slices.SortFunc(ports, func(a, b dataplane.ServicePort) int { return comparePortName(a.Name, b.Name) })
	ports = resolveFrontends(ports)

	bySvc := groupSlices(endpointSlices)
	for i := range ports {
		p := &ports[i]
		p.Endpoints = endpoints(p, bySvc[objKey{p.Name.Namespace, p.Name.Name}])
	}
	return &dataplane.State{Ports: ports}
}

// objKey is a namespace and name.
type objKey struct{ namespace, name string }

func comparePortName(a, b dataplane.PortName) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name), strings.Compare(a.Port, b.Port))
}

// skipService reports whether svc is left to others or has no ports to
// program.
func skipService(svc *corev1.Service) bool {
	if svc.Namespace == "" || svc.Name == "" || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return true
	}
	if _, ok := svc.Labels[LabelServiceProxyName]; ok {
		return true
	}
	if _, ok := svc.Labels[corev1.IsHeadlessService]; ok {
		return true
	}
	return svc.Spec.ClusterIP == corev1.ClusterIPNone ||
		len(svc.Spec.ClusterIPs) > 0 && svc.Spec.ClusterIPs[0] == corev1.ClusterIPNone
}

// skipSlice reports whether slice never contributes endpoints.
func skipSlice(slice *discoveryv1.EndpointSlice) bool {
	if slice.Namespace == "" || slice.Labels[discoveryv1.LabelServiceName] == "" {
		return true
	}
	if slice.AddressType != discoveryv1.AddressTypeIPv4 && slice.AddressType != discoveryv1.AddressTypeIPv6 {
		return true
	}
	if _, ok := slice.Labels[LabelServiceProxyName]; ok {
		return true
	}
	_, ok := slice.Labels[corev1.IsHeadlessService]
	return ok
}

// families records which IP families a port has a cluster IP of.
type families [2]bool

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func (f *families) has(a netip.Addr) bool { return f[family(a)] }

func familiesOf(addrs []netip.Addr) families {
	var f families
	for _, a := range addrs {
		f[family(a)] = true
	}
	return f
}

// servicePorts returns svc's ports, before frontends are resolved and
// endpoints added.
func servicePorts(svc *corev1.Service) []dataplane.ServicePort {
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	var clusterIPs []netip.Addr
	var fams families
	for _, s := range raw {
		if a, ok := parseAddr(s); ok && !fams.has(a) {
			fams[family(a)] = true
			clusterIPs = append(clusterIPs, a)
		}
	}
	if len(clusterIPs) == 0 {
		return nil
	}

	externalIPs := parseAddrs(svc.Spec.ExternalIPs, fams)
	var lbIPs []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode == corev1.LoadBalancerIPModeVIP) {
			lbIPs = append(lbIPs, ing.IP)
		}
	}
	loadBalancerIPs := parseAddrs(lbIPs, fams)
	var ranges []netip.Prefix
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		if p, ok := parsePrefix(s); ok && fams.has(p.Addr()) && !slices.Contains(ranges, p) {
			ranges = append(ranges, p)
		}
	}

	var affinity time.Duration
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		secs := corev1.DefaultClientIPServiceAffinitySeconds
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t >= 1 && time.Duration(t)*time.Second <= dataplane.MaxAffinity {
				secs = t
			}
		}
		affinity = time.Duration(secs) * time.Second
	}

	typ := svc.Spec.Type
	withNodePorts := typ == corev1.ServiceTypeNodePort || typ == corev1.ServiceTypeLoadBalancer
	externallyAccessible := withNodePorts ||
		(typ == corev1.ServiceTypeClusterIP || typ == "") && len(svc.Spec.ExternalIPs) > 0
	externalLocal := externallyAccessible && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	var healthCheckNodePort uint16
	if typ == corev1.ServiceTypeLoadBalancer && externalLocal {
		healthCheckNodePort, _ = portNumber(svc.Spec.HealthCheckNodePort)
	}

	var out []dataplane.ServicePort
	names := make(map[string]bool, len(svc.Spec.Ports))
	for _, sp := range svc.Spec.Ports {
		proto, ok := protocol(sp.Protocol)
		if !ok {
			continue
		}
		port, ok := portNumber(sp.Port)
		if !ok || names[sp.Name] {
			continue
		}
		names[sp.Name] = true
		var nodePort uint16
		if withNodePorts {
			nodePort, _ = portNumber(sp.NodePort)
		}
		out = append(out, dataplane.ServicePort{
			Name:                dataplane.PortName{Namespace: svc.Namespace, Name: svc.Name, Port: sp.Name},
			Protocol:            proto,
			Port:                port,
			NodePort:            nodePort,
			ClusterIPs:          slices.Clone(clusterIPs),
			ExternalIPs:         slices.Clone(externalIPs),
			LoadBalancerIPs:     slices.Clone(loadBalancerIPs),
			SourceRanges:        slices.Clone(ranges),
			Affinity:            affinity,
			ExternalLocal:       externalLocal,
			InternalLocal:       internalLocal,
			HealthCheckNodePort: healthCheckNodePort,
		})
	}
	return out
}

// resolveFrontends drops frontends that an earlier port (in ports' order)
// already claimed, claiming cluster IPs of every port first, then
// NodePorts, load-balancer IPs and external IPs. It drops ports left
// without cluster IPs, and what they leave of a family without a cluster
// IP.
func resolveFrontends(ports []dataplane.ServicePort) []dataplane.ServicePort {
	type frontend struct {
		addr  netip.Addr // zero for NodePorts
		port  uint16
		proto dataplane.Protocol
	}
	owner := make(map[frontend]dataplane.PortName)
	claim := func(p *dataplane.ServicePort, f frontend) bool {
		if o, ok := owner[f]; ok && o != p.Name {
			return false
		}
		owner[f] = p.Name
		return true
	}
	claimAll := func(p *dataplane.ServicePort, addrs []netip.Addr, fams families) []netip.Addr {
		return slices.DeleteFunc(addrs, func(a netip.Addr) bool {
			return !fams.has(a) || !claim(p, frontend{a, p.Port, p.Protocol})
		})
	}
	for i := range ports {
		p := &ports[i]
		p.ClusterIPs = claimAll(p, p.ClusterIPs, families{true, true})
	}
	ports = slices.DeleteFunc(ports, func(p dataplane.ServicePort) bool { return len(p.ClusterIPs) == 0 })
	for i := range ports {
		if p := &ports[i]; p.NodePort != 0 && !claim(p, frontend{port: p.NodePort, proto: p.Protocol}) {
			p.NodePort = 0
		}
	}
	for i := range ports {
		p := &ports[i]
		p.LoadBalancerIPs = claimAll(p, p.LoadBalancerIPs, familiesOf(p.ClusterIPs))
	}
	for i := range ports {
		p := &ports[i]
		fams := familiesOf(p.ClusterIPs)
		p.ExternalIPs = claimAll(p, p.ExternalIPs, fams)
		p.SourceRanges = slices.DeleteFunc(p.SourceRanges, func(r netip.Prefix) bool { return !fams.has(r.Addr()) })
	}
	for i := range ports {
		p := &ports[i]
		for _, list := range []*[]netip.Addr{&p.ClusterIPs, &p.ExternalIPs, &p.LoadBalancerIPs} {
			if len(*list) == 0 {
				*list = nil
			}
		}
		if len(p.SourceRanges) == 0 {
			p.SourceRanges = nil
		}
	}
	return ports
}

// groupSlices returns the usable slices by the Service they belong to,
// each group sorted by slice name.
func groupSlices(in []*discoveryv1.EndpointSlice) map[objKey][]*discoveryv1.EndpointSlice {
	out := make(map[objKey][]*discoveryv1.EndpointSlice)
	for _, s := range in {
		if s == nil || skipSlice(s) {
			continue
		}
		k := objKey{s.Namespace, s.Labels[discoveryv1.LabelServiceName]}
		out[k] = append(out[k], s)
	}
	for _, group := range out {
		slices.SortStableFunc(group, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	}
	return out
}

// endpoints returns p's endpoints from its Service's slices, sorted.
func endpoints(p *dataplane.ServicePort, group []*discoveryv1.EndpointSlice) []dataplane.Endpoint {
	fams := familiesOf(p.ClusterIPs)
	var out []dataplane.Endpoint
	index := make(map[netip.AddrPort]int)
	for _, slice := range group {
		want := 1 // IPv6
		if slice.AddressType == discoveryv1.AddressTypeIPv4 {
			want = 0
		}
		for _, sp := range slice.Ports {
			name := ""
			if sp.Name != nil {
				name = *sp.Name
			}
			proto := dataplane.TCP
			if sp.Protocol != nil {
				var ok bool
				if proto, ok = protocol(*sp.Protocol); !ok {
					continue
				}
			}
			if name != p.Name.Port || proto != p.Protocol || sp.Port == nil {
				continue
			}
			port, ok := portNumber(*sp.Port)
			if !ok {
				continue
			}
			for i := range slice.Endpoints {
				se := &slice.Endpoints[i]
				if len(se.Addresses) == 0 {
					continue
				}
				a, ok := parseAddr(se.Addresses[0])
				if !ok || family(a) != want || !fams.has(a) {
					continue
				}
				e := endpoint(a, port, se)
				if j, dup := index[e.AddrPort()]; dup {
					if rank(&e) > rank(&out[j]) {
						out[j] = e
					}
					continue
				}
				index[e.AddrPort()] = len(out)
				out = append(out, e)
			}
		}
	}
	slices.SortFunc(out, func(a, b dataplane.Endpoint) int { return a.AddrPort().Compare(b.AddrPort()) })
	return out
}

// rank orders copies of one endpoint: ready, then serving and terminating,
// then the rest.
func rank(e *dataplane.Endpoint) int {
	switch {
	case e.Ready:
		return 2
	case e.Serving && e.Terminating:
		return 1
	}
	return 0
}

func endpoint(a netip.Addr, port uint16, se *discoveryv1.Endpoint) dataplane.Endpoint {
	c := se.Conditions
	e := dataplane.Endpoint{
		Addr:        a,
		Port:        port,
		Ready:       c.Ready == nil || *c.Ready,
		Serving:     c.Serving == nil || *c.Serving,
		Terminating: c.Terminating != nil && *c.Terminating,
	}
	if se.NodeName != nil {
		e.NodeName = *se.NodeName
	}
	if se.Zone != nil {
		e.Zone = *se.Zone
	}
	if h := se.Hints; h != nil {
		for _, z := range h.ForZones {
			e.ForZones = append(e.ForZones, z.Name)
		}
		for _, n := range h.ForNodes {
			e.ForNodes = append(e.ForNodes, n.Name)
		}
	}
	return e
}

// protocol maps a Kubernetes protocol, "" meaning TCP.
func protocol(p corev1.Protocol) (dataplane.Protocol, bool) {
	if p == "" {
		return dataplane.TCP, true
	}
	proto, err := dataplane.ParseProtocol(string(p))
	return proto, err == nil
}

// portNumber returns n as a port when it is 1-65535.
func portNumber(n int32) (uint16, bool) {
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// parseAddrs parses the unicast addresses of families in list, without
// repeats.
func parseAddrs(list []string, fams families) []netip.Addr {
	var out []netip.Addr
	for _, s := range list {
		if a, ok := parseAddr(s); ok && fams.has(a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// parseAddr parses a unicast service or endpoint address the way
// Kubernetes reads it: IPv4-mapped IPv6 as IPv4, leading zeros in IPv4 as
// decimal.
func parseAddr(s string) (netip.Addr, bool) {
	a, ok := parseIP(s)
	if !ok || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, false
	}
	return a, true
}

// parseIP parses any IP address, unmapping IPv4-mapped IPv6 ones.
func parseIP(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return parseLegacyIPv4(s)
	}
	return a.Unmap(), true
}

// parseLegacyIPv4 parses dotted-decimal IPv4 with leading zeros
// ("010.001.002.003" is 10.1.2.3), which older Kubernetes versions
// accepted and still read that way.
func parseLegacyIPv4(s string) (netip.Addr, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return netip.Addr{}, false
		}
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil {
			return netip.Addr{}, false
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b), true
}

// parsePrefix parses a loadBalancerSourceRanges entry: a CIDR or a bare
// IP, possibly padded with spaces. The prefix is returned masked;
// IPv4-mapped prefixes of /96 or longer are taken as IPv4.
func parsePrefix(s string) (netip.Prefix, bool) {
	addr, bits, hasBits := strings.Cut(strings.TrimSpace(s), "/")
	raw, err := netip.ParseAddr(addr)
	if err != nil {
		var ok bool
		if raw, ok = parseLegacyIPv4(addr); !ok {
			return netip.Prefix{}, false
		}
	}
	if raw.Zone() != "" {
		return netip.Prefix{}, false
	}
	a, n := raw.Unmap(), raw.Unmap().BitLen()
	if hasBits {
		if bits == "" || strings.Trim(bits, "0123456789") != "" {
			return netip.Prefix{}, false
		}
		v, err := strconv.ParseUint(bits, 10, 8)
		if err != nil {
			return netip.Prefix{}, false
		}
		switch n = int(v); {
		case raw.Is4In6() && n < 96:
			a = raw // wider than the mapped range: an IPv6 prefix
		case raw.Is4In6():
			n -= 96
		}
	}
	p := netip.PrefixFrom(a, n)
	if !p.IsValid() {
		return netip.Prefix{}, false
	}
	return p.Masked(), true
}
