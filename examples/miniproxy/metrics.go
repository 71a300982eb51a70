package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are miniproxy's Prometheus metrics. Their names follow
// kube-proxy's (kubeproxy_sync_proxy_rules_duration_seconds and so on)
// with the svcplane_ prefix, so dashboards and alerts carry over.
type metrics struct {
	syncDuration       prometheus.Histogram
	lastSync           prometheus.Gauge
	lastQueued         prometheus.Gauge
	syncFailures       prometheus.Counter
	endpointChanges    prometheus.Counter
	serviceChanges     prometheus.Counter
	endpointPending    prometheus.Gauge
	servicePending     prometheus.Gauge
	servicePorts       prometheus.Gauge
	noLocalEndpoints   *prometheus.GaugeVec
	healthz, livez     *prometheus.CounterVec
	healthCheckServers prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "svcplane", "sync_proxy_rules"
	m := &metrics{
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "duration_seconds",
			Help:    "How long a sync of the proxy rules took, in seconds, successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18), // 100µs to ~13s
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "last_timestamp_seconds",
			Help: "The time of the last successful sync of the proxy rules, in seconds since the epoch.",
		}),
		lastQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "last_queued_timestamp_seconds",
			Help: "The time the last Service or EndpointSlice change was queued for a sync, in seconds since the epoch.",
		}),
		syncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "failures_total",
			Help: "Syncs of the proxy rules that failed (each is retried with a backoff).",
		}),
		endpointChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "endpoint_changes_total",
			Help: "EndpointSlice events (adds, updates, deletes) received.",
		}),
		serviceChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "service_changes_total",
			Help: "Service events (adds, updates, deletes) received.",
		}),
		endpointPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "endpoint_changes_pending",
			Help: "EndpointSlice events received since the last successful sync.",
		}),
		servicePending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "service_changes_pending",
			Help: "Service events received since the last successful sync.",
		}),
		servicePorts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "service_ports",
			Help: "Service ports in the last successfully synced state.",
		}),
		noLocalEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "no_local_endpoints_total",
			Help: "Service ports with a Local traffic policy and no local endpoint on this node, in the last synced state (a gauge, named as kube-proxy's).",
		}, []string{"traffic_policy"}),
		healthz: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "proxy_healthz_total",
			Help: "/healthz answers, by HTTP status code.",
		}, []string{"code"}),
		livez: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "proxy_livez_total",
			Help: "/livez answers, by HTTP status code.",
		}, []string{"code"}),
		healthCheckServers: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "health_check_node_port_servers",
			Help: "Health-check node-port servers running, one per externalTrafficPolicy Local service with a healthCheckNodePort.",
		}),
	}
	reg.MustRegister(m.syncDuration, m.lastSync, m.lastQueued, m.syncFailures,
		m.endpointChanges, m.serviceChanges, m.endpointPending, m.servicePending,
		m.servicePorts, m.noLocalEndpoints, m.healthz, m.livez, m.healthCheckServers,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
