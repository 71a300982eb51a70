// Package nlpipe sends netlink requests pipelined: many messages in one
// sendmsg, each asking for an ack, then the acks read and matched to
// their requests by sequence number. The kernel handles the messages of
// one sendmsg in order and answers each; a refused one does not stop
// those after it. mdlayher/netlink's Conn.Receive cannot be used to read
// such answers: when one message of a read is an error it returns only
// that error, losing the other acks and the failing sequence number.
package nlpipe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// MaxBytes bounds the bytes of one sendmsg: the kernel refuses a message
// larger than the socket's send buffer (208 KiB by default; Pipe raises
// it above MaxBytes).
const MaxBytes = 128 << 10

// ackBytes bounds the receive buffer one ack takes (its skb's true
// size, for an ack carrying only its request's header), with room to
// spare.
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
}

// New returns a Pipe on c's socket, whose acks it makes carry only the
// header of their request (NETLINK_CAP_ACK; kernels before 4.3 lack the
// option, and their larger acks still fit the receive buffer).
func New(c *netlink.Conn) (*Pipe, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	_ = c.SetOption(netlink.CapAcknowledge, true)
	return &Pipe{nl: c, raw: raw, seq: 1 << 31}, nil
}

// Next returns the sequence number of the next request.
func (p *Pipe) Next() uint32 {
	p.seq++
	return p.seq
}

// Append appends a request message to buf: its netlink header, with
// flags (NLM_F_REQUEST and NLM_F_ACK added) and seq, then body, padded
// to 4 bytes.
func Append(buf []byte, typ uint16, flags netlink.HeaderFlags, seq uint32, body ...[]byte) []byte {
	n := 16
	for _, b := range body {
		n += len(b)
	}
	buf = binary.NativeEndian.AppendUint32(buf, uint32(n))
	buf = binary.NativeEndian.AppendUint16(buf, typ)
	buf = binary.NativeEndian.AppendUint16(buf, uint16(flags|netlink.Request|netlink.Acknowledge))
	buf = binary.NativeEndian.AppendUint32(buf, seq)
	buf = binary.NativeEndian.AppendUint32(buf, 0) // port ID: the kernel fills it in
	for _, b := range body {
		buf = append(buf, b...)
	}
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	return buf
}

// Exchange sends buf, n requests whose sequence numbers are between lo
// and hi (wrapping around: as Next returned them), in one sendmsg and reads their acks: by sequence number, nil for an
// ack, the errno of an error. The kernel answers every message before
// sendmsg returns (it handles the requests in the sender's context), so
// the acks are read without waiting until the socket holds no more; a
// missing one is waited for. The error is the socket's, when acks may
// be missing from the map.
func (p *Pipe) Exchange(buf []byte, lo, hi uint32, n int) (map[uint32]error, error) {
	if need := n*ackBytes + 256<<10; need > p.recv {
		if err := p.nl.SetReadBuffer(need); err != nil {
			return nil, fmt.Errorf("size the receive buffer for %d acks: %w", n, err)
		}
		if err := p.nl.SetWriteBuffer(MaxBytes + 64<<10); err != nil {
			return nil, fmt.Errorf("size the send buffer: %w", err)
		}
		p.recv = need
	}
	var serr error
	err := p.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("send %d requests: %w", n, err)
	}
	out := make(map[uint32]error, n)
	if len(p.rx) == 0 {
		p.rx = make([]byte, 64<<10)
	}
	var rerr error
	err = p.raw.Read(func(fd uintptr) bool {
		for len(out) < n {
			k, _, err := unix.Recvfrom(int(fd), p.rx, unix.MSG_DONTWAIT)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN && rerr == nil:
				return false // wait for the rest
			case err == unix.EAGAIN:
				return true // the rest were lost
			case err == unix.ENOBUFS:
				// The receive buffer overflowed: some acks were
				// dropped. Read those that were not.
				rerr = err
				continue
			case err != nil:
				rerr = err
				return true
			}
			msgs, err := syscall.ParseNetlinkMessage(p.rx[:k])
			if err != nil {
				rerr = fmt.Errorf("parse acks: %w", err)
				return true
			}
			for _, m := range msgs {
				s := m.Header.Seq
				if m.Header.Type != unix.NLMSG_ERROR || s-lo > hi-lo || len(m.Data) < 4 {
					continue // not an answer to this chunk
				}
				if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
					out[s] = unix.Errno(-e)
				} else {
					out[s] = nil
				}
			}
		}
		return true
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		p.drain()
		return out, fmt.Errorf("read the acks of %d requests: %w", n, err)
	}
	if len(out) < n {
		return out, errors.New("acks missing")
	}
	return out, nil
}

// drain discards what the socket holds, so that a later request does not
// read an answer meant for an earlier one.
func (p *Pipe) drain() {
	p.raw.Read(func(fd uintptr) bool {
		for {
			_, _, err := unix.Recvfrom(int(fd), p.rx, unix.MSG_DONTWAIT)
			if err == unix.EAGAIN || (err != nil && err != unix.EINTR && err != unix.ENOBUFS) {
				return true
			}
		}
	})
}
