package conformance

import (
	"errors"
	"strings"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// The Lifecycle group: what a backend writes, keeps and removes.
func init() {
	register("Lifecycle", "Idempotent", func(e *env) {
		// A second Sync of the same State writes nothing to the kernel: a
		// proxy re-syncs often, and each write costs every node CPU.
		web := e.pod(0, "web-1", 8080)
		st := state(
			svc("web", "http", dataplane.TCP, 80, ips(cip4(10), cip6(10)), ready(web, 8080), ready6(web, 8080)),
			svc("web", "dns", dataplane.UDP, 53, ips(cip4(10), cip6(10)), ready(web, 8080), ready6(web, 8080)),
		)
		e.sync(st)
		before := []string{e.snapshot(0), e.snapshot(1)}
		gens := []uint32{e.generation(0), e.generation(1)}
		e.sync(st)
		e.sync(state(st.Ports...)) // an equal State in a new value
		for i := range e.dps {
			if g := e.generation(i); g != gens[i] {
				e.t.Errorf("%s: a Sync of an unchanged State committed to the kernel (nftables generation %d → %d); want nothing written", e.nodes[i].Name, gens[i], g)
			}
			if s := e.snapshot(i); s != before[i] {
				e.t.Errorf("%s: a Sync of an unchanged State changed the kernel state:\n%s", e.nodes[i].Name, diff(before[i], s))
			}
		}
	})

	register("Lifecycle", "Cleanup", func(e *env) {
		// After Cleanup, nothing the backend made remains: the namespace
		// is as it was before the first Sync.
		web := e.pod(0, "web-1", 8080)
		c := e.pod(1, "client")
		before := []string{e.snapshot(0), e.snapshot(1)}
		e.sync(state(svc("web", "http", dataplane.TCP, 80, ips(cip4(10), cip6(10)), ready(web, 8080), ready6(web, 8080))))
		e.hit(&c.Host, dataplane.TCP, ap(cip4(10), 80))
		for i, dp := range e.dps {
			if err := dp.Cleanup(e.ctx); err != nil {
				e.t.Fatalf("Cleanup on %s: %v", e.nodes[i].Name, err)
			}
			if s := e.snapshot(i); s != before[i] {
				e.t.Errorf("%s: Cleanup left kernel state behind:\n%s", e.nodes[i].Name, diff(before[i], s))
			}
		}
		if r, err := e.req(&c.Host, dataplane.TCP, ap(cip4(10), 80), topo.RequestOptions{}); err == nil {
			e.t.Fatalf("after Cleanup the service still answered (%s)", r.Pod)
		}
	})

	register("Lifecycle", "InvalidState", func(e *env) {
		// An invalid State returns an error naming each bad field and
		// changes nothing in the kernel; traffic keeps flowing.
		web := e.pod(0, "web-1", 8080)
		c := e.pod(1, "client")
		good := svc("web", "http", dataplane.TCP, 80, ips(cip4(10)), ready(web, 8080))
		e.sync(state(good))
		before := []string{e.snapshot(0), e.snapshot(1)}
		badPort := svc("other", "http", dataplane.TCP, 0, ips(cip4(11)), ready(web, 8080))
		clash := svc("clash", "http", dataplane.TCP, 80, ips(cip4(10)))
		bad := state(good, badPort, clash)
		for i, dp := range e.dps {
			err := dp.Sync(e.ctx, bad)
			if err == nil {
				e.t.Fatalf("%s: Sync of an invalid State returned nil", e.nodes[i].Name)
			}
			var paths []string
			for _, fe := range dataplane.FieldErrors(err) {
				paths = append(paths, fe.Path)
			}
			var fe *dataplane.FieldError
			if !errors.As(err, &fe) || !contains(paths, "ports[1].port") || !contains(paths, "ports[2].clusterIPs[0]") {
				e.t.Fatalf("%s: Sync error %q names fields %v; want ports[1].port and ports[2].clusterIPs[0]", e.nodes[i].Name, err, paths)
			}
			if s := e.snapshot(i); s != before[i] {
				e.t.Fatalf("%s: a rejected Sync changed the kernel:\n%s", e.nodes[i].Name, diff(before[i], s))
			}
		}
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 3), "web-1")
	})
}

// diff returns the lines only in a ("-") or only in b ("+").
func diff(a, b string) string {
	in := func(s string) map[string]int {
		m := make(map[string]int)
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if mb[l] == 0 {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if ma[l] == 0 {
			out = append(out, "+ "+l)
		}
	}
	if len(out) > 40 {
		out = append(out[:40], "…")
	}
	return strings.Join(out, "\n")
}
