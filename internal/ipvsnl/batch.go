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
	c    *Conn
	buf  []byte // the queued messages, encoded
	ops  []queued
	acks []error
}

// queued is a request in the buffer: what names it in an error, and
// its callback.
type queued struct {
	cmd  uint8
	key  Key
	dest netip.AddrPort // of a real server's request
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
	return b.add(cmdNewService, s, nil, done)
}

// UpdateService queues changing a service's scheduler, flags and timeout.
func (b *Batch) UpdateService(s *Service, done func(error) error) error {
	return b.add(cmdSetService, s, nil, done)
}

// DelService queues deleting a service and its real servers.
func (b *Batch) DelService(s *Service, done func(error) error) error {
	return b.add(cmdDelService, s, nil, done)
}

// NewDest queues adding a real server to s.
func (b *Batch) NewDest(s *Service, d *Dest, done func(error) error) error {
	return b.add(cmdNewDest, s, d, done)
}

// UpdateDest queues changing a real server's weight.
func (b *Batch) UpdateDest(s *Service, d *Dest, done func(error) error) error {
	return b.add(cmdSetDest, s, d, done)
}

// DelDest queues removing a real server from s.
func (b *Batch) DelDest(s *Service, d *Dest, done func(error) error) error {
	return b.add(cmdDelDest, s, d, done)
}

// add queues one request (d is nil for a service's), encoding it
// straight into the buffer, and first sends the queue when it is full.
func (b *Batch) add(cmd uint8, s *Service, d *Dest, done func(error) error) error {
	// At most: the headers, the service attribute with its name, the
	// real server attribute.
	size := 16 + 4 + 84 + len(s.Scheduler) + 72
	if len(b.ops) >= BatchMessages || len(b.buf)+size > nlpipe.MaxBytes {
		if err := b.Flush(); err != nil {
			return err // and this request is not queued
		}
	}
	q := queued{cmd: cmd, key: s.Key(), done: done}
	start := len(b.buf)
	b.buf = nlpipe.Begin(b.buf, b.c.family, 0)
	// struct genlmsghdr: command, version 1, reserved.
	b.buf = append(b.buf, cmd, 1, 0, 0)
	var err error
	if d == nil {
		b.buf, err = appendService(b.buf, s, cmd != cmdDelService)
	} else {
		q.dest = netip.AddrPortFrom(d.Addr, d.Port)
		b.buf, err = appendService(b.buf, s, false)
		b.buf = appendDest(b.buf, d, cmd != cmdDelDest)
	}
	if err != nil {
		// Nothing to send: the outcome is known now. Earlier requests
		// go first, so that callbacks run in order.
		b.buf = b.buf[:start]
		ferr := b.Flush()
		if err := done(q.err(err)); err != nil && ferr == nil {
			ferr = err
		}
		return ferr
	}
	b.buf = nlpipe.End(b.buf, start)
	b.ops = append(b.ops, q)
	return nil
}

// err names the request in err (nil stays nil).
func (q *queued) err(err error) error {
	if err == nil {
		return nil
	}
	var op string
	switch q.cmd {
	case cmdNewService:
		op = "add service"
	case cmdSetService:
		op = "update service"
	case cmdDelService:
		op = "delete service"
	case cmdNewDest:
		op = "add real server " + q.dest.String() + " to"
	case cmdSetDest:
		op = "update real server " + q.dest.String() + " of"
	case cmdDelDest:
		op = "delete real server " + q.dest.String() + " of"
	}
	return opErr(op, q.key, err)
}

// Len returns how many requests are queued and not yet sent.
func (b *Batch) Len() int { return len(b.ops) }

// Flush sends the queued requests and reads their answers; it returns
// the first error a callback returned, or one of the socket's.
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
	acks, ioErr := b.c.pipe.Exchange(buf, len(ops))
	b.acks = append(b.acks[:0], acks...) // the pipe's are reused by its next Exchange
	b.c.mu.Unlock()
	var first error
	for i := range ops {
		if err := ops[i].done(ops[i].err(b.acks[i])); err != nil && first == nil {
			first = err
		}
		ops[i] = queued{}
	}
	clear(b.acks)
	if first == nil && ioErr != nil {
		first = fmt.Errorf("ipvs: %w", ioErr)
	}
	return first
}
