package ipvsnl

import (
	"fmt"
	"net/netip"

	"github.com/svcplane/svcplane/internal/nlpipe"
)

// Batch queues write requests and sends them pipelined: up to
// BatchMessages requests in one sendmsg, each asking for an ack, then
// reads the acks and hands each request's outcome to its callback. IPVS
// has no transactions: the kernel handles the messages of one sendmsg in
// order and answers each, and a refused one does not stop those after
// it. So a Batch is the same requests as the Conn's methods, without a
// round trip (and a wait for the ack) per request.
//
// A Batch is not safe for concurrent use; the Conn it came from stays
// usable (its calls wait while a chunk is sent and answered).
type Batch struct {
	c   *Conn
	buf []byte // the queued messages, encoded
	ops []queued
}

type queued struct {
	seq  uint32
	op   string
	key  Key
	done func(error) error
}

// BatchMessages is how many requests a Batch sends in one sendmsg.
const BatchMessages = 512

// Batch returns an empty batch of write requests on c.
func (c *Conn) Batch() *Batch { return &Batch{c: c} }

// NewService queues adding a virtual service. done, as every callback of
// a Batch, is called once with the request's outcome (nil, or an error
// naming the operation and the service) when its chunk is answered, in
// the order the requests were queued; what it returns is what the
// chunk's send (a queueing call or Flush) returns, the first non-nil.
// When a queueing call sends the queue and returns an error, its own
// request is not queued (and done is not called).
func (b *Batch) NewService(s *Service, done func(error) error) error {
	data, err := encodeService(s, true)
	return b.add(cmdNewService, data, err, "add service", s.Key(), done)
}

// UpdateService queues changing a service's scheduler, flags and timeout.
func (b *Batch) UpdateService(s *Service, done func(error) error) error {
	data, err := encodeService(s, true)
	return b.add(cmdSetService, data, err, "update service", s.Key(), done)
}

// DelService queues deleting a service and its real servers.
func (b *Batch) DelService(s *Service, done func(error) error) error {
	data, err := encodeService(s, false)
	return b.add(cmdDelService, data, err, "delete service", s.Key(), done)
}

// NewDest queues adding a real server to s.
func (b *Batch) NewDest(s *Service, d *Dest, done func(error) error) error {
	data, err := encodeDest(s, d, true)
	return b.add(cmdNewDest, data, err, "add real server "+netip.AddrPortFrom(d.Addr, d.Port).String()+" to", s.Key(), done)
}

// UpdateDest queues changing a real server's weight.
func (b *Batch) UpdateDest(s *Service, d *Dest, done func(error) error) error {
	data, err := encodeDest(s, d, true)
	return b.add(cmdSetDest, data, err, "update real server "+netip.AddrPortFrom(d.Addr, d.Port).String()+" of", s.Key(), done)
}

// DelDest queues removing a real server from s.
func (b *Batch) DelDest(s *Service, d *Dest, done func(error) error) error {
	data, err := encodeDest(s, d, false)
	return b.add(cmdDelDest, data, err, "delete real server "+netip.AddrPortFrom(d.Addr, d.Port).String()+" of", s.Key(), done)
}

// add queues one request, and sends the queue when it is full.
func (b *Batch) add(cmd uint8, data []byte, encErr error, op string, k Key, done func(error) error) error {
	if encErr != nil {
		// Nothing to send: the outcome is known now. Earlier requests
		// go first, so that callbacks run in order.
		ferr := b.Flush()
		if err := done(opErr(op, k, encErr)); err != nil && ferr == nil {
			ferr = err
		}
		return ferr
	}
	size := 16 + 4 + len(data)
	if len(b.ops) >= BatchMessages || len(b.buf)+size > nlpipe.MaxBytes {
		if err := b.Flush(); err != nil {
			return err // and this request is not queued
		}
	}
	b.c.mu.Lock()
	seq := b.c.pipe.Next()
	b.c.mu.Unlock()
	// struct genlmsghdr: command, version 1, reserved.
	b.buf = nlpipe.Append(b.buf, b.c.family, 0, seq, []byte{cmd, 1, 0, 0}, data)
	b.ops = append(b.ops, queued{seq: seq, op: op, key: k, done: done})
	return nil
}

// Len returns how many requests are queued and not yet sent.
func (b *Batch) Len() int { return len(b.ops) }

// Flush sends the queued requests and reads their acks; it returns the
// first error a callback returned, or one of the socket's.
func (b *Batch) Flush() error {
	if len(b.ops) == 0 {
		return nil
	}
	ops, buf := b.ops, b.buf
	b.ops, b.buf = b.ops[:0], b.buf[:0]
	b.c.mu.Lock()
	b.c.counts.Writes += int64(len(ops))
	b.c.counts.WriteBytes += int64(len(buf))
	b.c.counts.Sends++
	outcome, ioErr := b.c.pipe.Exchange(buf, ops[0].seq, ops[len(ops)-1].seq, len(ops))
	b.c.mu.Unlock()
	var first error
	for i, q := range ops {
		err, ok := outcome[q.seq]
		if !ok {
			// No ack: the request may or may not have been applied.
			err = fmt.Errorf("no answer from the kernel: %w", ioErr)
		}
		if err := q.done(opErr(q.op, q.key, err)); err != nil && first == nil {
			first = err
		}
		ops[i] = queued{}
	}
	if first == nil && ioErr != nil {
		first = fmt.Errorf("ipvs: %w", ioErr)
	}
	return first
}
