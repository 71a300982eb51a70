package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/nft"
)

// TestIntegration runs miniproxy for node-a of the throwaway topology
// against client-go's fake clientset: Services and EndpointSlices are
// created, updated and deleted through the API, and traffic follows. The
// health-check node port and the metrics endpoint are checked on the way.
func TestIntegration(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run `sudo make test`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tp, err := topo.New(ctx, topo.Options{})
	if err != nil {
		t.Fatalf("build topology: %v", err)
	}
	defer tp.Close()
	nodeA := tp.Nodes[0]
	var pods []*topo.Pod
	for i, name := range []string{"web-1", "web-2", "web-3"} {
		p, err := tp.AddPod(tp.Nodes[i/2], name, 8080) // web-1, web-2 on node-a; web-3 on node-b
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	client, err := tp.AddPod(nodeA, "client")
	if err != nil {
		t.Fatal(err)
	}

	dp, err := nft.New(nft.Config{Node: nodeA.NodeModel(), NetNS: nodeA.NS.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	defer dp.Cleanup(context.Background())
	cs := fake.NewClientset()
	p := NewProxy(dp, Options{
		Node: nodeA.NodeModel(), NetNS: nodeA.NS.Path(),
		MinSyncPeriod: 10 * time.Millisecond, SyncPeriod: time.Minute,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	metrics := httptest.NewServer(p.Handler()) // on loopback, in the test's namespace
	defer metrics.Close()
	runCtx, stop := context.WithCancel(ctx)
	watchErr, runErr := make(chan error, 1), make(chan error, 1)
	go func() { watchErr <- p.Watch(runCtx, cs) }()
	go func() { runErr <- p.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
		<-watchErr
	}()
	select {
	case <-p.ready:
	case err := <-watchErr:
		t.Fatalf("Watch: %v", err)
	case <-ctx.Done():
		t.Fatal("informer caches never synced")
	}

	api := cs.CoreV1().Services("default")
	sliceAPI := cs.DiscoveryV1().EndpointSlices("default")
	web := netip.MustParseAddrPort("198.19.0.10:80")

	// Create: svc-web and its slice; all three pods answer.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "svc-web"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "198.19.0.10", ClusterIPs: []string{"198.19.0.10"},
			Selector: map[string]string{"app": "node-web"},
			Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := api.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := webSlice("svc-web", pods...)
	if _, err := sliceAPI.Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, p, "svc-web answers from web-1, web-2 and web-3", func() error {
		return answeredBy(ctx, &client.Host, web, "web-1", "web-2", "web-3")
	})

	// The metrics show the syncs behind it.
	m := scrape(t, metrics.URL)
	for _, name := range []string{"svcplane_sync_proxy_rules_duration_seconds_count", "svcplane_sync_proxy_rules_service_changes_total",
		"svcplane_sync_proxy_rules_endpoint_changes_total", "svcplane_sync_proxy_rules_last_timestamp_seconds"} {
		if v := m.values[name]; v <= 0 {
			t.Errorf("metric %s = %v after a sync, want > 0", name, v)
		}
	}
	if !strings.Contains(m.text, `svcplane_sync_proxy_rules_duration_seconds_bucket{le="+Inf"}`) {
		t.Errorf("/metrics has no sync duration histogram:\n%s", m.text)
	}

	// Update the slice: web-2 goes, traffic moves to the others.
	slice = webSlice("svc-web", pods[0], pods[2])
	if _, err := sliceAPI.Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, p, "svc-web answers from web-1 and web-3 only", func() error {
		return answeredBy(ctx, &client.Host, web, "web-1", "web-3")
	})

	// Update the Service: make it a LoadBalancer with
	// externalTrafficPolicy Local. The external client reaches node-a's
	// NodePort, served by node-a's pod only; the health-check node port
	// says node-a has one local endpoint.
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc.Spec.Ports[0].NodePort = 30123
	svc.Spec.HealthCheckNodePort = 32000
	if _, err := api.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, p, "the NodePort answers the external client from web-1 only", func() error {
		return answeredBy(ctx, tp.Client, netip.AddrPortFrom(nodeA.IPv4, 30123), "web-1")
	})
	eventually(t, ctx, p, "the health-check node port says 1 local endpoint", func() error {
		return probe(tp.Client, netip.AddrPortFrom(nodeA.IPv4, 32000), 200, `{"service":"default/svc-web","localEndpoints":1}`)
	})
	// web-1 leaves too: node-a has no local endpoint, and says so.
	if _, err := sliceAPI.Update(ctx, webSlice("svc-web", pods[2]), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, p, "the health-check node port says 503 with no local endpoint", func() error {
		return probe(tp.Client, netip.AddrPortFrom(nodeA.IPv4, 32000), 503, `{"service":"default/svc-web","localEndpoints":0}`)
	})
	if err := answeredBy(ctx, &client.Host, web, "web-3"); err != nil {
		t.Errorf("svc-web from a pod: %v, want web-3 (internal traffic is not Local)", err)
	}

	// Delete: the Service goes, its cluster IP no longer answers, and
	// its health-check server stops.
	if err := api.Delete(ctx, "svc-web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, p, "svc-web no longer answers", func() error {
		_, err := client.Request(ctx, dataplane.TCP, web, topo.RequestOptions{Timeout: 200 * time.Millisecond})
		if err == nil {
			return fmt.Errorf("it still answers")
		}
		return nil
	})
	eventually(t, ctx, p, "the health-check node port is closed", func() error {
		err := probe(tp.Client, netip.AddrPortFrom(nodeA.IPv4, 32000), 0, "")
		if err == nil || !strings.Contains(err.Error(), "refused") {
			return fmt.Errorf("it still answers: %v", err)
		}
		return nil
	})
	if err := sliceAPI.Delete(ctx, slice.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	m = scrape(t, metrics.URL)
	for name, want := range map[string]float64{"svcplane_sync_proxy_rules_service_ports": 0, "svcplane_health_check_node_port_servers": 0,
		"svcplane_sync_proxy_rules_failures_total": 0} {
		if v, ok := m.values[name]; !ok || v != want {
			t.Errorf("metric %s = %v (present: %v) after the deletes, want %v", name, v, ok, want)
		}
	}
	for _, path := range []string{"/healthz", "/livez"} {
		resp, err := http.Get(metrics.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s, want 200", path, resp.Status)
		}
	}
}

// webSlice is the EndpointSlice of service with pods as ready endpoints
// on port 8080.
func webSlice(service string, pods ...*topo.Pod) *discoveryv1.EndpointSlice {
	name, port, proto := "http", int32(8080), corev1.ProtocolTCP
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: service + "-abcde",
			Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	for _, p := range pods {
		ready, node := true, p.Node.Name
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{p.IPv4.String()}, NodeName: &node,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		})
	}
	return s
}

// eventually retries check until it succeeds, failing the test after 10 s
// with what the proxy's Tracker holds.
func eventually(t *testing.T, ctx context.Context, p *Proxy, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			var ports []string
			for _, sp := range p.tracker.State().Ports {
				ports = append(ports, fmt.Sprintf("%s %v %d endpoints", sp.Name, sp.ClusterIPs, len(sp.Endpoints)))
			}
			p.mu.Lock()
			syncs := p.syncs
			p.mu.Unlock()
			t.Fatalf("%s: %v\n(after %d syncs; the Tracker holds %v)", what, err, syncs, ports)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answeredBy sends 30 requests from h to dst and requires answers from
// exactly the pods named.
func answeredBy(ctx context.Context, h *topo.Host, dst netip.AddrPort, pods ...string) error {
	got := map[string]int{}
	for range 30 {
		r, err := h.Request(ctx, dataplane.TCP, dst, topo.RequestOptions{Timeout: 500 * time.Millisecond})
		if err != nil {
			return err
		}
		got[r.Pod]++
	}
	for _, p := range pods {
		if got[p] == 0 {
			return fmt.Errorf("answers per pod %v, want all of %v", got, pods)
		}
	}
	if len(got) != len(pods) {
		return fmt.Errorf("answers per pod %v, want only %v", got, pods)
	}
	return nil
}

// probe GETs http://dst/ from h, as a load balancer probes a
// health-check node port, and compares the status and body.
func probe(h *topo.Host, dst netip.AddrPort, code int, body string) error {
	var conn net.Conn
	err := h.Do(func() error {
		// The socket is created on this goroutine, in h's namespace.
		var err error
		conn, err = net.DialTimeout("tcp", dst.String(), time.Second)
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", dst)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != code || strings.TrimSpace(string(b)) != body {
		return fmt.Errorf("got %d %s, want %d %s", resp.StatusCode, b, code, body)
	}
	var v map[string]any
	return json.Unmarshal(b, &v)
}

// scraped is a /metrics page: its text and its unlabelled samples.
type scraped struct {
	text   string
	values map[string]float64
}

var sampleLine = regexp.MustCompile(`^([a-z_:]+) (\S+)$`)

func scrape(t *testing.T, url string) scraped {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := scraped{text: string(b), values: map[string]float64{}}
	for _, l := range strings.Split(out.text, "\n") {
		if m := sampleLine.FindStringSubmatch(l); m != nil {
			v, _ := strconv.ParseFloat(m[2], 64)
			out.values[m[1]] = v
		}
	}
	return out
}

// testWriter sends the proxy's logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
