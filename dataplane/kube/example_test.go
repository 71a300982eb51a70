package kube_test

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/dataplane/kube"
)

// exampleObjects returns svc-web, an ExternalName Service, and svc-web's
// EndpointSlice with one ready, one terminating and one unready pod.
func exampleObjects() ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	web := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "svc-web"},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIPs: []string{"198.19.0.10"},
			Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080),
			}},
			SessionAffinity: corev1.ServiceAffinityClientIP,
		},
	}
	ext := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "svc-ext"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "google.com"},
	}
	yes, no := true, false
	name, port := "http", int32(8080)
	nodeA, nodeB := "node-a", "node-b"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: "svc-web-x8kz2",
			Labels: map[string]string{discoveryv1.LabelServiceName: "svc-web"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"198.18.2.10"}, NodeName: &nodeB}, // conditions unset: ready
			{Addresses: []string{"198.18.1.10"}, NodeName: &nodeA,
				Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}},
			{Addresses: []string{"198.18.1.11"}, NodeName: &nodeA,
				Conditions: discoveryv1.EndpointConditions{Ready: &no}},
		},
		Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
	}
	return []*corev1.Service{web, ext}, []*discoveryv1.EndpointSlice{slice}
}

func ExampleTranslate() {
	services, slices := exampleObjects()
	state := kube.Translate(services, slices, nil)
	fmt.Println("valid:", state.Validate() == nil)
	for _, p := range state.Ports {
		fmt.Println(p.Name, p.Protocol, p.ClusterIPs, p.Port, "affinity", p.Affinity)
		for _, e := range p.Endpoints {
			fmt.Printf("  %v on %s ready=%v serving=%v terminating=%v\n",
				e.AddrPort(), e.NodeName, e.Ready, e.Serving, e.Terminating)
		}
	}
	// Output:
	// valid: true
	// default/svc-web:http TCP [198.19.0.10] 80 affinity 3h0m0s
	//   198.18.1.10:8080 on node-a ready=false serving=true terminating=true
	//   198.18.1.11:8080 on node-a ready=false serving=true terminating=false
	//   198.18.2.10:8080 on node-b ready=true serving=true terminating=false
}

func ExampleTracker() {
	services, slices := exampleObjects()
	t := kube.NewTracker(dataplane.Node{Name: "node-a"})
	<-t.Changed() // a new Tracker asks for an initial sync

	// What informer event handlers do:
	for _, s := range services {
		t.OnServiceAdd(s)
	}
	for _, s := range slices {
		t.OnEndpointSliceAdd(s)
	}

	<-t.Changed() // all the events, one signal
	state := t.State()
	for _, p := range state.Ports {
		e := dataplane.Categorize(&p, &dataplane.Node{Name: "node-a"})
		fmt.Println(p.Name, "forwards to", len(e.Internal(&p)), "of", len(p.Endpoints), "endpoints")
	}
	// Output:
	// default/svc-web:http forwards to 1 of 3 endpoints
}
