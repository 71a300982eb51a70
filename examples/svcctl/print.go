package main

import (
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcplane/svcplane/dataplane"
)

// skipped explains the Services of the manifests that give no port in st,
// and the ports without endpoints.
func skipped(objs *objects, st *dataplane.State) []string {
	have := make(map[string]bool)
	for _, p := range st.Ports {
		have[p.Name.Namespace+"/"+p.Name.Name] = true
	}
	var out []string
	for _, s := range objs.services {
		name := s.Namespace + "/" + s.Name
		if have[name] {
			continue
		}
		why := "nothing to program"
		switch {
		case s.Spec.Type == corev1.ServiceTypeExternalName:
			why = fmt.Sprintf("an ExternalName Service is a DNS alias (%s), not proxied: nothing to program", s.Spec.ExternalName)
		case s.Spec.ClusterIP == corev1.ClusterIPNone:
			why = "a headless Service (clusterIP None) is answered by DNS with its pods' addresses, not proxied: nothing to program"
		case hasLabel(s.Labels, corev1.IsHeadlessService):
			why = "labelled " + corev1.IsHeadlessService + ": nothing to program"
		}
		out = append(out, fmt.Sprintf("%s: Service %s: %s", objs.where[s], name, why))
	}
	for _, p := range st.Ports {
		if len(p.Endpoints) == 0 {
			out = append(out, fmt.Sprintf("%s has no endpoints in the manifests: its traffic will be rejected", p.Name))
		}
	}
	return out
}

func hasLabel(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

// front describes a frontend and how it forwards, for comparing what is
// desired with what is programmed.
type front struct {
	rank int    // cluster IPs, external IPs, NodePorts
	text string // "cluster IP 198.19.0.10:80/TCP"
	how  string // attributes: policy, affinity, ranges, reject or drop
}

var kindRank = map[string]int{"cluster IP": 0, "external IP": 1, "NodePort": 2}

func newFront(kind string, addr netip.Addr, proto dataplane.Protocol, port uint16, local, reject, drop bool, affinity time.Duration, ranges []netip.Prefix) front {
	var how []string
	if local {
		how = append(how, "Local")
	}
	if affinity > 0 {
		how = append(how, "affinity "+affinity.String())
	}
	if len(ranges) > 0 {
		r := slices.Clone(ranges)
		slices.SortFunc(r, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
		how = append(how, fmt.Sprintf("source ranges %v", r))
	}
	if reject {
		how = append(how, "rejected")
	}
	if drop {
		how = append(how, "dropped")
	}
	text := kind + " " + netip.AddrPortFrom(addr, port).String() + "/" + proto.String()
	if kind == "NodePort" {
		// One NodePort, whichever node addresses answer it.
		text = fmt.Sprintf("NodePort %d/%s", port, proto)
		if addr.Is6() {
			text += " (IPv6)"
		}
	}
	return front{rank: kindRank[kind], text: text, how: strings.Join(how, ", ")}
}

func (f front) String() string {
	if f.how == "" {
		return f.text
	}
	return f.text + " (" + f.how + ")"
}

func sortFronts(fs []front) {
	slices.SortFunc(fs, func(a, b front) int {
		if a.rank != b.rank {
			return a.rank - b.rank
		}
		return strings.Compare(a.text, b.text)
	})
}

// desired is one port of the desired State as a backend will program it:
// its frontends and the endpoints this node uses.
type desired struct {
	fronts []front
	eps    []netip.AddrPort
}

func desiredOf(p *dataplane.ServicePort, node *dataplane.Node) desired {
	var d desired
	cat := dataplane.Categorize(p, node)
	reject := !cat.Any
	fams := map[bool]bool{}
	for _, cip := range p.ClusterIPs {
		is4 := cip.Is4()
		fams[is4] = true
		unspec := netip.IPv6Unspecified()
		if is4 {
			unspec = netip.IPv4Unspecified()
		}
		drop := !reject && len(cat.Internal(p)) == 0
		d.fronts = append(d.fronts, newFront("cluster IP", cip, p.Protocol, p.Port, false, reject, drop, p.Affinity, nil))
		for _, a := range p.ExternalIPs {
			if a.Is4() == is4 {
				d.fronts = append(d.fronts, newFront("external IP", a, p.Protocol, p.Port, p.ExternalLocal && !reject, reject, false, p.Affinity, nil))
			}
		}
		for _, a := range p.LoadBalancerIPs {
			if a.Is4() == is4 {
				var ranges []netip.Prefix
				for _, r := range p.SourceRanges {
					if r.Addr().Is4() == is4 && !reject {
						ranges = append(ranges, r.Masked())
					}
				}
				d.fronts = append(d.fronts, newFront("external IP", a, p.Protocol, p.Port, p.ExternalLocal && !reject, reject, false, p.Affinity, ranges))
			}
		}
		if p.NodePort != 0 {
			d.fronts = append(d.fronts, newFront("NodePort", unspec, p.Protocol, p.NodePort, p.ExternalLocal && !reject, reject, false, p.Affinity, nil))
		}
	}
	seen := map[netip.AddrPort]bool{}
	for _, list := range [][]dataplane.Endpoint{cat.Internal(p), cat.Cluster, cat.Local} {
		for _, e := range list {
			if ap := e.AddrPort(); fams[ap.Addr().Is4()] && !seen[ap] {
				seen[ap] = true
				d.eps = append(d.eps, ap)
			}
		}
	}
	sortFronts(d.fronts)
	slices.SortFunc(d.eps, netip.AddrPort.Compare)
	return d
}

func programmedOf(p *viewPort) desired {
	var d desired
	seen := map[netip.AddrPort]bool{}
	seenFront := map[front]bool{}
	for _, f := range p.Frontends {
		if fr := newFront(f.Kind, f.Addr, f.Protocol, f.Port, f.Local, f.Reject, f.Drop, f.Affinity, f.SourceRanges); !seenFront[fr] {
			seenFront[fr] = true
			d.fronts = append(d.fronts, fr)
		}
		for _, e := range slices.Concat(f.Endpoints, f.LocalEndpoints) {
			if !seen[e.Addr] {
				seen[e.Addr] = true
				d.eps = append(d.eps, e.Addr)
			}
		}
	}
	sortFronts(d.fronts)
	slices.SortFunc(d.eps, netip.AddrPort.Compare)
	return d
}

// summarize lists, per service port, what a Sync of st changes in what
// have shows: + new, - removed, ~ changed; unchanged ports are left out.
// It is the readable part of a plan; the backend's commands are the exact
// part.
func summarize(st *dataplane.State, node *dataplane.Node, have *view) []string {
	programmed := make(map[string]*viewPort)
	if have != nil {
		for i := range have.Ports {
			programmed[have.Ports[i].Name] = &have.Ports[i]
		}
	}
	var out []string
	wanted := make(map[string]bool)
	width := 0
	for _, p := range st.Ports {
		width = max(width, len(p.Name.String()))
	}
	for name := range programmed {
		width = max(width, len(name))
	}
	line := func(mark, name, what string) {
		out = append(out, fmt.Sprintf("%s %-*s  %s", mark, width, name, what))
	}
	for i := range st.Ports {
		p := &st.Ports[i]
		if len(p.ClusterIPs) == 0 {
			continue
		}
		name := p.Name.String()
		wanted[name] = true
		want := desiredOf(p, node)
		old, ok := programmed[name]
		if !ok {
			fronts := make([]string, len(want.fronts))
			for i, f := range want.fronts {
				fronts[i] = f.String()
			}
			line("+", name, strings.Join(fronts, ", ")+" → "+endpointCount(len(want.eps)))
			continue
		}
		got := programmedOf(old)
		if have.PoliciesHidden {
			for _, fs := range [][]front{want.fronts, got.fronts} {
				for i := range fs {
					fs[i].how = ""
				}
			}
		}
		var diffs []string
		if add, del := diff(want.fronts, got.fronts); len(add)+len(del) > 0 {
			diffs = append(diffs, "frontends"+signed(add, del))
		}
		if add, del := diff(want.eps, got.eps); len(add)+len(del) > 0 {
			diffs = append(diffs, "endpoints"+signed(add, del))
		}
		if len(diffs) > 0 {
			line("~", name, strings.Join(diffs, "; "))
		}
	}
	var gone []string
	for name := range programmed {
		if !wanted[name] {
			gone = append(gone, name)
		}
	}
	slices.Sort(gone)
	for _, name := range gone {
		if name != "" {
			line("-", name, "removed")
			continue
		}
		// Frontends the backend cannot name (ipvs) that no manifest wants.
		var fronts []string
		for _, f := range programmedOf(programmed[name]).fronts {
			fronts = append(fronts, f.text)
		}
		line("-", "(not in the manifests)", strings.Join(fronts, ", "))
	}
	return out
}

// plural returns "1 thing" or "n things".
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

func endpointCount(n int) string {
	switch n {
	case 0:
		return "no endpoints (rejected)"
	case 1:
		return "1 endpoint"
	}
	return fmt.Sprintf("%d endpoints", n)
}

func diff[T comparable](want, got []T) (add, del []T) {
	for _, w := range want {
		if !slices.Contains(got, w) {
			add = append(add, w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			del = append(del, g)
		}
	}
	return add, del
}

func signed[T any](add, del []T) string {
	var b strings.Builder
	for _, a := range add {
		fmt.Fprintf(&b, " +%v", a)
	}
	for _, d := range del {
		fmt.Fprintf(&b, " -%v", d)
	}
	return b.String()
}

// printPlan prints a plan: "no changes", or the per-service summary and
// then the backend's commands, runs of bucket elements folded into one
// line unless verbose.
func printPlan(w io.Writer, where string, st *dataplane.State, node *dataplane.Node, have *view, ch changes, verbose bool) {
	if ch.Empty() {
		fmt.Fprintf(w, "%s: no changes\n", where)
		for _, l := range ch.Lines() {
			if strings.HasPrefix(l, "#") {
				fmt.Fprintln(w, "  "+l)
			}
		}
		return
	}
	fmt.Fprintf(w, "%s: apply would change:\n", where)
	sum := summarize(st, node, have)
	if len(sum) == 0 {
		sum = []string{"(no service port: the table itself)"}
	}
	for _, l := range sum {
		fmt.Fprintln(w, "  "+l)
	}
	lines := ch.Lines()
	if verbose {
		fmt.Fprintf(w, "%d commands:\n", countChanges(ch))
	} else {
		lines = fold(lines)
		fmt.Fprintf(w, "%d commands (bucket elements folded; -v lists each):\n", countChanges(ch))
	}
	for _, l := range lines {
		fmt.Fprintln(w, "  "+l)
	}
}

// bucketLine matches an nft element command whose key ends in a bucket
// number (a mark, printed as 0x%08x).
var bucketLine = regexp.MustCompile(`^((?:add|delete) element \S+ \S+ \S+ \{ .*) \. 0x([0-9a-f]{8})((?: : [^}]*)?) \}$`)

// fold replaces the bucket elements of one frontend that go to one
// endpoint by a single line naming the buckets, e.g.
// "... 198.19.0.10 . tcp . 80 . buckets 0-21 : 198.18.1.10 . 8080 }".
func fold(lines []string) []string {
	type group struct {
		head, tail string
		buckets    []int
		at         int
	}
	var out []string
	groups := map[string]*group{}
	for _, l := range lines {
		m := bucketLine.FindStringSubmatch(l)
		if m == nil {
			out = append(out, l)
			continue
		}
		b, _ := strconv.ParseUint(m[2], 16, 32)
		k := m[1] + "|" + m[3]
		g := groups[k]
		if g == nil {
			g = &group{head: m[1], tail: m[3], at: len(out)}
			groups[k] = g
			out = append(out, k) // placeholder
		}
		g.buckets = append(g.buckets, int(b))
	}
	for k, g := range groups {
		word := "buckets"
		if len(g.buckets) == 1 {
			word = "bucket"
		}
		out[g.at] = fmt.Sprintf("%s . %s %s%s }", g.head, word, ranges(g.buckets), g.tail)
		_ = k
	}
	return out
}

// ranges prints sorted numbers as "0-3,7,9-10".
func ranges(ns []int) string {
	slices.Sort(ns)
	var parts []string
	for i := 0; i < len(ns); {
		j := i
		for j+1 < len(ns) && ns[j+1] == ns[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(ns[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", ns[i], ns[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// printView prints what is programmed: service ports, their frontends,
// and each frontend's endpoints with their share of the traffic.
func printView(w io.Writer, where string, v *view) {
	switch {
	case !v.Exists:
		fmt.Fprintf(w, "%s: nothing programmed\n", where)
		return
	case len(v.Ports) == 0:
		fmt.Fprintf(w, "%s: no service ports\n", where)
		return
	}
	fmt.Fprintf(w, "%s: %s\n", where, plural(len(v.Ports), "service port"))
	if v.Note != "" {
		fmt.Fprintf(w, "(%s)\n", v.Note)
	}
	for _, p := range v.Ports {
		name := p.Name
		if name == "" {
			name = "(no service named)"
		}
		fmt.Fprintln(w, name)
		for _, f := range p.Frontends {
			var attrs []string
			if f.Local {
				attrs = append(attrs, "externalTrafficPolicy Local")
			}
			if f.Affinity > 0 {
				attrs = append(attrs, "ClientIP affinity "+f.Affinity.String())
			}
			if len(f.SourceRanges) > 0 {
				attrs = append(attrs, fmt.Sprintf("source ranges %v", f.SourceRanges))
			}
			switch {
			case f.Reject:
				attrs = append(attrs, "no endpoints: rejected")
			case f.Drop:
				attrs = append(attrs, "no local endpoints: dropped")
			}
			head := fmt.Sprintf("  %-11s %s", f.Kind, f)
			if f.Kind == "NodePort" && f.Addr.IsUnspecified() {
				head = fmt.Sprintf("  %-11s %d/%s on the node's %s NodePort addresses", f.Kind, f.Port, f.Protocol, family(f.Addr))
			}
			if len(attrs) > 0 {
				head += "  (" + strings.Join(attrs, ", ") + ")"
			}
			fmt.Fprintln(w, head)
			eps := f.Endpoints
			if f.Local {
				printEndpoints(w, "from pods and the node:", eps)
				if len(f.LocalEndpoints) == 0 && !f.Reject {
					fmt.Fprintln(w, "    from outside: no local endpoints: dropped")
				} else {
					printEndpoints(w, "from outside (local endpoints):", f.LocalEndpoints)
				}
				continue
			}
			printEndpoints(w, "", eps)
		}
	}
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func printEndpoints(w io.Writer, title string, eps []viewEndpoint) {
	indent := "    "
	if title != "" {
		fmt.Fprintln(w, indent+title)
		indent += "  "
	}
	for _, e := range eps {
		line := fmt.Sprintf("%s→ %-22s %s", indent, e.Addr, e.Weight)
		if e.Counters != "" {
			line += "  " + e.Counters
		}
		fmt.Fprintln(w, line)
	}
}
