package ipvsnl

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nlenc"
)

// refService and refDest are the requests' attributes as
// netlink.AttributeEncoder builds them (this package's encoder before it
// appended them itself): the reference the hand-written encoder must
// match byte for byte.
func refService(s *Service, full bool) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(attrService, func(ae *netlink.AttributeEncoder) error {
		ae.Uint16(svcAF, af(s.Addr))
		ae.Uint16(svcProtocol, uint16(s.Protocol))
		a := make([]byte, 16)
		copy(a, s.Addr.AsSlice())
		ae.Bytes(svcAddr, a)
		ae.Bytes(svcPort, binary.BigEndian.AppendUint16(nil, s.Port))
		if full {
			ae.String(svcSchedName, s.Scheduler)
			flags := make([]byte, 8)
			nlenc.PutUint32(flags[0:4], s.Flags)
			nlenc.PutUint32(flags[4:8], 0xffffffff)
			ae.Bytes(svcFlags, flags)
			ae.Uint32(svcTimeout, s.Timeout)
			if s.Addr.Is4() {
				ae.Bytes(svcNetmask, []byte{0xff, 0xff, 0xff, 0xff})
			} else {
				ae.Uint32(svcNetmask, 128)
			}
		}
		return nil
	})
	return ae.Encode()
}

func refDest(s *Service, d *Dest, full bool) ([]byte, error) {
	svc, err := refService(s, false)
	if err != nil {
		return nil, err
	}
	ae := netlink.NewAttributeEncoder()
	ae.Nested(attrDest, func(ae *netlink.AttributeEncoder) error {
		a := make([]byte, 16)
		copy(a, d.Addr.AsSlice())
		ae.Bytes(destAddr, a)
		ae.Bytes(destPort, binary.BigEndian.AppendUint16(nil, d.Port))
		ae.Uint16(destAddrFamily, af(d.Addr))
		if full {
			ae.Uint32(destFwdMethod, FwdMasq)
			ae.Uint32(destWeight, d.Weight)
			ae.Uint32(destUThresh, 0)
			ae.Uint32(destLThresh, 0)
		}
		return nil
	})
	b, err := ae.Encode()
	return append(svc, b...), err
}

// TestEncode checks the requests' encoding against the reference, for
// both families, every scheduler name length modulo 4 (its padding), and
// flags, timeouts, ports and weights whose bytes differ.
func TestEncode(t *testing.T) {
	var svcs []Service
	for _, a := range []string{"198.19.0.1", "203.0.113.255", "2001:db8::1", "2001:db8:ffff::1:2"} {
		for _, sched := range []string{"", "rr", "wrr", "sh", "wlc", "mh", "abcdefghijklmno"} {
			svcs = append(svcs, Service{Addr: netip.MustParseAddr(a), Protocol: 6, Port: 0x1f90, Scheduler: sched, Flags: FlagPersistent, Timeout: 0x01020304})
		}
		svcs = append(svcs, Service{Addr: netip.MustParseAddr(a), Protocol: 17, Port: 53, Scheduler: "rr"})
		svcs = append(svcs, Service{Addr: netip.MustParseAddr(a), Protocol: 132, Port: 0xfffe, Scheduler: "rr"})
	}
	dests := []Dest{
		{Addr: netip.MustParseAddr("198.18.1.2"), Port: 8080, Weight: 1},
		{Addr: netip.MustParseAddr("198.18.255.254"), Port: 0x0102, Weight: 0},
		{Addr: netip.MustParseAddr("2001:db8::7"), Port: 443, Weight: 0x0a0b0c0d},
	}
	for _, s := range svcs {
		for _, full := range []bool{false, true} {
			got, gerr := encodeService(&s, full)
			want, werr := refService(&s, full)
			if gerr != nil || werr != nil || !bytes.Equal(got, want) {
				t.Errorf("encodeService(%+v, %v) = %x, %v\nwant                      %x, %v", s, full, got, gerr, want, werr)
			}
			for _, d := range dests {
				got, gerr := encodeDest(&s, &d, full)
				want, werr := refDest(&s, &d, full)
				if gerr != nil || werr != nil || !bytes.Equal(got, want) {
					t.Errorf("encodeDest(%+v, %+v, %v) = %x, %v\nwant %x, %v", s, d, full, got, gerr, want, werr)
				}
			}
		}
	}
	// A name too long for an attribute is refused, and leaves what the
	// buffer held.
	s := Service{Addr: netip.MustParseAddr("198.19.0.1"), Protocol: 6, Port: 80, Scheduler: strings.Repeat("x", 0xffff)}
	if b, err := appendService([]byte("prefix"), &s, true); err == nil || string(b) != "prefix" {
		t.Errorf("appendService with a %d-byte scheduler name = %q…, %v; want an error and the buffer as it was", len(s.Scheduler), b[:min(len(b), 8)], err)
	}
}

// TestBatchEncode checks the messages a Batch queues: netlink and
// genetlink headers, then the attributes, for each kind of request. The
// sequence number (0 here) and the ack flag are set when they are sent
// (nlpipe.Pipe.Exchange).
func TestBatchEncode(t *testing.T) {
	s := &Service{Addr: netip.MustParseAddr("2001:db8::1"), Protocol: 6, Port: 80, Scheduler: "rr"}
	d := &Dest{Addr: netip.MustParseAddr("2001:db8::2"), Port: 8080, Weight: 1}
	b := &Batch{c: &Conn{family: 0x1234}}
	nop := func(error) error { return nil }
	for _, q := range []struct {
		cmd   uint8
		queue func() error
		attrs func() ([]byte, error)
	}{
		{cmdNewService, func() error { return b.NewService(s, nop) }, func() ([]byte, error) { return refService(s, true) }},
		{cmdSetService, func() error { return b.UpdateService(s, nop) }, func() ([]byte, error) { return refService(s, true) }},
		{cmdDelService, func() error { return b.DelService(s, nop) }, func() ([]byte, error) { return refService(s, false) }},
		{cmdNewDest, func() error { return b.NewDest(s, d, nop) }, func() ([]byte, error) { return refDest(s, d, true) }},
		{cmdSetDest, func() error { return b.UpdateDest(s, d, nop) }, func() ([]byte, error) { return refDest(s, d, true) }},
		{cmdDelDest, func() error { return b.DelDest(s, d, nop) }, func() ([]byte, error) { return refDest(s, d, false) }},
	} {
		b.buf, b.ops = b.buf[:0], b.ops[:0]
		if err := q.queue(); err != nil {
			t.Fatal(err)
		}
		attrs, err := q.attrs()
		if err != nil {
			t.Fatal(err)
		}
		msg := netlink.Message{
			Header: netlink.Header{Length: uint32(16 + 4 + len(attrs)), Type: 0x1234, Flags: netlink.Request},
			Data:   append([]byte{q.cmd, 1, 0, 0}, attrs...),
		}
		want, err := msg.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if got := b.buf; !bytes.Equal(got, want) {
			t.Errorf("command %d: queued %x\nwant        %x", q.cmd, got, want)
		}
		if b.Len() != 1 {
			t.Errorf("command %d: Len() = %d, want 1", q.cmd, b.Len())
		}
	}
}
