// Package conformance is svcplane's behaviour suite for service proxies: it
// checks a dataplane.Dataplane with real packets through the kernel, in a
// throwaway topology of network namespaces (two nodes, pods behind each, an
// external client), and needs nothing but one Linux machine and root.
//
// # Running it on a backend
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, func(t testing.TB, target conformance.Target) (dataplane.Dataplane, error) {
//			return mybackend.New(mybackend.Config{Node: target.Node, NetNS: target.NetNS})
//		})
//	}
//
// Run builds a fresh topology for every case, asks the Factory for one
// Dataplane per node, syncs the case's States into both, and sends traffic.
// Every case is a subtest named Group/Case (ClusterIP/TCP,
// Lifecycle/Idempotent, ...), stable across releases, so a run can select
// or skip cases with -run and -skip. Each case has a deadline and tears its
// topology down even when it fails. The behaviours are listed, with the
// reason for each, next to the cases in this package's source.
//
// # Requirements
//
// Root (to create network namespaces). Without it, Run skips and says so.
// A backend whose New returns an error wrapping dataplane.ErrUnsupported is
// skipped with that error as the reason.
package conformance
