package conformance_test

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/ipvs"
	"github.com/svcplane/svcplane/nft"
)

func nftFactory(t testing.TB, target conformance.Target) (dataplane.Dataplane, error) {
	return nft.New(nft.Config{Node: target.Node, NetNS: target.NetNS})
}

// TestConformance runs the suite on every backend this kernel supports.
func TestConformance(t *testing.T) {
	if os.Getenv(brokenEnv) != "" {
		t.Run("broken", func(t *testing.T) { conformance.Run(t, brokenFactory) })
		return
	}
	t.Run("nft", func(t *testing.T) { conformance.Run(t, nftFactory) })
	t.Run("ipvs", func(t *testing.T) {
		if err := ipvsAvailable(); err != nil {
			t.Skipf("%v", err)
		}
		conformance.RunProfile(t, ipvsFactory, ipvsProfile)
	})
}

// ipvsProfile is where IPVS differs from nftables by design (see
// conformance.Profile and the ipvs package documentation).
var ipvsProfile = conformance.Profile{Name: "IPVS", NoLocalEndpointsRejects: true, AffinityOutlivesConnections: true}

func ipvsFactory(t testing.TB, target conformance.Target) (dataplane.Dataplane, error) {
	// Idle UDP flows expire within 1 s, as the profile requires.
	return ipvs.New(ipvs.Config{Node: target.Node, NetNS: target.NetNS, UDPTimeout: time.Second})
}

// ipvsAvailable returns why the ipvs backend cannot run here, or nil.
func ipvsAvailable() error {
	if os.Geteuid() != 0 {
		return nil // Run skips with its own reason
	}
	ns, err := netnsutil.New()
	if err != nil {
		return err
	}
	defer ns.Close()
	dp, err := ipvs.New(ipvs.Config{NetNS: ns.Path()})
	if err != nil {
		return err
	}
	return dp.Close()
}

// brokenEnv makes TestConformance run the suite against a backend that
// forgets endpoint removals, for TestSuiteCatchesBrokenBackend.
const brokenEnv = "SVCPLANE_CONFORMANCE_BROKEN"

// forgetful wraps a Dataplane and never removes an endpoint once synced:
// the bug the suite must catch.
type forgetful struct {
	dataplane.Dataplane
	mu   sync.Mutex
	seen map[dataplane.PortName][]dataplane.Endpoint
}

func (f *forgetful) Sync(ctx context.Context, st *dataplane.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := &dataplane.State{}
	for _, p := range st.Ports {
		eps := slices.Clone(p.Endpoints)
		for _, old := range f.seen[p.Name] {
			if !slices.ContainsFunc(eps, func(e dataplane.Endpoint) bool { return e.AddrPort() == old.AddrPort() }) {
				eps = append(eps, old)
			}
		}
		f.seen[p.Name] = eps
		p.Endpoints = eps
		out.Ports = append(out.Ports, p)
	}
	return f.Dataplane.Sync(ctx, out)
}

func brokenFactory(t testing.TB, target conformance.Target) (dataplane.Dataplane, error) {
	dp, err := nftFactory(t, target)
	if err != nil {
		return nil, err
	}
	return &forgetful{Dataplane: dp, seen: make(map[dataplane.PortName][]dataplane.Endpoint)}, nil
}

// TestSuiteCatchesBrokenBackend runs the suite, in a child process,
// against a backend that drops endpoint removals, and requires the cases
// that guard removal to fail there.
func TestSuiteCatchesBrokenBackend(t *testing.T) {
	if os.Getenv(brokenEnv) != "" {
		t.Skip("inside the child run")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run `sudo make test`")
	}
	mustFail := []string{"ClusterIP/EndpointRemoved"}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestConformance$/^broken$/^ClusterIP$/^(EndpointRemoved|TCP)$", "-test.v")
	cmd.Env = append(os.Environ(), brokenEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the suite passed against a backend that never removes endpoints; want failures in %v\n%s", mustFail, out)
	}
	for _, c := range mustFail {
		if !strings.Contains(string(out), "--- FAIL: TestConformance/broken/"+c) {
			t.Errorf("case %s did not fail against the broken backend:\n%s", c, out)
		}
	}
	if !strings.Contains(string(out), "--- PASS: TestConformance/broken/ClusterIP/TCP") {
		t.Errorf("control case ClusterIP/TCP should still pass on the broken backend:\n%s", out)
	}
	t.Logf("suite output against the broken backend:\n%s", out)
}
