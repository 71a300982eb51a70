package nlpipe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/internal/nstest"
)

// newAddr appends RTM_NEWADDR for a host address on the link with
// index index.
func newAddr(buf []byte, a netip.Addr, index int) []byte {
	start := len(buf)
	buf = Begin(buf, unix.RTM_NEWADDR, netlink.Create|netlink.Replace)
	buf = append(buf, unix.AF_INET, 32, 0, unix.RT_SCOPE_UNIVERSE)
	buf = binary.NativeEndian.AppendUint32(buf, uint32(index))
	a4 := a.As4()
	buf = AttrHeader(buf, unix.IFA_LOCAL, 4)
	buf = append(buf, a4[:]...)
	return End(buf, start)
}

// Exchange gives every request its own outcome, in order, though only
// the last one asks for an ack: refused ones (a missing link) at the
// start, in the middle and at the end of a chunk name their errno, and
// the others were applied. On the loopback link of a fresh namespace,
// so that it runs on any kernel.
func TestExchange(t *testing.T) {
	ns := nstest.New(t)
	nl, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	p, err := New(nl)
	if err != nil {
		t.Fatal(err)
	}
	const lo, missing = 1, 1 << 30
	for _, tc := range []struct {
		n       int
		refused []int
	}{
		{1, nil},
		{1, []int{0}},
		{5, []int{0, 2, 4}},
		{512, []int{0, 100, 101, 511}},
		{512, []int{7}},
		{3, []int{0, 1, 2}},
	} {
		t.Run(fmt.Sprintf("%d/%v", tc.n, tc.refused), func(t *testing.T) {
			var buf []byte
			var addrs []netip.Addr
			for i := range tc.n {
				a := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
				index := lo
				if slices.Contains(tc.refused, i) {
					index = missing
				} else {
					addrs = append(addrs, a)
				}
				buf = newAddr(buf, a, index)
			}
			out, err := p.Exchange(buf, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != tc.n {
				t.Fatalf("%d outcomes, want %d", len(out), tc.n)
			}
			for i, err := range out {
				if want := slices.Contains(tc.refused, i); want != errors.Is(err, unix.ENODEV) || !want && err != nil {
					t.Errorf("request %d: %v (refused: %v)", i, err, want)
				}
			}
			// The applied ones are on lo.
			got, err := loAddrs(nl)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range addrs {
				if !got[a] {
					t.Errorf("%s is not on lo", a)
				}
			}
		})
	}
	// The socket is still in step: a plain request gets its own answer.
	if _, err := loAddrs(nl); err != nil {
		t.Fatal(err)
	}
	// Fewer requests than said, or bytes that are not requests.
	buf := newAddr(nil, netip.MustParseAddr("198.19.255.1"), lo)
	for _, tc := range []struct {
		buf []byte
		n   int
	}{{buf, 2}, {append(buf, 0, 0, 0, 0), 1}} {
		out, err := p.Exchange(tc.buf, tc.n)
		if err == nil || len(out) != tc.n || out[0] == nil {
			t.Errorf("Exchange of %d bytes as %d requests = %v, %v; want an error for each", len(tc.buf), tc.n, out, err)
		}
	}
}

// loAddrs dumps the IPv4 addresses of lo (index 1).
func loAddrs(nl *netlink.Conn) (map[netip.Addr]bool, error) {
	req := netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETADDR, Flags: netlink.Request | netlink.Dump},
		Data:   []byte{unix.AF_INET, 0, 0, 0, 0, 0, 0, 0},
	}
	msgs, err := nl.Execute(req)
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]bool{}
	for _, m := range msgs {
		if len(m.Data) < 8 || binary.NativeEndian.Uint32(m.Data[4:]) != 1 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[8:])
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() == unix.IFA_LOCAL && len(ad.Bytes()) == 4 {
				out[netip.AddrFrom4([4]byte(ad.Bytes()))] = true
			}
		}
	}
	return out, nil
}
