package conformance

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
)

// The Conntrack group: UDP flows that outlive a change. UDP has no
// teardown, so a client that keeps sending from one source port (a DNS
// resolver, a metrics agent) keeps its conntrack entry, and with it the
// old translation, for as long as it sends. After a Sync that removes its
// endpoint, or gives a service its first, the backend must delete the
// entries that would keep it on the old path.

// udpSettle bounds how long after a Sync a fixed-port UDP client may
// still take the old path.
const udpSettle = 2 * time.Second

// syncWhileSending syncs st while from sends UDP datagrams to dst from
// opt's fixed source port, one after another, as a busy client does: a
// datagram that arrives between the backend's rule change and its
// conntrack cleanup must not leave a stale entry behind. Answers during
// the Sync do not matter.
func (e *env) syncWhileSending(st *dataplane.State, from *topo.Host, dst netip.AddrPort, opt topo.RequestOptions) {
	e.t.Helper()
	opt.Timeout = 100 * time.Millisecond
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			e.req(from, dataplane.UDP, dst, opt)
		}
	})
	defer wg.Wait()
	defer close(stop)
	e.sync(st)
}

// reachesSoon requires that requests from opt's fixed source port reach
// the pod want within udpSettle, and that the next 3 do too.
func (e *env) reachesSoon(from *topo.Host, dst netip.AddrPort, opt topo.RequestOptions, want, why string) {
	e.t.Helper()
	opt.Timeout = 200 * time.Millisecond
	deadline := time.Now().Add(udpSettle)
	var seen []string
	for {
		r, err := e.req(from, dataplane.UDP, dst, opt)
		switch {
		case err == nil && r.Pod == want:
			for range 3 {
				if r := e.request(from, dataplane.UDP, dst, opt); r.Pod != want {
					e.t.Fatalf("%s UDP %s→ %s reached %s, then %s; want only %s from then on: %s", from.Name, source(opt), dst, want, r.Pod, want, why)
				}
			}
			return
		case err == nil:
			seen = append(seen, r.Pod)
		default:
			seen = append(seen, fmt.Sprintf("error (%v)", err))
		}
		if time.Now().After(deadline) {
			if len(seen) > 5 {
				seen = append(seen[:2], append([]string{"…"}, seen[len(seen)-2:]...)...)
			}
			e.t.Fatalf("%s UDP %s→ %s did not reach %s within %v of the Sync (answers: %s): %s", from.Name, source(opt), dst, want, udpSettle, strings.Join(seen, ", "), why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func init() {
	register("Conntrack", "UDPEndpointReplaced", func(e *env) {
		// A pod sends to a cluster IP from a fixed port; its endpoint is
		// replaced by another while it keeps sending. After the Sync it
		// must reach the new endpoint within udpSettle. The old pod keeps
		// running, so a stale entry would still be answered.
		old, neu := e.pod(1, "old-1", 8080), e.pod(1, "new-1", 8080)
		c := e.pod(0, "client")
		dst, opt := ap(cip4(10), 53), topo.RequestOptions{LocalPort: 40053}
		e.sync(state(svc("dns", "dns", dataplane.UDP, 53, ips(cip4(10)), ready(old, 8080))))
		onlyPods(e.t, e.tallyFrom(&c.Host, dataplane.UDP, dst, opt, 3), "old-1")
		e.syncWhileSending(state(svc("dns", "dns", dataplane.UDP, 53, ips(cip4(10)), ready(neu, 8080))), &c.Host, dst, opt)
		e.reachesSoon(&c.Host, dst, opt, "new-1", "old-1 was replaced by new-1")
	})

	register("Conntrack", "UDPFirstEndpoint", func(e *env) {
		// A pod sends to a cluster IP from a fixed port before the
		// service exists (the node forwards the datagrams towards its
		// default route, where they vanish, and conntrack remembers the
		// untranslated flow), then while it has no endpoints (rejected),
		// then the service gets its first endpoint: the pod must reach
		// it within udpSettle. Another service is synced first, as on a
		// node whose proxy has been running: the kernel tracks
		// connections in a namespace only once some rule needs it.
		web := e.pod(1, "web-1", 8080)
		c := e.pod(0, "client")
		other := svc("other", "dns", dataplane.UDP, 53, ips(cip4(11)), ready(web, 8080))
		dns := svc("dns", "dns", dataplane.UDP, 53, ips(cip4(10)))
		dst, opt := ap(cip4(10), 53), topo.RequestOptions{LocalPort: 40053}
		e.sync(state(other))
		e.notForwarded(&c.Host, dataplane.UDP, dst, opt, "the service does not exist yet")
		e.sync(state(other, dns))
		e.rejectedFrom(&c.Host, dataplane.UDP, dst, opt, "the service has no endpoints")
		dns.Endpoints = []dataplane.Endpoint{ready(web, 8080)}
		e.syncWhileSending(state(other, dns), &c.Host, dst, opt)
		e.reachesSoon(&c.Host, dst, opt, "web-1", "the service got its first endpoint")
	})

	register("Conntrack", "NodePortUDP", func(e *env) {
		// The same through a NodePort, from the external client on one
		// fixed source port throughout: before the service exists (the
		// node's own stack refuses the datagrams, and conntrack remembers
		// the flow as local traffic), without endpoints (rejected), with
		// its first endpoint, and with that endpoint replaced. Another
		// service is synced first, as in UDPFirstEndpoint.
		old, neu := e.pod(1, "old-1", 8080), e.pod(0, "new-1", 8080)
		c := e.topo.Client
		other := npSvc("other", "dns", dataplane.UDP, 53, nodePort+1, ips(cip4(11)), ready(old, 8080))
		dst, opt := ap(e.topo.Nodes[0].IPv4, nodePort), topo.RequestOptions{LocalPort: 40053}
		e.sync(state(other))
		e.notForwarded(c, dataplane.UDP, dst, opt, "the service does not exist yet")
		dns := func(eps ...dataplane.Endpoint) *dataplane.State {
			return state(other, npSvc("dns", "dns", dataplane.UDP, 53, nodePort, ips(cip4(10)), eps...))
		}
		e.sync(dns())
		e.rejectedFrom(c, dataplane.UDP, dst, opt, "the service has no endpoints")
		e.syncWhileSending(dns(ready(old, 8080)), c, dst, opt)
		e.reachesSoon(c, dst, opt, "old-1", "the service got its first endpoint")
		e.syncWhileSending(dns(ready(neu, 8080)), c, dst, opt)
		e.reachesSoon(c, dst, opt, "new-1", "old-1 was replaced by new-1")
	})
}
