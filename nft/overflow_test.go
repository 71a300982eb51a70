package nft

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/internal/nstest"
)

// When the acks of a batch overflow the receive buffer, Flush reports
// ENOBUFS although the kernel ran the batch, and the socket is left with
// acks out of sequence. The Sync must say so, not claim that nothing
// changed, and the next Sync must converge instead of hanging on the old
// socket. fitBuffers keeps this from happening to the batches Sync
// builds; here the buffer is shrunk behind its back.
func TestAckOverflowConverges(t *testing.T) {
	ns := nstest.New(t)
	d := newDP(t, ns)
	st := manyPorts(12)
	for i := range st.Ports {
		st.Ports[i].Affinity = time.Duration(10+i) * time.Second // 12 × 520 rules
	}
	d.mu.Lock()
	if err := d.connected(); err != nil {
		t.Fatal(err)
	}
	// Behind the Sock's back: it believes the buffer is 16 MiB, room
	// enough for this batch's acks, and does not raise it.
	if err := d.sock.Conn().SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	d.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := d.Sync(ctx, st)
	if !errors.Is(err, unix.ENOBUFS) {
		t.Fatalf("Sync with a 4 KiB receive buffer: %v, want ENOBUFS", err)
	}
	t.Logf("the overflowing Sync: %v", err)
	done := make(chan error, 1)
	go func() { done <- d.Sync(ctx, st) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the Sync after an overflow: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the Sync after an overflow hangs (the connection was kept with acks out of sequence)")
	}
	d.mu.Lock()
	ok, err := d.verify()
	d.mu.Unlock()
	if !ok || err != nil {
		t.Fatalf("after the Sync that followed an overflow the table is not whole (%v)", err)
	}
	if err := d.Sync(ctx, st); err != nil || d.lastElems != 0 {
		t.Fatalf("a third Sync of the same State: %v, %d changes sent; want nothing sent", err, d.lastElems)
	}
}
