package ipvsnl

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/internal/nstest"
)

// newNS returns a fresh namespace with lo up (IPVS classifies real
// servers through the local routing table, which needs it).
func newNS(t *testing.T) *netnsutil.NS {
	t.Helper()
	ns := nstest.New(t)
	if err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatal(err)
	}
	return ns
}

func hasIPVS(t *testing.T, ns *netnsutil.NS) bool {
	var ok bool
	ns.Do(func() error {
		_, err := os.Stat("/proc/thread-self/net/ip_vs")
		ok = err == nil
		return nil
	})
	return ok
}

// On a kernel without IPVS, Dial says so instead of returning a handle
// whose calls silently do nothing.
func TestDialWithoutIPVS(t *testing.T) {
	ns := newNS(t)
	if hasIPVS(t, ns) {
		t.Skip("this kernel has IPVS")
	}
	c, err := Dial(ns.Fd())
	if !errors.Is(err, ErrNoIPVS) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Dial = %v, want ErrNoIPVS", err)
	}
}

func TestServicesAndDests(t *testing.T) {
	ns := newNS(t)
	if !hasIPVS(t, ns) {
		t.Skip("this kernel has no IPVS: run `make test-vm` to test against Debian's kernels")
	}
	c, err := Dial(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v, err := c.Version(); err != nil || v == 0 {
		t.Fatalf("Version = %#x, %v", v, err)
	}
	for _, tc := range []struct{ vip, rip1, rip2 string }{
		{"198.19.0.10", "198.18.1.10", "198.18.1.11"},
		{"2001:db8:ffff::10", "2001:db8:1::a", "2001:db8:1::b"},
	} {
		s := &Service{Addr: netip.MustParseAddr(tc.vip), Protocol: unix.IPPROTO_TCP, Port: 80, Scheduler: "rr", Flags: FlagPersistent, Timeout: 30}
		if err := c.NewService(s); err != nil {
			t.Fatal(err)
		}
		got, err := c.Services()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(got, *s) {
			t.Fatalf("Services() = %+v, want it to contain %+v", got, *s)
		}
		d1 := &Dest{Addr: netip.MustParseAddr(tc.rip1), Port: 8080, Weight: 1}
		d2 := &Dest{Addr: netip.MustParseAddr(tc.rip2), Port: 8080, Weight: 1}
		for _, d := range []*Dest{d1, d2} {
			if err := c.NewDest(s, d); err != nil {
				t.Fatal(err)
			}
		}
		d2.Weight = 0
		if err := c.UpdateDest(s, d2); err != nil {
			t.Fatal(err)
		}
		ds, err := c.Dests(s)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) != 2 {
			t.Fatalf("Dests = %+v, want 2", ds)
		}
		for _, d := range ds {
			want := map[netip.Addr]uint32{d1.Addr: 1, d2.Addr: 0}[d.Addr]
			if d.Port != 8080 || d.Weight != want {
				t.Fatalf("dest %+v, want port 8080 weight %d", d, want)
			}
		}
		s.Flags, s.Timeout = 0, 0
		if err := c.UpdateService(s); err != nil {
			t.Fatal(err)
		}
		if err := c.DelDest(s, d1); err != nil {
			t.Fatal(err)
		}
		if ds, _ := c.Dests(s); len(ds) != 1 || ds[0].Addr != d2.Addr {
			t.Fatalf("after DelDest: %+v", ds)
		}
		if err := c.DelService(s); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.Services(); len(got) != 0 {
			t.Fatalf("after DelService: %+v", got)
		}
	}
	// Errors name what failed.
	err = c.DelService(&Service{Addr: netip.MustParseAddr("198.19.0.99"), Protocol: unix.IPPROTO_UDP, Port: 53})
	if err == nil {
		t.Fatal("deleting a missing service succeeded")
	}
	t.Logf("error for a missing service: %v", err)
}

// A Batch sends many requests per sendmsg; every request gets its own
// outcome, in order, and a refused one at the start, in the middle or at
// the end of a chunk does not stop the ones after it (nor hide their
// outcomes). Enough requests for
// several chunks, so that the acks of one chunk fill a receive buffer of
// the default size many times over.
func TestBatch(t *testing.T) {
	ns := newNS(t)
	if !hasIPVS(t, ns) {
		t.Skip("this kernel has no IPVS: run `make test-vm` to test against Debian's kernels")
	}
	c, err := Dial(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const services, dests = 300, 5
	b := c.Batch()
	var got []string // outcomes in callback order
	var want []string
	var refused error
	svc := func(i int) *Service {
		return &Service{Addr: netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), Protocol: unix.IPPROTO_TCP, Port: 80, Scheduler: "rr"}
	}
	record := func(name string) func(error) error {
		return func(err error) error {
			if err != nil {
				got = append(got, name+": "+err.Error())
				return err
			}
			got = append(got, name)
			return nil
		}
	}
	for i := range services {
		s := svc(i)
		name := s.Addr.String()
		if err := b.NewService(s, record(name)); err != nil {
			t.Fatalf("queue %s: %v", name, err)
		}
		want = append(want, name)
		for j := range dests {
			d := &Dest{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i), byte(j + 1)}), Port: 8080, Weight: 1}
			dname := name + " " + d.Addr.String()
			if err := b.NewDest(s, d, record(dname)); err != nil {
				t.Fatalf("queue %s: %v", dname, err)
			}
			want = append(want, dname)
		}
		if i == 150 {
			// The same service again: EEXIST, in the middle of a chunk.
			// (The callback returns nil: the Batch goes on sending.)
			err := b.NewService(s, func(err error) error {
				refused = err
				got = append(got, "again")
				return nil
			})
			if err != nil {
				t.Fatalf("queue again: %v", err)
			}
			want = append(want, "again")
		}
	}
	if err := b.Flush(); err != nil || !errors.Is(refused, unix.EEXIST) {
		t.Fatalf("Flush = %v, the refused request's error %v (want EEXIST)", err, refused)
	}
	t.Logf("the refused request: %v", refused)
	if !slices.Equal(got, want) {
		t.Fatalf("callbacks ran %d times, want %d (first difference: %v)", len(got), len(want), firstDiff(got, want))
	}
	if n := c.Counts(); n.Writes != services*(dests+1)+1 || n.Sends < 2 {
		t.Fatalf("Counts = %+v, want %d writes in more than one send", n, services*(dests+1)+1)
	}
	all, err := c.Services()
	if err != nil || len(all) != services {
		t.Fatalf("Services: %d, %v; want %d", len(all), err, services)
	}
	if ds, err := c.Dests(svc(services - 1)); err != nil || len(ds) != dests {
		t.Fatalf("Dests of the last service: %+v, %v", ds, err)
	}
	// The Conn's own calls still work after a batch.
	if err := c.DelService(svc(0)); err != nil {
		t.Fatal(err)
	}
	// Deleting what is missing fails with the kernel's errno, by
	// request; Flush returns the first error a callback returns, after
	// every callback ran.
	var errs []error
	for _, i := range []int{0, 1} {
		b.DelService(svc(i), func(err error) error { errs = append(errs, err); return err })
	}
	if err := b.Flush(); len(errs) != 2 || err != errs[0] || !errors.Is(errs[0], unix.ESRCH) || errs[1] != nil {
		t.Fatalf("Flush = %v; outcomes %v, want [ESRCH, nil]", err, errs)
	}
	// The last request refused (only the last one of a chunk asks for
	// an ack): the one before it was applied.
	errs = nil
	for range 2 {
		b.NewService(svc(0), func(err error) error { errs = append(errs, err); return err })
	}
	if err := b.Flush(); len(errs) != 2 || err != errs[1] || errs[0] != nil || !errors.Is(errs[1], unix.EEXIST) {
		t.Fatalf("Flush = %v; outcomes %v, want [nil, EEXIST]", err, errs)
	}
	if all, err := c.Services(); err != nil || len(all) != services-1 {
		t.Fatalf("Services: %d, %v; want %d (all but svc(1))", len(all), err, services-1)
	}
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return a[i] + " != " + b[i]
		}
	}
	return "one is a prefix of the other"
}
