// Package nftbatch works around the large-batch bugs of google/nftables
// v0.3.0 (NETLINK-NOTES.md) for both backends: it splits element lists
// so that no netlink attribute passes 64 KiB, and sizes a connection's
// socket buffers to the batch it is about to commit.
package nftbatch

import (
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
)

// MaxChunk bounds the encoded size of the elements in one netlink
// message: google/nftables puts them in one attribute, whose 16-bit
// length silently wraps past 64 KiB (elements are then lost).
const MaxChunk = 48 << 10

// ElemSize bounds the encoded size of an element in a netlink message.
func ElemSize(e nftables.SetElement) int {
	return 48 + len(e.Key) + len(e.KeyEnd) + len(e.Val) + len(e.Comment)
}

// Chunks calls send with consecutive runs of es, each below MaxChunk,
// and stops at the first error.
func Chunks(es []nftables.SetElement, send func([]nftables.SetElement) error) error {
	start, size := 0, 0
	for i, e := range es {
		n := ElemSize(e)
		if size+n > MaxChunk && i > start {
			if err := send(es[start:i]); err != nil {
				return err
			}
			start, size = i, 0
		}
		size += n
	}
	if start < len(es) {
		return send(es[start:])
	}
	return nil
}

// ackBytes bounds the receive buffer one ack takes (its skb's true size,
// for a capped ack of a few dozen bytes), with a factor of 2 to spare.
const ackBytes = 2 << 10

// Sock is the socket of a lasting nftables connection. Its zero value is
// ready; Option fills it in when the connection dials.
type Sock struct {
	conn       *netlink.Conn
	send, recv int
}

// Option returns the connection option that makes acks carry no copy of
// their request (NETLINK_CAP_ACK: a batch of 20,000 rules would
// otherwise need some 40 MB of acks), sets the send and receive buffers
// to at least send and recv bytes, and records the socket in s.
func (s *Sock) Option(send, recv int) nftables.ConnOption {
	return nftables.WithSockOptions(func(c *netlink.Conn) error {
		if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
			return err
		}
		if err := c.SetWriteBuffer(send); err != nil {
			return err
		}
		if err := c.SetReadBuffer(recv); err != nil {
			return err
		}
		*s = Sock{conn: c, send: send, recv: recv}
		return nil
	})
}

// Fit raises the buffers, when needed, for a batch of about bytes bytes
// in msgs messages: the kernel refuses a batch larger than the send
// buffer (EMSGSIZE), and when the acks of its messages overflow the
// receive buffer, Flush reports ENOBUFS for a batch the kernel
// committed.
func (s *Sock) Fit(bytes, msgs int) error {
	if s.conn == nil {
		return nil
	}
	if bytes > s.send {
		if err := s.conn.SetWriteBuffer(bytes); err != nil {
			return err
		}
		s.send = bytes
	}
	if need := msgs*ackBytes + (1 << 20); need > s.recv {
		if err := s.conn.SetReadBuffer(need); err != nil {
			return err
		}
		s.recv = need
	}
	return nil
}

// Conn returns the socket Option recorded, or nil before the connection
// dialed.
func (s *Sock) Conn() *netlink.Conn { return s.conn }
