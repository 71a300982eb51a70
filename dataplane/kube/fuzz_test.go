package kube_test

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/dataplane/kube"
)

// fuzzBytes hands out fuzz input a byte at a time; past the end it returns
// zeros, so every input builds some objects.
type fuzzBytes []byte

func (b *fuzzBytes) next() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

func pick[T any](b *fuzzBytes, choices ...T) T { return choices[int(b.next())%len(choices)] }

func (b *fuzzBytes) count(max int) int { return int(b.next()) % max }

// maybe returns nil or a pointer to one of choices.
func maybe[T any](b *fuzzBytes, choices ...T) *T {
	i := int(b.next()) % (len(choices) + 1)
	if i == len(choices) {
		return nil
	}
	v := choices[i]
	return &v
}

func list[T any](b *fuzzBytes, max int, choices ...T) []T {
	var out []T
	for range b.count(max + 1) {
		out = append(out, pick(b, choices...))
	}
	return out
}

// The pools are small so that fuzzing hits collisions often, and hold
// valid values next to every kind of invalid one Kubernetes objects can
// carry.
var (
	fuzzNamespaces = []string{"default", "other", ""}
	fuzzNames      = []string{"a", "b", "svc-web", ""}
	fuzzIPs        = []string{
		"198.19.0.10", "198.19.0.11", "2001:db8:ffff::10", "2001:db8:ffff::11",
		"203.0.113.10", "2001:db8:beef::10", "198.18.1.10", "198.18.1.11", "2001:db8:1::10",
		"None", "", "bogus", "::ffff:198.19.0.10", "0.0.0.0", "::", "224.0.0.1", "ff02::1",
		"fe80::1%eth0", "198.019.000.010", "1.2.3.256", "2001:db8::1:",
	}
	fuzzRanges = []string{
		"192.0.2.0/24", " 2001:db8::/64 ", "203.0.113.7", "bogus", "::ffff:192.0.2.0/120",
		"::ffff:0:0/80", "192.0.2.0/40", "10.0.0.0/08", "", "/24", "192.0.2.0/", "fe80::/10%eth0",
	}
	fuzzPortNames = []string{"", "http", "dns"}
	fuzzProtocols = []corev1.Protocol{"", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP, "tcp", "ICMP"}
	fuzzPortNums  = []int32{80, 53, 8080, 0, -1, 65535, 65536, 30123}
	fuzzTypes     = []corev1.ServiceType{
		corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer,
		corev1.ServiceTypeExternalName, "", "Weird",
	}
	fuzzStrings = []string{"", "node-a", "node-b", "zone-a"}
)

func fuzzService(b *fuzzBytes) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: pick(b, fuzzNamespaces...), Name: pick(b, fuzzNames...)},
		Spec: corev1.ServiceSpec{
			Type:                     pick(b, fuzzTypes...),
			ClusterIP:                pick(b, fuzzIPs...),
			ClusterIPs:               list(b, 3, fuzzIPs...),
			ExternalIPs:              list(b, 3, fuzzIPs...),
			LoadBalancerSourceRanges: list(b, 3, fuzzRanges...),
			ExternalTrafficPolicy:    pick[corev1.ServiceExternalTrafficPolicy](b, "", "Local", "Cluster"),
			InternalTrafficPolicy:    maybe[corev1.ServiceInternalTrafficPolicy](b, "Local", "Cluster"),
			HealthCheckNodePort:      pick(b, fuzzPortNums...),
			SessionAffinity:          pick[corev1.ServiceAffinity](b, "", "None", "ClientIP"),
		},
	}
	switch b.count(4) {
	case 1:
		svc.Labels = map[string]string{kube.LabelServiceProxyName: "x"}
	case 2:
		svc.Labels = map[string]string{corev1.IsHeadlessService: ""}
	}
	switch b.count(3) {
	case 1:
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{}
	case 2:
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{
			TimeoutSeconds: maybe[int32](b, 0, 1, 60, 86400, 86401, -5),
		}}
	}
	for range b.count(4) {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name:     pick(b, fuzzPortNames...),
			Protocol: pick(b, fuzzProtocols...),
			Port:     pick(b, fuzzPortNums...),
			NodePort: pick(b, fuzzPortNums...),
		})
	}
	for range b.count(3) {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{
			IP:       pick(b, fuzzIPs...),
			Hostname: pick(b, "", "lb.example.com"),
			IPMode:   maybe[corev1.LoadBalancerIPMode](b, corev1.LoadBalancerIPModeVIP, corev1.LoadBalancerIPModeProxy, "Weird"),
		})
	}
	return svc
}

func fuzzSlice(b *fuzzBytes) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: pick(b, fuzzNamespaces...), Name: pick(b, "s1", "s2", "s3", "")},
		AddressType: pick[discoveryv1.AddressType](b,
			discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN, ""),
	}
	switch b.count(5) {
	case 0, 1, 2:
		s.Labels = map[string]string{discoveryv1.LabelServiceName: pick(b, fuzzNames...)}
	case 3:
		s.Labels = map[string]string{discoveryv1.LabelServiceName: pick(b, fuzzNames...), kube.LabelServiceProxyName: ""}
	}
	for range b.count(4) {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{
			Name:     maybe(b, fuzzPortNames...),
			Protocol: maybe(b, fuzzProtocols...),
			Port:     maybe(b, fuzzPortNums...),
		})
	}
	for range b.count(5) {
		e := discoveryv1.Endpoint{
			Addresses: list(b, 2, fuzzIPs...),
			Conditions: discoveryv1.EndpointConditions{
				Ready: maybe(b, true, false), Serving: maybe(b, true, false), Terminating: maybe(b, true, false),
			},
			NodeName: maybe(b, fuzzStrings...),
			Zone:     maybe(b, fuzzStrings...),
		}
		if b.next()%2 == 1 {
			e.Hints = &discoveryv1.EndpointHints{}
			for _, z := range list(b, 2, fuzzStrings...) {
				e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: z})
			}
			for _, n := range list(b, 2, fuzzStrings...) {
				e.Hints.ForNodes = append(e.Hints.ForNodes, discoveryv1.ForNode{Name: n})
			}
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	return s
}

func fuzzObjects(data []byte) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	b := fuzzBytes(data)
	var svcs []*corev1.Service
	for range b.count(5) {
		svcs = append(svcs, fuzzService(&b))
	}
	var eps []*discoveryv1.EndpointSlice
	for range b.count(5) {
		eps = append(eps, fuzzSlice(&b))
	}
	return svcs, eps
}

// uniqueKeys reports whether no two objects share a namespace and name.
func uniqueKeys(objs []metav1.Object) bool {
	seen := map[[2]string]bool{}
	for _, o := range objs {
		k := [2]string{o.GetNamespace(), o.GetName()}
		if seen[k] {
			return false
		}
		seen[k] = true
	}
	return true
}

func FuzzTranslate(f *testing.F) {
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		svcs, eps := fuzzObjects(data)
		s := kube.Translate(svcs, eps, nil)
		if err := s.Validate(); err != nil {
			t.Fatalf("Translate's State does not validate: %v\nservices: %+v\nslices: %+v", err, svcs, eps)
		}
		again := kube.Translate(svcs, eps, &dataplane.Node{Name: "node-a"})
		if !reflect.DeepEqual(s, again) {
			t.Fatal("Translate is not deterministic")
		}
		if uniqueKeys(objects(svcs)) && uniqueKeys(objects(eps)) {
			if r := kube.Translate(reversed(svcs), reversed(eps), nil); !reflect.DeepEqual(s, r) {
				t.Fatalf("Translate depends on input order:\n%+v\n%+v", s, r)
			}
			tr := kube.NewTracker(dataplane.Node{})
			for _, o := range svcs {
				tr.OnServiceAdd(o)
			}
			for _, o := range eps {
				tr.OnEndpointSliceAdd(o)
			}
			if got := tr.State(); !reflect.DeepEqual(got, s) {
				t.Fatalf("Tracker.State differs from Translate:\n%+v\n%+v", got, s)
			}
		}
	})
}

func objects[T metav1.Object](in []T) []metav1.Object {
	out := make([]metav1.Object, len(in))
	for i, o := range in {
		out[i] = o
	}
	return out
}
