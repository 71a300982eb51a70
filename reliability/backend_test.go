package reliability

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/conformance"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/kstate"
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/ipvs"
	"github.com/svcplane/svcplane/nft"
)

// backend is one Dataplane implementation under test. Every test that is
// not about one backend's kernel objects runs once per entry of backends,
// as a subtest named after it; an IPVS backend plugs in by adding an entry.
type backend struct {
	name string
	// factory builds a Dataplane for a target, as for the conformance
	// suite. The tests Close what it returns.
	factory conformance.Factory
	// dump describes, deterministically, every kernel object the backend
	// owns in the namespace behind fd. Choices a backend may make
	// differently for one State depending on its history (the nft
	// backend's bucket placement) are normalised away, so that a
	// namespace after any history of Syncs and a fresh one synced once
	// with the same State dump equal. State created by traffic (affinity
	// entries) is left out.
	dump func(fd int) (string, error)
	// conflicts create, behind the backend's back, kernel objects that
	// collide with what a Sync from prev to next must create.
	conflicts []conflict
	// atomic: a Sync commits in one transaction, so a process killed
	// inside one leaves the kernel in one of the two States it was
	// between. IPVS has no transactions: one request per virtual or
	// real server.
	atomic bool
	// maxEndpoints, when set, is how many endpoints a test may give one
	// service port: the ipvs backend programs one real server per
	// endpoint, one netlink request each.
	maxEndpoints int
}

// conflict is one way to make a Sync fail in the kernel: inject runs
// after prev was synced into the namespace at nsPath and before next is.
type conflict struct {
	name   string
	inject func(t *testing.T, nsPath string, prev, next *dataplane.State)
	// fix, when set, removes what inject made, as an operator would,
	// before the test requires the next Sync to converge: needed where
	// no Sync can succeed while the object is there.
	fix func(t *testing.T, nsPath string, prev, next *dataplane.State)
}

var backends = []backend{
	{
		name: "nft",
		factory: func(t testing.TB, target conformance.Target) (dataplane.Dataplane, error) {
			return nft.New(nft.Config{Node: target.Node, NetNS: target.NetNS})
		},
		dump:      nftDump,
		conflicts: nftConflicts,
		atomic:    true,
	},
	{
		name:         "ipvs",
		factory:      ipvsFactory,
		dump:         ipvsDump,
		conflicts:    ipvsConflicts,
		maxEndpoints: 20000,
	},
}

func backendByName(name string) (backend, bool) {
	for _, b := range backends {
		if b.name == name {
			return b, true
		}
	}
	return backend{}, false
}

// eachBackend runs f as a subtest per backend.
func eachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// newDP builds b's Dataplane for the namespace and node; the test is
// skipped when the kernel lacks what the backend needs. The caller
// closes it.
func newDP(t testing.TB, b backend, nsPath string, node dataplane.Node) dataplane.Dataplane {
	t.Helper()
	dp, err := b.factory(t, conformance.Target{NetNS: nsPath, Node: node})
	if errors.Is(err, dataplane.ErrUnsupported) {
		t.Skipf("%s: %v", b.name, err)
	}
	if err != nil {
		t.Fatalf("%s: new Dataplane: %v", b.name, err)
	}
	return dp
}

// open is newDP, closed at the end of the test.
func open(t testing.TB, b backend, nsPath string, node dataplane.Node) dataplane.Dataplane {
	t.Helper()
	dp := newDP(t, b, nsPath, node)
	t.Cleanup(func() { dp.Close() })
	return dp
}

// nodeA is the node model of topo's node-a, for tests without a topology.
func nodeA() dataplane.Node {
	return dataplane.Node{Name: "node-a", LocalPodCIDRs: []netip.Prefix{
		netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:db8:1::/64")}}
}

// mustDump is b.dump, failing the test on error.
func mustDump(t testing.TB, b backend, fd int) string {
	t.Helper()
	s, err := b.dump(fd)
	if err != nil {
		t.Fatalf("%s: dump kernel state: %v", b.name, err)
	}
	return s
}

// freshDump syncs st into a new namespace with a new Dataplane and
// returns its dump: what the kernel must hold after any history that
// ended with st.
func freshDump(t testing.TB, b backend, node dataplane.Node, st *dataplane.State) string {
	t.Helper()
	return freshDumpLike(t, b, node, st, -1)
}

// freshDumpLike is freshDump in a namespace that has, on its lo, the
// addresses the namespace behind like (-1: none) has on its links
// other than the backend's: a backend that programs NodePorts per node
// address (ipvs) programs the same ones.
func freshDumpLike(t testing.TB, b backend, node dataplane.Node, st *dataplane.State, like int) string {
	t.Helper()
	ns, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if like >= 0 {
		copyAddrs(t, like, ns.Fd())
	}
	dp := newDP(t, b, ns.Path(), node)
	defer dp.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := dp.Sync(ctx, st); err != nil {
		t.Fatalf("%s: Sync into a fresh namespace: %v", b.name, err)
	}
	return mustDump(t, b, ns.Fd())
}

// snapshot is the whole namespace's kernel state (every nftables table,
// link and address, and where the kernel has IPVS every virtual and real
// server with its weight), for checks that nothing at all changed.
func snapshot(t testing.TB, fd int) string {
	t.Helper()
	s, err := kstate.Snapshot(fd)
	if err != nil {
		t.Fatalf("snapshot kernel state: %v", err)
	}
	v, err := ipvsState(fd, true)
	if err != nil {
		t.Fatalf("snapshot IPVS state: %v", err)
	}
	return s + v
}

func generation(t testing.TB, fd int) uint32 {
	t.Helper()
	g, err := kstate.Generation(fd)
	if err != nil {
		t.Fatalf("nftables generation: %v", err)
	}
	return g
}

// diff returns the lines only in a ("-") or only in b ("+"), at most 40.
func diff(a, b string) string {
	out := diffLines(a, b)
	if len(out) > 40 {
		out = append(out[:40], fmt.Sprintf("… (%d more)", len(out)-40))
	}
	return strings.Join(out, "\n")
}

// diffLines returns every line only in a ("- " prefixed) or only in b
// ("+ ").
func diffLines(a, b string) []string {
	count := func(s string) map[string]int {
		m := make(map[string]int)
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ma, mb := count(a), count(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if ma[l] > mb[l] {
			out = append(out, "- "+l)
			ma[l]--
		}
	}
	ma = count(a)
	for _, l := range strings.Split(b, "\n") {
		if mb[l] > ma[l] {
			out = append(out, "+ "+l)
			mb[l]--
		}
	}
	return out
}

// The nft backend.

// nftTable is how kstate names the nft backend's table: family inet (1).
const nftTable = "table 1 " + nft.DefaultTable + " "

var (
	// bucketMap matches the maps that hold frontend . bucket → endpoint.
	bucketMap = regexp.MustCompile(`^  set (nodeport-)?(local-)?endpoints-v[46] `)
	// dynamicSet matches the affinity sets traffic fills.
	dynamicSet = regexp.MustCompile(`^  set affinity-\d+s-v[46] `)
)

// nftDump returns the part of kstate's snapshot that describes the nft
// backend's table, with the buckets of each frontend summarised as how
// many buckets each endpoint holds (which buckets depends on history;
// how many does not) and the elements of the dynamic affinity sets left
// out.
func nftDump(fd int) (string, error) {
	s, err := kstate.Snapshot(fd)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	in, buckets, dynamic := false, false, false
	counts := map[string]int{}
	flush := func() {
		keys := make([]string, 0, len(counts))
		for k := range counts {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "    buckets %s ×%d\n", k, counts[k])
		}
		clear(counts)
	}
	for _, l := range strings.SplitAfter(s, "\n") {
		if !strings.HasPrefix(l, " ") {
			flush()
			in = strings.HasPrefix(l, nftTable)
		}
		if !in {
			continue
		}
		if strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "    ") {
			flush()
			buckets, dynamic = bucketMap.MatchString(l), dynamicSet.MatchString(l)
		}
		if strings.HasPrefix(l, "    elem ") && (buckets || dynamic) {
			if dynamic {
				continue
			}
			// "    elem KEY:VAL ...": the key ends in the 4-byte bucket.
			kv, _, _ := strings.Cut(strings.TrimPrefix(l, "    elem "), " ")
			key, val, _ := strings.Cut(kv, ":")
			if len(key) < 8 {
				return "", fmt.Errorf("bucket map element %q has no bucket", l)
			}
			counts[key[:len(key)-8]+" → "+val]++
			continue
		}
		b.WriteString(l)
	}
	flush()
	return b.String(), nil
}

// runNFT runs the nft tool in the namespace at nsPath, as another program
// (an admin, a firewall) would.
func runNFT(t testing.TB, nsPath string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("the nft tool is not installed (make test installs it)")
	}
	out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// added returns the ports of next whose names are not in prev.
func added(prev, next *dataplane.State) []dataplane.ServicePort {
	var out []dataplane.ServicePort
	for _, p := range next.Ports {
		if !slices.ContainsFunc(prev.Ports, func(q dataplane.ServicePort) bool { return q.Name == p.Name }) {
			out = append(out, p)
		}
	}
	return out
}

// nftConflicts are objects another program might put into the backend's
// table, each named or keyed like one the next Sync creates.
var nftConflicts = []conflict{
	{name: "ElementWithOtherValue", inject: func(t *testing.T, nsPath string, prev, next *dataplane.State) {
		// Bucket 0 of a frontend the Sync adds, pointing elsewhere:
		// the kernel refuses to overwrite an element's data.
		p := added(prev, next)[0]
		runNFT(t, nsPath, "add", "element", "inet", nft.DefaultTable, "endpoints-v4",
			fmt.Sprintf("{ %s . %s . %d . 0x00000000 : 198.18.9.9 . 9 }", p.ClusterIPs[0], strings.ToLower(p.Protocol.String()), p.Port))
	}},
	{name: "SetOfNextAffinity", inject: func(t *testing.T, nsPath string, prev, next *dataplane.State) {
		// A set with the name of the affinity set the Sync creates, of
		// another type.
		p := added(prev, next)[0]
		runNFT(t, nsPath, "add", "set", "inet", nft.DefaultTable,
			fmt.Sprintf("affinity-%ds-v4", int(p.Affinity/time.Second)), "{ type ipv4_addr; }")
	}},
	{name: "ChainOfNextAffinity", inject: func(t *testing.T, nsPath string, prev, next *dataplane.State) {
		// A chain with the name of the affinity chain the Sync creates,
		// holding a rule of its own that drops everything.
		p := added(prev, next)[0]
		chain := fmt.Sprintf("affinity-%ds", int(p.Affinity/time.Second))
		runNFT(t, nsPath, "add", "chain", "inet", nft.DefaultTable, chain)
		runNFT(t, nsPath, "add", "rule", "inet", nft.DefaultTable, chain, "drop")
	}},
}

func conformanceTarget(nsPath string, node dataplane.Node) conformance.Target {
	return conformance.Target{NetNS: nsPath, Node: node}
}

// copyAddrs puts onto lo of the namespace behind to the global addresses
// of the namespace behind from, except those on the ipvs backend's
// device, and brings lo up.
func copyAddrs(t testing.TB, from, to int) {
	t.Helper()
	src, err := netlink.NewHandleAt(netns.NsHandle(from))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := netlink.NewHandleAt(netns.NsHandle(to))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	lo, err := dst.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	skip := -1
	if l, err := src.LinkByName(ipvs.DefaultDevice); err == nil {
		skip = l.Attrs().Index
	}
	addrs, err := src.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.LinkIndex == skip || a.IP.IsLoopback() || a.IP.IsLinkLocalUnicast() {
			continue
		}
		if err := dst.AddrAdd(lo, &netlink.Addr{IPNet: a.IPNet, Flags: unix.IFA_F_NODAD}); err != nil && !errors.Is(err, unix.EEXIST) {
			t.Fatalf("copy address %s: %v", a.IPNet, err)
		}
	}
}
