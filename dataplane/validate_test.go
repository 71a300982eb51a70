package dataplane_test

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svcplane/svcplane/dataplane"
)

var (
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

// validState is a dual-stack State using every field: ports[0] is a
// dual-stack TCP LoadBalancer port, ports[1] an IPv4-only UDP port.
func validState() *dataplane.State {
	return &dataplane.State{Ports: []dataplane.ServicePort{
		{
			Name:                dataplane.PortName{Namespace: "default", Name: "web", Port: "http"},
			Protocol:            dataplane.TCP,
			Port:                80,
			NodePort:            30080,
			ClusterIPs:          []netip.Addr{ip("198.19.0.10"), ip("2001:db8:ffff::10")},
			ExternalIPs:         []netip.Addr{ip("203.0.113.10"), ip("2001:db8:beef::10")},
			LoadBalancerIPs:     []netip.Addr{ip("203.0.113.20"), ip("2001:db8:beef::20")},
			SourceRanges:        []netip.Prefix{pfx("192.0.2.0/24"), pfx("2001:db8::/64")},
			Affinity:            3 * time.Hour,
			ExternalLocal:       true,
			HealthCheckNodePort: 30081,
			Endpoints: []dataplane.Endpoint{
				{Addr: ip("198.18.1.10"), Port: 8080, NodeName: "node-a", Ready: true, Serving: true},
				{Addr: ip("198.18.2.10"), Port: 8080, NodeName: "node-b", Serving: true, Terminating: true},
				{Addr: ip("2001:db8:1::10"), Port: 8080, NodeName: "node-a", Ready: true, Serving: true},
			},
		},
		{
			Name:       dataplane.PortName{Namespace: "kube-system", Name: "dns", Port: "dns"},
			Protocol:   dataplane.UDP,
			Port:       53,
			ClusterIPs: []netip.Addr{ip("198.19.0.53")},
			Endpoints: []dataplane.Endpoint{
				{Addr: ip("198.18.1.53"), Port: 53, NodeName: "node-a", Ready: true, Serving: true},
			},
		},
	}}
}

func TestValidateValid(t *testing.T) {
	for name, s := range map[string]*dataplane.State{
		"zero":       {},
		"empty":      {Ports: []dataplane.ServicePort{}},
		"dual-stack": validState(),
	} {
		if err := s.Validate(); err != nil {
			t.Errorf("%s: Validate() = %v, want nil", name, err)
		}
	}
}

func TestValidateNil(t *testing.T) {
	var s *dataplane.State
	errs := dataplane.FieldErrors(s.Validate())
	if len(errs) != 1 || errs[0].Path != "state" {
		t.Fatalf("nil State: got %v, want one error at path state", errs)
	}
}

// TestValidateRules has one case per rule in Validate's doc comment. Each
// case changes validState and lists the exact paths of the errors it
// expects, in order; no paths means the change is valid.
func TestValidateRules(t *testing.T) {
	web := func(s *dataplane.State) *dataplane.ServicePort { return &s.Ports[0] }
	dns := func(s *dataplane.State) *dataplane.ServicePort { return &s.Ports[1] }
	// sameAsWeb makes the dns port TCP/80 so that it can collide with web's
	// frontends.
	sameAsWeb := func(s *dataplane.State) { dns(s).Protocol, dns(s).Port = dataplane.TCP, 80 }

	tests := []struct {
		name   string
		change func(s *dataplane.State)
		want   []string
	}{
		// Addresses and prefixes.
		{"invalid external IP", func(s *dataplane.State) { web(s).ExternalIPs[0] = netip.Addr{} },
			[]string{"ports[0].externalIPs[0]"}},
		{"invalid cluster IP", func(s *dataplane.State) { web(s).ClusterIPs = append(web(s).ClusterIPs, netip.Addr{}) },
			[]string{"ports[0].clusterIPs[2]"}},
		{"invalid endpoint address", func(s *dataplane.State) { web(s).Endpoints[2].Addr = netip.Addr{} },
			[]string{"ports[0].endpoints[2].addr"}},
		{"zoned load-balancer IP", func(s *dataplane.State) { web(s).LoadBalancerIPs[1] = ip("fe80::1%eth0") },
			[]string{"ports[0].loadBalancerIPs[1]"}},
		{"zoned endpoint", func(s *dataplane.State) { web(s).Endpoints[2].Addr = ip("fe80::10%eth0") },
			[]string{"ports[0].endpoints[2].addr"}},
		{"4in6 cluster IP", func(s *dataplane.State) {
			web(s).ClusterIPs = append(web(s).ClusterIPs, ip("::ffff:198.19.0.11"))
		}, []string{"ports[0].clusterIPs[2]"}},
		{"4in6 endpoint", func(s *dataplane.State) { web(s).Endpoints[0].Addr = ip("::ffff:198.18.1.10") },
			[]string{"ports[0].endpoints[0].addr"}},
		{"unspecified IPv4 external IP", func(s *dataplane.State) { web(s).ExternalIPs[0] = ip("0.0.0.0") },
			[]string{"ports[0].externalIPs[0]"}},
		{"unspecified IPv6 cluster IP", func(s *dataplane.State) { web(s).ClusterIPs = append(web(s).ClusterIPs, ip("::")) },
			[]string{"ports[0].clusterIPs[2]"}},
		{"multicast load-balancer IP", func(s *dataplane.State) { web(s).LoadBalancerIPs[0] = ip("224.0.0.1") },
			[]string{"ports[0].loadBalancerIPs[0]"}},
		{"multicast endpoint", func(s *dataplane.State) { web(s).Endpoints[2].Addr = ip("ff02::1") },
			[]string{"ports[0].endpoints[2].addr"}},
		{"invalid source range", func(s *dataplane.State) { web(s).SourceRanges[0] = netip.Prefix{} },
			[]string{"ports[0].sourceRanges[0]"}},
		{"source range with too many bits", func(s *dataplane.State) {
			web(s).SourceRanges[1] = netip.PrefixFrom(ip("192.0.2.0"), 33)
		}, []string{"ports[0].sourceRanges[1]"}},
		{"4in6 source range", func(s *dataplane.State) { web(s).SourceRanges[1] = pfx("::ffff:192.0.2.0/120") },
			[]string{"ports[0].sourceRanges[1]"}},

		// Families.
		{"second IPv4 cluster IP", func(s *dataplane.State) {
			web(s).ClusterIPs = append(web(s).ClusterIPs, ip("198.19.0.11"))
		}, []string{"ports[0].clusterIPs[2]"}},
		{"second IPv6 cluster IP", func(s *dataplane.State) {
			web(s).ClusterIPs = append(web(s).ClusterIPs, ip("2001:db8:ffff::11"))
		}, []string{"ports[0].clusterIPs[2]"}},
		{"IPv6 external IP without IPv6 cluster IP", func(s *dataplane.State) {
			dns(s).ExternalIPs = []netip.Addr{ip("203.0.113.53"), ip("2001:db8:beef::53")}
		}, []string{"ports[1].externalIPs[1]"}},
		{"IPv6 load-balancer IP without IPv6 cluster IP", func(s *dataplane.State) {
			dns(s).LoadBalancerIPs = []netip.Addr{ip("2001:db8:beef::53")}
		}, []string{"ports[1].loadBalancerIPs[0]"}},
		{"IPv6 endpoint without IPv6 cluster IP", func(s *dataplane.State) {
			dns(s).Endpoints = append(dns(s).Endpoints, dataplane.Endpoint{Addr: ip("2001:db8:1::53"), Port: 53})
		}, []string{"ports[1].endpoints[1].addr"}},
		{"IPv4 endpoint without IPv4 cluster IP", func(s *dataplane.State) {
			web(s).ClusterIPs = web(s).ClusterIPs[1:]
			web(s).ExternalIPs = web(s).ExternalIPs[1:]
			web(s).LoadBalancerIPs = web(s).LoadBalancerIPs[1:]
		}, []string{"ports[0].endpoints[0].addr", "ports[0].endpoints[1].addr"}},
		{"headless port takes any family", func(s *dataplane.State) {
			dns(s).ClusterIPs = nil
			dns(s).ExternalIPs = []netip.Addr{ip("2001:db8:beef::53")}
			dns(s).Endpoints = append(dns(s).Endpoints, dataplane.Endpoint{Addr: ip("2001:db8:1::53"), Port: 53})
		}, nil},

		// Ports.
		{"port 0", func(s *dataplane.State) { dns(s).Port = 0 }, []string{"ports[1].port"}},
		{"endpoint port 0", func(s *dataplane.State) { web(s).Endpoints[1].Port = 0 },
			[]string{"ports[0].endpoints[1].port"}},
		{"port 65535", func(s *dataplane.State) { dns(s).Port, dns(s).Endpoints[0].Port = 65535, 65535 }, nil},
		{"NodePort and HealthCheckNodePort 0", func(s *dataplane.State) {
			web(s).NodePort, web(s).HealthCheckNodePort = 0, 0
		}, nil},

		// Names.
		{"duplicate PortName", func(s *dataplane.State) { dns(s).Name = web(s).Name }, []string{"ports[1].name"}},
		{"same name, other port", func(s *dataplane.State) { dns(s).Name = web(s).Name; dns(s).Name.Port = "dns" }, nil},
		{"empty namespace", func(s *dataplane.State) { dns(s).Name.Namespace = "" },
			[]string{"ports[1].name.namespace"}},
		{"empty name", func(s *dataplane.State) { dns(s).Name.Name = "" }, []string{"ports[1].name.name"}},
		{"empty namespace and name", func(s *dataplane.State) { dns(s).Name = dataplane.PortName{} },
			[]string{"ports[1].name.namespace", "ports[1].name.name"}},
		{"empty port name", func(s *dataplane.State) { dns(s).Name.Port = "" }, nil},

		// Frontends.
		{"duplicate cluster IP frontend", func(s *dataplane.State) {
			sameAsWeb(s)
			dns(s).ClusterIPs[0] = web(s).ClusterIPs[0]
		}, []string{"ports[1].clusterIPs[0]"}},
		{"same cluster IP, other port", func(s *dataplane.State) {
			dns(s).ClusterIPs[0] = web(s).ClusterIPs[0]
			dns(s).Protocol = dataplane.TCP
		}, nil},
		{"same cluster IP and port, other protocol", func(s *dataplane.State) {
			dns(s).ClusterIPs[0] = web(s).ClusterIPs[0]
			dns(s).Port = 80
		}, nil},
		{"duplicate external IP frontend", func(s *dataplane.State) {
			sameAsWeb(s)
			dns(s).ExternalIPs = []netip.Addr{web(s).ExternalIPs[0]}
		}, []string{"ports[1].externalIPs[0]"}},
		{"duplicate load-balancer IP frontend", func(s *dataplane.State) {
			sameAsWeb(s)
			dns(s).LoadBalancerIPs = []netip.Addr{web(s).LoadBalancerIPs[0]}
		}, []string{"ports[1].loadBalancerIPs[0]"}},
		{"load-balancer IP on another port's cluster IP", func(s *dataplane.State) {
			sameAsWeb(s)
			dns(s).LoadBalancerIPs = []netip.Addr{web(s).ClusterIPs[0]}
		}, []string{"ports[1].loadBalancerIPs[0]"}},
		{"cluster IP on another port's external IP", func(s *dataplane.State) {
			sameAsWeb(s)
			dns(s).ClusterIPs[0] = web(s).ExternalIPs[0]
		}, []string{"ports[1].clusterIPs[0]"}},
		{"duplicate NodePort", func(s *dataplane.State) {
			sameAsWeb(s)
			dns(s).NodePort = web(s).NodePort
		}, []string{"ports[1].nodePort"}},
		{"same NodePort, other protocol", func(s *dataplane.State) { dns(s).NodePort = web(s).NodePort }, nil},
		{"same frontend twice within one port", func(s *dataplane.State) {
			p := web(s)
			p.ExternalIPs = append(p.ExternalIPs, p.ClusterIPs[0], p.ExternalIPs[0])
			p.LoadBalancerIPs = append(p.LoadBalancerIPs, p.ExternalIPs[1], p.LoadBalancerIPs[0])
		}, nil},
		{"duplicate frontend reported on every later port", func(s *dataplane.State) {
			sameAsWeb(s)
			dns(s).ExternalIPs = []netip.Addr{web(s).ExternalIPs[0]}
			third := *dns(s)
			third.Name.Name = "third"
			third.ClusterIPs = []netip.Addr{ip("198.19.0.3")}
			s.Ports = append(s.Ports, third)
		}, []string{"ports[1].externalIPs[0]", "ports[2].externalIPs[0]"}},

		// Affinity.
		{"affinity 1s", func(s *dataplane.State) { web(s).Affinity = time.Second }, nil},
		{"affinity 24h", func(s *dataplane.State) { web(s).Affinity = dataplane.MaxAffinity }, nil},
		{"affinity 0", func(s *dataplane.State) { web(s).Affinity = 0 }, nil},
		{"affinity negative", func(s *dataplane.State) { web(s).Affinity = -time.Second },
			[]string{"ports[0].affinity"}},
		{"affinity below 1s", func(s *dataplane.State) { web(s).Affinity = 500 * time.Millisecond },
			[]string{"ports[0].affinity"}},
		{"affinity above 24h", func(s *dataplane.State) { web(s).Affinity = 24*time.Hour + time.Second },
			[]string{"ports[0].affinity"}},
		{"affinity not whole seconds", func(s *dataplane.State) { web(s).Affinity = 1500 * time.Millisecond },
			[]string{"ports[0].affinity"}},

		// Protocols.
		{"protocol 0", func(s *dataplane.State) { dns(s).Protocol = 0 }, []string{"ports[1].protocol"}},
		{"protocol ICMP", func(s *dataplane.State) { dns(s).Protocol = 1 }, []string{"ports[1].protocol"}},
		{"SCTP", func(s *dataplane.State) { dns(s).Protocol = dataplane.SCTP }, nil},

		// Endpoints.
		{"duplicate endpoint", func(s *dataplane.State) {
			p := web(s)
			e := p.Endpoints[0]
			e.NodeName = "elsewhere"
			p.Endpoints = append(p.Endpoints, e)
		}, []string{"ports[0].endpoints[3]"}},
		{"same endpoint address, other port", func(s *dataplane.State) {
			p := web(s)
			e := p.Endpoints[0]
			e.Port = 8443
			p.Endpoints = append(p.Endpoints, e)
		}, nil},
		{"same endpoint in two ports", func(s *dataplane.State) {
			dns(s).Endpoints[0] = web(s).Endpoints[0]
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validState()
			tt.change(s)
			err := s.Validate()
			errs := dataplane.FieldErrors(err)
			var got []string
			for _, fe := range errs {
				got = append(got, fe.Path)
				if fe.Detail == "" {
					t.Errorf("%s: empty Detail", fe.Path)
				}
				if want := fe.Path + ": " + fe.Detail; fe.Error() != want {
					t.Errorf("Error() = %q, want %q", fe.Error(), want)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("error paths = %q, want %q\nerror: %v", got, tt.want, err)
			}
			if (err == nil) != (len(tt.want) == 0) {
				t.Fatalf("Validate() = %v, want nil: %v", err, len(tt.want) == 0)
			}
		})
	}
}

// TestValidateReportsAll checks that independent problems are all reported
// in one call, in field order.
func TestValidateReportsAll(t *testing.T) {
	s := validState()
	s.Ports[0].Affinity = time.Millisecond
	s.Ports[0].Endpoints[1].Port = 0
	s.Ports[1].Protocol = 0
	err := s.Validate()
	errs := dataplane.FieldErrors(err)
	var paths []string
	for _, fe := range errs {
		paths = append(paths, fe.Path)
	}
	want := []string{"ports[0].affinity", "ports[0].endpoints[1].port", "ports[1].protocol"}
	if !slices.Equal(paths, want) {
		t.Fatalf("paths = %q, want %q", paths, want)
	}
	// The joined error's text lists every problem, one a line.
	if lines := strings.Split(err.Error(), "\n"); len(lines) != 3 {
		t.Errorf("Error() has %d lines, want 3: %q", len(lines), err.Error())
	}
	var fe *dataplane.FieldError
	if !errors.As(err, &fe) || fe.Path != want[0] {
		t.Errorf("errors.As found %v, want the first FieldError", fe)
	}
}

func TestValidateDoesNotModify(t *testing.T) {
	s := validState()
	s.Ports = append(s.Ports, s.Ports[0]) // duplicate everything
	s.Ports[2].ClusterIPs = append(s.Ports[2].ClusterIPs, ip("::ffff:198.19.0.1"))
	before := validState()
	before.Ports = append(before.Ports, before.Ports[0])
	before.Ports[2].ClusterIPs = append(before.Ports[2].ClusterIPs, ip("::ffff:198.19.0.1"))
	if s.Validate() == nil {
		t.Fatal("Validate() = nil, want errors")
	}
	if !reflect.DeepEqual(s, before) {
		t.Error("Validate changed its State")
	}
}

func TestFieldErrors(t *testing.T) {
	a := &dataplane.FieldError{Path: "a", Detail: "x"}
	b := &dataplane.FieldError{Path: "b", Detail: "y"}
	c := &dataplane.FieldError{Path: "c", Detail: "z"}
	tests := []struct {
		name string
		err  error
		want []*dataplane.FieldError
	}{
		{"nil", nil, nil},
		{"single", a, []*dataplane.FieldError{a}},
		{"wrapped", fmt.Errorf("sync: %w", a), []*dataplane.FieldError{a}},
		{"joined", errors.Join(a, b), []*dataplane.FieldError{a, b}},
		{"nested", fmt.Errorf("sync: %w", errors.Join(a, errors.Join(b, errors.New("other")), c)),
			[]*dataplane.FieldError{a, b, c}},
		{"none", errors.New("other"), nil},
	}
	for _, tt := range tests {
		if got := dataplane.FieldErrors(tt.err); !slices.Equal(got, tt.want) {
			t.Errorf("%s: FieldErrors = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestValidateMessages pins the exact text of every kind of error, so that
// changes to how Validate builds paths and details cannot alter what
// callers and logs see.
func TestValidateMessages(t *testing.T) {
	web := func(s *dataplane.State) *dataplane.ServicePort { return &s.Ports[0] }
	dns := func(s *dataplane.State) *dataplane.ServicePort { return &s.Ports[1] }
	tests := []struct {
		name   string
		change func(s *dataplane.State)
		want   []string
	}{
		{"names", func(s *dataplane.State) {
			dns(s).Name = web(s).Name
			s.Ports = append(s.Ports, *dns(s))
			s.Ports[2].Name = dataplane.PortName{}
		}, []string{
			"ports[1].name: default/web:http is also the name of ports[0]",
			"ports[2].name.namespace: is empty",
			"ports[2].name.name: is empty",
			"ports[2].clusterIPs[0]: 198.19.0.53:53/UDP is already used by ports[1].clusterIPs[0]",
		}},
		{"protocol, port and affinity", func(s *dataplane.State) {
			dns(s).Protocol, dns(s).Port, dns(s).Affinity = 1, 0, 1500*time.Millisecond
			web(s).Affinity = dataplane.MaxAffinity + time.Second
		}, []string{
			"ports[0].affinity: 24h0m1s is out of range (want 0 for none, or 1s to 24h0m0s)",
			"ports[1].protocol: Protocol(1) is not a known protocol (want TCP, UDP or SCTP)",
			"ports[1].port: 0 is not a valid port (want 1-65535)",
			"ports[1].affinity: 1.5s is not a whole number of seconds",
		}},
		{"addresses", func(s *dataplane.State) {
			web(s).ClusterIPs = append(web(s).ClusterIPs, netip.Addr{}, ip("fe80::1%eth0"), ip("::ffff:198.19.0.11"), ip("::"), ip("198.19.0.11"))
			web(s).ExternalIPs[0] = ip("224.0.0.1")
			web(s).LoadBalancerIPs[1] = ip("ff02::1")
		}, []string{
			"ports[0].clusterIPs[2]: is not a valid IP address",
			"ports[0].clusterIPs[3]: fe80::1%eth0 has a zone; service addresses take none",
			"ports[0].clusterIPs[4]: ::ffff:198.19.0.11 is an IPv4-mapped IPv6 address; write it as IPv4 (198.19.0.11)",
			"ports[0].clusterIPs[5]: :: is not a unicast address",
			"ports[0].clusterIPs[6]: 198.19.0.11 is a second IPv4 cluster IP (want at most one per family)",
			"ports[0].externalIPs[0]: 224.0.0.1 is not a unicast address",
			"ports[0].loadBalancerIPs[1]: ff02::1 is not a unicast address",
		}},
		{"families", func(s *dataplane.State) {
			dns(s).ExternalIPs = []netip.Addr{ip("2001:db8:beef::53")}
			dns(s).LoadBalancerIPs = []netip.Addr{ip("2001:db8:beef::54")}
			dns(s).Endpoints = append(dns(s).Endpoints, dataplane.Endpoint{Addr: ip("2001:db8:1::53"), Port: 53})
		}, []string{
			"ports[1].externalIPs[0]: 2001:db8:beef::53 is IPv6 but the port has no IPv6 cluster IP; drop the address or add a cluster IP of that family",
			"ports[1].loadBalancerIPs[0]: 2001:db8:beef::54 is IPv6 but the port has no IPv6 cluster IP; drop the address or add a cluster IP of that family",
			"ports[1].endpoints[1].addr: 2001:db8:1::53 is IPv6 but the port has no IPv6 cluster IP; drop the endpoint or add a cluster IP of that family",
		}},
		{"frontends", func(s *dataplane.State) {
			dns(s).Protocol, dns(s).Port = dataplane.TCP, 80
			dns(s).ClusterIPs[0] = web(s).ClusterIPs[0]
			dns(s).ExternalIPs = []netip.Addr{web(s).LoadBalancerIPs[0]}
			dns(s).LoadBalancerIPs = []netip.Addr{web(s).ExternalIPs[0]}
			dns(s).NodePort = web(s).NodePort
		}, []string{
			"ports[1].clusterIPs[0]: 198.19.0.10:80/TCP is already used by ports[0].clusterIPs[0]",
			"ports[1].externalIPs[0]: 203.0.113.20:80/TCP is already used by ports[0].loadBalancerIPs[0]",
			"ports[1].loadBalancerIPs[0]: 203.0.113.10:80/TCP is already used by ports[0].externalIPs[0]",
			"ports[1].nodePort: NodePort 30080/TCP is already used by ports[0].nodePort",
		}},
		{"source ranges", func(s *dataplane.State) {
			web(s).SourceRanges = append(web(s).SourceRanges, netip.Prefix{}, pfx("::ffff:192.0.2.0/120"), netip.PrefixFrom(ip("192.0.2.0"), 33))
		}, []string{
			"ports[0].sourceRanges[2]: is not a valid prefix",
			"ports[0].sourceRanges[3]: ::ffff:192.0.2.0/120 is an IPv4-mapped IPv6 prefix; write it as IPv4",
			"ports[0].sourceRanges[4]: is not a valid prefix",
		}},
		{"endpoints", func(s *dataplane.State) {
			p := web(s)
			p.Endpoints = append(p.Endpoints, p.Endpoints[2], dataplane.Endpoint{Addr: ip("::ffff:198.18.1.10"), Port: 0}, p.Endpoints[0])
		}, []string{
			"ports[0].endpoints[3]: [2001:db8:1::10]:8080 is listed twice (also endpoints[2])",
			"ports[0].endpoints[4].addr: ::ffff:198.18.1.10 is an IPv4-mapped IPv6 address; write it as IPv4 (198.18.1.10)",
			"ports[0].endpoints[4].port: 0 is not a valid port (want 1-65535)",
			"ports[0].endpoints[5]: 198.18.1.10:8080 is listed twice (also endpoints[0])",
		}},
		{"zones", func(s *dataplane.State) {
			// Addresses that differ only in their zone are different
			// frontends and endpoints.
			dns(s).Protocol, dns(s).Port = dataplane.TCP, 80
			dns(s).ClusterIPs = append(dns(s).ClusterIPs, ip("fe80::1%eth0"))
			for i, a := range []string{"fe80::1", "fe80::1%eth1", "fe80::1%eth0"} {
				p := *dns(s)
				p.Name.Name = fmt.Sprint("zone-", i)
				p.ClusterIPs = []netip.Addr{ip(a)}
				p.Endpoints = nil
				s.Ports = append(s.Ports, p)
			}
			p := &s.Ports[2] // IPv6 cluster IP fe80::1
			for i := range 14 {
				p.Endpoints = append(p.Endpoints, dataplane.Endpoint{Addr: netip.AddrFrom16([16]byte{0: 0xfe, 1: 0x80, 15: byte(i)}), Port: 8080})
			}
			for _, a := range []string{"fe80::10", "fe80::10%eth0", "fe80::10%eth1", "fe80::10%eth0", "fe80::10"} {
				p.Endpoints = append(p.Endpoints, dataplane.Endpoint{Addr: ip(a), Port: 8080})
			}
		}, []string{
			"ports[1].clusterIPs[1]: fe80::1%eth0 has a zone; service addresses take none",
			"ports[2].endpoints[15].addr: fe80::10%eth0 has a zone; service addresses take none",
			"ports[2].endpoints[16].addr: fe80::10%eth1 has a zone; service addresses take none",
			"ports[2].endpoints[17].addr: fe80::10%eth0 has a zone; service addresses take none",
			"ports[2].endpoints[17]: [fe80::10%eth0]:8080 is listed twice (also endpoints[15])",
			"ports[2].endpoints[18]: [fe80::10]:8080 is listed twice (also endpoints[14])",
			"ports[3].clusterIPs[0]: fe80::1%eth1 has a zone; service addresses take none",
			"ports[4].clusterIPs[0]: fe80::1%eth0 has a zone; service addresses take none",
			"ports[4].clusterIPs[0]: [fe80::1%eth0]:80/TCP is already used by ports[1].clusterIPs[1]",
		}},
		{"many endpoints", func(s *dataplane.State) {
			// More endpoints than fit a short list, with duplicates far apart.
			p := dns(s)
			for i := range 30 {
				p.Endpoints = append(p.Endpoints, dataplane.Endpoint{Addr: netip.AddrFrom4([4]byte{198, 18, 2, byte(i)}), Port: 53})
			}
			p.Endpoints[25] = p.Endpoints[0]
			p.Endpoints[28] = p.Endpoints[3]
			p.Endpoints[29] = p.Endpoints[0]
			p.Endpoints[7].Addr, p.Endpoints[27].Addr = netip.Addr{}, netip.Addr{}
		}, []string{
			"ports[1].endpoints[7].addr: is not a valid IP address",
			"ports[1].endpoints[25]: 198.18.1.53:53 is listed twice (also endpoints[0])",
			"ports[1].endpoints[27].addr: is not a valid IP address",
			"ports[1].endpoints[27]: invalid AddrPort is listed twice (also endpoints[7])",
			"ports[1].endpoints[28]: 198.18.2.2:53 is listed twice (also endpoints[3])",
			"ports[1].endpoints[29]: 198.18.1.53:53 is listed twice (also endpoints[0])",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validState()
			tt.change(s)
			var got []string
			for _, fe := range dataplane.FieldErrors(s.Validate()) {
				got = append(got, fe.Error())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(tt.want, "\n\t"))
			}
		})
	}
}
