package reliability

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// Churn: the rolling update every Deployment does, under load.
const (
	churnEndpoints = 4
	churnRounds    = 25 // each round replaces every endpoint once
	churnFlows     = 4  // long-lived UDP flows, each on its own source port
	churnFlowPort  = 41000
	// churnFreshPort is the first source port of the new UDP flows, one
	// port each; the long-lived flows' ports lie above the last.
	churnFreshPort = 10000
)

// The load: new TCP connections and new UDP flows (each from a source
// port of its own, never used before in the run) per second, and
// requests per second on each long-lived UDP flow. Under
// emulation (make test-vm: topo.TimeScale 4) the rates are divided by
// the time scale, the bound on the load's duration and the time a UDP
// flow has to recover are multiplied by it.
var (
	churnTCPRate  = loadRate(raceOr(800, 400))
	churnUDPRate  = loadRate(raceOr(200, 100))
	churnFlowRate = loadRate(raceOr(50, 25))
	// loadTimeout bounds each request: natively a lost SYN (sent again
	// after 1 s) fails. Under emulation the guest can be starved of CPU
	// for longer than that by the host's other work, so it is scaled,
	// and packets lost show as the retransmissions the tests log.
	loadTimeout = topo.Scale(time.Second)
	churnDwell  = topo.Scale(15 * time.Millisecond) // between the Syncs of one replacement
	udpWithin   = topo.Scale(2 * time.Second)       // a UDP flow must be answered this soon after a Sync
	loadFor     = int(150 * topo.TimeScale)         // seconds of load at most (with the rate, the bound on requests)
)

func loadRate(perSecond int) int { return max(1, int(float64(perSecond)/topo.TimeScale)) }

func raceOr(normal, race int) int {
	if raceEnabled {
		return race
	}
	return normal
}

// TestChurnUnderLoad replaces all 4 endpoints of a service 25 times over,
// as a rolling update does, while a client pod opens new TCP connections
// to the service's cluster IP at 800/s, sends UDP requests on new flows
// at 200/s (each from a source port no earlier request used), and keeps
// 4 UDP flows on fixed source ports (half those rates under the race
// detector).
// Each replacement is three Syncs: the new pod added ready; the old one
// marked terminating (Ready=false, Serving=true, Terminating=true); the
// old one removed. A pod keeps serving while terminating and is deleted
// only once it is out of the State and every request sent while it was
// in has ended, as a pod's grace period allows.
//
// So a correct backend fails no request: every TCP connection and every
// new UDP flow must be answered, by a pod in the State while the
// request ran, and neither may reach a pod marked terminating while
// ready ones exist. The long-lived UDP flows lose datagrams while their
// endpoint changes (stale conntrack entries are the backend's to
// delete; IPVS also loses the answer to a datagram in flight when the
// real server it went to is deleted), but each must be answered by a
// live endpoint within 2 s of every Sync.
//
// The new flows' source ports are chosen by the test rather than the
// kernel because an ephemeral port comes back: at 50 flows a second
// among 28,000 ports, 381 of 4851 requests of one run in the VM reused
// a port used in the 5 minutes before, and to IPVS (which keeps a UDP
// connection that long) such a datagram continues the old flow, to its
// old endpoint, with the losses of a long-lived flow (issue 6).
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
			{from: &c.client.Host, proto: dataplane.UDP, dst: loadUDP, rate: churnUDPRate, workers: 2, max: loadFor * churnUDPRate, timeout: loadTimeout,
				freshPort: churnFreshPort},
			{from: &c.client.Host, proto: dataplane.UDP, dst: loadUDP, rate: churnFlows * churnFlowRate, workers: churnFlows, max: loadFor * churnFlows * churnFlowRate,
				timeout: 250 * time.Millisecond, flows: true, flowPort: churnFlowPort},
		}
		if last := churnFreshPort + loadFor*churnUDPRate - 1; last >= churnFlowPort {
			t.Fatalf("the new UDP flows' source ports (%d-%d) reach the long-lived flows' (%d)", churnFreshPort, last, churnFlowPort)
		}
		tcp, udp, flows := loads[0], loads[1], loads[2]
		syn0, segs0 := tcpRetrans(t, &c.client.Host)
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

		syn, segs := tcpRetrans(t, &c.client.Host)
		ts, us, fs := summarise(tcp.snapshot()), summarise(udp.snapshot()), summarise(flows.snapshot())
		t.Logf("%s: %d endpoint replacements, %d Syncs in %v; load asked: %d TCP connections/s, %d fresh UDP requests/s, %d flows × %d requests/s",
			b.name, churnRounds*churnEndpoints, syncs, churn.Round(time.Millisecond), churnTCPRate, churnUDPRate, churnFlows, churnFlowRate)
		t.Logf("TCP connections: %d attempted, %d failed, %d slower than %v (max %v), %.0f/s; the client retransmitted %d SYNs and %d segments in all",
			ts.attempted, ts.failed, ts.slow, slowAfter, ts.maxLatency.Round(time.Millisecond), tcp.rateAchieved(), syn-syn0, segs-segs0)
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
		if why := tooLight(tcp, syncs); why != "" {
			t.Errorf("%s: the load is too light to prove anything", why)
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
			// Each fresh UDP flow has a source port of its own, so no
			// kernel state leads it to a pod now terminating: like a
			// new TCP connection, it goes to a ready one.
			{"UDP request on a fresh flow", udp.snapshot(), true},
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

// tooLight says why a TCP load was too light to prove anything about
// the Syncs it ran across, or "". Natively it must open at least 200
// connections a second, as the issue asks. Under emulation the guest
// gets what CPU the host spares, so the rate is not the guest's to
// keep; it must still open at least 10 connections per Sync on average,
// so that connections start and end around every Sync.
func tooLight(l *load, syncs int) string {
	n := len(l.snapshot())
	switch {
	case topo.TimeScale == 1 && l.rateAchieved() < 200:
		return fmt.Sprintf("the client opened only %.0f TCP connections per second, want at least 200", l.rateAchieved())
	case n < 10*syncs:
		return fmt.Sprintf("the client opened only %d TCP connections across %d Syncs, want at least 10 per Sync", n, syncs)
	}
	return ""
}

// tcpRetrans returns how many SYNs and segments h's TCP stack has
// retransmitted (TcpExt TCPSynRetrans, Tcp RetransSegs).
func tcpRetrans(t *testing.T, h *topo.Host) (syn, segs int64) {
	t.Helper()
	err := h.Do(func() error {
		for _, f := range []struct {
			file, proto, field string
			into               *int64
		}{{"netstat", "TcpExt:", "TCPSynRetrans", &syn}, {"snmp", "Tcp:", "RetransSegs", &segs}} {
			b, err := os.ReadFile("/proc/thread-self/net/" + f.file)
			if err != nil {
				return err
			}
			var names []string
			for _, l := range strings.Split(string(b), "\n") {
				fs := strings.Fields(l)
				if len(fs) == 0 || fs[0] != f.proto {
					continue
				}
				if names == nil {
					names = fs
					continue
				}
				if i := slices.Index(names, f.field); i > 0 && i < len(fs) {
					*f.into, err = strconv.ParseInt(fs[i], 10, 64)
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read %s's TCP counters: %v", h.Name, err)
	}
	return syn, segs
}
