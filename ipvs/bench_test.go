package ipvs

import (
	"testing"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/syncbench"
)

// Benchmarks at cluster scale (issue 5), the IPVS half; internal/syncbench
// has the States, scenarios and metrics. This kernel-facing code needs
// IPVS: on a machine without it they skip, and `make bench` runs them in
// the Debian 6.1 VM. TestBenchmarks keeps each of them working at its
// smallest size (make test runs it in the VM).

// ipvsBackend is the library, counting its IPVS netlink requests.
var ipvsBackend = syncbench.Backend{
	Name: "ipvs",
	New:  newBenchDP,
	// One endpoint replaced: add the new real server and delete the old
	// one, which carries no connection (one that did would drain at
	// weight 0 first).
	MaxOneEndpointMsgs: 2,
}

// newBenchDP opens a Dataplane on the namespace at nsPath whose
// NetlinkStats are benchStats.
func newBenchDP(nsPath string, node dataplane.Node) (dataplane.Dataplane, error) {
	d, err := New(Config{NetNS: nsPath, Node: node})
	if err != nil {
		return nil, err
	}
	return syncbench.WithStats(d, d.benchStats), nil
}

// BenchmarkSync is BenchmarkSync/<backend>/<scenario>/services=<N>/endpoints=<E>
// for the library ("ipvs") and its peer, the same virtual and real
// servers loaded with ipvsadm -R ("ipvsadm-restore", full only).
func BenchmarkSync(b *testing.B) {
	syncbench.Sync(syncbench.Bench(b), []syncbench.Backend{ipvsBackend}, []syncbench.Loader{syncbench.IPVSAdm})
}

// TestBenchmarks runs every benchmark case once at its smallest size, so
// that they keep working; it judges no timing, only that a noop Sync
// sends nothing and a one-endpoint Sync at most 2 IPVS messages (see ipvsBackend).
func TestBenchmarks(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	syncbench.Sync(syncbench.Once(t), []syncbench.Backend{ipvsBackend}, []syncbench.Loader{syncbench.IPVSAdm})
}
