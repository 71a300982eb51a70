// Package syncbench is svcplane's benchmark harness (issue 5): the same
// cluster-scale States, scenarios and metrics for every backend, so that
// `go test -bench` output of different packages lines up under one naming
// scheme:
//
//	BenchmarkSync/<backend>/<scenario>/services=<N>/endpoints=<E>
//	BenchmarkConnect/<backend>/services=<N>
//
// A backend package registers itself in its own bench_test.go: nft/ runs
// "nft" (the library) and "nft-file" (the same State rendered in the shape
// kube-proxy's nftables mode writes and loaded with `nft -f`); ipvs/ runs
// "ipvs" and "ipvsadm-restore" (the same virtual and real servers loaded
// with `ipvsadm -R`) the same way (see Backend and Loader).
//
// Everything runs in fresh unnamed network namespaces (needs root) whose
// loopback is up, as on a node; the root namespace is never touched.
// Addresses come from the documentation and benchmarking ranges only:
// cluster IPs in 198.19.0.0/16, endpoints in 198.18.0.0/16.
//
// Bodies take an R, which is a *testing.B in benchmarks (Bench) or a
// *testing.T that runs each case exactly once (Once), so that `go test`
// without -bench keeps every benchmark working at its smallest size.
//
// Smoke runs (Once) also check what needs no timing: a noop Sync writes
// no netlink message, and a one-endpoint Sync at most
// Backend.MaxOneEndpointMsgs.
//
// Environment:
//
//	SVCPLANE_BENCH_MAX=N       skip sizes with more than N services (0: all)
//	SVCPLANE_BENCH_SIZES=L     run only these sizes of BenchmarkSync, a
//	                           comma-separated list of <services>x<endpoints>
//	                           (e.g. 1000x5,10000x5: what TCG can take)
//	SVCPLANE_BENCH_FILE_MAX=N  file loaders: skip sizes with more than N
//	                           endpoints in all (default 50000: 1000 × 5 and
//	                           10000 × 5; nft -f of 250000 endpoint chains
//	                           takes many minutes)
//	SVCPLANE_BENCH_HEAPPROFILE=F  full: write a heap profile to F after the
//	                           first op's Sync, with the Dataplane alive
//	                           (go tool pprof -sample_index=inuse_space)
package syncbench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/netnsutil"
)

// R is what a benchmark body needs from its runner.
type R interface {
	testing.TB
	// N is the number of operations to time.
	N() int
	ResetTimer()
	StartTimer()
	StopTimer()
	ReportAllocs()
	ReportMetric(v float64, unit string)
	// Run runs f as a sub-benchmark (or subtest) named name.
	Run(name string, f func(R)) bool
	// Once reports whether this is a smoke run (one op, smallest size).
	Once() bool
}

// Bench adapts a *testing.B.
func Bench(b *testing.B) R { return bench{b} }

type bench struct{ *testing.B }

func (b bench) N() int     { return b.B.N }
func (b bench) Once() bool { return false }
func (b bench) Run(name string, f func(R)) bool {
	return b.B.Run(name, func(b *testing.B) { f(bench{b}) })
}

// Once adapts a *testing.T: every body runs one op, metrics are logged,
// and only the smallest size of each benchmark runs. No timing is judged.
func Once(t *testing.T) R { return once{t} }

type once struct{ *testing.T }

func (o once) N() int        { return 1 }
func (o once) Once() bool    { return true }
func (o once) ResetTimer()   {}
func (o once) StartTimer()   {}
func (o once) StopTimer()    {}
func (o once) ReportAllocs() {}
func (o once) ReportMetric(v float64, unit string) {
	o.Logf("%s = %g", unit, v)
}
func (o once) Run(name string, f func(R)) bool {
	return o.T.Run(name, func(t *testing.T) { f(once{t}) })
}

// Stats counts the netlink traffic a Dataplane sent since it was opened,
// on the kernel interface it programs (nftables for nft, IPVS for ipvs).
// Writes are what change the kernel (for nftables the messages of
// committed batches, batch begin and end included; for IPVS one message
// per operation; and their bytes as sent); Reads are the requests that
// only read (the nftables generation; IPVS dumps). Commits counts
// nftables transactions (batches) committed, which the ipvs backend also
// sends for its filter table.
type Stats struct {
	WriteMsgs, WriteBytes, Reads, Commits int64
}

func (s Stats) sub(o Stats) Stats {
	return Stats{s.WriteMsgs - o.WriteMsgs, s.WriteBytes - o.WriteBytes, s.Reads - o.Reads, s.Commits - o.Commits}
}

func (s Stats) add(o Stats) Stats {
	return Stats{s.WriteMsgs + o.WriteMsgs, s.WriteBytes + o.WriteBytes, s.Reads + o.Reads, s.Commits + o.Commits}
}

// Counted is a Dataplane that counts its netlink traffic.
type Counted interface {
	NetlinkStats() Stats
}

// WithStats returns dp as a Counted Dataplane whose NetlinkStats are
// what stats returns.
func WithStats(dp dataplane.Dataplane, stats func() Stats) dataplane.Dataplane {
	return counted{dp, stats}
}

type counted struct {
	dataplane.Dataplane
	stats func() Stats
}

func (c counted) NetlinkStats() Stats { return c.stats() }

// Backend is a library backend under test.
type Backend struct {
	// Name is the <backend> element of benchmark names: "nft", "ipvs".
	Name string
	// New opens a Dataplane for the namespace at nsPath. It may implement
	// Counted; then messages and bytes are reported. An error wrapping
	// dataplane.ErrUnsupported skips the benchmark.
	New func(nsPath string, node dataplane.Node) (dataplane.Dataplane, error)
	// MaxOneEndpointMsgs, when above 0, is what a one-endpoint Sync may
	// write at most; smoke runs check it.
	MaxOneEndpointMsgs int
}

// Loader is a peer that programs a State by rendering a file and
// loading it with a command-line tool into an empty namespace: only its
// full scenario exists. Only Load is timed.
type Loader struct {
	// Name is the <backend> element of benchmark names: "nft-file".
	Name string
	// Render returns the file for st, as node sees it.
	Render func(st *dataplane.State, node dataplane.Node) []byte
	// Load loads file into the empty namespace at nsPath and returns the
	// CPU time the loading program used.
	Load func(nsPath string, file []byte) (time.Duration, error)
	// Available, when set, says why the loader cannot run here (its
	// program is missing, say); the benchmark then skips.
	Available func() error
}

// Size is one benchmark size.
type Size struct{ Services, Endpoints int }

func (s Size) String() string {
	return fmt.Sprintf("services=%d/endpoints=%d", s.Services, s.Endpoints)
}

// SyncSizes are the sizes of BenchmarkSync.
var SyncSizes = []Size{{1000, 5}, {10000, 5}, {50000, 5}, {5000, 50}}

// ConnectSizes are the service counts of BenchmarkConnect.
var ConnectSizes = []int{10, 10000, 50000}

// Scenarios of BenchmarkSync, in order.
var Scenarios = []string{"full", "noop", "one-endpoint", "add-service", "remove-service"}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// syncSizes returns SyncSizes, or the sizes SVCPLANE_BENCH_SIZES lists.
func syncSizes(r R) []Size {
	v := os.Getenv("SVCPLANE_BENCH_SIZES")
	if v == "" {
		return SyncSizes
	}
	var out []Size
	for f := range strings.SplitSeq(v, ",") {
		var s Size
		if _, err := fmt.Sscanf(strings.TrimSpace(f), "%dx%d", &s.Services, &s.Endpoints); err != nil || s.Services < 1 || s.Endpoints < 1 {
			r.Fatalf("SVCPLANE_BENCH_SIZES=%q: %q is not <services>x<endpoints>", v, f)
		}
		out = append(out, s)
	}
	return out
}

// sizes returns the sizes to run: all up to max (0: no limit), or in a
// smoke run only the smallest.
func sizes[T any](r R, all []T, n func(T) int, max int) []T {
	var out []T
	for _, s := range all {
		if max > 0 && n(s) > max {
			continue
		}
		if r.Once() && len(out) > 0 {
			if n(s) < n(out[0]) {
				out[0] = s
			}
			continue
		}
		out = append(out, s)
	}
	return out
}

// Node is the node every benchmark programs: node-a of conformance/topo.
var Node = dataplane.Node{
	Name:          "node-a",
	LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
}

// Port returns service port i (0-based) of a benchmark State: IPv4
// ClusterIP, TCP port 80, with e ready endpoints on other nodes.
// Endpoint k of the State (k = i·e + j) has address 198.18.0.0/16 host
// k/4+1 and port 8080 + k%4: every endpoint is distinct, and every
// address serves 4 endpoints (often of neighbouring services) at every
// size, as a pod behind several services does. Sharing is what the
// largest sizes (250,000 endpoints; a /16 holds 65,534 hosts) cannot
// avoid, so the smaller ones share alike: a change then costs the same
// messages at every size, since an address's hairpin element stays while
// another endpoint uses it.
func Port(i, e int) dataplane.ServicePort {
	c := i + 1
	p := dataplane.ServicePort{
		Name:       dataplane.PortName{Namespace: "bench", Name: "svc-" + strconv.Itoa(i), Port: "http"},
		Protocol:   dataplane.TCP,
		Port:       80,
		ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 19, byte(c >> 8), byte(c)})},
		Endpoints:  make([]dataplane.Endpoint, e),
	}
	for j := range e {
		p.Endpoints[j] = endpoint(i*e + j)
	}
	return p
}

const (
	endpointsPerAddr = 4
	hostsPerWrap     = 65534 // hosts of 198.18.0.0/16; past them, ports 8084... start
)

func endpoint(k int) dataplane.Endpoint {
	a := k / endpointsPerAddr
	h := a%hostsPerWrap + 1
	return dataplane.Endpoint{
		Addr:     netip.AddrFrom4([4]byte{198, 18, byte(h >> 8), byte(h)}),
		Port:     uint16(8080 + k%endpointsPerAddr + endpointsPerAddr*(a/hostsPerWrap)),
		NodeName: "node-b",
		Ready:    true, Serving: true,
	}
}

// State returns a State of n service ports with e endpoints each; cap
// leaves room to append ports without copying.
func State(n, e, capacity int) *dataplane.State {
	st := &dataplane.State{Ports: make([]dataplane.ServicePort, n, max(n, capacity))}
	for i := range n {
		st.Ports[i] = Port(i, e)
	}
	return st
}

// newNS returns a fresh namespace with its loopback up (IPVS refuses
// real servers in a namespace without a local routing table); fatal on
// error.
func newNS(r R) *netnsutil.NS {
	r.Helper()
	if os.Geteuid() != 0 {
		r.Skip("needs root to create network namespaces")
	}
	ns, err := netnsutil.New()
	if err != nil {
		r.Fatal(err)
	}
	if err := loUp(ns); err != nil {
		ns.Close()
		r.Fatal(err)
	}
	return ns
}

func loUp(ns *netnsutil.NS) error {
	h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()))
	if err != nil {
		return fmt.Errorf("rtnetlink in the benchmark namespace: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("bring lo up in the benchmark namespace: %w", err)
	}
	return nil
}

// newDP opens be's Dataplane on ns; it skips when the kernel lacks what
// the backend needs, and is fatal on other errors.
func newDP(r R, be Backend, ns *netnsutil.NS) dataplane.Dataplane {
	r.Helper()
	dp, err := be.New(ns.Path(), Node)
	if err != nil {
		ns.Close()
		if errors.Is(err, dataplane.ErrUnsupported) {
			r.Skip(err)
		}
		r.Fatal(err)
	}
	return dp
}

// env is a synced Dataplane that the ops of one sub-benchmark share
// (testing.B calls a body several times with growing N).
type env struct {
	ns    *netnsutil.NS
	dp    dataplane.Dataplane
	st    *dataplane.State
	size  Size
	op    int // ops so far, over every call of the body
	extra int // next index for added ports
}

func (e *env) close(r R) {
	if e == nil {
		return
	}
	e.dp.Close()
	e.ns.Close()
	settle(r)
}

func stats(dp dataplane.Dataplane) (Stats, bool) {
	c, ok := dp.(Counted)
	if !ok {
		return Stats{}, false
	}
	return c.NetlinkStats(), true
}

// reportStats reports per-op netlink figures.
func reportStats(r R, d Stats, ops int) {
	n := float64(ops)
	r.ReportMetric(float64(d.WriteMsgs)/n, "nl-msgs/op")
	r.ReportMetric(float64(d.WriteBytes)/n, "nl-bytes/op")
	r.ReportMetric(float64(d.Reads)/n, "nl-reads/op")
	r.ReportMetric(float64(d.Commits)/n, "nft-commits/op")
}

// Sync runs BenchmarkSync for the backends and loaders.
func Sync(r R, backends []Backend, loaders []Loader) {
	maxN := envInt("SVCPLANE_BENCH_MAX", 0)
	fileMax := envInt("SVCPLANE_BENCH_FILE_MAX", 50000)
	svc := func(s Size) int { return s.Services }
	all := syncSizes(r)
	fileSizes := sizes(r, all, svc, maxN)
	fileSizes = slices.DeleteFunc(slices.Clone(fileSizes), func(s Size) bool {
		return fileMax > 0 && s.Services*s.Endpoints > fileMax
	})
	for _, be := range backends {
		r.Run(be.Name, func(r R) {
			for _, sc := range Scenarios {
				r.Run(sc, func(r R) {
					for _, sz := range sizes(r, all, svc, maxN) {
						var shared *env
						runSized(r, sz, func(r R) { syncScenario(r, be, sc, sz, &shared) })
						shared.close(r)
					}
				})
			}
		})
	}
	for _, l := range loaders {
		r.Run(l.Name, func(r R) {
			if l.Available != nil {
				if err := l.Available(); err != nil {
					r.Skip(err)
				}
			}
			r.Run("full", func(r R) {
				for _, sz := range fileSizes {
					runSized(r, sz, func(r R) { loadFull(r, l, sz) })
				}
			})
		})
	}
}

// runSized runs f as services=N/endpoints=E.
func runSized(r R, sz Size, f func(R)) {
	r.Run(fmt.Sprintf("services=%d", sz.Services), func(r R) {
		r.Run(fmt.Sprintf("endpoints=%d", sz.Endpoints), f)
	})
}

func syncScenario(r R, be Backend, scenario string, sz Size, shared **env) {
	if scenario == "full" {
		syncFull(r, be, sz)
		return
	}
	ctx := context.Background()
	// The body runs several times (growing N): set up once, and let the
	// caller close the env when the sub-benchmark is done.
	e := *shared
	if e == nil {
		ns := newNS(r)
		dp := newDP(r, be, ns)
		e = &env{ns: ns, dp: dp, st: State(sz.Services, sz.Endpoints, sz.Services+1), size: sz, extra: sz.Services}
		if err := dp.Sync(ctx, e.st); err != nil {
			e.close(r)
			r.Fatal(err)
		}
		*shared = e
	}
	r.ReportAllocs()
	sync := func(st *dataplane.State) {
		if err := e.dp.Sync(ctx, st); err != nil {
			r.Fatal(err)
		}
	}
	var timed Stats
	var cpu, sys time.Duration
	count := func(f func()) {
		b, _ := stats(e.dp)
		cu, cs := cpuTime()
		f()
		u, s := cpuTime()
		cpu += u + s - cu - cs
		sys += s - cs
		a, _ := stats(e.dp)
		timed = timed.add(a.sub(b))
	}
	n := r.N()
	r.ResetTimer()
	switch scenario {
	case "noop":
		for range n {
			count(func() { sync(e.st) })
		}
	case "one-endpoint":
		// Each op replaces endpoint 0 of the next service by a new
		// address (outside every generated one), and puts it back when it
		// comes round again.
		for range n {
			k := e.op % sz.Services
			p := &e.st.Ports[k]
			if (e.op/sz.Services)%2 == 0 {
				p.Endpoints[0].Addr = netip.AddrFrom4([4]byte{198, 18, 255, 255})
				p.Endpoints[0].Port = uint16(1024 + k%60000)
			} else {
				p.Endpoints[0] = endpoint(k * sz.Endpoints)
			}
			e.op++
			count(func() { sync(e.st) })
		}
	case "add-service":
		// Each op adds a new service port; it is removed again untimed.
		all := e.st.Ports[:sz.Services+1]
		for range n {
			all[sz.Services] = Port(e.extra, sz.Endpoints)
			e.extra++
			count(func() { sync(&dataplane.State{Ports: all}) })
			r.StopTimer()
			sync(e.st)
			r.StartTimer()
		}
	case "remove-service":
		// Each op removes one service port (the next one each time); it
		// is put back untimed.
		ports := e.st.Ports
		last := sz.Services - 1
		for range n {
			k := e.op % sz.Services
			e.op++
			ports[k], ports[last] = ports[last], ports[k]
			count(func() { sync(&dataplane.State{Ports: ports[:last]}) })
			r.StopTimer()
			sync(e.st)
			ports[k], ports[last] = ports[last], ports[k]
			r.StartTimer()
		}
	default:
		r.Fatalf("unknown scenario %q", scenario)
	}
	r.StopTimer()
	if _, ok := stats(e.dp); ok {
		reportStats(r, timed, n)
		if r.Once() {
			checkMsgs(r, be, scenario, timed, n)
		}
	}
	r.ReportMetric(float64(cpu.Nanoseconds())/float64(n), "cpu-ns/op")
	r.ReportMetric(float64(sys.Nanoseconds())/float64(n), "sys-ns/op")
	// How much of each op is dataplane.State.Validate, which every Sync
	// runs on the whole State: the median of 3, untimed.
	var v [3]time.Duration
	for i := range v {
		t0 := time.Now()
		if err := e.st.Validate(); err != nil {
			r.Fatal(err)
		}
		v[i] = time.Since(t0)
	}
	slices.Sort(v[:])
	r.ReportMetric(float64(v[1].Nanoseconds()), "validate-ns/op")
}

// checkMsgs checks, in smoke runs, the message counts that need no
// timing: none for noop, at most be.MaxOneEndpointMsgs for one-endpoint.
func checkMsgs(r R, be Backend, scenario string, d Stats, ops int) {
	switch {
	case scenario == "noop" && d.WriteMsgs != 0:
		r.Errorf("%s: %d noop Syncs wrote %d netlink messages, want none: a Sync of an unchanged State must not touch the kernel", be.Name, ops, d.WriteMsgs)
	case scenario == "noop" && d.Commits != 0:
		r.Errorf("%s: %d noop Syncs committed %d nftables transactions, want none", be.Name, ops, d.Commits)
	case scenario == "one-endpoint" && be.MaxOneEndpointMsgs > 0 && d.WriteMsgs > int64(be.MaxOneEndpointMsgs*ops):
		r.Errorf("%s: %d one-endpoint Syncs wrote %d netlink messages, want at most %d each", be.Name, ops, d.WriteMsgs, be.MaxOneEndpointMsgs)
	}
}

// syncFull times a cold Sync into an empty namespace, and reports the
// Go heap the Dataplane keeps and the process's peak RSS.
func syncFull(r R, be Backend, sz Size) {
	ctx := context.Background()
	st := State(sz.Services, sz.Endpoints, 0)
	r.ReportAllocs()
	var total Stats
	var counted bool
	var cpu, sys time.Duration
	var heap, hwm float64
	n := r.N()
	profiled := false
	r.ResetTimer()
	for range n {
		r.StopTimer()
		ns := newNS(r)
		dp := newDP(r, be, ns)
		h0 := heapAfterGC()
		resetPeakRSS()
		s0, ok := stats(dp)
		counted = ok
		u0, k0 := cpuTime()
		r.StartTimer()
		err := dp.Sync(ctx, st)
		r.StopTimer()
		u1, k1 := cpuTime()
		cpu += u1 + k1 - u0 - k0
		sys += k1 - k0
		if err != nil {
			dp.Close()
			ns.Close()
			r.Fatal(err)
		}
		s1, _ := stats(dp)
		total = total.add(s1.sub(s0))
		hwm += float64(peakRSS())
		heap += float64(heapAfterGC()) - float64(h0)
		if f := os.Getenv("SVCPLANE_BENCH_HEAPPROFILE"); f != "" && !profiled {
			profiled = true
			writeHeapProfile(r, f)
		}
		runtime.KeepAlive(st)
		dp.Close()
		ns.Close()
		settle(r)
		r.StartTimer()
	}
	r.StopTimer()
	nf := float64(n)
	if counted {
		reportStats(r, total, n)
	}
	r.ReportMetric(float64(cpu.Nanoseconds())/nf, "cpu-ns/op")
	r.ReportMetric(float64(sys.Nanoseconds())/nf, "sys-ns/op")
	r.ReportMetric(hwm/nf/(1<<20), "peak-RSS-MiB")
	r.ReportMetric(heap/nf/(1<<20), "heap-MiB")
	r.ReportMetric(heap/nf/float64(sz.Services), "heap-B/port")
	r.ReportMetric(heap/nf/float64(sz.Services*sz.Endpoints), "heap-B/endpoint")
	budget := float64(sz.Services)*2048 + float64(sz.Services*sz.Endpoints)*256
	r.ReportMetric(100*heap/nf/budget, "heap-%budget")
}

// loadFull times loading a rendered file into an empty namespace.
func loadFull(r R, l Loader, sz Size) {
	st := State(sz.Services, sz.Endpoints, 0)
	file := l.Render(st, Node)
	n := r.N()
	var cpu time.Duration
	r.ResetTimer()
	for range n {
		r.StopTimer()
		ns := newNS(r)
		r.StartTimer()
		c, err := l.Load(ns.Path(), file)
		r.StopTimer()
		cpu += c
		ns.Close()
		settle(r)
		if err != nil {
			r.Fatal(err)
		}
		r.StartTimer()
	}
	r.StopTimer()
	r.ReportMetric(float64(len(file)), "file-bytes")
	r.ReportMetric(float64(cpu.Nanoseconds())/float64(n), "cpu-ns/op")
}

// writeHeapProfile writes the heap profile (as of the last GC) to path.
func writeHeapProfile(r R, path string) {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("heap").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		r.Fatal(err)
	}
}

// cpuTime is the CPU time (user and system, every thread) the process
// has used: unlike wall time it moves less when other programs share the
// machine. The kernel's netlink work runs on the sending thread and
// counts as system time, reported apart as sys-ns/op.
func cpuTime() (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// heapAfterGC returns the live Go heap.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// resetPeakRSS returns freed memory to the OS and resets VmHWM, so that
// the next peakRSS is the peak since now.
func resetPeakRSS() {
	debug.FreeOSMemory()
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSS returns VmHWM in bytes.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// settle waits (up to 10 s) until the machine is mostly idle again: a
// closed namespace is torn down by a kernel worker after Close returns,
// and that work must not land in the next timed op. Smoke runs time
// nothing and do not wait.
func settle(r R) {
	if r.Once() {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	prevIdle, prevTotal := cpuTimes()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		idle, total := cpuTimes()
		if total > prevTotal && float64(idle-prevIdle)/float64(total-prevTotal) > 0.85 {
			return
		}
		prevIdle, prevTotal = idle, total
	}
}

func cpuTimes() (idle, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	return idle, total
}
