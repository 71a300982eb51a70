// Command svcctl programs Kubernetes Services from manifest files into the
// kernel of one machine with svcplane, with no cluster: no API server, no
// kubelet. It reads Services, EndpointSlices and core/v1 Endpoints (which
// it mirrors into EndpointSlices as Kubernetes' EndpointSlice mirroring
// controller does), translates them with dataplane/kube by kube-proxy's
// rules, and hands the result to a backend: nft (the default) or ipvs.
//
//	svcctl plan    -f manifests.yaml   # what apply would change; changes nothing
//	svcctl apply   -f manifests.yaml   # program it (replacing what svcctl programmed before)
//	svcctl show                        # what is programmed: services → frontends → endpoints
//	svcctl cleanup                     # remove everything svcctl programmed
//
// Every invocation is a new process that keeps no state of its own: the
// kernel is the state. The nft backend adopts the table an earlier run
// left, so plan after apply says "no changes", and an apply that changes
// one endpoint rewrites only that endpoint's map elements. Give plan,
// apply and show the same node flags each time: a table written for
// another node configuration is rebuilt.
//
// plan prints a summary per service port (+ added, ~ changed, - removed)
// and the backend's exact changes: nft.Dataplane.Plan's nft commands, with
// runs of bucket elements folded (-v lists each). show reads the kernel
// back: nft.Dataplane.Show for nft, with each endpoint's share of the 64
// buckets; for ipvs, the virtual and real servers with the kernel's
// connection counters. IPVS objects carry no names, so with --backend ipvs
// svcctl names them from the manifests, which show and cleanup then also
// take (-f); see ipvs.go for what the ipvs backend cannot do yet. On a
// kernel without IPVS, --backend ipvs fails and says so.
//
// Manifests need what an API server would have filled in: cluster IPs and
// NodePorts (as `kubectl get svc -o yaml` prints them), and the
// EndpointSlices' addresses. A file may hold many documents (YAML
// separated by ---, or a stream or array of JSON objects) and Lists; other
// kinds (Deployments, ...) are ignored with a note. Problems are reported
// all at once, each naming the file, the line and index of the document,
// the object and the field. testdata/ holds the classroom manifests.
//
// Run it as root (or with CAP_NET_ADMIN in the target namespace); --netns
// programs another network namespace, by path or by `ip netns` name.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/dataplane/kube"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const usage = `usage: svcctl COMMAND [flags]

Programs Kubernetes Services from manifests into this machine's kernel.

commands:
  plan     print what apply would change; change nothing
  apply    program the manifests' Services, replacing what svcctl programmed before
  show     print what is programmed: service ports, frontends, endpoints
  cleanup  remove everything svcctl programmed

flags:
`

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	files         listFlag
	backend       string
	netns         string
	nodeName      string
	nodeIPs       listFlag
	podCIDRs      listFlag
	zone          string
	masqueradeAll bool
	table         string
	verbose       bool
}

// run is svcctl with its arguments (without the program name) and
// streams; it returns the exit code: 0, 1 for failure, 2 for usage.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("svcctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&o.files, "f", "manifest `file` (YAML or JSON, many documents; - for standard input); repeatable; plan and apply need one; show and cleanup use them with --backend ipvs")
	fs.Var(&o.files, "filename", "same as -f `file`")
	fs.StringVar(&o.backend, "backend", "nft", "kernel backend: "+strings.Join(backends, " or ")+" (ipvs needs a kernel with IPVS)")
	fs.StringVar(&o.netns, "netns", "", "network namespace to program: a `path` (/proc/PID/ns/net, /run/netns/NAME) or an `ip netns` name; default: svcctl's own")
	fs.StringVar(&o.nodeName, "node-name", "", "this node's `name`, for externalTrafficPolicy/internalTrafficPolicy Local and topology hints (default: the host name)")
	fs.Var(&o.nodeIPs, "node-ip", "a node `IP` NodePorts answer on; repeatable (default: every local address but loopback)")
	fs.Var(&o.podCIDRs, "pod-cidr", "this node's pod `CIDR`: traffic from it is not masqueraded; repeatable")
	fs.StringVar(&o.zone, "zone", "", "this node's topology `zone`, for topology hints")
	fs.BoolVar(&o.masqueradeAll, "masquerade-all", false, "masquerade all service traffic, pods' included")
	fs.StringVar(&o.table, "table", "", "the nftables inet table `name` the backend owns (default: svcplane for nft, svcplane-ipvs for ipvs)")
	fs.BoolVar(&o.verbose, "v", false, "plan: list every backend command (nft: one line per bucket element)")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			fs.Usage()
			return 0
		}
		fs.Usage()
		return 2
	}
	cmd := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "svcctl %s: unexpected argument %q (manifests go after -f)\n", cmd, fs.Arg(0))
		return 2
	}
	switch cmd {
	case "plan", "apply":
		if len(o.files) == 0 {
			fmt.Fprintf(stderr, "svcctl %s: no manifests: give them with -f FILE\n", cmd)
			return 2
		}
	case "show", "cleanup":
	case "help":
		fs.Usage()
		return 0
	default:
		fmt.Fprintf(stderr, "svcctl: unknown command %q (want plan, apply, show or cleanup)\n", cmd)
		return 2
	}
	if err := o.do(ctx, cmd, stdin, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "svcctl %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// node builds the dataplane model of this node from the flags.
func (o *options) node() (dataplane.Node, error) {
	n := dataplane.Node{Name: o.nodeName, Zone: o.zone, MasqueradeAll: o.masqueradeAll}
	if n.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return n, fmt.Errorf("--node-name not given and no host name: %w", err)
		}
		n.Name = h
	}
	for _, s := range o.nodeIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return n, fmt.Errorf("--node-ip %q: not an IP address", s)
		}
		n.NodePortAddrs = append(n.NodePortAddrs, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	for _, s := range o.podCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return n, fmt.Errorf("--pod-cidr %q: not a CIDR (e.g. 198.18.1.0/24)", s)
		}
		n.LocalPodCIDRs = append(n.LocalPodCIDRs, p.Masked())
	}
	return n, nil
}

// netnsPath turns a namespace name into its /run/netns path.
func netnsPath(s string) string {
	if s == "" || strings.ContainsRune(s, '/') {
		return s
	}
	return "/run/netns/" + s
}

func (o *options) do(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	node, err := o.node()
	if err != nil {
		return err
	}
	var st *dataplane.State
	if len(o.files) > 0 {
		objs, err := loadFiles(o.files, stdin)
		if err != nil {
			return fmt.Errorf("bad manifests:\n%w", indentErr(err))
		}
		st = kube.Translate(objs.services, objs.slices, &node)
		if cmd == "plan" || cmd == "apply" {
			for _, n := range objs.notes {
				fmt.Fprintln(stderr, "note:", n)
			}
			for _, n := range skipped(objs, st) {
				fmt.Fprintln(stderr, "note:", n)
			}
		}
	}

	b, err := newBackend(o.backend, backendConfig{Node: node, NetNS: netnsPath(o.netns), Table: o.table})
	if err != nil {
		return err
	}
	defer b.Close()
	where := b.Describe()
	if o.netns != "" {
		where += " in " + netnsPath(o.netns)
	}

	switch cmd {
	case "plan":
		have, err := b.Show(ctx, st)
		if err != nil {
			return err
		}
		ch, err := b.Plan(ctx, st)
		if err != nil {
			return err
		}
		printPlan(stdout, where, st, &node, have, ch, o.verbose)
	case "apply":
		have, err := b.Show(ctx, st)
		if err != nil {
			return err
		}
		ch, err := b.Plan(ctx, st)
		if err != nil {
			return err
		}
		if ch.Empty() {
			fmt.Fprintf(stdout, "%s: no changes\n", where)
			// Sync anyway: it is cheap when nothing changed, and it
			// repairs what Plan cannot see.
		} else {
			for _, l := range summarize(st, &node, have) {
				fmt.Fprintln(stdout, l)
			}
		}
		start := time.Now()
		if err := b.Sync(ctx, st); err != nil {
			return err
		}
		if !ch.Empty() {
			fmt.Fprintf(stdout, "%s: applied %d changes in %s\n", where, countChanges(ch), time.Since(start).Round(time.Microsecond))
		}
	case "show":
		v, err := b.Show(ctx, st)
		if err != nil {
			return err
		}
		printView(stdout, where, v)
	case "cleanup":
		v, err := b.Show(ctx, st)
		if err != nil {
			return err
		}
		if !v.Exists {
			fmt.Fprintf(stdout, "%s: nothing to remove\n", where)
			return nil
		}
		if err := b.Cleanup(ctx, st); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: removed (%s)\n", where, plural(len(v.Ports), "service port"))
		// Check that nothing is left, and say so if something is.
		left, err := b.Show(ctx, st)
		if err != nil {
			return err
		}
		if left.Exists {
			n := 0
			for _, p := range left.Ports {
				n += len(p.Frontends)
			}
			fmt.Fprintf(stderr, "warning: %d frontends are still programmed after the cleanup (svcctl show lists them)", n)
			if o.backend == "ipvs" && st == nil {
				fmt.Fprint(stderr, ": NodePort virtual servers are recognised only with the manifests that created them: run cleanup again with -f")
			}
			fmt.Fprintln(stderr)
			return errors.New("cleanup incomplete")
		}
	}
	return nil
}

// indentErr puts each of a joined error's lines on its own indented line.
func indentErr(err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return errors.New(strings.Join(lines, "\n"))
}

// countChanges counts a plan's commands, without comment lines.
func countChanges(ch changes) int {
	n := 0
	for _, l := range ch.Lines() {
		if !strings.HasPrefix(l, "#") {
			n++
		}
	}
	return n
}
