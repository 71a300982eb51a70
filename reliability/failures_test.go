package reliability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/internal/nstest"
)

// failureScene is a cluster whose node-a forwards service "keep"
// (198.19.0.10:80) to web-1; the Sync under test would add service
// "new" (198.19.0.20:80, ClientIP affinity of 77 s) forwarding to web-2.
type failureScene struct {
	*cluster
	dp         dataplane.Dataplane
	prev, next *dataplane.State
}

var (
	keepAddr = netip.MustParseAddrPort("198.19.0.10:80")
	newAddr  = netip.MustParseAddrPort("198.19.0.20:80")
)

func newFailureScene(t *testing.T, b backend) *failureScene {
	c := newCluster(t, 2*time.Minute)
	web1, web2 := c.pod(1, "web-1", podPort), c.pod(0, "web-2", podPort)
	port := func(name string, a netip.AddrPort, p *topo.Pod) dataplane.ServicePort {
		return dataplane.ServicePort{
			Name: dataplane.PortName{Namespace: "default", Name: name}, Protocol: dataplane.TCP, Port: a.Port(),
			ClusterIPs: []netip.Addr{a.Addr()}, Endpoints: []dataplane.Endpoint{readyEndpoint(p)},
		}
	}
	neu := port("new", newAddr, web2)
	neu.Affinity = 77 * time.Second
	s := &failureScene{cluster: c, dp: c.open(b)}
	s.prev = &dataplane.State{Ports: []dataplane.ServicePort{port("keep", keepAddr, web1)}}
	s.next = &dataplane.State{Ports: []dataplane.ServicePort{port("keep", keepAddr, web1), neu}}
	if err := s.dp.Sync(c.ctx, s.prev); err != nil {
		t.Fatal(err)
	}
	s.answers(keepAddr, "web-1", "after the first Sync")
	return s
}

// answers requires 5 new connections to dst to be answered by pod.
func (s *failureScene) answers(dst netip.AddrPort, pod, when string) {
	s.t.Helper()
	for range 5 {
		r, err := s.client.Request(s.ctx, dataplane.TCP, dst, topo.RequestOptions{})
		if err != nil || r.Pod != pod {
			s.t.Fatalf("%s: a connection to %s was answered by %q (error %v), want %s", when, dst, r.Pod, err, pod)
		}
	}
}

// notForwarded requires a connection to dst not to reach any pod.
func (s *failureScene) notForwarded(dst netip.AddrPort, when string) {
	s.t.Helper()
	r, err := s.client.Request(s.ctx, dataplane.TCP, dst, topo.RequestOptions{Timeout: 300 * time.Millisecond})
	if err == nil {
		s.t.Fatalf("%s: a connection to %s was answered by %s; the service must not be programmed", when, dst, r.Pod)
	}
}

// converges requires the next Sync of next to succeed, the kernel to
// equal a fresh Sync of it, and both services to answer.
func (s *failureScene) converges(b backend, when string) {
	s.t.Helper()
	if err := s.dp.Sync(s.ctx, s.next); err != nil {
		s.t.Fatalf("%s: the next Sync of the same State failed too, want it to converge: %v", when, err)
	}
	if got, want := mustDump(s.t, b, s.node.NS.Fd()), s.freshDump(b, s.next); got != want {
		s.t.Fatalf("%s: after the next Sync the kernel differs from a fresh Sync of the State:\n%s", when, diff(want, got))
	}
	s.answers(keepAddr, "web-1", when+", after the next Sync")
	s.answers(newAddr, "web-2", when+", after the next Sync")
}

// TestFailedSyncKeepsState makes Syncs fail and requires each failure
// to keep the previous state working and the next Sync to converge:
//
//   - Conflict/*: another program puts an object into the backend's
//     namespace that collides with one the Sync creates. Either the Sync
//     fails in the kernel, returns an error that wraps the kernel's
//     errno, and changes nothing (every table, chain, rule, set and
//     element byte-identical), or it repairs the damage and succeeds;
//     either way the next Sync leaves exactly a fresh Sync's state, and
//     the service that was there answers throughout.
//   - CancelledInside: the context is cancelled at each point the
//     backend checks it in turn, until a Sync completes; each cancelled
//     Sync returns an error wrapping context.Canceled and changes
//     nothing.
//   - NamespaceGone: every other reference to the namespace goes away.
func TestFailedSyncKeepsState(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for _, cf := range b.conflicts {
			t.Run("Conflict/"+cf.name, func(t *testing.T) {
				s := newFailureScene(t, b)
				cf.inject(t, s.node.NS.Path(), s.prev, s.next)
				before := snapshot(t, s.node.NS.Fd())
				err := s.dp.Sync(s.ctx, s.next)
				if err != nil {
					t.Logf("the Sync failed: %v", err)
					var errno syscall.Errno
					if !errors.As(err, &errno) {
						t.Errorf("the error %q does not carry the kernel's errno: it does not say what failed", err)
					}
					if now := snapshot(t, s.node.NS.Fd()); now != before {
						t.Fatalf("a Sync that failed (%v) changed the kernel:\n%s", err, diff(before, now))
					}
					s.answers(keepAddr, "web-1", "after the failed Sync")
					s.notForwarded(newAddr, "after the failed Sync")
				} else {
					t.Logf("the Sync succeeded despite the conflicting object")
					if got, want := mustDump(t, b, s.node.NS.Fd()), s.freshDump(b, s.next); got != want {
						t.Errorf("the Sync returned nil, but the kernel differs from a fresh Sync of the State:\n%s", diff(want, got))
					}
					s.answers(keepAddr, "web-1", "after a Sync that returned nil")
					s.answers(newAddr, "web-2", "after a Sync that returned nil")
				}
				if cf.fix != nil {
					cf.fix(t, s.node.NS.Path(), s.prev, s.next)
				}
				s.converges(b, "after a conflicting object was created behind the backend's back")
			})
		}

		t.Run("CancelledInside", func(t *testing.T) {
			s := newFailureScene(t, b)
			cancelled := 0
			for n := 0; ; n++ {
				if n > 20 {
					t.Fatal("every Sync was cancelled, even with the context cancelled only at its 21st check")
				}
				before, gen := snapshot(t, s.node.NS.Fd()), generation(t, s.node.NS.Fd())
				err := s.dp.Sync(newCancelAfter(n), s.next)
				if err == nil {
					t.Logf("a context cancelled at its check %d no longer stops the Sync", n+1)
					break
				}
				t.Logf("cancelled at the context's check %d: %v", n+1, err)
				if !errors.Is(err, context.Canceled) {
					t.Errorf("the error %q does not wrap context.Canceled", err)
				}
				if now := snapshot(t, s.node.NS.Fd()); now != before || generation(t, s.node.NS.Fd()) != gen {
					t.Fatalf("a cancelled Sync changed the kernel:\n%s", diff(before, now))
				}
				s.answers(keepAddr, "web-1", "after a cancelled Sync")
				s.notForwarded(newAddr, "after a cancelled Sync")
				cancelled++
			}
			if cancelled < 2 {
				t.Errorf("only %d cancellation points: none inside the Sync (after its first check)", cancelled)
			}
			if got, want := mustDump(t, b, s.node.NS.Fd()), s.freshDump(b, s.next); got != want {
				t.Fatalf("after the completed Sync the kernel differs from a fresh Sync of the State:\n%s", diff(want, got))
			}
			s.answers(newAddr, "web-2", "after the completed Sync")
		})

		t.Run("NamespaceGone", func(t *testing.T) {
			// A Dataplane holds its namespace open (a file descriptor and
			// netlink sockets in it), so the namespace cannot go away
			// under it: once every other reference is gone, Sync, Cleanup
			// and Close must still return, and work. A new Dataplane for
			// the vanished path must fail, naming it.
			nstest.NeedRoot(t)
			ns, err := netnsutil.New()
			if err != nil {
				t.Fatal(err)
			}
			path := ns.Path()
			dp := newDP(t, b, path, nodeA())
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st := manyPorts(50, nil)
			if err := dp.Sync(ctx, st); err != nil {
				t.Fatal(err)
			}
			ns.Close()
			done := make(chan error, 1)
			go func() {
				st.Ports = st.Ports[1:]
				done <- errors.Join(dp.Sync(ctx, st), dp.Cleanup(ctx), dp.Close())
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Sync, Cleanup and Close after the namespace lost its other references: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Sync, Cleanup or Close hung after the namespace lost its other references")
			}
			_, err = b.factory(t, conformanceTarget(path, nodeA()))
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("a new Dataplane for the vanished namespace %s returned %v, want an error naming the path", path, err)
			}
		})
	})
}

// TestConcurrentSync calls Sync from 8 goroutines at once, 20 times
// each (10 under the race detector), with States that all keep one service on two ready pods but
// differ in everything else (some invalid), while a client opens
// connections to that service: no connection may fail, no call may
// race (run with -race, as make test does), and a last Sync leaves
// exactly a fresh Sync's state. Then Syncs race Cleanup and Close: every
// call returns, the ones after Close fail, and a new Dataplane adopts
// the namespace and converges.
func TestConcurrentSync(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		c := newCluster(t, 2*time.Minute)
		web1, web2 := c.pod(0, "web-1", podPort), c.pod(1, "web-2", podPort)
		variant := func(v int) *dataplane.State {
			st := &dataplane.State{Ports: loadPorts([]dataplane.Endpoint{readyEndpoint(web1), readyEndpoint(web2)})}
			if v%2 == 1 {
				st.Ports[0].Endpoints[0], st.Ports[0].Endpoints[1] = st.Ports[0].Endpoints[1], st.Ports[0].Endpoints[0]
			}
			for i := range 20 + 10*v {
				st.Ports = append(st.Ports, dataplane.ServicePort{
					Name:     dataplane.PortName{Namespace: "other", Name: fmt.Sprintf("svc-%d", i)},
					Protocol: dataplane.UDP, Port: uint16(53 + v), NodePort: uint16(30000 + i),
					ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 19, 3, byte(i)})},
					Affinity:   time.Duration(10*(v%3)) * time.Second,
					Endpoints:  []dataplane.Endpoint{{Addr: netip.AddrFrom4([4]byte{198, 18, 2, byte(100 + v)}), Port: 53, Ready: true}},
				})
			}
			if v == 4 { // invalid: a duplicate frontend
				st.Ports = append(st.Ports, st.Ports[2])
				st.Ports[len(st.Ports)-1].Name.Name = "clash"
			}
			return st
		}
		dp := c.open(b)
		if err := dp.Sync(c.ctx, variant(0)); err != nil {
			t.Fatal(err)
		}
		l := &load{from: &c.client.Host, proto: dataplane.TCP, dst: loadTCP, rate: 300, workers: 2, max: 20000, timeout: loadTimeout}
		l.start(c.ctx)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []error
		for g := range 8 {
			wg.Go(func() {
				for i := range raceOr(20, 10) {
					v := (g + i) % 5
					err := dp.Sync(c.ctx, variant(v))
					if (err != nil) != (v == 4) {
						mu.Lock()
						errs = append(errs, fmt.Errorf("goroutine %d, Sync %d of variant %d: %v", g, i, v, err))
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		l.finish()
		for _, err := range errs {
			t.Error(err)
		}
		st := summarise(l.snapshot())
		t.Logf("%s: %d concurrent Syncs; TCP connections meanwhile: %d attempted, %d failed", b.name, 8*raceOr(20, 10), st.attempted, st.failed)
		if st.failed > 0 {
			t.Errorf("%d of %d connections failed during concurrent Syncs; first: %v", st.failed, st.attempted, st.failures)
		}
		last := variant(3)
		if err := dp.Sync(c.ctx, last); err != nil {
			t.Fatal(err)
		}
		if got, want := mustDump(t, b, c.node.NS.Fd()), c.freshDump(b, last); got != want {
			t.Fatalf("after concurrent Syncs the kernel differs from a fresh Sync of the last State:\n%s", diff(want, got))
		}

		// Syncs racing Cleanup and Close.
		closed := make(chan struct{})
		var afterClose, nilAfterClose int
		for g := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-closed:
						err := dp.Sync(c.ctx, variant((g+i)%4))
						mu.Lock()
						afterClose++
						if err == nil {
							nilAfterClose++
						}
						mu.Unlock()
						return
					default:
					}
					dp.Sync(c.ctx, variant((g+i)%4))
				}
			})
		}
		for range 3 {
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			if err := dp.Cleanup(c.ctx); err != nil {
				t.Errorf("Cleanup racing Syncs: %v", err)
			}
		}
		if err := dp.Close(); err != nil {
			t.Errorf("Close racing Syncs: %v", err)
		}
		close(closed)
		wg.Wait()
		if nilAfterClose > 0 {
			t.Errorf("%d of %d Syncs after Close returned nil, want an error", nilAfterClose, afterClose)
		}
		dp2 := c.open(b)
		if err := dp2.Sync(c.ctx, last); err != nil {
			t.Fatal(err)
		}
		if got, want := mustDump(t, b, c.node.NS.Fd()), c.freshDump(b, last); got != want {
			t.Fatalf("a new Dataplane after Syncs raced Cleanup and Close did not converge:\n%s", diff(want, got))
		}
	})
}
