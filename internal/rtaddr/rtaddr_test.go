package rtaddr

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/internal/nstest"
)

// Replace puts every address on the link, over several chunks, tells
// each outcome in order, and a refused one (a link that is gone) names
// its errno.
func TestReplace(t *testing.T) {
	ns := nstest.New(t)
	var link netlink.Link
	var err error
	err = ns.Do(func() error {
		if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "d0"}}); err != nil {
			return err
		}
		link, err = netlink.LinkByName("d0")
		return err
	})
	if errors.Is(err, unix.EOPNOTSUPP) {
		t.Skip("this kernel has no dummy links: run `make test-vm`")
	}
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var addrs []netip.Addr
	for i := range 1200 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}))
	}
	addrs = append(addrs, netip.MustParseAddr("2001:db8::1"))
	var got []netip.Addr
	err = c.Replace(link.Attrs().Index, addrs, unix.IFA_F_NODAD, func(a netip.Addr, err error) error {
		got = append(got, a)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(addrs) || got[0] != addrs[0] || got[len(got)-1] != addrs[len(addrs)-1] {
		t.Fatalf("callbacks for %d addresses, want %d in order", len(got), len(addrs))
	}
	// Again: replacing is not an error.
	if err := c.Replace(link.Attrs().Index, addrs[:3], unix.IFA_F_NODAD, func(a netip.Addr, err error) error { return err }); err != nil {
		t.Fatal(err)
	}
	var list []netlink.Addr
	ns.Do(func() error {
		list, err = netlink.AddrList(link, netlink.FAMILY_ALL)
		return err
	})
	n := 0
	for _, a := range list {
		if ones, bits := a.Mask.Size(); ones == bits && !a.IP.IsLinkLocalUnicast() {
			n++
		}
	}
	if n != len(addrs) {
		t.Fatalf("the link has %d host addresses, want %d", n, len(addrs))
	}
	var errs []error
	err = c.Replace(1<<30, addrs[:2], 0, func(a netip.Addr, err error) error {
		errs = append(errs, err)
		return err
	})
	if !errors.Is(err, unix.ENODEV) || len(errs) != 2 {
		t.Fatalf("on a missing link: %v, outcomes %v; want ENODEV for each", err, errs)
	}
}
