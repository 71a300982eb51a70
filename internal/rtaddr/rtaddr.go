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
		seqs := make([]uint32, len(chunk))
		for i, a := range chunk {
			seqs[i] = c.pipe.Next()
			buf = nlpipe.Append(buf, unix.RTM_NEWADDR, netlink.Create|netlink.Replace, seqs[i], ifaddrmsg(a, flags, index), attr(unix.IFA_LOCAL, a), attr(unix.IFA_ADDRESS, a))
		}
		outcome, ioErr := c.pipe.Exchange(buf, seqs[0], seqs[len(seqs)-1], len(chunk))
		var first error
		for i, a := range chunk {
			err, ok := outcome[seqs[i]]
			if !ok {
				err = fmt.Errorf("no answer from the kernel: %w", ioErr)
			}
			if err := done(a, err); err != nil && first == nil {
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

// ifaddrmsg encodes struct ifaddrmsg for the host prefix of a.
func ifaddrmsg(a netip.Addr, flags uint8, index int) []byte {
	fam, bits := byte(unix.AF_INET), byte(32)
	if a.Is6() {
		fam, bits = unix.AF_INET6, 128
	}
	b := []byte{fam, bits, flags, unix.RT_SCOPE_UNIVERSE}
	return binary.NativeEndian.AppendUint32(b, uint32(index))
}

// attr encodes a netlink attribute holding a's bytes (4 or 16: no
// padding needed).
func attr(typ uint16, a netip.Addr) []byte {
	ab := a.AsSlice()
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(ab)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	return append(b, ab...)
}
