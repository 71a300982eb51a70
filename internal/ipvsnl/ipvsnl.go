// Package ipvsnl is a small client for the kernel's IPVS generic netlink
// interface: virtual services and their real servers, with typed netip
// addresses, one request per call and one dump to read them all.
//
// It exists instead of github.com/moby/ipvs for three reasons measured on
// this project's kernels (see shared/NETLINK-NOTES.md): moby/ipvs runs
// modprobe when its first handle is created, which svcplane's library code
// must never do; on a kernel without IPVS its calls return nil and change
// nothing, where this client's Dial fails with ErrNoIPVS; and its handle
// loops on EAGAIN instead of returning an error.
//
// Attribute numbers and layouts follow include/uapi/linux/ip_vs.h.
package ipvsnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nlenc"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/internal/nlpipe"
)

// ErrNoIPVS is returned by Dial when the kernel has no IPVS (the ip_vs
// module is not loaded, or CONFIG_IP_VS is unset).
var ErrNoIPVS = errors.New("the kernel has no IPVS (no \"IPVS\" generic netlink family; load the ip_vs module or use a kernel with CONFIG_IP_VS)")

// Commands and attributes of include/uapi/linux/ip_vs.h.
const (
	cmdNewService = 1
	cmdSetService = 2
	cmdDelService = 3
	cmdGetService = 4
	cmdNewDest    = 5
	cmdSetDest    = 6
	cmdDelDest    = 7
	cmdGetDest    = 8
	cmdSetConfig  = 12
	cmdGetInfo    = 15
	cmdFlush      = 17

	attrService       = 1
	attrDest          = 2
	attrTimeoutTCP    = 4
	attrTimeoutTCPFin = 5
	attrTimeoutUDP    = 6

	svcAF        = 1
	svcProtocol  = 2
	svcAddr      = 3
	svcPort      = 4
	svcFWMark    = 5
	svcSchedName = 6
	svcFlags     = 7
	svcTimeout   = 8
	svcNetmask   = 9
	svcPEName    = 11

	destAddr        = 1
	destPort        = 2
	destFwdMethod   = 3
	destWeight      = 4
	destUThresh     = 5
	destLThresh     = 6
	destActiveConns = 7
	destInactConns  = 8
	destPersistCons = 9
	destAddrFamily  = 11

	infoVersion = 1
)

// Service flags (IP_VS_SVC_F_*).
const (
	// FlagPersistent makes the service persistent: a client keeps its
	// real server for Service.Timeout seconds (ClientIP affinity).
	FlagPersistent = 0x0001
	// FlagHashed is set by the kernel on services it holds; it is
	// ignored when comparing.
	FlagHashed = 0x0002
)

// FwdMasq is the masquerading (NAT) forwarding method.
const FwdMasq = 0

// Service is an IPVS virtual service.
type Service struct {
	Addr      netip.Addr
	Protocol  uint8 // unix.IPPROTO_TCP, _UDP or _SCTP
	Port      uint16
	Scheduler string // e.g. "rr"
	Flags     uint32 // FlagPersistent; FlagHashed is masked off on read
	Timeout   uint32 // persistence timeout in seconds
}

// Key identifies a service.
type Key struct {
	Addr     netip.Addr
	Protocol uint8
	Port     uint16
}

// Key returns the service's key.
func (s *Service) Key() Key { return Key{s.Addr, s.Protocol, s.Port} }

// Dest is a real server of a service.
type Dest struct {
	Addr   netip.Addr
	Port   uint16
	Weight uint32
	// Read only: connection counts the kernel reports.
	ActiveConns, InactiveConns, PersistentConns uint32
}

// Conn talks to IPVS in one network namespace. Its methods are safe for
// concurrent use.
type Conn struct {
	mu     sync.Mutex
	c      *genetlink.Conn
	pipe   *nlpipe.Pipe // c's socket, for batches
	family uint16
	counts Counts
}

// Counts is the netlink traffic a Conn sent: requests that change IPVS
// (Writes, and their bytes as sent: netlink and genetlink headers
// included), requests that only read (Reads: dumps and GET_INFO), and
// the sendmsg calls of Batches (Sends; each carries many Writes).
type Counts struct {
	Writes, WriteBytes, Reads, Sends int64
}

// Counts returns what c sent since Dial.
func (c *Conn) Counts() Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts
}

// Dial opens an IPVS netlink connection in the network namespace behind
// nsFd (-1: the caller's). It fails with an error wrapping ErrNoIPVS when
// the kernel has no IPVS.
func Dial(nsFd int) (*Conn, error) {
	cfg := &netlink.Config{}
	if nsFd >= 0 {
		cfg.NetNS = nsFd
	}
	nc, err := netlink.Dial(unix.NETLINK_GENERIC, cfg)
	if err != nil {
		return nil, fmt.Errorf("dial generic netlink: %w", err)
	}
	pipe, err := nlpipe.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("dial generic netlink: %w", err)
	}
	c := genetlink.NewConn(nc)
	f, err := c.GetFamily("IPVS")
	if err != nil {
		c.Close()
		if errors.Is(err, unix.ENOENT) {
			return nil, ErrNoIPVS
		}
		return nil, fmt.Errorf("look up the IPVS netlink family: %w", err)
	}
	return &Conn{c: c, pipe: pipe, family: f.ID}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Version returns the kernel's IPVS version, e.g. 0x010201 for 1.2.1.
func (c *Conn) Version() (uint32, error) {
	msgs, err := c.execute(cmdGetInfo, netlink.Request, nil)
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return 0, err
		}
		for ad.Next() {
			if ad.Type() == infoVersion {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("ipvs: no version in the answer")
}

func (c *Conn) execute(cmd uint8, flags netlink.HeaderFlags, data []byte) ([]genetlink.Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch cmd {
	case cmdGetService, cmdGetDest, cmdGetInfo:
		c.counts.Reads++
	default:
		c.counts.Writes++
		// A 16-byte netlink header, a 4-byte genetlink header, the
		// attributes, padded to 4 bytes.
		c.counts.WriteBytes += int64(16+4+len(data)+3) &^ 3
	}
	return c.c.Execute(genetlink.Message{Header: genetlink.Header{Command: cmd, Version: 1}, Data: data}, c.family, flags)
}

func af(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// The requests' attributes are appended straight to the message being
// built (a Batch's buffer), without an encoder per request: a full Sync
// sends tens of thousands of them. The layout is what
// netlink.AttributeEncoder would produce (the tests compare the two):
// struct nlattr headers in native byte order, each attribute padded to 4
// bytes, nested ones flagged NLA_F_NESTED.

func appendU16(b []byte, typ uint16, v uint16) []byte {
	b = nlpipe.AttrHeader(b, typ, 2)
	return append(binary.NativeEndian.AppendUint16(b, v), 0, 0)
}

func appendU32(b []byte, typ uint16, v uint32) []byte {
	b = nlpipe.AttrHeader(b, typ, 4)
	return binary.NativeEndian.AppendUint32(b, v)
}

// appendAddr appends a as union nf_inet_addr (16 bytes; an IPv4 address
// in the first 4).
func appendAddr(b []byte, typ uint16, a netip.Addr) []byte {
	b = nlpipe.AttrHeader(b, typ, 16)
	if a.Is4() {
		a4 := a.As4()
		return append(append(b, a4[:]...), make([]byte, 12)...)
	}
	a16 := a.As16()
	return append(b, a16[:]...)
}

// appendPort appends a port in network byte order, padded.
func appendPort(b []byte, typ uint16, p uint16) []byte {
	b = nlpipe.AttrHeader(b, typ, 2)
	return append(binary.BigEndian.AppendUint16(b, p), 0, 0)
}

// appendService appends the service attribute; full adds what NEW and
// SET need beyond the key.
func appendService(b []byte, s *Service, full bool) ([]byte, error) {
	start := len(b)
	b = nlpipe.AttrHeader(b, attrService|unix.NLA_F_NESTED, 0) // length set below
	b = appendU16(b, svcAF, af(s.Addr))
	b = appendU16(b, svcProtocol, uint16(s.Protocol))
	b = appendAddr(b, svcAddr, s.Addr)
	b = appendPort(b, svcPort, s.Port)
	if full {
		// The name, NUL-terminated, padded.
		n := len(s.Scheduler) + 1
		b = nlpipe.AttrHeader(b, svcSchedName, n)
		b = append(append(b, s.Scheduler...), 0)
		for n%4 != 0 {
			b = append(b, 0)
			n++
		}
		// struct ip_vs_flags: the flags and the mask of those to set.
		b = nlpipe.AttrHeader(b, svcFlags, 8)
		b = binary.NativeEndian.AppendUint32(b, s.Flags)
		b = binary.NativeEndian.AppendUint32(b, 0xffffffff)
		b = appendU32(b, svcTimeout, s.Timeout)
		if s.Addr.Is4() {
			b = nlpipe.AttrHeader(b, svcNetmask, 4)
			b = append(b, 0xff, 0xff, 0xff, 0xff)
		} else {
			b = appendU32(b, svcNetmask, 128)
		}
	}
	if n := len(b) - start; n > 0xffff {
		// An attribute's length has 16 bits.
		return b[:start], fmt.Errorf("scheduler name of %d bytes is too long", len(s.Scheduler))
	}
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	return b, nil
}

// appendDest appends the real server attribute.
func appendDest(b []byte, d *Dest, full bool) []byte {
	start := len(b)
	b = nlpipe.AttrHeader(b, attrDest|unix.NLA_F_NESTED, 0) // length set below
	b = appendAddr(b, destAddr, d.Addr)
	b = appendPort(b, destPort, d.Port)
	b = appendU16(b, destAddrFamily, af(d.Addr))
	if full {
		b = appendU32(b, destFwdMethod, FwdMasq)
		b = appendU32(b, destWeight, d.Weight)
		b = appendU32(b, destUThresh, 0)
		b = appendU32(b, destLThresh, 0)
	}
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	return b
}

// encodeService encodes the service attribute of a request.
func encodeService(s *Service, full bool) ([]byte, error) {
	return appendService(make([]byte, 0, 128), s, full)
}

// encodeDest encodes the service and real server attributes of a
// request.
func encodeDest(s *Service, d *Dest, full bool) ([]byte, error) {
	b, err := appendService(make([]byte, 0, 160), s, false)
	return appendDest(b, d, full), err
}

func (c *Conn) do(cmd uint8, data []byte, err error) error {
	if err != nil {
		return err
	}
	_, err = c.execute(cmd, netlink.Request|netlink.Acknowledge, data)
	return err
}

// NewService adds a virtual service.
func (c *Conn) NewService(s *Service) error {
	b, err := encodeService(s, true)
	return opErr("add service", s.Key(), c.do(cmdNewService, b, err))
}

// UpdateService changes a service's scheduler, flags and timeout.
func (c *Conn) UpdateService(s *Service) error {
	b, err := encodeService(s, true)
	return opErr("update service", s.Key(), c.do(cmdSetService, b, err))
}

// DelService deletes a service and its real servers.
func (c *Conn) DelService(s *Service) error {
	b, err := encodeService(s, false)
	return opErr("delete service", s.Key(), c.do(cmdDelService, b, err))
}

// NewDest adds a real server to s.
func (c *Conn) NewDest(s *Service, d *Dest) error {
	b, err := encodeDest(s, d, true)
	return opErr("add real server "+netip.AddrPortFrom(d.Addr, d.Port).String()+" to", s.Key(), c.do(cmdNewDest, b, err))
}

// UpdateDest changes a real server's weight.
func (c *Conn) UpdateDest(s *Service, d *Dest) error {
	b, err := encodeDest(s, d, true)
	return opErr("update real server "+netip.AddrPortFrom(d.Addr, d.Port).String()+" of", s.Key(), c.do(cmdSetDest, b, err))
}

// DelDest removes a real server from s.
func (c *Conn) DelDest(s *Service, d *Dest) error {
	b, err := encodeDest(s, d, false)
	return opErr("delete real server "+netip.AddrPortFrom(d.Addr, d.Port).String()+" of", s.Key(), c.do(cmdDelDest, b, err))
}

// Flush deletes every IPVS service in the namespace. svcplane never
// calls it on a namespace it shares; tests use it.
func (c *Conn) Flush() error {
	_, err := c.execute(cmdFlush, netlink.Request|netlink.Acknowledge, nil)
	return err
}

func opErr(op string, k Key, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("ipvs: %s %s:%d/%d: %w", op, k.Addr, k.Port, k.Protocol, err)
}

// Services dumps every virtual service.
func (c *Conn) Services() ([]Service, error) {
	msgs, err := c.execute(cmdGetService, netlink.Request|netlink.Dump, nil)
	if err != nil {
		return nil, fmt.Errorf("ipvs: list services: %w", err)
	}
	out := make([]Service, 0, len(msgs))
	for _, m := range msgs {
		s, err := decodeService(m.Data)
		if err != nil {
			return nil, err
		}
		if s != nil {
			out = append(out, *s)
		}
	}
	return out, nil
}

// Dests dumps the real servers of s.
func (c *Conn) Dests(s *Service) ([]Dest, error) {
	b, err := encodeService(s, false)
	if err != nil {
		return nil, err
	}
	msgs, err := c.execute(cmdGetDest, netlink.Request|netlink.Dump, b)
	if err != nil {
		return nil, opErr("list real servers of", s.Key(), err)
	}
	var out []Dest
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() != attrDest {
				continue
			}
			var d Dest
			var fam uint16
			var raw []byte
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					switch nd.Type() {
					case destAddr:
						raw = nd.Bytes()
					case destPort:
						d.Port = binary.BigEndian.Uint16(nd.Bytes())
					case destWeight:
						d.Weight = nd.Uint32()
					case destActiveConns:
						d.ActiveConns = nd.Uint32()
					case destInactConns:
						d.InactiveConns = nd.Uint32()
					case destPersistCons:
						d.PersistentConns = nd.Uint32()
					case destAddrFamily:
						fam = nd.Uint16()
					}
				}
				return nil
			})
			if fam == 0 {
				fam = af(s.Addr) // kernels before 5.x omit it
			}
			d.Addr = decodeAddr(fam, raw)
			out = append(out, d)
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func decodeService(b []byte) (*Service, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	var out *Service
	for ad.Next() {
		if ad.Type() != attrService {
			continue
		}
		s := &Service{}
		var fam uint16
		var raw []byte
		var fwmark uint32
		ad.Nested(func(nd *netlink.AttributeDecoder) error {
			for nd.Next() {
				switch nd.Type() {
				case svcAF:
					fam = nd.Uint16()
				case svcProtocol:
					s.Protocol = uint8(nd.Uint16())
				case svcAddr:
					raw = nd.Bytes()
				case svcPort:
					s.Port = binary.BigEndian.Uint16(nd.Bytes())
				case svcFWMark:
					fwmark = nd.Uint32()
				case svcSchedName:
					s.Scheduler = nd.String()
				case svcFlags:
					if f := nd.Bytes(); len(f) >= 4 {
						s.Flags = nlenc.Uint32(f[:4]) &^ FlagHashed
					}
				case svcTimeout:
					s.Timeout = nd.Uint32()
				}
			}
			return nil
		})
		if fwmark != 0 {
			continue // firewall-mark services are not ours
		}
		s.Addr = decodeAddr(fam, raw)
		out = s
	}
	return out, ad.Err()
}

func decodeAddr(fam uint16, raw []byte) netip.Addr {
	switch {
	case fam == unix.AF_INET && len(raw) >= 4:
		return netip.AddrFrom4([4]byte(raw[:4]))
	case fam == unix.AF_INET6 && len(raw) >= 16:
		return netip.AddrFrom16([16]byte(raw[:16]))
	}
	return netip.Addr{}
}

// SetTimeouts sets the namespace's IPVS connection timeouts, in seconds:
// established TCP, TCP after FIN, and UDP. 0 leaves a timeout as it is.
func (c *Conn) SetTimeouts(tcp, tcpFin, udp uint32) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrTimeoutTCP, tcp)
	ae.Uint32(attrTimeoutTCPFin, tcpFin)
	ae.Uint32(attrTimeoutUDP, udp)
	b, err := ae.Encode()
	if err != nil {
		return err
	}
	if _, err := c.execute(cmdSetConfig, netlink.Request|netlink.Acknowledge, b); err != nil {
		return fmt.Errorf("ipvs: set timeouts: %w", err)
	}
	return nil
}
