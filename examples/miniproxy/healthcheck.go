package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/netnsutil"
)

// Health-check node ports.
//
// A LoadBalancer Service with externalTrafficPolicy Local gets a
// healthCheckNodePort. The cloud load balancer probes it on every node,
// and sends traffic only to nodes that answer 200: the ones with a ready
// endpoint of the Service, since Local traffic never leaves the node. The
// service proxy answers it, as kube-proxy does: HTTP on the port, on every
// node address, with 200 and the number of local endpoints when there is
// at least one and 503 when there is none.

// healthCheck is what one health-check node port reports.
type healthCheck struct {
	service string // namespace/name
	local   int    // ready endpoints on this node
}

// healthChecks runs one HTTP server per health-check node port, in the
// namespace the proxy programs.
type healthChecks struct {
	netns string // "" for our own namespace
	log   *slog.Logger

	mu      sync.Mutex
	servers map[uint16]*hcServer
}

type hcServer struct {
	srv     *http.Server
	service atomic.Pointer[string]
	local   atomic.Int64
}

// healthChecksOf returns the health checks st needs on node: one per
// Service with a HealthCheckNodePort (under externalTrafficPolicy Local),
// counting its distinct ready endpoints on the node.
func healthChecksOf(st *dataplane.State, node *dataplane.Node) map[uint16]healthCheck {
	out := make(map[uint16]healthCheck)
	seen := make(map[uint16]map[string]bool)
	for _, p := range st.Ports {
		port := p.HealthCheckNodePort
		if port == 0 || !p.ExternalLocal {
			continue
		}
		name := p.Name.Namespace + "/" + p.Name.Name
		hc, ok := out[port]
		if ok && hc.service != name {
			continue // two Services claim one port; the API server forbids it
		}
		hc.service = name
		if seen[port] == nil {
			seen[port] = make(map[string]bool)
		}
		for _, e := range p.Endpoints {
			// Ready only: a node whose local endpoints are all
			// terminating fails its check, so the load balancer drains it.
			if e.Ready && e.NodeName == node.Name && !seen[port][e.Addr.String()] {
				seen[port][e.Addr.String()] = true
				hc.local++
			}
		}
		out[port] = hc
	}
	return out
}

// update starts servers for new ports, stops the ones no longer wanted and
// updates the counts. A port it cannot listen on is logged and tried again
// at the next update.
func (h *healthChecks) update(want map[uint16]healthCheck) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.servers == nil {
		h.servers = make(map[uint16]*hcServer)
	}
	for port, s := range h.servers {
		if _, ok := want[port]; !ok {
			h.log.Info("stopping health-check node port", "port", port, "service", *s.service.Load())
			s.srv.Close()
			delete(h.servers, port)
		}
	}
	ports := make([]uint16, 0, len(want))
	for p := range want {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	for _, port := range ports {
		hc := want[port]
		s := h.servers[port]
		if s == nil {
			var err error
			if s, err = h.start(port); err != nil {
				h.log.Error("cannot serve health-check node port", "port", port, "service", hc.service, "err", err)
				continue
			}
			h.log.Info("serving health-check node port", "port", port, "service", hc.service)
			h.servers[port] = s
		}
		name := hc.service
		s.service.Store(&name)
		s.local.Store(int64(hc.local))
	}
}

// count returns how many servers run.
func (h *healthChecks) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.servers)
}

func (h *healthChecks) start(port uint16) (*hcServer, error) {
	ln, err := listenIn(h.netns, "tcp", ":"+strconv.Itoa(int(port)))
	if err != nil {
		return nil, err
	}
	s := &hcServer{}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("health-check node port server", "port", port, "err", err)
		}
	}()
	return s, nil
}

// ServeHTTP answers a load balancer's probe.
func (s *hcServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.local.Load()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.FormatInt(n, 10))
	if n > 0 {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(struct {
		Service        string `json:"service"`
		LocalEndpoints int64  `json:"localEndpoints"`
	}{*s.service.Load(), n})
}

// close stops every server.
func (h *healthChecks) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		s.srv.Close()
		delete(h.servers, port)
	}
}

// listenIn listens on addr inside the network namespace at path ("" for
// the caller's). The socket stays in that namespace.
func listenIn(path, network, addr string) (net.Listener, error) {
	if path == "" {
		return net.Listen(network, addr)
	}
	ns, err := netnsutil.Open(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var ln net.Listener
	err = ns.Do(func() error {
		var err error
		ln, err = (&net.ListenConfig{}).Listen(context.Background(), network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, path, err)
	}
	return ln, nil
}
