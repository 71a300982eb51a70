package dataplane

import "slices"

// Endpoints is the result of Categorize: the endpoints a node forwards a
// service port to, for each traffic policy.
type Endpoints struct {
	// Cluster is used by traffic under the Cluster policy (the default),
	// after topology hints. It is nil only when the port uses the Local
	// policy for internal traffic and has no external frontend (NodePort,
	// external or load-balancer IP). A port with external frontends always
	// gets Cluster endpoints, even under externalTrafficPolicy Local: as in
	// kube-proxy, traffic from pods and from the node itself to those
	// frontends is short-circuited to the Cluster endpoints.
	Cluster []Endpoint
	// Local is used by traffic under the Local policy: only endpoints on
	// this node. Nil when the port uses no Local policy.
	Local []Endpoint
	// Any reports whether the port has a usable endpoint anywhere in the
	// cluster (ready, or serving and terminating). When it is false,
	// traffic to the port is rejected; when it is true but the applicable
	// list is empty, traffic is dropped, as kube-proxy does.
	Any bool
}

// Internal returns the endpoints for traffic from inside the cluster to
// the port's cluster IPs: Local under internalTrafficPolicy Local,
// otherwise Cluster.
func (e Endpoints) Internal(p *ServicePort) []Endpoint {
	if p.InternalLocal {
		return e.Local
	}
	return e.Cluster
}

// External returns the endpoints for traffic from outside the cluster (to
// NodePorts, external and load-balancer IPs): Local under
// externalTrafficPolicy Local, otherwise Cluster.
func (e Endpoints) External(p *ServicePort) []Endpoint {
	if p.ExternalLocal {
		return e.Local
	}
	return e.Cluster
}

// Categorize picks which of p's endpoints node uses, by kube-proxy's rules:
//
//   - Usable endpoints are the ready ones; when none is ready, the ones
//     that are serving and terminating. Endpoints neither ready nor
//     serving-and-terminating are never used.
//   - The fallback is decided separately for the Cluster policy (over all
//     endpoints) and for the Local policy (over this node's endpoints).
//   - Topology hints restrict Cluster endpoints: when every ready endpoint
//     carries node hints and one names this node, only endpoints hinted for
//     this node are used; otherwise, when every ready endpoint carries zone
//     hints and one names this node's zone, only endpoints hinted for the
//     zone are used; otherwise hints are ignored. Hints never apply to the
//     Local policy or to the terminating fallback.
//   - Cluster is computed unless the port uses the Local policy for
//     internal traffic and has no external frontend; Local is computed when
//     the port uses a Local policy. A computed list is never nil, even when
//     p has no endpoints, so nil means "this policy is not used".
//
// The returned slices are in the order of p.Endpoints.
func Categorize(p *ServicePort, node *Node) Endpoints {
	var out Endpoints
	// As kube-proxy's ServicePort.UsesClusterEndpoints: external traffic
	// under the Local policy still needs Cluster endpoints for the
	// short-circuit of in-cluster sources.
	usesCluster := !p.InternalLocal || externallyReachable(p)
	usesLocal := p.InternalLocal || p.ExternalLocal
	if usesCluster {
		hint := topologyHint(p.Endpoints, node)
		out.Cluster = filter(p.Endpoints, func(e *Endpoint) bool { return e.Ready && hint(e) })
		if len(out.Cluster) == 0 {
			out.Cluster = filter(p.Endpoints, servingTerminating)
		}
		out.Any = len(out.Cluster) > 0
		if out.Cluster == nil {
			out.Cluster = []Endpoint{}
		}
	}
	if usesLocal {
		local := func(e *Endpoint) bool { return e.NodeName != "" && e.NodeName == node.Name }
		for i := range p.Endpoints {
			if e := &p.Endpoints[i]; e.Ready || servingTerminating(e) {
				out.Any = true
			}
		}
		out.Local = filter(p.Endpoints, func(e *Endpoint) bool { return local(e) && e.Ready })
		if len(out.Local) == 0 {
			out.Local = filter(p.Endpoints, func(e *Endpoint) bool { return local(e) && servingTerminating(e) })
		}
		if out.Local == nil {
			out.Local = []Endpoint{}
		}
	}
	return out
}

func servingTerminating(e *Endpoint) bool { return e.Serving && e.Terminating }

// externallyReachable reports whether p has a frontend outside the cluster
// IPs, as kube-proxy's ServicePort.ExternallyAccessible.
func externallyReachable(p *ServicePort) bool {
	return p.NodePort != 0 || len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0
}

// topologyHint returns the predicate topology hints impose on ready
// endpoints for node: always true when hints do not apply.
func topologyHint(eps []Endpoint, node *Node) func(*Endpoint) bool {
	anyReady, allNode, forNode, allZone, forZone := false, true, false, true, false
	for i := range eps {
		e := &eps[i]
		if !e.Ready {
			continue
		}
		anyReady = true
		if len(e.ForNodes) == 0 {
			allNode = false
		} else if slices.Contains(e.ForNodes, node.Name) {
			forNode = true
		}
		if len(e.ForZones) == 0 {
			allZone = false
		} else if slices.Contains(e.ForZones, node.Zone) {
			forZone = true
		}
	}
	switch {
	case !anyReady:
		return func(*Endpoint) bool { return true }
	case allNode && forNode && node.Name != "":
		return func(e *Endpoint) bool { return slices.Contains(e.ForNodes, node.Name) }
	case allZone && forZone && node.Zone != "":
		return func(e *Endpoint) bool { return slices.Contains(e.ForZones, node.Zone) }
	}
	return func(*Endpoint) bool { return true }
}

// filter returns the endpoints keep accepts, in a slice of their own
// (counted first: one allocation of the right size, since a State can
// hold a million endpoints).
func filter(eps []Endpoint, keep func(*Endpoint) bool) []Endpoint {
	n := 0
	for i := range eps {
		if keep(&eps[i]) {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]Endpoint, 0, n)
	for i := range eps {
		if keep(&eps[i]) {
			out = append(out, eps[i])
		}
	}
	return out
}
