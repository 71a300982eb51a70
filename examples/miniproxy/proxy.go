package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/dataplane/kube"
)

// Options configure a Proxy.
type Options struct {
	// Node is the node the proxy programs.
	Node dataplane.Node
	// NetNS is the network namespace the backend programs, where the
	// health-check node ports listen too; "" is the proxy's own.
	NetNS string
	// MinSyncPeriod is the least time between two syncs: bursts of
	// events within it are synced together.
	MinSyncPeriod time.Duration
	// SyncPeriod is the time after which the full state is synced again
	// even without events, which also repairs the kernel state when
	// another program changed it.
	SyncPeriod time.Duration
	// MaxRetries bounds the retries of a failed sync; after them the
	// proxy waits for the next event or the periodic sync.
	MaxRetries int
	// RetryBackoff is the delay before the first retry; it doubles with
	// each retry up to MaxBackoff.
	RetryBackoff, MaxBackoff time.Duration
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Registry receives the metrics; nil makes a new one.
	Registry *prometheus.Registry
}

func (o *Options) defaults() {
	if o.MinSyncPeriod <= 0 {
		o.MinSyncPeriod = time.Second
	}
	if o.SyncPeriod <= 0 {
		o.SyncPeriod = 30 * time.Second
	}
	if o.MaxRetries <= 0 {
		o.MaxRetries = 5
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
}

// Proxy is a service proxy: informer events go into a kube.Tracker, and a
// sync loop programs the Tracker's State with a Dataplane.
type Proxy struct {
	opts    Options
	dp      dataplane.Dataplane
	tracker *kube.Tracker
	log     *slog.Logger
	m       *metrics
	hc      *healthChecks
	ready   chan struct{} // closed when the informers' caches are synced
	once    sync.Once

	mu sync.Mutex
	// lastSynced is the time of the last successful sync; queued is the
	// time of the oldest change not synced yet (zero: none).
	lastSynced, queued time.Time
	// pending counts the events since the last successful sync.
	pendingEndpoints, pendingServices int
	// syncs counts successful syncs, for tests.
	syncs int
}

// NewProxy returns a Proxy that programs dp. It starts nothing: call Watch
// (or the tests' markReady) and Run.
func NewProxy(dp dataplane.Dataplane, opts Options) *Proxy {
	opts.defaults()
	p := &Proxy{
		opts:    opts,
		dp:      dp,
		tracker: kube.NewTracker(opts.Node),
		log:     opts.Logger,
		m:       newMetrics(opts.Registry),
		ready:   make(chan struct{}),
	}
	p.hc = &healthChecks{netns: opts.NetNS, log: p.log}
	return p
}

// serviceSelector leaves out, on the API server already, the Services
// kube-proxy leaves to others: those of another service proxy and
// headless ones (Translate skips them as well).
const serviceSelector = "!" + kube.LabelServiceProxyName + ",!" + corev1.IsHeadlessService

// Watch starts informers on Services and EndpointSlices, feeds their
// events to the Tracker, and waits until their caches are synced, so that
// the first sync sees every object: a sync of a half-filled cache would
// remove the forwarding of the Services not listed yet.
func (p *Proxy) Watch(ctx context.Context, client kubernetes.Interface) error {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = serviceSelector }))
	svcs := factory.Core().V1().Services().Informer()
	if _, err := svcs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if s, ok := obj.(*corev1.Service); ok {
				p.serviceEvent()
				p.tracker.OnServiceAdd(s)
			}
		},
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*corev1.Service)
			if s, ok := obj.(*corev1.Service); ok {
				p.serviceEvent()
				p.tracker.OnServiceUpdate(o, s)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if s, ok := obj.(*corev1.Service); ok {
				p.serviceEvent()
				p.tracker.OnServiceDelete(s)
			}
		},
	}); err != nil {
		return err
	}
	// EndpointSlices carry the Service labels too (the controllers copy
	// them), so one selector serves both.
	slices := factory.Discovery().V1().EndpointSlices().Informer()
	if _, err := slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
				p.endpointEvent()
				p.tracker.OnEndpointSliceAdd(s)
			}
		},
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*discoveryv1.EndpointSlice)
			if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
				p.endpointEvent()
				p.tracker.OnEndpointSliceUpdate(o, s)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
				p.endpointEvent()
				p.tracker.OnEndpointSliceDelete(s)
			}
		},
	}); err != nil {
		return err
	}
	factory.StartWithContext(ctx)
	go func() {
		<-ctx.Done()
		factory.Shutdown()
	}()
	p.log.Info("waiting for the informer caches")
	if !cache.WaitForCacheSync(ctx.Done(), svcs.HasSynced, slices.HasSynced) {
		return fmt.Errorf("informer caches not synced: %w", context.Cause(ctx))
	}
	p.log.Info("informer caches synced")
	p.markReady()
	return nil
}

func (p *Proxy) markReady() { p.once.Do(func() { close(p.ready) }) }

func (p *Proxy) serviceEvent() {
	p.m.serviceChanges.Inc()
	p.mu.Lock()
	p.pendingServices++
	p.m.servicePending.Set(float64(p.pendingServices))
	p.queuedLocked()
	p.mu.Unlock()
}

func (p *Proxy) endpointEvent() {
	p.m.endpointChanges.Inc()
	p.mu.Lock()
	p.pendingEndpoints++
	p.m.endpointPending.Set(float64(p.pendingEndpoints))
	p.queuedLocked()
	p.mu.Unlock()
}

func (p *Proxy) queuedLocked() {
	now := time.Now()
	if p.queued.IsZero() {
		p.queued = now
	}
	p.m.lastQueued.Set(float64(now.UnixNano()) / 1e9)
}

// Run is the sync loop. It waits for the caches, then syncs at once and
// again whenever the Tracker signals a change, at most once per
// MinSyncPeriod, and every SyncPeriod regardless. A failed sync is
// retried after RetryBackoff, doubling up to MaxBackoff, at most
// MaxRetries times; then the loop waits for the next change or periodic
// sync. Run returns when ctx is done, leaving the kernel state in place
// (as kube-proxy does, so that traffic keeps flowing across restarts);
// closing the Dataplane is the caller's business.
func (p *Proxy) Run(ctx context.Context) error {
	defer p.hc.close()
	select {
	case <-ctx.Done():
		return nil
	case <-p.ready:
	}
	var (
		last    time.Time
		retries int
		retry   <-chan time.Time
		resync  = time.NewTimer(p.opts.SyncPeriod)
	)
	defer resync.Stop()
	for {
		why := "change"
		select {
		case <-ctx.Done():
			return nil
		case <-p.tracker.Changed():
		case <-retry:
			why = "retry"
		case <-resync.C:
			why = "periodic"
		}
		if wait := p.opts.MinSyncPeriod - time.Since(last); !last.IsZero() && wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		// Changes that arrived while waiting are in the State read now.
		select {
		case <-p.tracker.Changed():
		default:
		}
		// The State is read first, so that last is the moment the
		// Dataplane's Sync starts: MinSyncPeriod spaces those.
		st := p.tracker.State()
		last = time.Now()
		err := p.syncOnce(ctx, st, why, retries)
		resync.Reset(p.opts.SyncPeriod)
		switch {
		case err == nil:
			retries, retry = 0, nil
		case ctx.Err() != nil:
			return nil
		case retries < p.opts.MaxRetries:
			backoff := min(p.opts.RetryBackoff<<retries, p.opts.MaxBackoff)
			retries++
			p.log.Warn("sync failed; retrying", "err", err, "retry", retries, "of", p.opts.MaxRetries, "in", backoff)
			retry = time.After(backoff)
		default:
			p.log.Error("sync failed; giving up until the next change or periodic sync", "err", err, "retries", retries, "next_periodic", p.opts.SyncPeriod)
			retries, retry = 0, nil
		}
	}
}

// syncOnce syncs the Tracker's current State and records the outcome.
func (p *Proxy) syncOnce(ctx context.Context, st *dataplane.State, why string, retry int) error {
	start := time.Now()
	err := p.dp.Sync(ctx, st)
	took := time.Since(start)
	p.m.syncDuration.Observe(took.Seconds())
	if err != nil {
		p.m.syncFailures.Inc()
		return err
	}
	now := time.Now()
	p.mu.Lock()
	p.lastSynced = now
	p.queued = time.Time{}
	p.pendingEndpoints, p.pendingServices = 0, 0
	p.syncs++
	p.mu.Unlock()
	p.m.lastSync.Set(float64(now.UnixNano()) / 1e9)
	p.m.endpointPending.Set(0)
	p.m.servicePending.Set(0)
	p.m.servicePorts.Set(float64(len(st.Ports)))
	var noLocalInternal, noLocalExternal int
	for i := range st.Ports {
		sp := &st.Ports[i]
		if !sp.InternalLocal && !sp.ExternalLocal {
			continue
		}
		cat := dataplane.Categorize(sp, &p.opts.Node)
		if len(cat.Local) == 0 && cat.Any {
			if sp.InternalLocal {
				noLocalInternal++
			}
			if sp.ExternalLocal {
				noLocalExternal++
			}
		}
	}
	p.m.noLocalEndpoints.WithLabelValues("internal").Set(float64(noLocalInternal))
	p.m.noLocalEndpoints.WithLabelValues("external").Set(float64(noLocalExternal))
	p.hc.update(healthChecksOf(st, &p.opts.Node))
	p.m.healthCheckServers.Set(float64(p.hc.count()))
	p.log.Info("synced", "why", why, "service_ports", len(st.Ports), "took", took, "retry", retry)
	return nil
}

// health reports whether the proxy keeps up: no change has waited longer
// than twice the sync period, as kube-proxy's /healthz judges it. ready
// adds that a first sync happened.
func (p *Proxy) health() (healthy, synced bool, lastSynced time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	healthy = p.queued.IsZero() || time.Since(p.queued) < 2*p.opts.SyncPeriod
	return healthy, !p.lastSynced.IsZero(), p.lastSynced
}

// Handler serves /metrics, /healthz and /livez:
//
//   - /healthz: 200 once the first sync is done and while no change has
//     waited longer than twice the sync period; 503 otherwise.
//   - /livez: 200 unless a change has waited longer than twice the sync
//     period (a stuck proxy, worth a restart); it does not wait for the
//     first sync.
//
// Both answer with JSON: {"lastUpdated": ..., "currentTime": ...}.
func (p *Proxy) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.opts.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		healthy, synced, last := p.health()
		p.answerHealth(w, healthy && synced, last, p.m.healthz)
	})
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) {
		healthy, _, last := p.health()
		p.answerHealth(w, healthy, last, p.m.livez)
	})
	return mux
}

func (p *Proxy) answerHealth(w http.ResponseWriter, ok bool, last time.Time, counter *prometheus.CounterVec) {
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
	}
	counter.WithLabelValues(strconv.Itoa(code)).Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	var lastUpdated string
	if !last.IsZero() {
		lastUpdated = last.UTC().Format(time.RFC3339Nano)
	}
	json.NewEncoder(w).Encode(map[string]string{
		"lastUpdated": lastUpdated,
		"currentTime": time.Now().UTC().Format(time.RFC3339Nano),
	})
}
