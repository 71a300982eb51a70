package nft

import (
	"slices"

	"github.com/svcplane/svcplane/dataplane"
)

// equalPort reports whether two ports would program the same thing.
func equalPort(a, b *dataplane.ServicePort) bool {
	return a.Name == b.Name && a.Protocol == b.Protocol && a.Port == b.Port &&
		a.NodePort == b.NodePort && a.Affinity == b.Affinity &&
		a.ExternalLocal == b.ExternalLocal && a.InternalLocal == b.InternalLocal &&
		a.HealthCheckNodePort == b.HealthCheckNodePort &&
		slices.Equal(a.ClusterIPs, b.ClusterIPs) &&
		slices.Equal(a.ExternalIPs, b.ExternalIPs) &&
		slices.Equal(a.LoadBalancerIPs, b.LoadBalancerIPs) &&
		slices.Equal(a.SourceRanges, b.SourceRanges) &&
		slices.EqualFunc(a.Endpoints, b.Endpoints, equalEndpoint)
}

func equalEndpoint(a, b dataplane.Endpoint) bool {
	return a.Addr == b.Addr && a.Port == b.Port && a.NodeName == b.NodeName && a.Zone == b.Zone &&
		a.Ready == b.Ready && a.Serving == b.Serving && a.Terminating == b.Terminating &&
		slices.Equal(a.ForZones, b.ForZones) && slices.Equal(a.ForNodes, b.ForNodes)
}

// clonePort copies p deeply, so later changes by the caller do not alter
// what was synced.
func clonePort(p *dataplane.ServicePort) dataplane.ServicePort {
	c := *p
	c.ClusterIPs = slices.Clone(p.ClusterIPs)
	c.ExternalIPs = slices.Clone(p.ExternalIPs)
	c.LoadBalancerIPs = slices.Clone(p.LoadBalancerIPs)
	c.SourceRanges = slices.Clone(p.SourceRanges)
	c.Endpoints = slices.Clone(p.Endpoints)
	for i := range c.Endpoints {
		c.Endpoints[i].ForZones = slices.Clone(p.Endpoints[i].ForZones)
		c.Endpoints[i].ForNodes = slices.Clone(p.Endpoints[i].ForNodes)
	}
	return c
}
