package kube

import (
	"reflect"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcplane/svcplane/dataplane"
)

// Tracker keeps the Services and EndpointSlices a node has been told about
// and hands out [dataplane.State] snapshots of them. Feed it informer
// events through its On* methods and sync a [dataplane.Dataplane] whenever
// [Tracker.Changed] fires:
//
//	t := kube.NewTracker(node)
//	// Register t.OnServiceAdd, t.OnServiceUpdate, ... as informer event
//	// handlers; unwrap cache.DeletedFinalStateUnknown tombstones before
//	// calling the delete methods.
//	for {
//		select {
//		case <-ctx.Done():
//			return
//		case <-t.Changed():
//		}
//		if err := dp.Sync(ctx, t.State()); err != nil {
//			// Retry later, e.g. with a timer in the select above.
//		}
//	}
//
// Events arriving while a Sync runs collapse into one pending signal, so
// the loop never falls behind: its next State includes all of them. A
// Tracker is safe for concurrent use. It keeps the objects it is given
// and never modifies them; callers must not modify them either (informer
// objects are shared and read-only anyway).
type Tracker struct {
	node    dataplane.Node
	changed chan struct{}

	mu       sync.Mutex
	services map[objKey]*corev1.Service
	slices   map[objKey]*discoveryv1.EndpointSlice
}

// NewTracker returns an empty Tracker for node. Its Changed channel
// already holds a signal, so that a sync loop programs the initial State
// (with no services, that removes whatever an earlier run left) without
// waiting for an event.
func NewTracker(node dataplane.Node) *Tracker {
	t := &Tracker{
		node:     node,
		changed:  make(chan struct{}, 1),
		services: make(map[objKey]*corev1.Service),
		slices:   make(map[objKey]*discoveryv1.EndpointSlice),
	}
	t.changed <- struct{}{}
	return t
}

// Changed returns a channel that receives a value after an event that may
// change what State returns. It has a buffer of one and the Tracker never
// blocks on it: many changes between two receives give one value. Events
// that leave everything Translate reads unchanged (resyncs, metadata-only
// updates, Services and slices Translate skips) do not signal; a change to
// a field Translate ignores, such as a Service's selector, may.
func (t *Tracker) Changed() <-chan struct{} { return t.changed }

// State returns a new State translated from the objects tracked now (see
// [Translate]). The caller owns it and may keep or modify it.
func (t *Tracker) State() *dataplane.State {
	t.mu.Lock()
	svcs := make([]*corev1.Service, 0, len(t.services))
	for _, s := range t.services {
		svcs = append(svcs, s)
	}
	eps := make([]*discoveryv1.EndpointSlice, 0, len(t.slices))
	for _, s := range t.slices {
		eps = append(eps, s)
	}
	t.mu.Unlock()
	return Translate(svcs, eps, &t.node)
}

// OnServiceAdd records a new Service.
func (t *Tracker) OnServiceAdd(svc *corev1.Service) { t.OnServiceUpdate(nil, svc) }

// OnServiceUpdate records a changed Service. old may be nil.
func (t *Tracker) OnServiceUpdate(old, svc *corev1.Service) {
	if svc == nil {
		t.OnServiceDelete(old)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	k := objKey{svc.Namespace, svc.Name}
	changed := false
	if old != nil {
		if oldKey := (objKey{old.Namespace, old.Name}); oldKey != k {
			changed = t.deleteService(oldKey)
		}
	}
	prev := t.services[k]
	t.services[k] = svc
	if changed || !sameService(prev, svc) {
		t.signal()
	}
}

// OnServiceDelete forgets a Service. Only its namespace and name are used,
// so the last known state of a deleted object will do.
func (t *Tracker) OnServiceDelete(svc *corev1.Service) {
	if svc == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.deleteService(objKey{svc.Namespace, svc.Name}) {
		t.signal()
	}
}

// deleteService forgets k and reports whether that changes the State.
func (t *Tracker) deleteService(k objKey) bool {
	prev, ok := t.services[k]
	delete(t.services, k)
	return ok && !sameService(prev, nil)
}

// OnEndpointSliceAdd records a new EndpointSlice.
func (t *Tracker) OnEndpointSliceAdd(slice *discoveryv1.EndpointSlice) {
	t.OnEndpointSliceUpdate(nil, slice)
}

// OnEndpointSliceUpdate records a changed EndpointSlice. old may be nil.
func (t *Tracker) OnEndpointSliceUpdate(old, slice *discoveryv1.EndpointSlice) {
	if slice == nil {
		t.OnEndpointSliceDelete(old)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	k := objKey{slice.Namespace, slice.Name}
	changed := false
	if old != nil {
		if oldKey := (objKey{old.Namespace, old.Name}); oldKey != k {
			changed = t.deleteSlice(oldKey)
		}
	}
	prev := t.slices[k]
	t.slices[k] = slice
	if changed || !sameSlice(prev, slice) {
		t.signal()
	}
}

// OnEndpointSliceDelete forgets an EndpointSlice. Only its namespace and
// name are used, so the last known state of a deleted object will do.
func (t *Tracker) OnEndpointSliceDelete(slice *discoveryv1.EndpointSlice) {
	if slice == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.deleteSlice(objKey{slice.Namespace, slice.Name}) {
		t.signal()
	}
}

// deleteSlice forgets k and reports whether that changes the State.
func (t *Tracker) deleteSlice(k objKey) bool {
	prev, ok := t.slices[k]
	delete(t.slices, k)
	return ok && !sameSlice(prev, nil)
}

func (t *Tracker) signal() {
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// sameService reports whether a and b (either may be nil) translate the
// same. It errs on the side of "different". It compares content, not
// resourceVersions, so that objects built by hand (from manifests, in
// tests) are tracked as well as the API server's.
func sameService(a, b *corev1.Service) bool {
	return reflect.DeepEqual(serviceView(a), serviceView(b))
}

// serviceView is what Translate reads of svc; nil when it skips svc.
func serviceView(svc *corev1.Service) any {
	if svc == nil || skipService(svc) {
		return nil
	}
	return struct {
		spec corev1.ServiceSpec
		lb   corev1.LoadBalancerStatus
	}{svc.Spec, svc.Status.LoadBalancer}
}

// sameSlice is sameService for EndpointSlices.
func sameSlice(a, b *discoveryv1.EndpointSlice) bool {
	return reflect.DeepEqual(sliceView(a), sliceView(b))
}

func sliceView(s *discoveryv1.EndpointSlice) any {
	if s == nil || skipSlice(s) {
		return nil
	}
	return struct {
		service     string
		addressType discoveryv1.AddressType
		endpoints   []discoveryv1.Endpoint
		ports       []discoveryv1.EndpointPort
	}{s.Labels[discoveryv1.LabelServiceName], s.AddressType, s.Endpoints, s.Ports}
}
