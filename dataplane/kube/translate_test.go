package kube_test

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/dataplane/kube"
)

var (
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

// translate runs Translate, checks that its result validates and does not
// depend on the order of the inputs, and returns it.
func translate(t *testing.T, svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice) *dataplane.State {
	t.Helper()
	s := kube.Translate(svcs, eps, &dataplane.Node{Name: "node-a"})
	if err := s.Validate(); err != nil {
		t.Fatalf("Translate's State does not validate: %v", err)
	}
	again := kube.Translate(reversed(svcs), reversed(eps), nil)
	if !reflect.DeepEqual(s, again) {
		t.Fatalf("Translate depends on input order:\n%+v\n%+v", s, again)
	}
	return s
}

func reversed[T any](s []T) []T {
	s = slices.Clone(s)
	slices.Reverse(s)
	return s
}

// portOf returns the port named name ("namespace/name:port"), or nil.
func portOf(s *dataplane.State, name string) *dataplane.ServicePort {
	for i := range s.Ports {
		if s.Ports[i].Name.String() == name {
			return &s.Ports[i]
		}
	}
	return nil
}

func mustPort(t *testing.T, s *dataplane.State, name string) *dataplane.ServicePort {
	t.Helper()
	p := portOf(s, name)
	if p == nil {
		t.Fatalf("no port %s in %v", name, portNames(s))
	}
	return p
}

func portNames(s *dataplane.State) []string {
	var out []string
	for _, p := range s.Ports {
		out = append(out, p.Name.String())
	}
	return out
}

func readyAt(addr, node string) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: ip(addr), Port: 8080, NodeName: node, Ready: true, Serving: true}
}

func TestTranslateClassroom(t *testing.T) {
	svcs, eps := classroom()
	got := translate(t, svcs, eps)
	web := []dataplane.Endpoint{
		readyAt("198.18.1.10", "node-a"), readyAt("198.18.1.11", "node-a"), readyAt("198.18.2.10", "node-b"),
	}
	want := &dataplane.State{Ports: []dataplane.ServicePort{
		{
			Name:       dataplane.PortName{Namespace: "default", Name: "example-endpoints"},
			Protocol:   dataplane.TCP,
			Port:       80,
			ClusterIPs: []netip.Addr{ip("198.19.0.12")},
			Endpoints:  []dataplane.Endpoint{readyAt("198.18.3.10", ""), readyAt("198.18.3.11", "")},
		},
		{
			Name:       dataplane.PortName{Namespace: "default", Name: "svc-web", Port: "http"},
			Protocol:   dataplane.TCP,
			Port:       80,
			ClusterIPs: []netip.Addr{ip("198.19.0.10")},
			Endpoints:  web,
		},
		{
			Name:       dataplane.PortName{Namespace: "default", Name: "svc-web-node", Port: "http"},
			Protocol:   dataplane.TCP,
			Port:       80,
			NodePort:   30123,
			ClusterIPs: []netip.Addr{ip("198.19.0.11")},
			Endpoints:  web,
		},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Translate =\n%+v\nwant\n%+v", got, want)
	}
}

func TestTranslateSkips(t *testing.T) {
	proxied := svcWeb()
	proxied.Labels = map[string]string{kube.LabelServiceProxyName: "other-proxy"}
	emptyLabel := svcWeb()
	emptyLabel.Labels = map[string]string{kube.LabelServiceProxyName: ""}
	headlessLabel := svcWeb()
	headlessLabel.Labels = map[string]string{corev1.IsHeadlessService: ""}
	noClusterIP := svcWeb()
	noClusterIP.Spec.ClusterIP, noClusterIP.Spec.ClusterIPs = "", nil
	badClusterIP := svcWeb()
	badClusterIP.Spec.ClusterIP, badClusterIP.Spec.ClusterIPs = "198.19.0.300", []string{"198.19.0.300"}
	headlessIPs := svcWeb()
	headlessIPs.Spec.ClusterIP, headlessIPs.Spec.ClusterIPs = "", []string{"None"}
	noNamespace := svcWeb()
	noNamespace.Namespace = ""
	for name, svc := range map[string]*corev1.Service{
		"ExternalName":                   svcExt(),
		"headless":                       svcHeadless(),
		"headless in clusterIPs":         headlessIPs,
		"service-proxy-name label":       proxied,
		"empty service-proxy-name label": emptyLabel,
		"headless label":                 headlessLabel,
		"no cluster IP":                  noClusterIP,
		"unparsable cluster IP":          badClusterIP,
		"no namespace":                   noNamespace,
		"nil":                            nil,
	} {
		t.Run(name, func(t *testing.T) {
			eps := []*discoveryv1.EndpointSlice{controllerSlice("svc-web", "svc-web-x8kz2", webPods)}
			if s := translate(t, []*corev1.Service{svc}, eps); len(s.Ports) != 0 {
				t.Errorf("Translate = %v, want no ports", portNames(s))
			}
		})
	}
}

func TestTranslateSliceSelection(t *testing.T) {
	good := controllerSlice("svc-web", "svc-web-good", webPods[:1])
	otherNS := controllerSlice("svc-web", "svc-web-other-ns", webPods[1:2])
	otherNS.Namespace = "other"
	unlabelled := controllerSlice("svc-web", "svc-web-unlabelled", webPods[1:2])
	delete(unlabelled.Labels, discoveryv1.LabelServiceName)
	otherSvc := controllerSlice("svc-web-node", "svc-web-node-1", webPods[1:2])
	proxied := controllerSlice("svc-web", "svc-web-proxied", webPods[1:2])
	proxied.Labels[kube.LabelServiceProxyName] = "other-proxy"
	fqdn := controllerSlice("svc-web", "svc-web-fqdn", nil)
	fqdn.AddressType = discoveryv1.AddressTypeFQDN
	fqdn.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"web-2.example.com"}}}

	s := translate(t, []*corev1.Service{svcWeb()},
		[]*discoveryv1.EndpointSlice{good, otherNS, unlabelled, otherSvc, proxied, fqdn, nil})
	p := mustPort(t, s, "default/svc-web:http")
	if want := []dataplane.Endpoint{readyAt("198.18.1.10", "node-a")}; !reflect.DeepEqual(p.Endpoints, want) {
		t.Errorf("endpoints = %+v, want only the labelled slice's %+v", p.Endpoints, want)
	}
}

func TestTranslatePortMatching(t *testing.T) {
	svc := svcWeb()
	svc.Spec.Ports = []corev1.ServicePort{
		httpPort(0),
		{Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9090},
		{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
		{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53},
	}
	slice := controllerSlice("svc-web", "svc-web-1", webPods[:1])
	slice.Ports = []discoveryv1.EndpointPort{
		{Name: ptr("metrics"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(9100))},
		{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))},
		{Name: ptr("dns"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(5353))}, // wrong protocol
		{Name: ptr("dns-tcp"), Port: ptr(int32(5353))},                                // protocol defaults to TCP
		{Name: ptr("unused"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(1234))},
	}
	// A second slice: the same named port can target another number on
	// other pods (a named targetPort).
	other := controllerSlice("svc-web", "svc-web-2", webPods[2:])
	other.Ports = []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8081))}}
	s := translate(t, []*corev1.Service{svc}, []*discoveryv1.EndpointSlice{slice, other})

	targets := func(name string) []string {
		var out []string
		for _, e := range mustPort(t, s, name).Endpoints {
			out = append(out, e.AddrPort().String())
		}
		return out
	}
	for name, want := range map[string][]string{
		"default/svc-web:http":    {"198.18.1.10:8080", "198.18.2.10:8081"},
		"default/svc-web:metrics": {"198.18.1.10:9100"},
		"default/svc-web:dns":     nil,
		"default/svc-web:dns-tcp": {"198.18.1.10:5353"},
	} {
		if got := targets(name); !slices.Equal(got, want) {
			t.Errorf("%s: endpoints %v, want %v", name, got, want)
		}
	}
	if p := mustPort(t, s, "default/svc-web:dns"); p.Protocol != dataplane.UDP || p.Port != 53 {
		t.Errorf("dns: %v/%d, want UDP/53", p.Protocol, p.Port)
	}
}

func TestTranslatePorts(t *testing.T) {
	svc := svcWeb()
	svc.Spec.Ports = []corev1.ServicePort{
		{Name: "default-tcp", Port: 81},
		{Name: "sctp", Protocol: corev1.ProtocolSCTP, Port: 82},
		{Name: "unknown", Protocol: "ICMP", Port: 83},
		{Name: "zero", Protocol: corev1.ProtocolTCP, Port: 0},
		{Name: "too-big", Protocol: corev1.ProtocolTCP, Port: 65536},
		{Name: "default-tcp", Protocol: corev1.ProtocolUDP, Port: 84}, // repeated name
		{Name: "with-node-port", Protocol: corev1.ProtocolTCP, Port: 85, NodePort: 30085},
	}
	s := translate(t, []*corev1.Service{svc}, nil)
	if got, want := portNames(s), []string{"default/svc-web:default-tcp", "default/svc-web:sctp", "default/svc-web:with-node-port"}; !slices.Equal(got, want) {
		t.Fatalf("ports %v, want %v", got, want)
	}
	if p := s.Ports[0]; p.Protocol != dataplane.TCP || p.Port != 81 {
		t.Errorf("default-tcp: %v/%d", p.Protocol, p.Port)
	}
	if p := s.Ports[1]; p.Protocol != dataplane.SCTP {
		t.Errorf("sctp: %v", p.Protocol)
	}
	// A ClusterIP Service has no NodePort, whatever its ports say.
	if p := s.Ports[2]; p.NodePort != 0 {
		t.Errorf("ClusterIP service got NodePort %d", p.NodePort)
	}
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	if p := mustPort(t, translate(t, []*corev1.Service{svc}, nil), "default/svc-web:with-node-port"); p.NodePort != 30085 {
		t.Errorf("LoadBalancer service: NodePort %d, want 30085", p.NodePort)
	}
}

func TestTranslateConditions(t *testing.T) {
	cond := func(ready, serving, terminating *bool) discoveryv1.EndpointConditions {
		return discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
	yes, no := ptr(true), ptr(false)
	tests := []struct {
		name                        string
		cond                        discoveryv1.EndpointConditions
		ready, serving, terminating bool
	}{
		{"all unset", cond(nil, nil, nil), true, true, false},
		{"ready", cond(yes, yes, no), true, true, false},
		{"not ready", cond(no, no, no), false, false, false},
		{"not ready, serving unset", cond(no, nil, nil), false, true, false},
		{"terminating, serving", cond(no, yes, yes), false, true, true},
		{"terminating, not serving", cond(no, no, yes), false, false, true},
		{"ready unset, terminating", cond(nil, nil, yes), true, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			slice := controllerSlice("svc-web", "svc-web-1", webPods[:1])
			slice.Endpoints[0].Conditions = tt.cond
			p := mustPort(t, translate(t, []*corev1.Service{svcWeb()}, []*discoveryv1.EndpointSlice{slice}), "default/svc-web:http")
			if len(p.Endpoints) != 1 {
				t.Fatalf("endpoints %+v", p.Endpoints)
			}
			e := p.Endpoints[0]
			if e.Ready != tt.ready || e.Serving != tt.serving || e.Terminating != tt.terminating {
				t.Errorf("ready, serving, terminating = %v, %v, %v; want %v, %v, %v",
					e.Ready, e.Serving, e.Terminating, tt.ready, tt.serving, tt.terminating)
			}
		})
	}
}

func TestTranslateEndpointFields(t *testing.T) {
	slice := controllerSlice("svc-web", "svc-web-1", webPods[:1])
	slice.Endpoints[0].Zone = ptr("zone-a")
	slice.Endpoints[0].Hints = &discoveryv1.EndpointHints{
		ForZones: []discoveryv1.ForZone{{Name: "zone-a"}, {Name: "zone-b"}},
		ForNodes: []discoveryv1.ForNode{{Name: "node-a"}},
	}
	// Only the first address counts, as in kube-proxy.
	slice.Endpoints[0].Addresses = []string{"198.18.1.10", "198.18.1.99"}
	slice.Endpoints = append(slice.Endpoints,
		discoveryv1.Endpoint{Addresses: nil},                         // no address
		discoveryv1.Endpoint{Addresses: []string{"not-an-ip"}},       // unparsable
		discoveryv1.Endpoint{Addresses: []string{"224.0.0.5"}},       // multicast
		discoveryv1.Endpoint{Addresses: []string{"198.018.001.012"}}, // legacy leading zeros
	)
	p := mustPort(t, translate(t, []*corev1.Service{svcWeb()}, []*discoveryv1.EndpointSlice{slice}), "default/svc-web:http")
	want := []dataplane.Endpoint{
		{Addr: ip("198.18.1.10"), Port: 8080, NodeName: "node-a", Zone: "zone-a", Ready: true, Serving: true,
			ForZones: []string{"zone-a", "zone-b"}, ForNodes: []string{"node-a"}},
		{Addr: ip("198.18.1.12"), Port: 8080, Ready: true, Serving: true},
	}
	if !reflect.DeepEqual(p.Endpoints, want) {
		t.Errorf("endpoints\n%+v\nwant\n%+v", p.Endpoints, want)
	}
}

func TestTranslateDedupe(t *testing.T) {
	notReady := controllerSlice("svc-web", "a-not-ready", webPods)
	for i := range notReady.Endpoints {
		notReady.Endpoints[i].Conditions = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}
	}
	ready := controllerSlice("svc-web", "b-ready", webPods[1:])
	gone := controllerSlice("svc-web", "c-gone", webPods[:1])
	gone.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(false), Terminating: ptr(true)}
	// The same address on another port is another endpoint.
	otherPort := controllerSlice("svc-web", "d-other-port", webPods[:1])
	otherPort.Ports[0].Port = ptr(int32(8081))
	// A slice listing one endpoint twice.
	twice := controllerSlice("svc-web", "e-twice", []pod{{"web-4", "198.18.2.11", "node-b"}, {"web-4", "198.18.2.11", "node-b"}})

	s := translate(t, []*corev1.Service{svcWeb()}, []*discoveryv1.EndpointSlice{notReady, ready, gone, otherPort, twice})
	p := mustPort(t, s, "default/svc-web:http")
	type ep struct {
		addr  string
		ready bool
	}
	var got []ep
	for _, e := range p.Endpoints {
		got = append(got, ep{e.AddrPort().String(), e.Ready})
	}
	want := []ep{
		{"198.18.1.10:8080", false}, // only the serving-terminating copy beats c-gone's
		{"198.18.1.10:8081", true},
		{"198.18.1.11:8080", true}, // the ready copy wins
		{"198.18.2.10:8080", true},
		{"198.18.2.11:8080", true},
	}
	if !slices.Equal(got, want) {
		t.Errorf("endpoints %v, want %v", got, want)
	}
	if e := p.Endpoints[0]; !e.Serving || !e.Terminating {
		t.Errorf("kept %+v, want the serving, terminating copy", e)
	}
}

func TestTranslateDualStack(t *testing.T) {
	dual := svcWeb()
	dual.Spec.IPFamilyPolicy = ptr(corev1.IPFamilyPolicyPreferDualStack)
	dual.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	dual.Spec.ClusterIP = "2001:db8:ffff::10"
	dual.Spec.ClusterIPs = []string{"2001:db8:ffff::10", "198.19.0.10"}
	dual.Spec.ExternalIPs = []string{"203.0.113.10", "2001:db8:beef::10"}

	single := svcWebNode()
	single.Spec.ExternalIPs = []string{"203.0.113.11", "2001:db8:beef::11"}
	single.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24", "2001:db8::/64"}

	v4 := controllerSlice("svc-web", "svc-web-v4", webPods)
	v6 := controllerSlice("svc-web", "svc-web-v6", []pod{
		{"web-1", "2001:db8:1::10", "node-a"}, {"web-3", "2001:db8:2::10", "node-b"},
	})
	v6.AddressType = discoveryv1.AddressTypeIPv6
	v4Node := controllerSlice("svc-web-node", "svc-web-node-v4", webPods[:1])
	v6Node := controllerSlice("svc-web-node", "svc-web-node-v6", []pod{{"web-1", "2001:db8:1::10", "node-a"}})
	v6Node.AddressType = discoveryv1.AddressTypeIPv6
	// An IPv6 address in an IPv4 slice is not taken.
	mixed := controllerSlice("svc-web", "svc-web-mixed", []pod{{"web-9", "2001:db8:1::99", "node-a"}})

	s := translate(t, []*corev1.Service{dual, single}, []*discoveryv1.EndpointSlice{v4, v6, v4Node, v6Node, mixed})
	p := mustPort(t, s, "default/svc-web:http")
	if want := []netip.Addr{ip("2001:db8:ffff::10"), ip("198.19.0.10")}; !slices.Equal(p.ClusterIPs, want) {
		t.Errorf("dual-stack cluster IPs %v, want %v (primary family first)", p.ClusterIPs, want)
	}
	if want := []netip.Addr{ip("203.0.113.10"), ip("2001:db8:beef::10")}; !slices.Equal(p.ExternalIPs, want) {
		t.Errorf("dual-stack external IPs %v, want %v", p.ExternalIPs, want)
	}
	var addrs []string
	for _, e := range p.Endpoints {
		addrs = append(addrs, e.Addr.String())
	}
	if want := []string{"198.18.1.10", "198.18.1.11", "198.18.2.10", "2001:db8:1::10", "2001:db8:2::10"}; !slices.Equal(addrs, want) {
		t.Errorf("dual-stack endpoints %v, want %v", addrs, want)
	}

	// The IPv4-only Service drops what is IPv6.
	q := mustPort(t, s, "default/svc-web-node:http")
	if len(q.Endpoints) != 1 || !q.Endpoints[0].Addr.Is4() {
		t.Errorf("single-stack endpoints %+v, want the IPv4 one", q.Endpoints)
	}
	if want := []netip.Addr{ip("203.0.113.11")}; !slices.Equal(q.ExternalIPs, want) {
		t.Errorf("single-stack external IPs %v, want %v", q.ExternalIPs, want)
	}
	if want := []netip.Prefix{pfx("192.0.2.0/24")}; !slices.Equal(q.SourceRanges, want) {
		t.Errorf("single-stack source ranges %v, want %v", q.SourceRanges, want)
	}
}

func TestTranslateAddresses(t *testing.T) {
	svc := svcWeb()
	svc.Spec.ClusterIPs = []string{"::ffff:198.19.0.10", "198.19.0.99"} // mapped: IPv4; then a second IPv4
	svc.Spec.ExternalIPs = []string{"203.0.113.10", "bogus", "0.0.0.0", "224.0.0.1", "fe80::1%eth0",
		"203.0.113.10", "203.000.113.011"}
	s := translate(t, []*corev1.Service{svc}, nil)
	p := mustPort(t, s, "default/svc-web:http")
	if want := []netip.Addr{ip("198.19.0.10")}; !slices.Equal(p.ClusterIPs, want) {
		t.Errorf("cluster IPs %v, want %v", p.ClusterIPs, want)
	}
	if want := []netip.Addr{ip("203.0.113.10"), ip("203.0.113.11")}; !slices.Equal(p.ExternalIPs, want) {
		t.Errorf("external IPs %v, want %v", p.ExternalIPs, want)
	}
}

func TestTranslateLoadBalancer(t *testing.T) {
	svc := svcWebNode()
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
		{IP: "203.0.113.20"},
		{IP: "203.0.113.21", IPMode: ptr(corev1.LoadBalancerIPModeVIP)},
		{IP: "203.0.113.22", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
		{Hostname: "lb.example.com"},
		{IP: "2001:db8:beef::20"}, // no IPv6 cluster IP
		{IP: "203.0.113.20"},
	}
	svc.Spec.LoadBalancerSourceRanges = []string{
		" 192.0.2.0/24 ", "203.0.113.7", "198.51.100.77/25", "bogus", "192.0.2.0/33", "::ffff:198.51.100.0/120", "192.0.2.0/24",
	}
	p := mustPort(t, translate(t, []*corev1.Service{svc}, nil), "default/svc-web-node:http")
	if want := []netip.Addr{ip("203.0.113.20"), ip("203.0.113.21")}; !slices.Equal(p.LoadBalancerIPs, want) {
		t.Errorf("load-balancer IPs %v, want %v", p.LoadBalancerIPs, want)
	}
	want := []netip.Prefix{pfx("192.0.2.0/24"), pfx("203.0.113.7/32"), pfx("198.51.100.0/25"), pfx("198.51.100.0/24")}
	if !slices.Equal(p.SourceRanges, want) {
		t.Errorf("source ranges %v, want %v", p.SourceRanges, want)
	}
	if p.NodePort != 30123 {
		t.Errorf("NodePort %d, want 30123", p.NodePort)
	}
}

func TestTranslateAffinity(t *testing.T) {
	cfg := func(secs *int32) *corev1.SessionAffinityConfig {
		return &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: secs}}
	}
	tests := []struct {
		name     string
		affinity corev1.ServiceAffinity
		cfg      *corev1.SessionAffinityConfig
		want     time.Duration
	}{
		{"None", corev1.ServiceAffinityNone, nil, 0},
		{"unset", "", nil, 0},
		{"None ignores config", corev1.ServiceAffinityNone, cfg(ptr(int32(60))), 0},
		{"ClientIP without config", corev1.ServiceAffinityClientIP, nil, 10800 * time.Second},
		{"ClientIP without clientIP", corev1.ServiceAffinityClientIP, &corev1.SessionAffinityConfig{}, 10800 * time.Second},
		{"ClientIP without timeout", corev1.ServiceAffinityClientIP, cfg(nil), 10800 * time.Second},
		{"ClientIP 60s", corev1.ServiceAffinityClientIP, cfg(ptr(int32(60))), time.Minute},
		{"ClientIP 1s", corev1.ServiceAffinityClientIP, cfg(ptr(int32(1))), time.Second},
		{"ClientIP 24h", corev1.ServiceAffinityClientIP, cfg(ptr(int32(86400))), 24 * time.Hour},
		{"ClientIP 0s", corev1.ServiceAffinityClientIP, cfg(ptr(int32(0))), 10800 * time.Second},
		{"ClientIP too long", corev1.ServiceAffinityClientIP, cfg(ptr(int32(86401))), 10800 * time.Second},
	}
	for _, tt := range tests {
		svc := svcWeb()
		svc.Spec.SessionAffinity, svc.Spec.SessionAffinityConfig = tt.affinity, tt.cfg
		if got := mustPort(t, translate(t, []*corev1.Service{svc}, nil), "default/svc-web:http").Affinity; got != tt.want {
			t.Errorf("%s: affinity %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestTranslatePolicies(t *testing.T) {
	local := corev1.ServiceExternalTrafficPolicyLocal
	tests := []struct {
		name                          string
		typ                           corev1.ServiceType
		externalIPs                   []string
		etp                           corev1.ServiceExternalTrafficPolicy
		itp                           *corev1.ServiceInternalTrafficPolicy
		externalLocal, internalLocal  bool
		healthCheckNodePort, nodePort uint16
	}{
		{"ClusterIP, eTP Local ignored", corev1.ServiceTypeClusterIP, nil, local, nil, false, false, 0, 0},
		{"ClusterIP with external IPs", corev1.ServiceTypeClusterIP, []string{"203.0.113.10"}, local, nil, true, false, 0, 0},
		{"unset type with external IPs", "", []string{"203.0.113.10"}, local, nil, true, false, 0, 0},
		{"NodePort Local", corev1.ServiceTypeNodePort, nil, local, nil, true, false, 0, 30123},
		{"NodePort Cluster", corev1.ServiceTypeNodePort, nil, corev1.ServiceExternalTrafficPolicyCluster, nil, false, false, 0, 30123},
		{"LoadBalancer Local", corev1.ServiceTypeLoadBalancer, nil, local, nil, true, false, 32000, 30123},
		{"LoadBalancer Cluster", corev1.ServiceTypeLoadBalancer, nil, "Cluster", nil, false, false, 0, 30123},
		{"iTP Local", corev1.ServiceTypeClusterIP, nil, "", ptr(corev1.ServiceInternalTrafficPolicyLocal), false, true, 0, 0},
		{"iTP Cluster", corev1.ServiceTypeClusterIP, nil, "", ptr(corev1.ServiceInternalTrafficPolicyCluster), false, false, 0, 0},
		{"both Local", corev1.ServiceTypeLoadBalancer, nil, local, ptr(corev1.ServiceInternalTrafficPolicyLocal), true, true, 32000, 30123},
	}
	for _, tt := range tests {
		svc := svcWebNode()
		svc.Spec.Type, svc.Spec.ExternalIPs = tt.typ, tt.externalIPs
		svc.Spec.ExternalTrafficPolicy, svc.Spec.InternalTrafficPolicy = tt.etp, tt.itp
		svc.Spec.HealthCheckNodePort = 32000
		p := mustPort(t, translate(t, []*corev1.Service{svc}, nil), "default/svc-web-node:http")
		if p.ExternalLocal != tt.externalLocal || p.InternalLocal != tt.internalLocal ||
			p.HealthCheckNodePort != tt.healthCheckNodePort || p.NodePort != tt.nodePort {
			t.Errorf("%s: externalLocal %v, internalLocal %v, healthCheckNodePort %d, nodePort %d; want %v, %v, %d, %d",
				tt.name, p.ExternalLocal, p.InternalLocal, p.HealthCheckNodePort, p.NodePort,
				tt.externalLocal, tt.internalLocal, tt.healthCheckNodePort, tt.nodePort)
		}
	}
}

// TestTranslateConflicts checks how Translate resolves frontends that two
// ports claim, which Kubernetes allows and Validate does not.
func TestTranslateConflicts(t *testing.T) {
	named := func(name string, s *corev1.Service) *corev1.Service { s.Name = name; return s }

	// Two Services claim external IP 203.0.113.10:80/TCP; the first by
	// name keeps it.
	a := named("a", svcWeb())
	a.Spec.ExternalIPs = []string{"203.0.113.10"}
	b := named("b", svcWebNode())
	b.Spec.ExternalIPs = []string{"203.0.113.10", "203.0.113.11"}
	// c's external IP is a's cluster IP: cluster IPs always win.
	c := named("c", clusterIPService("", "198.19.0.30", httpPort(0)))
	c.Spec.ExternalIPs = []string{"198.19.0.10"}
	// d copies b's cluster IP and NodePort: it loses the cluster IP, and
	// with it the whole port.
	d := named("d", svcWebNode())
	// e takes b's NodePort on another cluster IP: it loses the NodePort.
	e := named("e", svcWebNode())
	e.Spec.ClusterIP, e.Spec.ClusterIPs = "198.19.0.50", []string{"198.19.0.50"}
	// f's load-balancer IP is b's external IP: load-balancer IPs are
	// claimed before external IPs.
	f := named("f", clusterIPService("", "198.19.0.60", httpPort(0)))
	f.Spec.Type = corev1.ServiceTypeLoadBalancer
	f.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.11"}}
	// g uses a's external IP on another port and protocol: no conflict.
	g := named("g", clusterIPService("", "198.19.0.70", corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 80}))
	g.Spec.ExternalIPs = []string{"203.0.113.10"}

	s := translate(t, []*corev1.Service{g, f, e, d, c, b, a}, nil)
	if got, want := portNames(s), []string{"default/a:http", "default/b:http", "default/c:http", "default/e:http", "default/f:http", "default/g:dns"}; !slices.Equal(got, want) {
		t.Fatalf("ports %v, want %v", got, want)
	}
	check := func(name string, got, want []netip.Addr) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	check("a external IPs", s.Ports[0].ExternalIPs, []netip.Addr{ip("203.0.113.10")})
	check("b external IPs", s.Ports[1].ExternalIPs, nil)
	check("c external IPs", s.Ports[2].ExternalIPs, nil)
	check("f load-balancer IPs", s.Ports[4].LoadBalancerIPs, []netip.Addr{ip("203.0.113.11")})
	check("g external IPs", s.Ports[5].ExternalIPs, []netip.Addr{ip("203.0.113.10")})
	if s.Ports[1].NodePort != 30123 || s.Ports[3].NodePort != 0 {
		t.Errorf("NodePorts b=%d e=%d, want 30123 and 0", s.Ports[1].NodePort, s.Ports[3].NodePort)
	}
}

func TestTranslateDuplicateServices(t *testing.T) {
	first, second := svcWeb(), svcWeb()
	second.Spec.Ports[0].Port = 8000
	s := kube.Translate([]*corev1.Service{first, second}, nil, nil)
	if len(s.Ports) != 1 || s.Ports[0].Port != 80 {
		t.Errorf("ports %+v, want only the first Service's", s.Ports)
	}
}

// TestTranslateDoesNotAlias checks that the State shares no memory with
// the objects.
func TestTranslateDoesNotAlias(t *testing.T) {
	svcs, eps := classroom()
	eps[0].Endpoints[0].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}}
	s := kube.Translate(svcs, eps, nil)
	for i := range s.Ports {
		p := &s.Ports[i]
		p.ClusterIPs[0] = ip("198.19.9.9")
		for j := range p.Endpoints {
			p.Endpoints[j].Addr = ip("198.18.9.9")
			for k := range p.Endpoints[j].ForZones {
				p.Endpoints[j].ForZones[k] = "changed"
			}
		}
	}
	svcs2, eps2 := classroom()
	eps2[0].Endpoints[0].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}}
	if !reflect.DeepEqual(svcs, svcs2) || !reflect.DeepEqual(eps, eps2) {
		t.Error("changing the State changed the objects")
	}
	// svc-web and svc-web-node got their own copies too.
	s = kube.Translate(svcs, eps, nil)
	s.Ports[1].Endpoints[0].Port = 1
	if s.Ports[2].Endpoints[0].Port != 8080 {
		t.Error("ports share endpoint memory")
	}
}
