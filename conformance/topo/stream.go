package topo

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// Stream is an open TCP connection to an echo server, for checks that a
// connection survives changes: each Echo sends bytes on the same
// connection and requires them back.
type Stream struct {
	// Reply is the server's greeting: who answered and whom it saw.
	Reply
	conn *net.TCPConn
	br   *bufio.Reader
}

// DialTCP opens a TCP connection from the host to dst and reads the
// greeting. Close the Stream when done.
func (h *Host) DialTCP(ctx context.Context, dst netip.AddrPort) (*Stream, error) {
	var conn net.Conn
	if err := h.Do(func() error {
		var err error
		d := net.Dialer{}
		conn, err = d.DialContext(ctx, network("tcp", dst.Addr().Is6()), dst.String())
		return err
	}); err != nil {
		return nil, err
	}
	s := &Stream{conn: conn.(*net.TCPConn), br: bufio.NewReader(conn)}
	s.conn.SetReadDeadline(time.Now().Add(DefaultTimeout))
	line, err := s.br.ReadSlice('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading the greeting: %w", err)
	}
	if s.Reply, err = parseGreeting(line); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// Echo sends payload and reads it back within the timeout (DefaultTimeout
// when 0).
func (s *Stream) Echo(payload []byte, timeout time.Duration) error {
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	s.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := s.conn.Write(payload); err != nil {
		return fmt.Errorf("write on the open connection to %s: %w", s.Pod, err)
	}
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(s.br, got); err != nil {
		return fmt.Errorf("read on the open connection to %s: %w", s.Pod, err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("the open connection to %s echoed different bytes", s.Pod)
	}
	return nil
}

// Close closes the connection.
func (s *Stream) Close() error { return s.conn.Close() }
