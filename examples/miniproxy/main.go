// Command miniproxy is a small, real kube-proxy replacement built on
// svcplane: client-go informers watch the cluster's Services and
// EndpointSlices, a kube.Tracker turns them into a dataplane.State, and a
// sync loop programs it into this node's kernel with the nft backend (or
// the ipvs backend, --backend ipvs, on a kernel with IPVS).
//
//	miniproxy --kubeconfig ~/.kube/config --node-name $(hostname)
//
// Outside a cluster it reads --kubeconfig (or $KUBECONFIG, or
// ~/.kube/config); in a pod it uses the in-cluster configuration. It
// needs to list and watch Services and EndpointSlices, and to get its
// Node (for the pod CIDRs and zone, unless --pod-cidr and --zone are
// given).
//
// The sync loop syncs at most once per --min-sync-period, whatever the
// rate of events, and every --sync-period regardless; a failed sync is
// retried with an exponential backoff, at most --max-retries times.
// Like kube-proxy, miniproxy serves Prometheus metrics named like
// kube-proxy's with the svcplane_ prefix (the sync duration histogram
// svcplane_sync_proxy_rules_duration_seconds, and
// svcplane_sync_proxy_rules_last_timestamp_seconds, _failures_total,
// _endpoint_changes_total, _service_changes_total, ...; see metrics.go) on
// --metrics-bind-address, /healthz and /livez on --healthz-bind-address,
// and the health-check node ports of externalTrafficPolicy Local
// LoadBalancer Services: 200 with {"service":"ns/name","localEndpoints":N}
// when this node has N > 0 ready endpoints of the Service, 503 otherwise.
// Logs are structured (log/slog), as text or JSON.
//
// proxy.go holds the Proxy (informers, Tracker, sync loop, HTTP
// handlers), which the integration test drives through client-go's fake
// clientset inside the conformance topology.
//
// On exit it leaves the kernel state in place, so traffic keeps flowing
// while it restarts; the next run adopts it without rewriting it.
// --cleanup removes it instead and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/ipvs"
	"github.com/svcplane/svcplane/nft"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type config struct {
	kubeconfig, master string
	nodeName, zone     string
	podCIDRs           listFlag
	nodePortAddrs      listFlag
	masqueradeAll      bool
	backend, netns     string
	table              string
	metricsAddr        string
	healthzAddr        string
	minSync, sync      time.Duration
	maxRetries         int
	logFormat          string
	verbose            bool
	cleanup            bool
}

func main() {
	var c config
	flag.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig `file` (default: $KUBECONFIG, ~/.kube/config, or the in-cluster configuration)")
	flag.StringVar(&c.master, "master", "", "API server `URL`, overriding the kubeconfig's")
	flag.StringVar(&c.nodeName, "node-name", "", "this node's `name` (default: the host name)")
	flag.StringVar(&c.zone, "zone", "", "this node's topology `zone` (default: its topology.kubernetes.io/zone label)")
	flag.Var(&c.podCIDRs, "pod-cidr", "this node's pod `CIDR`, whose traffic is not masqueraded; repeatable (default: the Node's spec.podCIDRs)")
	flag.Var(&c.nodePortAddrs, "nodeport-addresses", "only node addresses in this `CIDR` answer NodePorts; repeatable (default: every local address but loopback)")
	flag.BoolVar(&c.masqueradeAll, "masquerade-all", false, "masquerade all service traffic, pods' included")
	flag.StringVar(&c.backend, "backend", "nft", "kernel backend: nft or ipvs (ipvs needs a kernel with IPVS)")
	flag.StringVar(&c.netns, "netns", "", "network namespace to program, a `path` or an `ip netns` name (default: miniproxy's own)")
	flag.StringVar(&c.table, "table", "", "the nftables inet table `name` the backend owns (default: svcplane for nft, svcplane-ipvs for ipvs)")
	flag.StringVar(&c.metricsAddr, "metrics-bind-address", "127.0.0.1:10249", "`address` of the /metrics endpoint; empty disables it")
	flag.StringVar(&c.healthzAddr, "healthz-bind-address", "0.0.0.0:10256", "`address` of /healthz and /livez; empty disables them")
	flag.DurationVar(&c.minSync, "min-sync-period", time.Second, "least time between two syncs")
	flag.DurationVar(&c.sync, "sync-period", 30*time.Second, "time between full syncs without changes")
	flag.IntVar(&c.maxRetries, "max-retries", 5, "retries of a failed sync before waiting for the next change or full sync")
	flag.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	flag.BoolVar(&c.verbose, "v", false, "debug logs")
	flag.BoolVar(&c.cleanup, "cleanup", false, "remove what miniproxy programmed, and exit")
	flag.Parse()

	level := slog.LevelInfo
	if c.verbose {
		level = slog.LevelDebug
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	if c.logFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(h)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, &c, log); err != nil {
		log.Error("miniproxy failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c *config, log *slog.Logger) error {
	if c.nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--node-name not given and no host name: %w", err)
		}
		c.nodeName = h
	}
	netns := c.netns
	if netns != "" && !strings.ContainsRune(netns, '/') {
		netns = "/run/netns/" + netns
	}
	if c.cleanup {
		dp, err := newDataplane(c.backend, dataplane.Node{Name: c.nodeName}, netns, c.table)
		if err != nil {
			return err
		}
		defer dp.Close()
		if err := dp.Cleanup(ctx); err != nil {
			return err
		}
		log.Info("removed everything miniproxy programmed")
		return nil
	}

	restCfg, err := restConfig(c.kubeconfig, c.master)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "svcplane-miniproxy"
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	node, err := nodeModel(ctx, client, c, log)
	if err != nil {
		return err
	}
	dp, err := newDataplane(c.backend, node, netns, c.table)
	if err != nil {
		return err
	}
	defer dp.Close()

	reg := prometheus.NewRegistry()
	p := NewProxy(dp, Options{
		Node: node, NetNS: netns,
		MinSyncPeriod: c.minSync, SyncPeriod: c.sync, MaxRetries: c.maxRetries,
		Logger: log, Registry: reg,
	})
	for _, s := range []struct{ what, addr string }{{"metrics", c.metricsAddr}, {"healthz", c.healthzAddr}} {
		if s.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
		srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving "+s.what, "addr", ln.Addr().String())
	}

	errc := make(chan error, 1)
	go func() { errc <- p.Watch(ctx, client) }()
	log.Info("miniproxy starting", "node", node.Name, "zone", node.Zone, "pod_cidrs", fmt.Sprint(node.LocalPodCIDRs), "backend", c.backend, "netns", netns)
	runErr := p.Run(ctx)
	if err := <-errc; err != nil && ctx.Err() == nil {
		return err
	}
	log.Info("miniproxy stopped; the kernel state stays for the next run (--cleanup removes it)")
	return runErr
}

// newDataplane builds the backend: nft, or ipvs where the kernel has IPVS.
func newDataplane(backend string, node dataplane.Node, netns, table string) (dataplane.Dataplane, error) {
	switch backend {
	case "nft":
		return nft.New(nft.Config{Node: node, NetNS: netns, Table: table})
	case "ipvs":
		dp, err := ipvs.New(ipvs.Config{Node: node, NetNS: netns, Table: table})
		if errors.Is(err, dataplane.ErrUnsupported) {
			return nil, fmt.Errorf("--backend ipvs: this kernel has no IPVS; run miniproxy on a kernel with IPVS (CONFIG_IP_VS, the ip_vs module), or use --backend nft: %w", err)
		}
		return dp, err
	}
	return nil, fmt.Errorf("--backend %q: unknown backend (want nft or ipvs)", backend)
}

// restConfig finds the API server: --kubeconfig, $KUBECONFIG,
// ~/.kube/config, or the in-cluster configuration.
func restConfig(kubeconfig, master string) (*rest.Config, error) {
	if kubeconfig == "" {
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	if kubeconfig == "" {
		if home, err := os.UserHomeDir(); err == nil {
			if p := filepath.Join(home, ".kube", "config"); fileExists(p) {
				kubeconfig = p
			}
		}
	}
	if kubeconfig == "" && master == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	return clientcmd.BuildConfigFromFlags(master, kubeconfig)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// nodeModel builds this node's model from the flags, filling the pod
// CIDRs and zone from the Node object when the flags leave them out.
func nodeModel(ctx context.Context, client kubernetes.Interface, c *config, log *slog.Logger) (dataplane.Node, error) {
	n := dataplane.Node{Name: c.nodeName, Zone: c.zone, MasqueradeAll: c.masqueradeAll}
	for _, s := range c.podCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return n, fmt.Errorf("--pod-cidr %q: not a CIDR", s)
		}
		n.LocalPodCIDRs = append(n.LocalPodCIDRs, p.Masked())
	}
	for _, s := range c.nodePortAddrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return n, fmt.Errorf("--nodeport-addresses %q: not a CIDR", s)
		}
		n.NodePortAddrs = append(n.NodePortAddrs, p.Masked())
	}
	if len(n.LocalPodCIDRs) > 0 && n.Zone != "" {
		return n, nil
	}
	obj, err := client.CoreV1().Nodes().Get(ctx, c.nodeName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		log.Warn("no Node object with this name: give --pod-cidr, or every pod's traffic to services is masqueraded", "node", c.nodeName)
		return n, nil
	case err != nil:
		return n, fmt.Errorf("get Node %s: %w", c.nodeName, err)
	}
	return fillFromNode(n, obj, log), nil
}

func fillFromNode(n dataplane.Node, obj *corev1.Node, log *slog.Logger) dataplane.Node {
	if n.Zone == "" {
		n.Zone = obj.Labels[corev1.LabelTopologyZone]
	}
	if len(n.LocalPodCIDRs) == 0 {
		cidrs := obj.Spec.PodCIDRs
		if len(cidrs) == 0 && obj.Spec.PodCIDR != "" {
			cidrs = []string{obj.Spec.PodCIDR}
		}
		for _, s := range cidrs {
			if p, err := netip.ParsePrefix(s); err == nil {
				n.LocalPodCIDRs = append(n.LocalPodCIDRs, p.Masked())
			}
		}
		if len(n.LocalPodCIDRs) == 0 {
			log.Warn("the Node has no pod CIDRs: give --pod-cidr, or every pod's traffic to services is masqueraded", "node", n.Name)
		}
	}
	return n
}
