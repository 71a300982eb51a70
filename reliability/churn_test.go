package reliability

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// Churn: the rolling update every Deployment does, under load.
const (
	churnEndpoints = 4
	churnRounds    = 25                    // each round replaces every endpoint once
	churnDwell     = 15 * time.Millisecond // between the Syncs of one replacement
	churnFlows     = 4                     // long-lived UDP flows, each on its own source port
	udpWithin      = 2 * time.Second       // a UDP flow must be answered this soon after a Sync
	loadTimeout    = time.Second           // per request: a lost SYN (retransmitted after 1s) fails
	loadFor        = 150                   // seconds of load at most (with the rate, the bound on requests)
)

// The load: new TCP connections and new UDP flows (fresh source ports)
// per second, and requests per second on each long-lived UDP flow.
var (
	churnTCPRate  = raceOr(800, 400)
	churnUDPRate  = raceOr(200, 100)
	churnFlowRate = raceOr(50, 25)
)

func raceOr(normal, race int) int {
	if raceEnabled {
		return race
	}
	return normal
}

// TestChurnUnderLoad replaces all 4 endpoints of a service 25 times over,
// as a rolling update does, while a client pod opens new TCP connections
// to the service's cluster IP at 800/s, sends UDP requests from fresh
// source ports at 200/s, and keeps 4 UDP flows on fixed source ports
// (half those rates under the race detector).
// Each replacement is three Syncs: the new pod added ready; the old one
// marked terminating (Ready=false, Serving=true, Terminating=true); the
// old one removed. A pod keeps serving while terminating and is deleted
// only once it is out of the State and every request sent while it was
// in has ended, as a pod's grace period allows.
//
// So a correct backend fails no request: every TCP connection and every
// fresh UDP flow must be answered, by a pod in the State while the
// request ran, and no new TCP connection may reach a pod marked
// terminating while ready ones exist. The long-lived UDP flows lose datagrams while
// their endpoint changes (stale conntrack entries are the backend's to
// delete), but each must be answered by a live endpoint within 2 s of
// every Sync.
func TestChurnUnderLoad(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		c := newCluster(t, 3*time.Minute)
		dp := c.open(b)
		lv := newLives()
		var pods []*topo.Pod
		var eps []dataplane.Endpoint
		serial := 0
		newPod := func() *topo.Pod {
			serial++
			return c.pod(serial%2, fmt.Sprintf("web-%d", serial), podPort)
		}
		sync := func(what string) time.Time {
			t.Helper()
			if err := dp.Sync(c.ctx, &dataplane.State{Ports: loadPorts(eps)}); err != nil {
				t.Fatalf("Sync (%s): %v", what, err)
			}
			now := time.Now()
			lv.synced(now)
			return now
		}
		for range churnEndpoints {
			p := newPod()
			pods = append(pods, p)
			eps = append(eps, readyEndpoint(p))
			lv.set(p.Name, func(l *life) { l.added = time.Now() })
		}
		sync("initial endpoints")

		loads := []*load{
			{from: &c.client.Host, proto: dataplane.TCP, dst: loadTCP, rate: churnTCPRate, workers: 4, max: loadFor * churnTCPRate, timeout: loadTimeout},
			{from: &c.client.Host, proto: dataplane.UDP, dst: loadUDP, rate: churnUDPRate, workers: 2, max: loadFor * churnUDPRate, timeout: loadTimeout},
			{from: &c.client.Host, proto: dataplane.UDP, dst: loadUDP, rate: churnFlows * churnFlowRate, workers: churnFlows, max: loadFor * churnFlows * churnFlowRate,
				timeout: 250 * time.Millisecond, flows: true, flowPort: 41000},
		}
		tcp, udp, flows := loads[0], loads[1], loads[2]
		stop := startLoads(c.ctx, loads)
		defer stop()

		start := time.Now()
		syncs := 1
		for round := range churnRounds {
			for slot := range churnEndpoints {
				old := pods[slot]
				neu := newPod()
				lv.set(neu.Name, func(l *life) { l.added = time.Now() })
				eps = append(eps, readyEndpoint(neu))
				sync(fmt.Sprintf("round %d: add %s", round, neu.Name))
				time.Sleep(churnDwell)

				i := slices.IndexFunc(eps, func(e dataplane.Endpoint) bool { return e.Addr == old.IPv4 })
				eps[i].Ready, eps[i].Serving, eps[i].Terminating = false, true, true
				end := sync(fmt.Sprintf("round %d: %s terminating", round, old.Name))
				lv.set(old.Name, func(l *life) { l.terminating = end })
				time.Sleep(churnDwell)

				eps = slices.Delete(eps, i, i+1)
				end = sync(fmt.Sprintf("round %d: remove %s", round, old.Name))
				lv.set(old.Name, func(l *life) { l.removed = end })
				syncs += 3
				// The pod's grace period: requests an earlier State
				// sent it end before it goes.
				for _, l := range loads {
					l.settle(end)
				}
				if err := c.topo.RemovePod(old); err != nil {
					t.Fatal(err)
				}
				pods[slot] = neu
				time.Sleep(churnDwell)
			}
			// A broken backend fails everything from here on: stop
			// early rather than wait out every request's timeout.
			if ts, us := summarise(tcp.snapshot()), summarise(udp.snapshot()); ts.failed+us.failed > 100 {
				t.Errorf("stopping after round %d: %d TCP connections and %d UDP requests failed already", round, ts.failed, us.failed)
				break
			}
		}
		churn := time.Since(start)
		// Let the long-lived flows show they recover from the last Sync.
		time.Sleep(udpWithin + 200*time.Millisecond)
		stop()

		ts, us, fs := summarise(tcp.snapshot()), summarise(udp.snapshot()), summarise(flows.snapshot())
		t.Logf("%s: %d endpoint replacements, %d Syncs in %v", b.name, churnRounds*churnEndpoints, syncs, churn.Round(time.Millisecond))
		t.Logf("TCP connections: %d attempted, %d failed, %d slower than %v (max %v), %.0f/s",
			ts.attempted, ts.failed, ts.slow, slowAfter, ts.maxLatency.Round(time.Millisecond), tcp.rateAchieved())
		t.Logf("UDP requests on fresh flows: %d attempted, %d failed (max latency %v), %.0f/s",
			us.attempted, us.failed, us.maxLatency.Round(time.Millisecond), udp.rateAchieved())
		bad, nbad, checked := lv.unanswered(flows.snapshot(), churnFlows, udpWithin, flows.lastStart())
		t.Logf("long-lived UDP flows: %d requests, %d unanswered (datagrams lost while endpoints changed); %d of %d (Sync, flow) pairs without an answer from a live endpoint within %v",
			fs.attempted, fs.failed, nbad, checked, udpWithin)

		for _, l := range loads {
			if n := len(l.snapshot()); n >= l.max {
				t.Errorf("a load hit its bound of %d requests before the rolling update ended", l.max)
			}
		}
		if r := tcp.rateAchieved(); r < 200 {
			t.Errorf("the client opened only %.0f TCP connections per second, want at least 200: the load is too light to prove anything", r)
		}
		if ts.failed > 0 {
			t.Errorf("%d of %d TCP connections failed during the rolling update, want none; first: %v", ts.failed, ts.attempted, ts.failures)
		}
		if us.failed > 0 {
			t.Errorf("%d of %d UDP requests on fresh flows failed during the rolling update, want none; first: %v", us.failed, us.attempted, us.failures)
		}
		if nbad > 0 {
			t.Errorf("%d (Sync, flow) pairs: a long-lived UDP flow was not answered by a live endpoint within %v of a Sync; first: %v", nbad, udpWithin, bad)
		}
		for _, x := range []struct {
			name     string
			as       []attempt
			newConns bool
		}{
			{"TCP connection", tcp.snapshot(), true},
			// A fresh UDP flow may reuse the source port of an earlier
			// one whose conntrack entry still leads to a pod now
			// terminating, which then rightly answers it.
			{"UDP request on a fresh flow", udp.snapshot(), false},
			{"long-lived UDP flow request", flows.snapshot(), false},
		} {
			if m, n := lv.misrouted(x.as, x.newConns); n > 0 {
				t.Errorf("%d answers to a %s came from the wrong pod; first: %v", n, x.name, m)
			}
		}
		if checked == 0 {
			t.Errorf("no (Sync, flow) pair was checked")
		}
	})
}
