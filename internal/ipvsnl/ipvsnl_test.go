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
)

// newNS returns a fresh namespace with lo up (IPVS classifies real
// servers through the local routing table, which needs it).
func newNS(t *testing.T) *netnsutil.NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run `sudo make test`")
	}
	ns, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
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
