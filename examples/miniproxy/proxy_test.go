package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcplane/svcplane/dataplane"
)

// fakeDP records Syncs and fails the first fail of them (all when fail
// is negative).
type fakeDP struct {
	mu    sync.Mutex
	fail  int
	syncs []time.Time
	last  *dataplane.State
}

func (f *fakeDP) Sync(ctx context.Context, st *dataplane.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs = append(f.syncs, time.Now())
	if f.fail != 0 {
		f.fail--
		return errors.New("injected failure")
	}
	f.last = st
	return nil
}

func (f *fakeDP) Cleanup(context.Context) error { return nil }
func (f *fakeDP) Close() error                  { return nil }

func (f *fakeDP) times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.syncs...)
}

// waitSyncs waits until dp has seen n Syncs.
func waitSyncs(t *testing.T, dp *fakeDP, n int) []time.Time {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s := dp.times(); len(s) >= n {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d syncs after 5s, want %d", len(dp.times()), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// startProxy runs a Proxy over dp as if its informers had synced, until
// the test ends.
func startProxy(t *testing.T, dp dataplane.Dataplane, opts Options) (*Proxy, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registry = reg
	p := NewProxy(dp, opts)
	p.markReady()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return p, reg
}

// metricValue returns a counter's or gauge's value, or a histogram's
// sample count, summed over labels; -1 when the registry lacks it.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var v float64
		for _, m := range mf.Metric {
			switch {
			case m.Counter != nil:
				v += m.Counter.GetValue()
			case m.Gauge != nil:
				v += m.Gauge.GetValue()
			case m.Histogram != nil:
				v += float64(m.Histogram.GetSampleCount())
			}
		}
		return v
	}
	return -1
}

func service(name string, ip string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{
			ClusterIP: ip,
			Ports:     []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
		},
	}
}

// A failing Sync is retried after a doubling backoff, at most MaxRetries
// times; then the loop waits for a change or the periodic sync.
func TestRetriesAreBounded(t *testing.T) {
	dp := &fakeDP{fail: -1}
	_, reg := startProxy(t, dp, Options{MinSyncPeriod: time.Millisecond, SyncPeriod: time.Hour, MaxRetries: 3,
		RetryBackoff: 10 * time.Millisecond, MaxBackoff: 25 * time.Millisecond})
	syncs := waitSyncs(t, dp, 4)
	for i, want := range []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 25 * time.Millisecond} {
		if gap := syncs[i+1].Sub(syncs[i]); gap < want {
			t.Errorf("retry %d came %v after the failure, want at least %v", i+1, gap, want)
		}
	}
	time.Sleep(150 * time.Millisecond) // well past another backoff
	if n := len(dp.times()); n != 4 {
		t.Fatalf("%d syncs, want 4: the first and 3 retries", n)
	}
	if v := metricValue(t, reg, "svcplane_sync_proxy_rules_failures_total"); v != 4 {
		t.Errorf("failures_total = %v, want 4", v)
	}
	if v := metricValue(t, reg, "svcplane_sync_proxy_rules_duration_seconds"); v != 4 {
		t.Errorf("the duration histogram has %v samples, want 4 (failed syncs count too)", v)
	}
	if v := metricValue(t, reg, "svcplane_sync_proxy_rules_last_timestamp_seconds"); v != 0 {
		t.Errorf("last_timestamp_seconds = %v, want 0 (no sync succeeded)", v)
	}
}

// A retry that succeeds ends the failure streak and records the sync.
func TestRetryRecovers(t *testing.T) {
	dp := &fakeDP{fail: 2}
	p, reg := startProxy(t, dp, Options{MinSyncPeriod: time.Millisecond, SyncPeriod: time.Hour, MaxRetries: 5,
		RetryBackoff: time.Millisecond})
	waitSyncs(t, dp, 3)
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(t, reg, "svcplane_sync_proxy_rules_last_timestamp_seconds") <= 0 {
		if time.Now().After(deadline) {
			t.Fatal("no successful sync recorded")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if n := len(dp.times()); n != 3 {
		t.Errorf("%d syncs, want 3: two failures and a success", n)
	}
	if v := metricValue(t, reg, "svcplane_sync_proxy_rules_failures_total"); v != 2 {
		t.Errorf("failures_total = %v, want 2", v)
	}
	_ = p
}

// A burst of changes is synced at most once per MinSyncPeriod, and the
// last State holds every change.
func TestMinSyncPeriod(t *testing.T) {
	const minSync = 60 * time.Millisecond
	dp := &fakeDP{}
	p, _ := startProxy(t, dp, Options{MinSyncPeriod: minSync, SyncPeriod: time.Hour})
	waitSyncs(t, dp, 1)
	const events = 40
	for i := range events {
		p.tracker.OnServiceAdd(service(fmt.Sprintf("svc-%d", i), fmt.Sprintf("198.19.0.%d", 10+i)))
		time.Sleep(5 * time.Millisecond)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		dp.mu.Lock()
		n := 0
		if dp.last != nil {
			n = len(dp.last.Ports)
		}
		dp.mu.Unlock()
		if n == events {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the last synced State has %d ports, want %d", n, events)
		}
		time.Sleep(time.Millisecond)
	}
	// The loop spaces the moments it calls Sync; fakeDP records a
	// moment later (a function call), which may be later by a little
	// more for one sync than for the next.
	const slack = 5 * time.Millisecond
	syncs := dp.times()
	for i := 1; i < len(syncs); i++ {
		if gap := syncs[i].Sub(syncs[i-1]); gap < minSync-slack {
			t.Errorf("syncs %d and %d are %v apart, want at least %v", i, i+1, gap, minSync)
		}
	}
	if len(syncs) > events/2 {
		t.Errorf("%d events gave %d syncs; bursts should collapse", events, len(syncs))
	}
}

// Without changes, the full State is synced every SyncPeriod.
func TestPeriodicSync(t *testing.T) {
	dp := &fakeDP{}
	startProxy(t, dp, Options{MinSyncPeriod: time.Millisecond, SyncPeriod: 20 * time.Millisecond})
	syncs := waitSyncs(t, dp, 4)
	for i := 1; i < len(syncs); i++ {
		if gap := syncs[i].Sub(syncs[i-1]); gap < 20*time.Millisecond {
			t.Errorf("periodic syncs %v apart, want at least the period", gap)
		}
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code, rec.Body.String()
}

// /healthz waits for the first sync, /livez does not; both count their
// answers in metrics.
func TestHealthz(t *testing.T) {
	dp := &fakeDP{}
	p := NewProxy(dp, Options{MinSyncPeriod: time.Millisecond, SyncPeriod: time.Hour})
	h := p.Handler()
	if code, _ := get(t, h, "/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz before the first sync: %d, want 503", code)
	}
	if code, _ := get(t, h, "/livez"); code != http.StatusOK {
		t.Errorf("/livez before the first sync: %d, want 200", code)
	}
	if err := p.syncOnce(context.Background(), p.tracker.State(), "test", 0); err != nil {
		t.Fatal(err)
	}
	code, body := get(t, h, "/healthz")
	var answer struct{ LastUpdated, CurrentTime string }
	if err := json.Unmarshal([]byte(body), &answer); err != nil || code != http.StatusOK || answer.LastUpdated == "" {
		t.Errorf("/healthz after a sync: %d %q (%v), want 200 with lastUpdated", code, body, err)
	}
	_, metrics := get(t, h, "/metrics")
	for _, want := range []string{`svcplane_proxy_healthz_total{code="503"} 1`, `svcplane_proxy_healthz_total{code="200"} 1`,
		`svcplane_proxy_livez_total{code="200"} 1`, "svcplane_sync_proxy_rules_duration_seconds_count 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestHealthChecksOf(t *testing.T) {
	ep := func(addr, node string, ready bool) dataplane.Endpoint {
		return dataplane.Endpoint{Addr: netip.MustParseAddr(addr), Port: 8080, NodeName: node, Ready: ready, Serving: true, Terminating: !ready}
	}
	lb := dataplane.ServicePort{
		Name: dataplane.PortName{Namespace: "shop", Name: "web", Port: "http"}, Protocol: dataplane.TCP, Port: 80,
		ExternalLocal: true, HealthCheckNodePort: 32000,
		Endpoints: []dataplane.Endpoint{ep("198.18.1.10", "node-a", true), ep("198.18.1.11", "node-a", true),
			ep("198.18.1.12", "node-a", false), ep("198.18.2.10", "node-b", true)},
	}
	https := lb
	https.Name.Port, https.Port = "https", 443 // the same Service, the same endpoints
	away := lb
	away.Name.Name, away.HealthCheckNodePort = "away", 32001
	away.Endpoints = []dataplane.Endpoint{ep("198.18.2.11", "node-b", true)}
	cluster := lb
	cluster.Name.Name, cluster.ExternalLocal, cluster.HealthCheckNodePort = "cluster", false, 32002
	got := healthChecksOf(&dataplane.State{Ports: []dataplane.ServicePort{lb, https, away, cluster}}, &dataplane.Node{Name: "node-a"})
	want := map[uint16]healthCheck{32000: {"shop/web", 2}, 32001: {"shop/away", 0}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("healthChecksOf = %v, want %v", got, want)
	}
}

// A health-check node port answers 200 with the count of local endpoints,
// 503 when there is none, as kube-proxy's do.
func TestHealthCheckAnswer(t *testing.T) {
	s := &hcServer{}
	name := "shop/web"
	s.service.Store(&name)
	for _, tc := range []struct {
		local int64
		code  int
	}{{2, http.StatusOK}, {0, http.StatusServiceUnavailable}} {
		s.local.Store(tc.local)
		code, body := get(t, s, "/")
		want := fmt.Sprintf(`{"service":"shop/web","localEndpoints":%d}`, tc.local)
		if code != tc.code || strings.TrimSpace(body) != want {
			t.Errorf("with %d local endpoints: %d %s, want %d %s", tc.local, code, body, tc.code, want)
		}
	}
}
