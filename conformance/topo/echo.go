package topo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
)

// greeting is the first line every echo server sends.
func greeting(name string, from netip.AddrPort) string {
	return fmt.Sprintf("You've hit %s from %s\n", name, unmap(from))
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ServeEcho starts an echo server for proto on port of every address of
// both families of the host, greeting with the host's Name (see the
// package documentation for the protocol). On a node it serves a "host
// service". It returns an error if the port is taken; for SCTP on a kernel
// without SCTP sockets, the error wraps dataplane.ErrUnsupported. The
// server runs until the host is removed or the Topology is closed.
func (h *Host) ServeEcho(proto dataplane.Protocol, port uint16) error {
	if port == 0 {
		return fmt.Errorf("topo: %s: ServeEcho %s: port 0", h.Name, proto)
	}
	var socks []io.Closer
	var serve []func()
	err := h.Do(func() error {
		for _, v6 := range []bool{false, true} {
			switch proto {
			case dataplane.TCP:
				ln, err := listenTCP(v6, port)
				if err != nil {
					return err
				}
				socks = append(socks, ln)
				serve = append(serve, func() { h.acceptTCP(ln) })
			case dataplane.UDP:
				c, err := listenUDP(v6, port)
				if err != nil {
					return err
				}
				socks = append(socks, c)
				serve = append(serve, func() { h.serveUDP(c, v6) })
			case dataplane.SCTP:
				f, err := listenSCTP(v6, port)
				if err != nil {
					return err
				}
				socks = append(socks, f)
				serve = append(serve, func() { h.acceptSCTP(f) })
			default:
				return fmt.Errorf("unknown protocol %s", proto)
			}
		}
		return nil
	})
	if err != nil {
		for _, s := range socks {
			s.Close()
		}
		return fmt.Errorf("topo: %s: ServeEcho %s/%d: %w", h.Name, proto, port, err)
	}
	for i, s := range socks {
		if !h.srv.goServe(s, serve[i]) {
			return fmt.Errorf("topo: %s: ServeEcho %s/%d: host is closed", h.Name, proto, port)
		}
	}
	return nil
}

func network(base string, v6 bool) string {
	if v6 {
		return base + "6"
	}
	return base + "4"
}

func listenTCP(v6 bool, port uint16) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(context.Background(), network("tcp", v6), fmt.Sprintf(":%d", port))
}

func listenUDP(v6 bool, port uint16) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return setsockopt(rc, func(fd int) error {
			if v6 {
				return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			}
			return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		})
	}}
	c, err := lc.ListenPacket(context.Background(), network("udp", v6), fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// setsockopt runs fn on rc's descriptor and returns fn's error.
func setsockopt(rc syscall.RawConn, fn func(fd int) error) error {
	var err error
	if cerr := rc.Control(func(fd uintptr) { err = fn(int(fd)) }); cerr != nil {
		return cerr
	}
	return err
}

func (h *Host) acceptTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ECONNABORTED
		}
		remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		h.srv.goServe(c, func() { echoStream(h.Name, c, remote) })
	}
}

// streamChunk bounds one read or write on a stream socket: an SCTP send
// larger than the socket's send buffer fails with EMSGSIZE instead of
// blocking.
const streamChunk = 8 << 10

// echoStream greets and then echoes until EOF or an error.
func echoStream(name string, rw io.ReadWriter, remote netip.AddrPort) {
	if _, err := io.WriteString(rw, greeting(name, remote)); err != nil {
		return
	}
	buf := make([]byte, streamChunk)
	for {
		n, err := rw.Read(buf)
		if n > 0 {
			if _, werr := rw.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serveUDP answers each datagram with the greeting and the payload, from
// the address the datagram was sent to (IP_PKTINFO), so that connected
// clients accept the answer on hosts with several addresses.
func (h *Host) serveUDP(c *net.UDPConn, v6 bool) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, 512)
	for {
		n, oobn, _, src, err := c.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		reply := append([]byte(greeting(h.Name, src)), buf[:n]...)
		c.WriteMsgUDPAddrPort(reply, replyPktinfo(oob[:oobn], v6), src)
	}
}

// replyPktinfo turns the IP_PKTINFO / IPV6_PKTINFO of a received datagram
// into the control message that sends the reply from its destination
// address. It returns nil if there is none.
func replyPktinfo(oob []byte, v6 bool) []byte {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		switch {
		case !v6 && m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12:
			// struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
			var pi unix.Inet4Pktinfo
			copy(pi.Spec_dst[:], m.Data[8:12])
			return unix.PktInfo4(&pi)
		case v6 && m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= 20:
			// struct in6_pktinfo { in6_addr addr; int ifindex; }
			var pi unix.Inet6Pktinfo
			copy(pi.Addr[:], m.Data[:16])
			if a := netip.AddrFrom16(pi.Addr); a.IsLinkLocalUnicast() {
				pi.Ifindex = uint32(m.Data[16]) | uint32(m.Data[17])<<8 | uint32(m.Data[18])<<16 | uint32(m.Data[19])<<24
			}
			return unix.PktInfo6(&pi)
		}
	}
	return nil
}

// servers tracks a host's listening sockets and connections and the
// goroutines serving them.
type servers struct {
	mu     sync.Mutex
	closed bool
	open   map[io.Closer]struct{}
	wg     sync.WaitGroup
}

// goServe runs fn on a new goroutine and closes c when fn returns or when
// the servers are closed. It returns false, closing c, if they are.
func (s *servers) goServe(c io.Closer, fn func()) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return false
	}
	if s.open == nil {
		s.open = map[io.Closer]struct{}{}
	}
	s.open[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		fn()
		s.mu.Lock()
		delete(s.open, c)
		s.mu.Unlock()
		c.Close()
	}()
	return true
}

// close closes every socket and waits for the serving goroutines. It is
// idempotent.
func (s *servers) close() {
	s.mu.Lock()
	s.closed = true
	open := s.open
	s.open = nil
	s.mu.Unlock()
	for c := range open {
		c.Close()
	}
	s.wg.Wait()
}

// SCTP, with raw sockets: Go's net package has none. Listeners and
// connections are non-blocking *os.File values, which the runtime poller
// serves (Read, Write, deadlines, Close unblocking waiters).

func sctpSocket(v6 bool) (int, error) {
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT) {
		return -1, errNoSCTP
	}
	if err != nil {
		return -1, fmt.Errorf("SCTP socket: %w", err)
	}
	if v6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

func listenSCTP(v6 bool, port uint16) (*os.File, error) {
	fd, err := sctpSocket(v6)
	if err != nil {
		return nil, err
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(port)}
	if v6 {
		sa = &unix.SockaddrInet6{Port: int(port)}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err == nil {
		if err = unix.Bind(fd, sa); err == nil {
			err = unix.Listen(fd, 128)
		}
		if err == nil {
			return os.NewFile(uintptr(fd), "sctp-listener"), nil
		}
	}
	unix.Close(fd)
	return nil, fmt.Errorf("SCTP listen on port %d: %w", port, err)
}

func (h *Host) acceptSCTP(ln *os.File) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return
	}
	for {
		var nfd int
		var sa unix.Sockaddr
		var aerr error
		err := rc.Read(func(fd uintptr) bool {
			nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return aerr != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		if aerr != nil {
			if aerr == unix.EINTR || aerr == unix.ECONNABORTED {
				continue
			}
			return
		}
		c := os.NewFile(uintptr(nfd), "sctp")
		remote := sockaddrAddrPort(sa)
		h.srv.goServe(c, func() { echoStream(h.Name, c, remote) })
	}
}

func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

func addrPortSockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}
