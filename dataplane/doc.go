// Package dataplane holds svcplane's model of Kubernetes service load
// balancing and the contract every kernel backend implements.
//
// # The model
//
// A [State] is the complete desired state of one node: a list of
// [ServicePort]s, each the unit a service proxy balances (one port of one
// Service), with its frontends (cluster IPs, external IPs, load-balancer IPs,
// a NodePort) and its [Endpoint]s. A [Node] describes the node being
// programmed: its name and zone (for Local traffic policies and topology
// hints), where NodePorts listen, and which sources count as pods.
//
// [State.Validate] checks a State before anything touches the kernel and
// reports every problem at once, each as a [*FieldError] naming its path,
// e.g. "ports[2].endpoints[0].port: 0 is not a valid port (want 1-65535)".
//
// # Backends
//
// A [Dataplane] makes the kernel match a State. Backends live in their own
// packages (svcplane/nft, svcplane/ipvs); a backend that cannot run on the
// running kernel returns an error wrapping [ErrUnsupported].
//
// # Choosing endpoints
//
// [Categorize] applies kube-proxy's rules for which endpoints a node uses:
// ready endpoints, falling back to serving-and-terminating ones when none are
// ready, computed separately for the Cluster and Local traffic policies, and
// restricted by topology hints for the node's zone or name when every ready
// endpoint carries hints. Every backend uses it, so every backend agrees.
//
// This package imports only the standard library.
package dataplane
