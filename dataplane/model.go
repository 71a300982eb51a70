package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// ErrUnsupported is wrapped by errors a backend returns when the running
// kernel lacks something it needs (for example IPVS, or an nftables
// feature). Test for it with errors.Is.
var ErrUnsupported = errors.New("not supported by this kernel")

// Protocol is a transport protocol a service port forwards.
type Protocol uint8

// The protocols a ServicePort may carry. The zero value is invalid.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

// String returns "TCP", "UDP" or "SCTP", or "Protocol(n)" for anything else.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Valid reports whether p is TCP, UDP or SCTP.
func (p Protocol) Valid() bool { return p == TCP || p == UDP || p == SCTP }

// ParseProtocol parses "TCP", "UDP" or "SCTP" in any case.
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToUpper(s) {
	case "TCP":
		return TCP, nil
	case "UDP":
		return UDP, nil
	case "SCTP":
		return SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want TCP, UDP or SCTP)", s)
}

// PortName names one port of one Service: namespace/name:port. Port is the
// port's name in the Service and may be empty for a single unnamed port.
type PortName struct {
	Namespace, Name, Port string
}

// String returns "namespace/name:port", or "namespace/name" when Port is
// empty.
func (n PortName) String() string {
	if n.Port == "" {
		return n.Namespace + "/" + n.Name
	}
	return n.Namespace + "/" + n.Name + ":" + n.Port
}

// ServicePort is everything needed to forward one service port: its
// frontends and its endpoints. Addresses of both families may be mixed;
// each family is forwarded on its own.
type ServicePort struct {
	// Name identifies the port; it must be unique within a State.
	Name PortName
	// Protocol is the transport protocol forwarded.
	Protocol Protocol
	// Port is the port on cluster, external and load-balancer IPs.
	Port uint16
	// NodePort, when not 0, is forwarded on the node's NodePort addresses.
	NodePort uint16
	// ClusterIPs holds at most one address per family. A port without
	// cluster IPs (a headless service) programs nothing.
	ClusterIPs []netip.Addr
	// ExternalIPs are forwarded like cluster IPs but reachable from outside
	// the cluster; each must share a family with a cluster IP.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the ingress IPs of a LoadBalancer service.
	LoadBalancerIPs []netip.Addr
	// SourceRanges restricts which clients may use the load-balancer IPs
	// (loadBalancerSourceRanges); empty allows any. NodePorts ignore it.
	SourceRanges []netip.Prefix
	// Affinity is the ClientIP session affinity timeout, in whole seconds
	// between 1s and 24h; 0 means no affinity.
	Affinity time.Duration
	// ExternalLocal is externalTrafficPolicy: Local: traffic from outside
	// the cluster (NodePort, external and LB IPs) goes only to endpoints on
	// this node and keeps its source address.
	ExternalLocal bool
	// InternalLocal is internalTrafficPolicy: Local: traffic from inside
	// the cluster to the cluster IPs goes only to endpoints on this node.
	InternalLocal bool
	// HealthCheckNodePort is the port a proxy answers health checks on for
	// ExternalLocal services; 0 when there is none. Backends do not forward
	// it; proxies serve it themselves.
	HealthCheckNodePort uint16
	// Endpoints are the service port's backends, of every condition: the
	// backend picks the usable ones with Categorize.
	Endpoints []Endpoint
}

// Endpoint is one backend of a ServicePort.
type Endpoint struct {
	// Addr and Port are where traffic is sent (the target port).
	Addr netip.Addr
	Port uint16
	// NodeName is the node the endpoint runs on; it decides which
	// endpoints are local under the Local traffic policies.
	NodeName string
	// Zone is the zone the endpoint runs in (informational).
	Zone string
	// Ready, Serving and Terminating are the EndpointSlice conditions.
	Ready, Serving, Terminating bool
	// ForZones and ForNodes are topology hints: the zones and nodes that
	// should use this endpoint.
	ForZones, ForNodes []string
}

// AddrPort returns the endpoint's address and port.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Addr, e.Port) }

// Node describes the node a Dataplane programs.
type Node struct {
	// Name is the node's name, compared with Endpoint.NodeName.
	Name string
	// Zone is the node's topology zone, compared with Endpoint.ForZones.
	Zone string
	// NodePortAddrs restricts where NodePorts listen: a node address
	// answers NodePorts when it falls in one of these prefixes. Empty means
	// every local address except loopback.
	NodePortAddrs []netip.Prefix
	// LocalPodCIDRs are the sources counted as "from a pod": their
	// traffic to services is not masqueraded (unless MasqueradeAll).
	LocalPodCIDRs []netip.Prefix
	// MasqueradeAll masquerades all service traffic, pods' included.
	MasqueradeAll bool
}

// State is the complete desired state of a node's service load balancing.
// Its zero value (no ports) is valid and means "forward nothing".
type State struct {
	Ports []ServicePort
}

// Dataplane is implemented by every kernel backend.
type Dataplane interface {
	// Sync makes the kernel state this Dataplane owns equal desired. It is
	// idempotent: calling it again with an equal State changes nothing. An
	// invalid State changes nothing and returns the validation error; a
	// Sync that fails leaves the previously synced state working. Sync is
	// safe for concurrent use; calls are serialised.
	Sync(ctx context.Context, desired *State) error
	// Cleanup removes every kernel object this Dataplane owns and nothing
	// else. Removing objects that are already gone is not an error.
	Cleanup(ctx context.Context) error
	// Close releases the Dataplane's sockets and leaves kernel state in
	// place, so that a later Dataplane can adopt it.
	Close() error
}
