package kube_test

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The objects of the classroom cluster, as the API server returns them
// (defaulted). Addresses come from documentation ranges only.

func ptr[T any](v T) *T { return &v }

func meta(name string, labels map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: "default", Name: name, Labels: labels, ResourceVersion: "1"}
}

func httpPort(nodePort int32) corev1.ServicePort {
	return corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: nodePort}
}

func clusterIPService(name, ip string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: meta(name, nil),
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeClusterIP,
			ClusterIP:             ip,
			ClusterIPs:            []string{ip},
			IPFamilies:            []corev1.IPFamily{corev1.IPv4Protocol},
			IPFamilyPolicy:        ptr(corev1.IPFamilyPolicySingleStack),
			Selector:              map[string]string{"app": "node-web"},
			Ports:                 ports,
			SessionAffinity:       corev1.ServiceAffinityNone,
			InternalTrafficPolicy: ptr(corev1.ServiceInternalTrafficPolicyCluster),
		},
	}
}

// svcWeb is svc-web: ClusterIP 198.19.0.10, port 80 "http" to 8080.
func svcWeb() *corev1.Service { return clusterIPService("svc-web", "198.19.0.10", httpPort(0)) }

// svcWebNode is svc-web-node: NodePort 30123 in front of the same pods.
func svcWebNode() *corev1.Service {
	s := clusterIPService("svc-web-node", "198.19.0.11", httpPort(30123))
	s.Spec.Type = corev1.ServiceTypeNodePort
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	return s
}

// svcHeadless is svc-node-web-headless: clusterIP None.
func svcHeadless() *corev1.Service {
	s := clusterIPService("svc-node-web-headless", corev1.ClusterIPNone, httpPort(0))
	s.Spec.IPFamilyPolicy = ptr(corev1.IPFamilyPolicyRequireDualStack)
	return s
}

// svcExt is svc-ext: ExternalName google.com.
func svcExt() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: meta("svc-ext", nil),
		Spec: corev1.ServiceSpec{
			Type:            corev1.ServiceTypeExternalName,
			ExternalName:    "google.com",
			SessionAffinity: corev1.ServiceAffinityNone,
		},
	}
}

// svcExample is example-endpoints: no selector, a hand-made EndpointSlice,
// one unnamed port.
func svcExample() *corev1.Service {
	s := clusterIPService("example-endpoints", "198.19.0.12",
		corev1.ServicePort{Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)})
	s.Spec.Selector = nil
	return s
}

type pod struct {
	name, ip, node string
}

var webPods = []pod{
	{"web-1", "198.18.1.10", "node-a"},
	{"web-2", "198.18.1.11", "node-a"},
	{"web-3", "198.18.2.10", "node-b"},
}

// controllerSlice is an EndpointSlice as the EndpointSlice controller
// writes it for service: ready pods, port "http" 8080.
func controllerSlice(service, name string, pods []pod) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: meta(name, map[string]string{
			discoveryv1.LabelServiceName: service,
			discoveryv1.LabelManagedBy:   "endpointslice-controller.k8s.io",
		}),
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))}},
	}
	for _, p := range pods {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: p.name},
			NodeName:   ptr(p.node),
		})
	}
	return s
}

// exampleSlice is the hand-made slice of example-endpoints: no conditions,
// no port name or protocol, as a user might write it.
func exampleSlice() *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  meta("example-endpoints-1", map[string]string{discoveryv1.LabelServiceName: "example-endpoints"}),
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"198.18.3.11"}},
			{Addresses: []string{"198.18.3.10"}},
		},
		Ports: []discoveryv1.EndpointPort{{Port: ptr(int32(8080))}},
	}
}

// classroom returns every Service and EndpointSlice of the cluster.
func classroom() ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	headlessSlice := controllerSlice("svc-node-web-headless", "svc-node-web-headless-q7v2k", webPods)
	headlessSlice.Labels[corev1.IsHeadlessService] = ""
	return []*corev1.Service{svcWeb(), svcWebNode(), svcHeadless(), svcExt(), svcExample()},
		[]*discoveryv1.EndpointSlice{
			controllerSlice("svc-web", "svc-web-x8kz2", webPods),
			controllerSlice("svc-web-node", "svc-web-node-5dcm9", webPods),
			headlessSlice,
			exampleSlice(),
		}
}
