// Package nlpipe sends netlink requests pipelined: many messages in one
// sendmsg, the last one asking for an ack, then the answers read and
// matched to their requests by sequence number. The kernel handles the
// messages of one sendmsg in order and answers a refused one with an
// error whether it asked for an ack or not; a refused one does not stop
// those after it. mdlayher/netlink's Conn.Receive cannot be used to read
// such answers: when one message of a read is an error it returns only
// that error, losing the other answers and the failing sequence number.
package nlpipe

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// MaxBytes bounds the bytes of one sendmsg: the kernel refuses a message
// larger than the socket's send buffer (208 KiB by default; Pipe raises
// it above MaxBytes).
const MaxBytes = 128 << 10

// ackBytes bounds the receive buffer one answer takes (its skb's true
// size, for an ack or error carrying only its request's header), with
// room to spare.
const ackBytes = 2 << 10

// Pipe sends chunks of requests on a netlink socket. It is not safe for
// concurrent use: its owner serializes its calls with the socket's other
// users.
type Pipe struct {
	nl   *netlink.Conn
	raw  syscall.RawConn
	seq  uint32
	recv int
	rx   []byte
	acks []error
}

// New returns a Pipe on c's socket, whose error messages it makes carry
// only the header of their request (NETLINK_CAP_ACK; kernels before 4.3
// lack the option, and their larger ones still fit the receive buffer).
func New(c *netlink.Conn) (*Pipe, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	_ = c.SetOption(netlink.CapAcknowledge, true)
	return &Pipe{nl: c, raw: raw, seq: 1 << 31}, nil
}

// Begin appends the netlink header of a request to buf: its type, and
// flags with NLM_F_REQUEST added. The request's body follows; End sets
// its length, and Exchange its sequence number and NLM_F_ACK.
func Begin(buf []byte, typ uint16, flags netlink.HeaderFlags) []byte {
	buf = binary.NativeEndian.AppendUint32(buf, 0) // the length: End sets it
	buf = binary.NativeEndian.AppendUint16(buf, typ)
	buf = binary.NativeEndian.AppendUint16(buf, uint16(flags|netlink.Request))
	buf = binary.NativeEndian.AppendUint32(buf, 0)  // sequence number: Exchange sets it
	return binary.NativeEndian.AppendUint32(buf, 0) // port ID: the kernel fills it in
}

// End ends the request Begin started at buf[start:]: it sets its length
// and pads it to 4 bytes.
func End(buf []byte, start int) []byte {
	binary.NativeEndian.PutUint32(buf[start:], uint32(len(buf)-start))
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	return buf
}

// AttrHeader appends the header of a netlink attribute (struct nlattr)
// of type typ whose payload of n bytes follows; the caller pads the
// payload to 4 bytes. For a nested attribute, n is 0 and the caller sets
// the length when its members are in.
func AttrHeader(buf []byte, typ uint16, n int) []byte {
	buf = binary.NativeEndian.AppendUint16(buf, uint16(4+n))
	return binary.NativeEndian.AppendUint16(buf, typ)
}

// Exchange sends buf, n requests (from Begin and End), in one
// sendmsg and returns their outcomes, in order: nil when the kernel
// applied a request, else an error (an errno, or "no answer from the
// kernel" wrapping the socket's error when it is not known).
//
// Only the last request asks for an ack (Exchange numbers the requests
// and sets NLM_F_ACK on it, clearing it on the others): the kernel
// handles the messages of one sendmsg in order, answers a refused one
// with an error message whether it asked for an ack or not, and a
// refused one does not stop those after it; so once the last one is
// answered, each request without an error message was applied. The
// kernel does this before sendmsg returns (it handles the requests in
// the sender's context): the answers are read without waiting until
// the socket holds no more; a missing one is waited for. This saves the
// kernel an ack, and the reader a recvmsg, per request.
//
// The error is the socket's (or says buf is not n requests), when
// outcomes are unknown. The slice, n long, is reused by the next
// Exchange.
func (p *Pipe) Exchange(buf []byte, n int) ([]error, error) {
	if n == 0 {
		return nil, nil
	}
	acks := p.acks[:0]
	for range n {
		acks = append(acks, nil)
	}
	p.acks = acks
	unknown := func(err error) ([]error, error) {
		// Requests without an error message may or may not have been
		// applied.
		for i, a := range acks {
			if a == nil {
				acks[i] = fmt.Errorf("no answer from the kernel: %w", err)
			}
		}
		return acks, err
	}

	if need := n*ackBytes + 256<<10; need > p.recv {
		if err := p.nl.SetReadBuffer(need); err != nil {
			return unknown(fmt.Errorf("size the receive buffer for %d answers: %w", n, err))
		}
		if err := p.nl.SetWriteBuffer(MaxBytes + 64<<10); err != nil {
			return unknown(fmt.Errorf("size the send buffer: %w", err))
		}
		p.recv = need
	}
	// Number the requests; only the last asks for an ack.
	lo := p.seq + 1
	off := 0
	for i := range n {
		if len(buf)-off < 16 {
			return unknown(fmt.Errorf("nlpipe: %d bytes hold fewer than %d requests", len(buf), n))
		}
		l := int(binary.NativeEndian.Uint32(buf[off:]))
		flags := netlink.HeaderFlags(binary.NativeEndian.Uint16(buf[off+6:])) &^ netlink.Acknowledge
		if i == n-1 {
			flags |= netlink.Acknowledge
		}
		binary.NativeEndian.PutUint16(buf[off+6:], uint16(flags))
		binary.NativeEndian.PutUint32(buf[off+8:], lo+uint32(i))
		off += (l + 3) &^ 3
	}
	if off != len(buf) {
		return unknown(fmt.Errorf("nlpipe: %d bytes are not %d requests", len(buf), n))
	}
	p.seq += uint32(n)
	hi := p.seq

	var serr error
	err := p.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return unknown(fmt.Errorf("send %d requests: %w", n, err))
	}
	if len(p.rx) == 0 {
		p.rx = make([]byte, 64<<10)
	}
	var rerr error
	last := false
	err = p.raw.Read(func(fd uintptr) bool {
		for !last {
			k, err := recv(int(fd), p.rx)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN && rerr == nil:
				return false // wait for the rest
			case err == unix.EAGAIN:
				return true // the rest were lost
			case err == unix.ENOBUFS:
				// The receive buffer overflowed: some answers were
				// dropped. Read those that were not.
				rerr = err
				continue
			case err != nil:
				rerr = err
				return true
			}
			for b := p.rx[:k]; len(b) >= unix.NLMSG_HDRLEN; {
				l := int(binary.NativeEndian.Uint32(b))
				if l < unix.NLMSG_HDRLEN || l > len(b) {
					rerr = fmt.Errorf("parse answers: message of %d bytes in %d", l, len(b))
					return true
				}
				typ, s := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:])
				if typ == unix.NLMSG_ERROR && s-lo <= hi-lo && l >= unix.NLMSG_HDRLEN+4 {
					if e := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:])); e != 0 {
						acks[s-lo] = unix.Errno(-e)
					}
					last = last || s == hi
				} // else not an answer to this chunk
				b = b[min(len(b), (l+3)&^3):]
			}
		}
		return true
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		p.drain()
		return unknown(fmt.Errorf("read the answers to %d requests: %w", n, err))
	}
	return acks, nil
}

// recv reads one message without blocking (recvfrom with MSG_DONTWAIT and
// no source address: unix.Recvfrom allocates one per call).
func recv(fd int, b []byte) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// drain discards what the socket holds, so that a later request does not
// read an answer meant for an earlier one.
func (p *Pipe) drain() {
	p.raw.Read(func(fd uintptr) bool {
		for {
			_, err := recv(int(fd), p.rx)
			if err == unix.EAGAIN || (err != nil && err != unix.EINTR && err != unix.ENOBUFS) {
				return true
			}
		}
	})
}
