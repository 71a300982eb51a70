package reliability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// helperEnv makes TestRestartHelper the Dataplane process of
// TestRestartUnderLoad.
const helperEnv = "SVCPLANE_RELIABILITY_HELPER"

// helperJob is what the helper process is told on its standard input.
type helperJob struct {
	Backend string
	Node    dataplane.Node
	// States are synced in turn, round and round, until Limit.
	States []dataplane.State
	Limit  time.Duration
}

// TestRestartHelper is not a test: run by TestRestartUnderLoad as a
// separate process, it holds a Dataplane for the namespace on its file
// descriptor 3 and syncs the job's States in a loop, printing "S n"
// before and "E n" after Sync n, until it is killed.
func TestRestartHelper(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("the Dataplane process TestRestartUnderLoad starts and kills; not a test by itself")
	}
	var job helperJob
	if err := json.NewDecoder(os.Stdin).Decode(&job); err != nil {
		fmt.Printf("X read job: %v\n", err)
		os.Exit(2)
	}
	b, ok := backendByName(job.Backend)
	if !ok {
		fmt.Printf("X no backend %q\n", job.Backend)
		os.Exit(2)
	}
	dp, err := b.factory(t, conformanceTarget("/proc/self/fd/3", job.Node))
	if err != nil {
		fmt.Printf("X new Dataplane: %v\n", err)
		os.Exit(2)
	}
	ctx := context.Background()
	for i, end := 0, time.Now().Add(job.Limit); time.Now().Before(end); i++ {
		fmt.Printf("S %d\n", i)
		if err := dp.Sync(ctx, &job.States[i%len(job.States)]); err != nil {
			fmt.Printf("X %d %v\n", i, err)
			os.Exit(3)
		}
		fmt.Printf("E %d\n", i)
	}
	os.Exit(0) // not killed in time: the parent reports it
}

// helper is a running helper process.
type helper struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr bytes.Buffer
	starts map[int]time.Time // Sync n began (as the parent saw "S n")
	ends   map[int]time.Time
}

func startHelper(t *testing.T, b backend, c *cluster, states []dataplane.State) *helper {
	t.Helper()
	job, err := json.Marshal(helperJob{Backend: b.name, Node: c.node.NodeModel(), States: states, Limit: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := os.Open(c.node.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h := &helper{lines: make(chan string, 1024), starts: map[int]time.Time{}, ends: map[int]time.Time{}}
	h.cmd = exec.Command(os.Args[0], "-test.run=^TestRestartHelper$", "-test.timeout=2m")
	h.cmd.Env = append(os.Environ(), helperEnv+"=1")
	h.cmd.ExtraFiles = []*os.File{ns}
	h.cmd.Stdin = bytes.NewReader(job)
	h.cmd.Stderr = &h.stderr
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start the Dataplane process: %v", err)
	}
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		h.cmd.Wait()
	})
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			h.lines <- s.Text()
		}
		close(h.lines)
	}()
	return h
}

// waitSync reads the helper's output until Sync n has started (end
// false) or ended (end true).
func (h *helper) waitSync(t *testing.T, n int, end bool) {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case l, ok := <-h.lines:
			if !ok {
				t.Fatalf("the Dataplane process ended before Sync %d: %s", n, h.stderr.String())
			}
			if h.note(t, l) == n && strings.HasPrefix(l, map[bool]string{false: "S ", true: "E "}[end]) {
				return
			}
		case <-timeout:
			t.Fatalf("the Dataplane process did not reach Sync %d in a minute", n)
		}
	}
}

// note records a line of the helper's output and returns its Sync
// number.
func (h *helper) note(t *testing.T, l string) int {
	t.Helper()
	kind, num, _ := strings.Cut(l, " ")
	n, err := strconv.Atoi(strings.Fields(num + " x")[0])
	switch {
	case kind == "X":
		t.Fatalf("the Dataplane process failed: %s", l)
	case err != nil || (kind != "S" && kind != "E"):
		return -1 // go test's own output
	case kind == "S":
		h.starts[n] = time.Now()
	default:
		h.ends[n] = time.Now()
	}
	return n
}

// kill SIGKILLs the helper and reads the rest of its output, returning
// whether Sync n had ended.
func (h *helper) kill(t *testing.T, n int) (ended bool) {
	t.Helper()
	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for l := range h.lines {
		h.note(t, l)
	}
	h.cmd.Wait()
	_, ended = h.ends[n]
	return ended
}

// medianSync is the median duration of the helper's completed Syncs.
func (h *helper) medianSync() time.Duration {
	var ds []time.Duration
	for n, e := range h.ends {
		if s, ok := h.starts[n]; ok {
			ds = append(ds, e.Sub(s))
		}
	}
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// restartStates are the States the Dataplane processes sync in turn:
// the service under load on 4 of 5 live pods (TCP; UDP on the same 4
// always), and 300 other services
// (which change between States, so that every Sync is a long one, adds
// and removes services, and moves an affinity timeout).
func restartStates(pods []*topo.Pod) []dataplane.State {
	var out []dataplane.State
	for v := range 3 {
		var eps []dataplane.Endpoint
		for i := range 4 {
			eps = append(eps, readyEndpoint(pods[(v+i)%len(pods)]))
		}
		st := dataplane.State{Ports: loadPorts(eps)}
		// The UDP port keeps the same 4 endpoints: a datagram in flight
		// to an endpoint that leaves the State may rightly go
		// unanswered (its conntrack entry and, with IPVS, its
		// connection are deleted so that flows move on; see
		// TestChurnUnderLoad for endpoints that leave gracefully).
		for i := range 4 {
			st.Ports[1].Endpoints[i] = readyEndpoint(pods[i])
		}
		for i := 50 * v; i < 50*v+raceOr(300, 150); i++ {
			p := dataplane.ServicePort{
				Name:     dataplane.PortName{Namespace: "bulk", Name: fmt.Sprintf("svc-%d", i)},
				Protocol: dataplane.TCP, Port: 80,
				ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 19, byte(1 + i/250), byte(i % 250)})},
			}
			if i%100 == 0 {
				p.NodePort = uint16(30000 + i)
				p.Affinity = time.Duration(10+v) * time.Second
			}
			for e := range 4 {
				p.Endpoints = append(p.Endpoints, dataplane.Endpoint{
					Addr: netip.AddrFrom4([4]byte{198, 18, 2, byte(100 + e)}), Port: uint16(9000 + 10*v + e), Ready: true, Serving: true})
			}
			st.Ports = append(st.Ports, p)
		}
		out = append(out, st)
	}
	return out
}

// TestRestartUnderLoad kills the process holding the Dataplane with
// SIGKILL in the middle of a Sync, three times over, while a client pod
// opens TCP connections at 800/s and sends UDP requests at 200/s (half
// that under the race detector) to a
// service whose endpoints all stay ready. Each time a new process adopts
// the namespace and syncs on; at the end the test process adopts it and
// syncs a last State. No request may fail; after each kill the kernel
// must hold exactly one of the two States the killed Sync was between
// (a batch is atomic), and at the end exactly what a fresh Sync of the
// last State writes: nothing duplicated, nothing left over, and no
// other table.
func TestRestartUnderLoad(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		c := newCluster(t, 3*time.Minute)
		var pods []*topo.Pod
		for i := range 5 {
			pods = append(pods, c.pod(i%2, fmt.Sprintf("web-%d", i+1), podPort))
		}
		states := restartStates(pods)
		loop, last := states[:2], &states[2]
		fresh := make([]string, len(states))
		for i := range states {
			fresh[i] = c.freshDump(b, &states[i])
		}
		tablesBefore := snapshotTables(t, c.node.NS.Fd())

		h := startHelper(t, b, c, loop)
		h.waitSync(t, 0, true) // the service exists
		loads := []*load{
			{from: &c.client.Host, proto: dataplane.TCP, dst: loadTCP, rate: churnTCPRate, workers: 4, max: loadFor * churnTCPRate, timeout: loadTimeout},
			{from: &c.client.Host, proto: dataplane.UDP, dst: loadUDP, rate: churnUDPRate, workers: 2, max: loadFor * churnUDPRate, timeout: loadTimeout},
		}
		stop := startLoads(c.ctx, loads)
		defer stop()

		const kills = 3
		midSync, syncs := 0, 0
		for k := range kills {
			// Let it sync a few times, then kill it inside a Sync:
			// right after it announced one, at a random point within
			// how long its Syncs take.
			n := 3 + k%2
			h.waitSync(t, n-1, true)
			med := h.medianSync()
			h.waitSync(t, n, false)
			delay := time.Duration(rand.Int64N(int64(med)*8/10 + 1))
			time.Sleep(delay)
			ended := h.kill(t, n)
			syncs += len(h.ends)
			if !ended {
				midSync++
			}
			got := mustDump(t, b, c.node.NS.Fd())
			held := slices.Index(fresh[:2], got)
			switch {
			case held < 0 && b.atomic:
				t.Fatalf("kill %d: after SIGKILL in Sync %d the kernel holds neither State it was between (half-programmed?):\n%s",
					k+1, n, diff(fresh[n%2], got))
			case held < 0:
				// IPVS has no transactions: a Sync killed halfway
				// leaves some virtual servers changed and others not.
				// What must hold is that no request failed meanwhile
				// and that the next process converges.
				t.Logf("kill %d: SIGKILL %v into Sync %d (median Sync %v); Sync ended before the kill: %v; the kernel holds a mix of the two States (%d lines differ from the killed Sync's)",
					k+1, delay.Round(time.Millisecond), n, med.Round(time.Millisecond), ended, len(diffLines(fresh[n%2], got)))
			default:
				committed := map[bool]string{true: "committed", false: "not committed"}[held == n%2]
				t.Logf("kill %d: SIGKILL %v into Sync %d (median Sync %v); Sync ended before the kill: %v; the kernel holds State %d (the killed Sync's batch: %s)",
					k+1, delay.Round(time.Millisecond), n, med.Round(time.Millisecond), ended, held, committed)
			}
			h = startHelper(t, b, c, loop)
			h.waitSync(t, 0, true)
		}
		h.waitSync(t, 2, true)
		h.kill(t, 3)
		syncs += len(h.ends) + 1 // and the test process's
		// The test process adopts the namespace last and syncs the last
		// State.
		dp := c.open(b)
		if err := dp.Sync(c.ctx, last); err != nil {
			t.Fatalf("Sync after adopting the namespace: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
		stop()

		ts, us := summarise(loads[0].snapshot()), summarise(loads[1].snapshot())
		t.Logf("%s: %d SIGKILLs (%d inside a Sync), %d Dataplane processes", b.name, kills+1, midSync, kills+1)
		t.Logf("TCP connections: %d attempted, %d failed, %d slower than %v (max %v), %.0f/s",
			ts.attempted, ts.failed, ts.slow, slowAfter, ts.maxLatency.Round(time.Millisecond), loads[0].rateAchieved())
		t.Logf("UDP requests: %d attempted, %d failed (max latency %v)", us.attempted, us.failed, us.maxLatency.Round(time.Millisecond))
		if why := tooLight(loads[0], syncs); why != "" {
			t.Errorf("%s: the load is too light to prove anything", why)
		}
		if ts.failed > 0 {
			t.Errorf("%d of %d TCP connections to ready endpoints failed across the restarts, want none; first: %v", ts.failed, ts.attempted, ts.failures)
		}
		if us.failed > 0 {
			t.Errorf("%d of %d UDP requests to ready endpoints failed across the restarts, want none; first: %v", us.failed, us.attempted, us.failures)
		}
		if midSync == 0 {
			t.Errorf("no SIGKILL landed inside a Sync; the test did not test what it claims")
		}
		if got := mustDump(t, b, c.node.NS.Fd()); got != fresh[2] {
			t.Errorf("after the restarts the kernel differs from a fresh Sync of the last State (duplicates or leftovers):\n%s", diff(fresh[2], got))
		}
		want := slices.Clone(tablesBefore)
		for _, l := range strings.Split(fresh[2], "\n") {
			if strings.HasPrefix(l, "table ") && !slices.Contains(want, l) {
				want = append(want, l)
			}
		}
		slices.Sort(want)
		if now := snapshotTables(t, c.node.NS.Fd()); !slices.Equal(now, want) {
			t.Errorf("nftables tables after the restarts %v, want %v: the ones before the first Sync and the backend's own", now, want)
		}
	})
}

// snapshotTables lists the nftables tables of a namespace, as kstate
// names them.
func snapshotTables(t *testing.T, fd int) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(snapshot(t, fd), "\n") {
		if strings.HasPrefix(l, "table ") {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}
