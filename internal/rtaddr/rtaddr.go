// Package rtaddr puts host addresses (/32, /128) on a link, many per
// rtnetlink sendmsg (internal/nlpipe): the same RTM_NEWADDR requests as
// vishvananda/netlink's AddrReplace, without a round trip per address.
package rtaddr

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/internal/nlpipe"
)

// Conn is an rtnetlink connection in one network namespace. It is not
// safe for concurrent use.
type Conn struct {
	nl   *netlink.Conn
	pipe *nlpipe.Pipe
}

// Dial opens an rtnetlink connection in the network namespace behind
// nsFd (-1: the caller's).
func Dial(nsFd int) (*Conn, error) {
	cfg := &netlink.Config{}
	if nsFd >= 0 {
		cfg.NetNS = nsFd
	}
	nl, err := netlink.Dial(unix.NETLINK_ROUTE, cfg)
	if err != nil {
		return nil, fmt.Errorf("dial rtnetlink: %w", err)
	}
	p, err := nlpipe.New(nl)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("dial rtnetlink: %w", err)
	}
	return &Conn{nl: nl, pipe: p}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.nl.Close() }

// Replace adds each of addrs as a host address of the link with index
// index (replacing it if it is there), with the address flags flags
// (e.g. unix.IFA_F_NODAD; at most 0xff). done is called once per
// address with its outcome, in order, as its chunk is answered; Replace
// returns the first error done returns, after every callback of that
// chunk ran, and sends no later chunk. It also returns the socket's
// errors, after done got them for the addresses they left unanswered.
func (c *Conn) Replace(index int, addrs []netip.Addr, flags uint8, done func(netip.Addr, error) error) error {
	const perChunk = 512
	var buf []byte
	for len(addrs) > 0 {
		chunk := addrs[:min(perChunk, len(addrs))]
		addrs = addrs[len(chunk):]
		buf = buf[:0]
		for _, a := range chunk {
			start := len(buf)
			buf = nlpipe.Begin(buf, unix.RTM_NEWADDR, netlink.Create|netlink.Replace)
			buf = appendIfaddrmsg(buf, a, flags, index)
			buf = appendAttr(buf, unix.IFA_LOCAL, a)
			buf = appendAttr(buf, unix.IFA_ADDRESS, a)
			buf = nlpipe.End(buf, start)
		}
		outcome, ioErr := c.pipe.Exchange(buf, len(chunk))
		var first error
		for i, a := range chunk {
			if err := done(a, outcome[i]); err != nil && first == nil {
				first = err
			}
		}
		if first == nil && ioErr != nil {
			first = ioErr
		}
		if first != nil {
			return first
		}
	}
	return nil
}

// appendIfaddrmsg appends struct ifaddrmsg for the host prefix of a.
func appendIfaddrmsg(b []byte, a netip.Addr, flags uint8, index int) []byte {
	fam, bits := byte(unix.AF_INET), byte(32)
	if a.Is6() {
		fam, bits = unix.AF_INET6, 128
	}
	b = append(b, fam, bits, flags, unix.RT_SCOPE_UNIVERSE)
	return binary.NativeEndian.AppendUint32(b, uint32(index))
}

// appendAttr appends a netlink attribute holding a's bytes (4 or 16: no
// padding needed).
func appendAttr(b []byte, typ uint16, a netip.Addr) []byte {
	b = nlpipe.AttrHeader(b, typ, a.BitLen()/8)
	if a.Is4() {
		a4 := a.As4()
		return append(b, a4[:]...)
	}
	a16 := a.As16()
	return append(b, a16[:]...)
}
