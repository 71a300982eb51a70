package conformance_test

import (
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/ipvs"
	"github.com/svcplane/svcplane/nft"
)

// newNFT is a Factory: it builds the backend under test for one node of
// the suite's fresh topology. The suite syncs, cleans up and closes what
// it returns.
func newNFT(t testing.TB, target conformance.Target) (dataplane.Dataplane, error) {
	return nft.New(nft.Config{Node: target.Node, NetNS: target.NetNS})
}

// Run checks a backend against kube-proxy's nftables behaviour. Call it
// from a test in the backend's package, and run that test as root; the
// cases are subtests named Group/Case, selected with -run and -skip:
//
//	go test -run 'TestConformance/ClusterIP/' ./mybackend
//	go test -run TestConformance -skip 'TestConformance/Conntrack/' ./mybackend
//
// The example is compiled, not run: the suite needs root and a *testing.T.
func ExampleRun() {
	// In mybackend/conformance_test.go:
	testConformance := func(t *testing.T) {
		conformance.Run(t, newNFT)
	}
	_ = testConformance
}

// RunProfile runs the suite on a backend that departs from the nftables
// behaviour by design, naming each departure; the cases that depend on one
// check the declared behaviour instead.
func ExampleRunProfile() {
	profile := conformance.Profile{Name: "IPVS", NoLocalEndpointsRejects: true, AffinityOutlivesConnections: true}
	newIPVS := func(t testing.TB, target conformance.Target) (dataplane.Dataplane, error) {
		// AffinityOutlivesConnections asks for UDP flows that expire
		// within a second. On a kernel without IPVS, New's error wraps
		// dataplane.ErrUnsupported and the suite skips, saying why.
		return ipvs.New(ipvs.Config{Node: target.Node, NetNS: target.NetNS, UDPTimeout: time.Second})
	}
	testConformance := func(t *testing.T) {
		conformance.RunProfile(t, newIPVS, profile)
	}
	_ = testConformance
}
