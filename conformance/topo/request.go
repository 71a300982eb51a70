package topo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
)

// DefaultTimeout is the RequestOptions.Timeout used when it is zero: 2 s,
// multiplied by TimeScale.
var DefaultTimeout = Scale(2 * time.Second)

// TimeScale multiplies the waits of code that expects an answer, from the
// environment variable SVCPLANE_TIME_SCALE (default 1). make test-vm sets
// it for kernels under software emulation, where everything runs several
// times slower; waits that expect no answer stay as they are.
var TimeScale = timeScale()

func timeScale() float64 {
	if v, err := strconv.ParseFloat(os.Getenv("SVCPLANE_TIME_SCALE"), 64); err == nil && v >= 1 {
		return v
	}
	return 1
}

// Scale returns d multiplied by TimeScale.
func Scale(d time.Duration) time.Duration { return time.Duration(float64(d) * TimeScale) }

// RequestOptions tunes Host.Request. The zero value sends no payload from
// an ephemeral port and waits DefaultTimeout.
type RequestOptions struct {
	// LocalPort is the source port; 0 picks an ephemeral one. With a
	// fixed port (UDP conntrack tests) the socket sets SO_REUSEADDR.
	LocalPort uint16
	// LocalAddr is the source address; the zero value lets routing pick
	// one. It must be of dst's family and one of the host's addresses.
	LocalAddr netip.Addr
	// Payload is sent after connecting (TCP, SCTP) or as the datagram
	// (UDP), and must come back whole.
	Payload []byte
	// Timeout bounds the whole request, connecting included; 0 means
	// DefaultTimeout. A deadline of ctx that comes sooner wins.
	Timeout time.Duration
}

// Reply is what an echo server answered.
type Reply struct {
	// Pod is the name in the greeting: the pod's name, or the host's Name
	// for a server started with ServeEcho on a node or the client.
	Pod string
	// From is the client address and port the server saw, IPv4 unmapped.
	From netip.AddrPort
	// Payload is the echoed payload.
	Payload []byte
}

// Request sends one request from the host to an echo server at dst and
// returns its reply. The socket is created in the host's namespace.
//
//   - TCP: connect, read the greeting line, write Payload and half-close,
//     read the echo until EOF (writing and reading run concurrently, so
//     large payloads work).
//   - UDP: one datagram with Payload on a connected socket (IP_RECVERR),
//     so ICMP errors surface; the answer is the greeting line followed by
//     the payload.
//   - SCTP: like TCP, but the echo is read up to len(Payload) bytes and
//     then the association is shut down (SCTP has no half-close). On a
//     kernel without SCTP sockets the error wraps dataplane.ErrUnsupported.
//
// The echoed payload must equal Payload, otherwise Request returns the
// Reply and an error. Classify failures with IsRejected (told at once: TCP
// reset, ICMP unreachable) and IsTimeout (no answer within the timeout).
func (h *Host) Request(ctx context.Context, proto dataplane.Protocol, dst netip.AddrPort, opt RequestOptions) (Reply, error) {
	timeout := opt.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dst = unmap(dst)
	r, err := h.request(ctx, proto, dst, opt)
	if err != nil {
		// A cancelled context is not a timeout.
		if cerr := context.Cause(ctx); errors.Is(cerr, context.Canceled) {
			err = cerr
		}
		return r, fmt.Errorf("topo: %s → %s %s: %w", h.Name, proto, dst, err)
	}
	return r, nil
}

func (h *Host) request(ctx context.Context, proto dataplane.Protocol, dst netip.AddrPort, opt RequestOptions) (Reply, error) {
	if !dst.IsValid() {
		return Reply{}, errors.New("invalid destination")
	}
	v6 := dst.Addr().Is6()
	local := opt.LocalAddr.Unmap()
	if local.IsValid() && local.Is6() != v6 {
		return Reply{}, fmt.Errorf("local address %s is not of the destination's family", local)
	}
	switch proto {
	case dataplane.TCP:
		return h.requestTCP(ctx, dst, local, opt)
	case dataplane.UDP:
		return h.requestUDP(ctx, dst, local, opt)
	case dataplane.SCTP:
		return h.requestSCTP(ctx, dst, local, opt)
	}
	return Reply{}, fmt.Errorf("unknown protocol %s", proto)
}

// dialControl sets SO_REUSEADDR for fixed source ports and, for UDP,
// IP_RECVERR so that every ICMP error (not only port unreachable)
// surfaces on the connected socket.
func dialControl(fixedPort, recvErr bool) func(network, address string, rc syscall.RawConn) error {
	return func(network, _ string, rc syscall.RawConn) error {
		return setsockopt(rc, func(fd int) error {
			if fixedPort {
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
					return err
				}
			}
			if recvErr {
				if strings.HasSuffix(network, "6") {
					return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
				}
				return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
			}
			return nil
		})
	}
}

func (h *Host) requestTCP(ctx context.Context, dst netip.AddrPort, local netip.Addr, opt RequestOptions) (Reply, error) {
	d := net.Dialer{Control: dialControl(opt.LocalPort != 0, false)}
	if local.IsValid() || opt.LocalPort != 0 {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, opt.LocalPort))
	}
	var conn net.Conn
	if err := h.Do(func() error {
		var err error
		conn, err = d.DialContext(ctx, network("tcp", dst.Addr().Is6()), dst.String())
		return err
	}); err != nil {
		return Reply{}, err
	}
	tc := conn.(*net.TCPConn)
	return exchangeStream(ctx, tc, opt.Payload, tc.CloseWrite)
}

// streamConn is a connected TCP socket or SCTP association.
type streamConn interface {
	io.ReadWriteCloser
	SetDeadline(time.Time) error
}

// exchangeStream reads the greeting and sends and reads back payload.
// With halfClose it half-closes after writing and reads until EOF;
// without, it reads len(payload) bytes.
func exchangeStream(ctx context.Context, c streamConn, payload []byte, halfClose func() error) (Reply, error) {
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	wrote := make(chan error, 1)
	go func() {
		var err error
		for p := payload; len(p) > 0 && err == nil; {
			n := min(len(p), streamChunk)
			_, err = c.Write(p[:n])
			p = p[n:]
		}
		if err == nil && halfClose != nil {
			err = halfClose()
		}
		wrote <- err
	}()
	r, err := readStream(c, payload, halfClose != nil)
	if err != nil {
		c.Close() // unblocks the writer
		<-wrote
		return r, err
	}
	if err := <-wrote; err != nil {
		return r, fmt.Errorf("write: %w", err)
	}
	return r, nil
}

func readStream(c io.Reader, payload []byte, toEOF bool) (Reply, error) {
	br := bufio.NewReaderSize(c, 4096)
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("connection closed before the greeting (%q): %w", line, io.ErrUnexpectedEOF)
		}
		return Reply{}, err
	}
	r, err := parseGreeting(line)
	if err != nil {
		return r, err
	}
	if toEOF {
		r.Payload, err = io.ReadAll(br)
	} else {
		r.Payload = make([]byte, len(payload))
		_, err = io.ReadFull(br, r.Payload)
	}
	if err != nil {
		return r, fmt.Errorf("reading the echo: %w", err)
	}
	return r, checkEcho(r, payload)
}

func checkEcho(r Reply, payload []byte) error {
	if !bytes.Equal(r.Payload, payload) {
		return fmt.Errorf("echo from %s differs from the payload: got %d bytes, want %d", r.Pod, len(r.Payload), len(payload))
	}
	return nil
}

// parseGreeting parses "You've hit NAME from ADDR:PORT\n".
func parseGreeting(line []byte) (Reply, error) {
	s, ok := strings.CutPrefix(strings.TrimSuffix(string(line), "\n"), "You've hit ")
	if ok {
		name, from, ok2 := strings.Cut(s, " from ")
		if ap, err := netip.ParseAddrPort(from); ok2 && err == nil && name != "" {
			return Reply{Pod: name, From: unmap(ap)}, nil
		}
	}
	return Reply{}, fmt.Errorf("not an echo server greeting: %q", line)
}

func (h *Host) requestUDP(ctx context.Context, dst netip.AddrPort, local netip.Addr, opt RequestOptions) (Reply, error) {
	d := net.Dialer{Control: dialControl(opt.LocalPort != 0, true)}
	if local.IsValid() || opt.LocalPort != 0 {
		d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, opt.LocalPort))
	}
	var conn net.Conn
	if err := h.Do(func() error {
		var err error
		conn, err = d.DialContext(ctx, network("udp", dst.Addr().Is6()), dst.String())
		return err
	}); err != nil {
		return Reply{}, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write(opt.Payload); err != nil {
		return Reply{}, err
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		return Reply{}, err
	}
	line, rest, ok := bytes.Cut(buf[:n], []byte("\n"))
	if !ok {
		return Reply{}, fmt.Errorf("not an echo server answer: %q", buf[:min(n, 100)])
	}
	r, err := parseGreeting(line)
	if err != nil {
		return r, err
	}
	r.Payload = bytes.Clone(rest)
	return r, checkEcho(r, opt.Payload)
}

func (h *Host) requestSCTP(ctx context.Context, dst netip.AddrPort, local netip.Addr, opt RequestOptions) (Reply, error) {
	var f *os.File
	if err := h.Do(func() error {
		fd, err := sctpSocket(dst.Addr().Is6())
		if err != nil {
			return err
		}
		if local.IsValid() || opt.LocalPort != 0 {
			if !local.IsValid() {
				local = netip.IPv4Unspecified()
				if dst.Addr().Is6() {
					local = netip.IPv6Unspecified()
				}
			}
			err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if err == nil {
				err = unix.Bind(fd, addrPortSockaddr(netip.AddrPortFrom(local, opt.LocalPort)))
			}
		}
		if err == nil {
			err = unix.Connect(fd, addrPortSockaddr(dst))
			if errors.Is(err, unix.EINPROGRESS) {
				err = nil
			}
		}
		if err != nil {
			unix.Close(fd)
			return os.NewSyscallError("connect", err)
		}
		f = os.NewFile(uintptr(fd), "sctp")
		return nil
	}); err != nil {
		return Reply{}, err
	}
	if dl, ok := ctx.Deadline(); ok {
		f.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { f.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	// Wait for the association, as net does for TCP: writable, then
	// SO_ERROR, then connected.
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return Reply{}, err
	}
	var connErr error
	if err := rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			connErr = err
		case v != 0 && v != int(unix.EINPROGRESS) && v != int(unix.EALREADY) && v != int(unix.EINTR):
			connErr = unix.Errno(v)
		default:
			if _, err := unix.Getpeername(int(fd)); err != nil {
				return false // still connecting
			}
		}
		return true
	}); err != nil {
		f.Close()
		return Reply{}, fmt.Errorf("connect: %w", err)
	}
	if connErr != nil {
		f.Close()
		return Reply{}, os.NewSyscallError("connect", connErr)
	}
	return exchangeStream(ctx, f, opt.Payload, nil)
}

// IsRejected reports whether err says the destination refused at once: a
// TCP reset to the connection attempt (ECONNREFUSED), or an ICMP
// destination unreachable of kind port, protocol, host, network or
// administratively prohibited (ECONNREFUSED, ENOPROTOOPT, EHOSTUNREACH,
// ENETUNREACH, EACCES). A sender without any route gets ENETUNREACH at
// once too, and so IsRejected.
func IsRejected(err error) bool {
	for _, e := range []error{unix.ECONNREFUSED, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EACCES, unix.ENOPROTOOPT} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// IsTimeout reports whether err says nothing answered within the timeout:
// the packets were dropped (or the answer was, or it came from an
// unexpected address).
func IsTimeout(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
