// Command benchplot turns the output of svcplane's benchmarks (go test
// -bench, internal/syncbench's naming) into docs/benchmarks.md and a plot
// of full-sync time against services. `make bench` runs it; every figure
// it writes comes from the one output file it is given.
//
//	benchplot -in docs/bench-raw.txt -md docs/benchmarks.md -svg docs/sync-time.svg \
//	  -notes docs/performance-notes.md -machine "…" -kernel "…" -date "…" -how "…"
//
// The input holds the native run (package nft) and, after a line starting
// "vm: ", the IPVS run in a VM (package ipvs; tools/benchplot/ipvs-vm.sh).
// With -count > 1 runs, each figure is the median of its runs. Where a
// target of issue 5 is missed, the document says by how much, from the
// figures, and then includes the hand-written analysis of -notes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"image/color"
	"log"
	"math"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// result is one benchmark's figures, by unit ("ns/op", "nl-msgs/op", …),
// each with every run's value.
type result map[string][]float64

func (r result) get(unit string) (float64, bool) {
	v := r[unit]
	if len(v) == 0 {
		return 0, false
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}

var (
	lineRE = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)
	sizeRE = regexp.MustCompile(`services=(\d+)(?:/endpoints=(\d+))?`)
)

// input is what parse read: the results, benchmark names in order of
// appearance, the native run's CPU and the VM's description.
type input struct {
	res   map[string]result
	order []string
	cpu   string
	vm    string
}

func parse(path string) (input, error) {
	in := input{res: map[string]result{}}
	f, err := os.Open(path)
	if err != nil {
		return in, err
	}
	defer f.Close()
	out := in.res
	var order []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if c, ok := strings.CutPrefix(line, "vm: "); ok {
			in.vm = c
		}
		if c, ok := strings.CutPrefix(line, "cpu: "); ok && in.vm == "" {
			in.cpu = c
		}
		m := lineRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name := m[1]
		r := out[name]
		if r == nil {
			r = result{}
			out[name] = r
			order = append(order, name)
		}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err == nil {
				r[f[i+1]] = append(r[f[i+1]], v)
			}
		}
	}
	in.order = order
	return in, sc.Err()
}

type size struct{ services, endpoints int }

func (s size) String() string { return fmt.Sprintf("%d × %d", s.services, s.endpoints) }

func sizeOf(name string) size {
	m := sizeRE.FindStringSubmatch(name)
	if m == nil {
		return size{}
	}
	s, _ := strconv.Atoi(m[1])
	e, _ := strconv.Atoi(m[2])
	return size{s, e}
}

var syncSizes = []size{{1000, 5}, {10000, 5}, {50000, 5}, {5000, 50}}

// sizesOf returns the sizes of backend's BenchmarkSync results: those of
// syncSizes first, in that order, then any other (SVCPLANE_BENCH_SIZES).
func sizesOf(res map[string]result, backend string) []size {
	seen := map[size]bool{}
	prefix := "BenchmarkSync/" + backend + "/"
	for n := range res {
		if strings.HasPrefix(n, prefix) {
			seen[sizeOf(n)] = true
		}
	}
	var out []size
	for _, s := range syncSizes {
		if seen[s] {
			out = append(out, s)
			delete(seen, s)
		}
	}
	var rest []size
	for s := range seen {
		rest = append(rest, s)
	}
	sort.Slice(rest, func(i, j int) bool {
		if rest[i].endpoints != rest[j].endpoints {
			return rest[i].endpoints < rest[j].endpoints
		}
		return rest[i].services < rest[j].services
	})
	return append(out, rest...)
}

func syncName(backend, scenario string, s size) string {
	return fmt.Sprintf("BenchmarkSync/%s/%s/services=%d/endpoints=%d", backend, scenario, s.services, s.endpoints)
}

func dur(ns float64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%.2f s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.1f ms", ns/1e6)
	default:
		return fmt.Sprintf("%.0f µs", ns/1e3)
	}
}

func bytesStr(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	default:
		return fmt.Sprintf("%.0f B", b)
	}
}

func num(v float64) string {
	if v == math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func main() {
	in := flag.String("in", "docs/bench-raw.txt", "benchmark output")
	md := flag.String("md", "docs/benchmarks.md", "markdown to write")
	svg := flag.String("svg", "docs/sync-time.svg", "plot to write")
	machine := flag.String("machine", "", "machine description")
	kernel := flag.String("kernel", "", "kernel release")
	date := flag.String("date", "", "date of the run")
	how := flag.String("how", "", "how the numbers were taken")
	verify := flag.String("verify", "", "output of the element check to quote")
	verifyN := flag.String("verify-n", "50000", "service ports of the element check")
	notes := flag.String("notes", "", "markdown to include after the targets: the analysis of the misses")
	flag.Parse()

	inp, err := parse(*in)
	if err != nil {
		log.Fatal(err)
	}
	res, order, cpu := inp.res, inp.order, inp.cpu
	get := func(name, unit string) (float64, bool) {
		r := res[name]
		if r == nil {
			return 0, false
		}
		return r.get(unit)
	}
	cell := func(name, unit string, f func(float64) string) string {
		if v, ok := get(name, unit); ok {
			return f(v)
		}
		return "–"
	}

	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# svcplane benchmarks")
	w("")
	w("Written by `make bench` (tools/benchplot) from one run, whose raw output")
	w("is [bench-raw.txt](bench-raw.txt) (benchstat reads it). Figures are medians")
	w("of the runs in that file.")
	w("")
	w("- Date: %s", *date)
	w("- Machine: %s; CPU: %s", *machine, cpu)
	w("- Kernel: %s", *kernel)
	if *how != "" {
		w("- How: %s", *how)
	}
	w("")
	w("The benchmarks are `BenchmarkSync/<backend>/<scenario>/services=<N>/endpoints=<E>`")
	w("and `BenchmarkConnect/<backend>/services=<N>` (internal/syncbench, run from")
	w("nft/bench_test.go). Every service port is an IPv4 ClusterIP (TCP 80) with E")
	w("ready endpoints; each op runs in fresh unnamed network namespaces. `full` is a")
	w("cold Sync into an empty namespace; `noop` the same State again; `one-endpoint`")
	w("replaces one endpoint of one service; `add-service` and `remove-service` add or")
	w("remove one service port (undone untimed). Netlink figures are what the")
	w("Dataplane sent: messages and bytes of committed batches (batch begin and end")
	w("included, counted from the batch google/nftables sends), and reads (nftables")
	w("generation requests, 20 bytes each: one per Sync, one more after a commit).")
	w("")

	w("## Sync, svcplane nft")
	w("")
	w("time/op is wall time; CPU/op is the process's user and system time over the")
	w("op (every thread: GC, and the kernel's netlink work, which runs on the")
	w("sending thread), which other load on the machine moves less; \"of which")
	w("kernel\" is the system part (netlink work, and page faults of fresh heap).")
	w("`State.Validate` is what dataplane's validation of the whole State, which")
	w("every Sync runs first, takes on its own (measured apart, untimed, median")
	w("of 3). Batches are committed nftables transactions.")
	w("")
	w("| scenario | services × endpoints | time/op | CPU/op | of which kernel | State.Validate | netlink msgs/op | netlink bytes/op | batches/op | reads/op | Go alloc/op | allocs/op |")
	w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	nftSizes := sizesOf(res, "nft")
	for _, sc := range scenarios {
		for _, s := range nftSizes {
			n := syncName("nft", sc, s)
			if res[n] == nil {
				continue
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", sc, s,
				cell(n, "ns/op", dur), cell(n, "cpu-ns/op", dur), cell(n, "sys-ns/op", dur), cell(n, "validate-ns/op", dur), cell(n, "nl-msgs/op", num), cell(n, "nl-bytes/op", bytesStr),
				cell(n, "nft-commits/op", num), cell(n, "nl-reads/op", num), cell(n, "B/op", bytesStr), cell(n, "allocs/op", num))
		}
	}
	w("")
	w("## full: memory")
	w("")
	w("Peak RSS is the process's VmHWM, reset before each op. The Go heap kept is")
	w("HeapAlloc after GC with the Dataplane alive minus before it synced. The")
	w("budget is 2 KiB per service port plus 256 B per endpoint.")
	w("")
	w("| services × endpoints | peak RSS | Go heap kept | per port | per endpoint | of budget |")
	w("| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, s := range nftSizes {
		n := syncName("nft", "full", s)
		if res[n] == nil {
			continue
		}
		w("| %s | %s | %s | %s | %s | %s |", s,
			cell(n, "peak-RSS-MiB", func(v float64) string { return fmt.Sprintf("%.0f MiB", v) }),
			cell(n, "heap-MiB", func(v float64) string { return fmt.Sprintf("%.1f MiB", v) }),
			cell(n, "heap-B/port", bytesStr), cell(n, "heap-B/endpoint", bytesStr),
			cell(n, "heap-%budget", func(v float64) string { return fmt.Sprintf("%.0f%%", v) }))
	}
	// Per port and per endpoint, solved from 10000 × 5 and 5000 × 50.
	h1, ok1 := get(syncName("nft", "full", size{10000, 5}), "heap-MiB")
	h2, ok2 := get(syncName("nft", "full", size{5000, 50}), "heap-MiB")
	var perPort, perEP float64
	if ok1 && ok2 {
		// h = a·N + b·N·E for both sizes.
		a1, b1, c1 := 10000.0, 50000.0, h1*(1<<20)
		a2, b2, c2 := 5000.0, 250000.0, h2*(1<<20)
		det := a1*b2 - a2*b1
		perPort = (c1*b2 - c2*b1) / det
		perEP = (a1*c2 - a2*c1) / det
		w("")
		w("Solving heap = a·ports + b·endpoints from 10000 × 5 and 5000 × 50 gives")
		w("a = %s per service port and b = %s per endpoint.", bytesStr(perPort), bytesStr(perEP))
	}
	w("")

	w("## The peer: the same State with `nft -f`")
	w("")
	w("`nft-file` renders the State the way kube-proxy's nftables mode writes a full")
	w("sync (knftables: one `add element` line per element, a chain per service with")
	w("`numgen random mod N vmap` to a chain per endpoint) and loads it with")
	w("`nsenter --net=<ns> nft -f -`, the script on standard input as knftables")
	w("passes it, into an empty namespace; only the load is timed.")
	w("")
	w("| services × endpoints | nft-file | svcplane nft | nft-file / svcplane | CPU: nft-file | CPU: svcplane | CPU ratio |")
	w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	ratios := map[size]float64{}
	for _, s := range nftSizes {
		fn, nn := syncName("nft-file", "full", s), syncName("nft", "full", s)
		f, okf := get(fn, "ns/op")
		n, okn := get(nn, "ns/op")
		if !okf && !okn {
			continue
		}
		ratio, cpuRatio := "–", "–"
		if okf && okn {
			ratios[s] = f / n
			ratio = fmt.Sprintf("%.1f×", f/n)
		}
		fc, okfc := get(fn, "cpu-ns/op")
		nc, oknc := get(nn, "cpu-ns/op")
		if okfc && oknc && nc > 0 {
			cpuRatio = fmt.Sprintf("%.1f×", fc/nc)
		}
		fs := "not run"
		if okf {
			fs = dur(f)
		}
		w("| %s | %s | %s | %s | %s | %s | %s |", s, fs, cell(nn, "ns/op", dur), ratio, cell(fn, "cpu-ns/op", dur), cell(nn, "cpu-ns/op", dur), cpuRatio)
	}
	w("")
	w("![full sync time against services](sync-time.svg)")
	w("")

	w("## Connect: new TCP connections through a ClusterIP")
	w("")
	w("One client pod connects, one connection after another, to one ClusterIP")
	w("whose two endpoints are pods on the same node, while N service ports are")
	w("programmed (conformance/topo). An op is connect, read the greeting, close")
	w("with a reset; latency is the connect (handshake) alone.")
	w("")
	w("| services | conns/s | p50 connect | p99 connect |")
	w("| ---: | ---: | ---: | ---: |")
	var connNames []string
	for _, n := range order {
		if strings.HasPrefix(n, "BenchmarkConnect/nft/") {
			connNames = append(connNames, n)
		}
	}
	sort.Slice(connNames, func(i, j int) bool { return sizeOf(connNames[i]).services < sizeOf(connNames[j]).services })
	us := func(v float64) string { return fmt.Sprintf("%.0f µs", v) }
	for _, n := range connNames {
		w("| %d | %s | %s | %s |", sizeOf(n).services, cell(n, "conns/s", func(v float64) string { return fmt.Sprintf("%.0f", v) }),
			cell(n, "p50-us", us), cell(n, "p99-us", us))
	}
	w("")

	writeIPVS(w, inp, get, cell)

	w("## Targets (issue 5)")
	w("")
	w("Judged from the figures above. IPVS targets are judged on the emulated")
	w("VM's figures, as ratios within the same VM run.")
	w("")
	w("| target | measured | | by how much |")
	w("| --- | --- | --- | --- |")
	var misses []string
	target := func(what, measured string, ok, known bool, by string) {
		mark := "missed"
		switch {
		case !known:
			mark, by = "not measured", ""
		case ok:
			mark, by = "met", ""
		default:
			misses = append(misses, what)
		}
		w("| %s | %s | %s | %s |", what, measured, mark, by)
	}
	// timeTarget judges ns/op of names against limit; by is the worst
	// factor over the limit.
	// Sizes not run are named; the target is judged on the others.
	timeTarget := func(what string, names []string, limit float64) {
		var parts, missing []string
		ok := true
		worst := 0.0
		for _, n := range names {
			v, k := get(n, "ns/op")
			if !k {
				missing = append(missing, sizeOf(n).String())
				continue
			}
			parts = append(parts, fmt.Sprintf("%s: %s", sizeOf(n), dur(v)))
			ok = ok && v <= limit
			worst = max(worst, v/limit)
		}
		if len(missing) > 0 && len(parts) > 0 {
			parts = append(parts, "not run: "+strings.Join(missing, ", "))
		}
		target(what, strings.Join(parts, "; "), ok, len(parts) > 0, fmt.Sprintf("%.1f× the limit (%s over)", worst, dur(worst*limit-limit)))
	}
	timeTarget("full, 10000 × 5 and 5000 × 50: ≤ 1 s", []string{syncName("nft", "full", size{10000, 5}), syncName("nft", "full", size{5000, 50})}, 1e9)
	timeTarget("full, 50000 × 5: ≤ 3 s", []string{syncName("nft", "full", size{50000, 5})}, 3e9)
	for _, sc := range []string{"one-endpoint", "add-service"} {
		var names []string
		for _, s := range syncSizes {
			names = append(names, syncName("nft", sc, s))
		}
		timeTarget(sc+": ≤ 5 ms at every size", names, 5e6)
		// Constant in N: compared among sizes with the same endpoint
		// count (at 5000 × 50 endpoint addresses repeat with other
		// ports, so an old endpoint's hairpin pair may stay).
		var msgs []string
		same, known := true, false
		first := map[int]float64{}
		for _, n := range names {
			v, k := get(n, "nl-msgs/op")
			if !k {
				continue
			}
			known = true
			sz := sizeOf(n)
			msgs = append(msgs, fmt.Sprintf("%s: %s", sz, num(v)))
			if f, ok := first[sz.endpoints]; ok {
				same = same && v == f
			} else {
				first[sz.endpoints] = v
			}
		}
		target(sc+": constant netlink messages (same endpoints per port)", strings.Join(msgs, "; ")+" msgs/op", same, known, "varies with N")
	}
	noop := syncName("nft", "noop", size{50000, 5})
	timeTarget("noop at 50000 × 5: ≤ 20 ms", []string{noop}, 20e6)
	var noopParts []string
	noopZero, worstNoop := true, 0.0
	for _, s := range nftSizes {
		n := syncName("nft", "noop", s)
		if v, ok := get(n, "nl-msgs/op"); ok {
			r, _ := get(n, "nl-reads/op")
			noopParts = append(noopParts, fmt.Sprintf("%s: %s written, %s read (GETGEN)", s, num(v), num(r)))
			noopZero = noopZero && v == 0
			worstNoop = max(worstNoop, v)
		}
	}
	target("noop: zero netlink messages written", strings.Join(noopParts, "; "), noopZero, len(noopParts) > 0, num(worstNoop)+" msgs/op")
	const memTarget = "memory: ≤ 2 KiB Go heap per service port + ≤ 256 B per endpoint"
	if ok1 && ok2 {
		target(memTarget, fmt.Sprintf("%s per port, %s per endpoint (solved from 10000 × 5 and 5000 × 50)", bytesStr(perPort), bytesStr(perEP)),
			perPort <= 2048 && perEP <= 256, true, fmt.Sprintf("%.1f× per port, %.1f× per endpoint", perPort/2048, perEP/256))
	} else {
		// Without both sizes, judge each size against its budget.
		var parts []string
		worst := 0.0
		for _, s := range nftSizes {
			if v, ok := get(syncName("nft", "full", s), "heap-%budget"); ok {
				parts = append(parts, fmt.Sprintf("%s: %.0f%% of its budget", s, v))
				worst = max(worst, v)
			}
		}
		target(memTarget, strings.Join(parts, "; "), worst <= 100, len(parts) > 0, fmt.Sprintf("%.1f× the budget", worst/100))
	}
	if r, ok := ratios[size{10000, 5}]; ok {
		target("≥ 3× faster than nft-file, full 10000 × 5", fmt.Sprintf("nft-file / svcplane = %.1f×", r), r >= 3, ok, fmt.Sprintf("%.1f× short", 3/r))
	} else {
		target("≥ 3× faster than nft-file, full 10000 × 5", "", false, false, "")
	}

	ipvsFull := syncName("ipvs", "full", size{10000, 5})
	fi, ok1i := get(ipvsFull, "ns/op")
	fa, ok2i := get(syncName("ipvsadm-restore", "full", size{10000, 5}), "ns/op")
	if ok1i && ok2i {
		target("IPVS: full 10000 × 5 ≥ 2× faster than ipvsadm-restore (same VM run)", fmt.Sprintf("ipvsadm-restore / ipvs = %.2f×", fa/fi), fa/fi >= 2, true, fmt.Sprintf("%.1f× short", 2/(fa/fi)))
	} else {
		target("IPVS: full 10000 × 5 ≥ 2× faster than ipvsadm-restore (same VM run)", "", false, false, "")
	}
	var oneMsgs []string
	oneOK, oneKnown := true, false
	worstOne := 0.0
	for _, s := range sizesOf(res, "ipvs") {
		if v, ok := get(syncName("ipvs", "one-endpoint", s), "nl-msgs/op"); ok {
			oneKnown = true
			oneMsgs = append(oneMsgs, fmt.Sprintf("%s: %s", s, num(v)))
			oneOK = oneOK && v <= 2
			worstOne = max(worstOne, v)
		}
	}
	target("IPVS: one-endpoint sends ≤ 2 IPVS messages", strings.Join(oneMsgs, "; "), oneOK, oneKnown, num(worstOne)+" msgs/op")
	var noopMsgs []string
	noopOK, noopKnown := true, false
	for _, s := range sizesOf(res, "ipvs") {
		if v, ok := get(syncName("ipvs", "noop", s), "nl-msgs/op"); ok {
			noopKnown = true
			rd, _ := get(syncName("ipvs", "noop", s), "nl-reads/op")
			noopMsgs = append(noopMsgs, fmt.Sprintf("%s: %s written, %s read", s, num(v), num(rd)))
			noopOK = noopOK && v == 0
		}
	}
	target("IPVS: noop sends none", strings.Join(noopMsgs, "; "), noopOK, noopKnown, "")
	w("")
	if len(misses) > 0 {
		w("Missed in this run: %s. Why, what the profiles show and what would close", strings.Join(misses, "; "))
		w("each gap: see below.")
		w("")
	}
	if *verify != "" {
		w("## Every element is there")
		w("")
		w("After a %s × 5 full sync, TestFullSyncHoldsEveryElement fetched every", *verifyN)
		w("expected key back from the kernel (NFT_MSG_GETSETELEM, 1024 keys a request):")
		w("")
		w("    %s", strings.TrimSpace(*verify))
		w("")
	}
	if *notes != "" {
		b.WriteString("<!-- included from performance-notes.md (hand-written; the figures above are from the run) -->\n\n")
		nb, err := os.ReadFile(*notes)
		if err != nil {
			log.Fatal(err)
		}
		b.Write(nb)
	}
	if err := os.WriteFile(*md, []byte(b.String()), 0o644); err != nil {
		log.Fatal(err)
	}
	if err := writePlot(*svg, res); err != nil {
		log.Fatal(err)
	}
}

var scenarios = []string{"full", "noop", "one-endpoint", "add-service", "remove-service"}

// writeIPVS writes the IPVS section: the ipvs backend's scenarios and
// the ipvsadm-restore peer, from the VM run.
func writeIPVS(w func(string, ...any), inp input, get func(string, string) (float64, bool), cell func(string, string, func(float64) string) string) {
	res := inp.res
	sizes := sizesOf(res, "ipvs")
	if len(sizes) == 0 {
		return
	}
	w("## Sync, svcplane ipvs (in a VM: ratios only)")
	w("")
	w("Run in QEMU with software emulation (TCG), because this machine's kernel")
	w("has no IPVS: %s.", inp.vm)
	w("Emulation makes every figure several times slower than on hardware:")
	w("read them only against each other")
	w("(the ratio to ipvsadm-restore, the scenarios against full), never against")
	w("the native nft figures. Netlink figures are IPVS generic-netlink requests")
	w("the Dataplane sent (counted in internal/ipvsnl as they go out): writes")
	w("(one per virtual or real server added, changed or removed) and reads (one")
	w("dump of every virtual server per Sync, to notice changes made behind its")
	w("back). The backend also commits its nftables table (a batch of set")
	w("elements) when its elements change, and puts each service IP on a dummy")
	w("device (one rtnetlink message per new IP; not counted).")
	w("")
	w("| scenario | services × endpoints | time/op | CPU/op | IPVS msgs/op | IPVS bytes/op | IPVS reads/op | nftables commits/op | Go alloc/op |")
	w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, sc := range scenarios {
		for _, s := range sizes {
			n := syncName("ipvs", sc, s)
			if res[n] == nil {
				continue
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |", sc, s, cell(n, "ns/op", dur), cell(n, "cpu-ns/op", dur),
				cell(n, "nl-msgs/op", num), cell(n, "nl-bytes/op", bytesStr), cell(n, "nl-reads/op", num), cell(n, "nft-commits/op", num), cell(n, "B/op", bytesStr))
		}
	}
	w("")
	w("`ipvsadm-restore` loads the same virtual and real servers (`-A … -s rr`,")
	w("`-a … -m -w 1`) with `nsenter --net=<ns> ipvsadm -R` into an empty")
	w("namespace, in the same VM run. It programs IPVS only, so the ipvs")
	w("backend, which also writes its nftables table and the dummy device's")
	w("addresses, does more work for its figure.")
	w("")
	w("| services × endpoints | ipvsadm-restore | svcplane ipvs | ipvsadm-restore / svcplane | CPU: ipvsadm | CPU: svcplane |")
	w("| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, s := range sizes {
		an, in := syncName("ipvsadm-restore", "full", s), syncName("ipvs", "full", s)
		a, oka := get(an, "ns/op")
		v, okv := get(in, "ns/op")
		ratio := "–"
		if oka && okv {
			ratio = fmt.Sprintf("%.2f×", a/v)
		}
		w("| %s | %s | %s | %s | %s | %s |", s, cell(an, "ns/op", dur), cell(in, "ns/op", dur), ratio, cell(an, "cpu-ns/op", dur), cell(in, "cpu-ns/op", dur))
	}
	w("")
	if h, ok := get(syncName("ipvs", "full", size{10000, 5}), "heap-B/port"); ok {
		w("Go heap the ipvs Dataplane keeps after full at 10000 × 5: %s per service port", bytesStr(h))
		w("(5 endpoints each; the heap is not slowed by emulation).")
		w("")
	}
}

func writePlot(path string, res map[string]result) error {
	p := plot.New()
	p.Title.Text = "Full sync time (cold, empty namespace)"
	p.X.Label.Text = "service ports (5 endpoints each; crosses: 5000 × 50)"
	p.Y.Label.Text = "seconds (log scale)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.ConstantTicks([]plot.Tick{{Value: 1000, Label: "1000"}, {Value: 5000, Label: "5000"}, {Value: 10000, Label: "10000"}, {Value: 50000, Label: "50000"}})
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	p.Legend.Left = true
	series := []struct {
		backend, label string
		c              color.Color
	}{
		{"nft", "svcplane nft", color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}},
		{"ipvs", "svcplane ipvs (VM, emulated)", color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}},
		{"nft-file", "nft -f (kube-proxy's shape)", color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}},
		{"ipvsadm-restore", "ipvsadm -R (VM, emulated)", color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}},
	}
	for _, s := range series {
		var pts, big plotter.XYs
		for _, sz := range syncSizes {
			r := res[syncName(s.backend, "full", sz)]
			if r == nil {
				continue
			}
			v, _ := r.get("ns/op")
			if sz.endpoints == 5 {
				pts = append(pts, plotter.XY{X: float64(sz.services), Y: v / 1e9})
			} else {
				big = append(big, plotter.XY{X: float64(sz.services), Y: v / 1e9})
			}
		}
		if len(pts) > 0 {
			l, sc, err := plotter.NewLinePoints(pts)
			if err != nil {
				return err
			}
			l.Color, sc.Color = s.c, s.c
			l.Width = vg.Points(1.5)
			sc.Shape = draw.CircleGlyph{}
			p.Add(l, sc)
			p.Legend.Add(s.label, l, sc)
		}
		if len(big) > 0 {
			sc, err := plotter.NewScatter(big)
			if err != nil {
				return err
			}
			sc.Color = s.c
			sc.Shape = draw.CrossGlyph{}
			sc.Radius = vg.Points(4)
			p.Add(sc)
		}
	}
	p.Add(plotter.NewGrid())
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}
