// Package kube turns Kubernetes Services and EndpointSlices into
// svcplane's [dataplane.State], following kube-proxy's rules.
//
// It imports only the API types (k8s.io/api, k8s.io/apimachinery), not
// client-go: the caller runs the informers and hands their objects over.
//
// # Translate
//
// [Translate] is a pure function from Services and EndpointSlices to the
// State: one [dataplane.ServicePort] per Service port, with its cluster,
// external and load-balancer IPs, NodePort, source ranges, session
// affinity and traffic policies, and the endpoints of the Service's
// EndpointSlices whose port matches by name and protocol. It skips what
// kube-proxy skips (ExternalName and headless Services, Services handed to
// another proxy by the service.kubernetes.io/service-proxy-name label, FQDN
// slices), drops what it cannot use, and resolves conflicts Kubernetes
// allows but [dataplane.State.Validate] does not, so its result always
// validates. The result does not depend on the node: which endpoints a node
// forwards to is decided by [dataplane.Categorize] when a backend syncs.
//
// # The Tracker loop
//
// A [Tracker] holds the current objects. Informer event handlers call its
// On* methods; each call that changes what the State would be sends a
// value on the channel [Tracker.Changed] returns, without blocking, into a
// buffer of one. A single goroutine waits on that channel, takes a
// snapshot with [Tracker.State] and passes it to the backend's Sync:
//
//	t := kube.NewTracker(node)
//	// ... register t's On* methods with the Service and EndpointSlice
//	// informers, start them and wait for their caches to sync ...
//	for {
//		select {
//		case <-ctx.Done():
//			return
//		case <-t.Changed():
//		}
//		if err := dp.Sync(ctx, t.State()); err != nil {
//			log.Print(err) // and retry after a backoff
//		}
//	}
//
// Bursts of events collapse into one sync, and because State is read after
// the signal is received, every change is in the next snapshot: nothing is
// lost, at worst a sync covers more than the event that woke it. A new
// Tracker starts with a pending signal, so the first sync happens at once.
package kube
