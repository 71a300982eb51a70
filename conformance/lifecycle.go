package conformance

import (
	"errors"
	"net/netip"
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

	register("Lifecycle", "ForeignUntouched", func(e *env) {
		// Another program's nftables tables (a host firewall, a CNI
		// plugin) are identical before and after the backend's Syncs and
		// its Cleanup: its chains, rules, sets and elements. One table
		// exists before the backend's first Sync, one is created after.
		// A proxy that flushes the ruleset, or deletes by the wrong
		// handle or name, breaks the node.
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		c := e.pod(1, "client")
		foreign := make([][]string, len(e.dps))
		for i := range e.dps {
			foreign[i] = append(foreign[i], e.addForeignTable(i, "firewall"))
		}
		p := npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10), cip6(10)), ready(web1, 8080), ready(web2, 8080), ready6(web1, 8080))
		p.LoadBalancerIPs = ips(eip4(20))
		p.SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		dns := svc("dns", "dns", dataplane.UDP, 53, ips(cip4(11)), ready(web2, 8080))
		e.sync(state(p, dns))
		for i := range e.dps {
			foreign[i] = append(foreign[i], e.addForeignTable(i, "monitor"))
		}
		before := make([]string, len(e.dps))
		for i := range e.dps {
			before[i] = foreignSnapshot(e.snapshot(i), foreign[i])
		}
		check := func(when string) {
			e.t.Helper()
			for i := range e.dps {
				if s := foreignSnapshot(e.snapshot(i), foreign[i]); s != before[i] {
					e.t.Fatalf("%s: another program's tables changed %s:\n%s", e.nodes[i].Name, when, diff(before[i], s))
				}
			}
		}
		p.Endpoints = p.Endpoints[1:]
		p.Affinity = longAffinity
		e.sync(state(p))
		e.sync(state(p, dns))
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 3), "web-2")
		check("across Syncs")
		for i, dp := range e.dps {
			if err := dp.Cleanup(e.ctx); err != nil {
				e.t.Fatalf("Cleanup on %s: %v", e.nodes[i].Name, err)
			}
		}
		check("by Cleanup")
	})

	register("Lifecycle", "Restart", func(e *env) {
		// A new Dataplane on a namespace its predecessor programmed (the
		// proxy restarted: Close, then New) adopts what is there: open
		// connections keep working throughout, its first Sync of the
		// same State writes nothing (no rule churn: nftables generation
		// unchanged), and later Syncs change what they must. The State
		// uses every kind of frontend, so each must be adopted.
		web1, web2, web3 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080), e.pod(0, "web-3", 8080)
		c := e.pod(1, "client")
		p := npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10), cip6(10)), ready(web1, 8080), ready(web2, 8080), ready6(web1, 8080))
		p.LoadBalancerIPs = ips(eip4(20))
		p.ExternalIPs = ips(eip4(21))
		p.SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		local := npSvc("local", "http", dataplane.TCP, 80, nodePort+1, ips(cip4(11)), ready(web1, 8080), ready(web2, 8080))
		local.ExternalLocal, local.Affinity = true, longAffinity
		internal := svc("internal", "dns", dataplane.UDP, 53, ips(cip4(12)), ready(web1, 8080), ready(web2, 8080))
		internal.InternalLocal = true
		st := state(p, local, internal)
		e.sync(st)

		fromPod, err := c.DialTCP(e.ctx, ap(cip4(10), 80))
		if err != nil {
			e.t.Fatalf("open a connection from a pod: %v", err)
		}
		defer fromPod.Close()
		fromClient, err := e.topo.Client.DialTCP(e.ctx, ap(e.topo.Nodes[0].IPv4, nodePort))
		if err != nil {
			e.t.Fatalf("open a connection through the NodePort: %v", err)
		}
		defer fromClient.Close()
		echo := func(when string) {
			e.t.Helper()
			for _, s := range []*topo.Stream{fromPod, fromClient} {
				if err := s.Echo([]byte(when+"\n"), 0); err != nil {
					e.t.Fatalf("%s: %v", when, err)
				}
			}
		}
		echo("before the restart")
		gens := make([]uint32, len(e.dps))
		for i := range e.dps {
			gens[i] = e.generation(i)
			e.restart(i)
		}
		echo("after Close and New")
		e.sync(st)
		echo("after the new Dataplane's first Sync")
		for i := range e.dps {
			if g := e.generation(i); g != gens[i] {
				e.t.Errorf("%s: the new Dataplane's first Sync of the State already in the kernel committed (nftables generation %d → %d); want it to adopt the kernel state and write nothing", e.nodes[i].Name, gens[i], g)
			}
		}
		onlyPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 5), "web-1", "web-2")
		p.Endpoints = append(p.Endpoints, ready(web3, 8080))
		e.sync(state(p, local, internal))
		echo("after the new Dataplane's second Sync")
		// 3 endpoints: each missed by chance with 3·(2/3)⁴⁰ ≈ 3e-7.
		allPods(e.t, e.tally(&c.Host, dataplane.TCP, ap(cip4(10), 80), 40), "web-1", "web-2", "web-3")
	})

	register("Lifecycle", "TamperRepaired", func(e *env) {
		// Objects deleted behind the backend's back (an admin's `nft
		// flush ruleset`, a firewall reload) are restored by the next
		// Sync of the same State, which then stays idempotent; another
		// program's table is not disturbed. The case knows no backend's
		// objects: it takes every nftables table the backend created and
		// first empties them (every set and chain), then deletes them; on
		// a kernel with IPVS it also deletes every IPVS virtual server
		// (only the backend makes them in the case's namespaces).
		web1, web2 := e.pod(0, "web-1", 8080), e.pod(1, "web-2", 8080)
		c := e.pod(1, "client")
		pre := make([][]string, len(e.dps))
		var foreign string
		for i := range e.dps {
			foreign = e.addForeignTable(i, "firewall")
			pre[i] = e.nftTables(i)
		}
		st := state(
			npSvc("web", "http", dataplane.TCP, 80, nodePort, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080)),
			svc("web", "dns", dataplane.UDP, 53, ips(cip4(10)), ready(web1, 8080), ready(web2, 8080)),
		)
		e.sync(st)
		ours := make([][]string, len(e.dps))
		for i := range e.dps {
			if ours[i] = added(pre[i], e.nftTables(i)); len(ours[i]) == 0 {
				e.t.Fatalf("%s: the backend created no nftables table; this case tampers only with nftables", e.nodes[i].Name)
			}
		}
		works := func(when string) {
			e.t.Helper()
			for proto, port := range map[dataplane.Protocol]uint16{dataplane.TCP: 80, dataplane.UDP: 53} {
				got := e.tally(&c.Host, proto, ap(cip4(10), port), seeBoth)
				allPods(e.t, got, "web-1", "web-2")
			}
			onlyPods(e.t, e.tally(e.topo.Client, dataplane.TCP, ap(e.topo.Nodes[0].IPv4, nodePort), 3), "web-1", "web-2")
		}
		works("before tampering")
		for _, tamper := range []struct {
			what string
			do   func(node int, ids []string)
		}{
			{"emptied every set and chain of the backend's tables", e.flushTables},
			{"deleted the backend's tables", e.deleteTables},
		} {
			for i := range e.dps {
				tamper.do(i, ours[i])
				e.flushIPVS(i)
			}
			e.notForwarded(&c.Host, dataplane.TCP, ap(cip4(10), 80), topo.RequestOptions{}, "the service's objects were removed: "+tamper.what)
			e.sync(st)
			works("after a Sync that follows: " + tamper.what)
			for i := range e.dps {
				gen := e.generation(i)
				e.sync(st)
				if g := e.generation(i); g != gen {
					e.t.Errorf("%s: after the repair (%s), another Sync of the same State committed again (nftables generation %d → %d); want nothing written", e.nodes[i].Name, tamper.what, gen, g)
				}
			}
		}
		for i := range e.dps {
			if now := e.nftTables(i); !contains(now, foreign) {
				e.t.Fatalf("%s: the foreign table is gone after the repairs: %v", e.nodes[i].Name, now)
			}
		}
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

// foreignSnapshot returns the parts of a kstate snapshot that describe the
// tables ids.
func foreignSnapshot(snapshot string, ids []string) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(tableSnapshot(snapshot, id))
	}
	return b.String()
}
