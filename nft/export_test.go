package nft

import (
	"reflect"

	"github.com/google/nftables"

	"github.com/svcplane/svcplane/internal/syncbench"
)

// countNetlink makes d count the netlink traffic of its Syncs: the
// messages of every batch it commits, exactly as google/nftables sends
// them (the queued messages plus batch begin and end, each a 16-byte
// header and its data padded to 4 bytes), the batches, and its
// generation reads. beforeFlush runs only when a Sync has a batch to
// send, right before (*nftables.Conn).Flush sends exactly those messages.
func countNetlink(d *Dataplane) *netlinkCount {
	c := &netlinkCount{d: d}
	d.beforeFlush = func(conn *nftables.Conn) {
		// The queued messages are unexported; reflect reads their
		// lengths without touching them.
		msgs := reflect.ValueOf(conn).Elem().FieldByName("messages")
		if msgs.Len() == 0 {
			return // Flush sends nothing
		}
		c.batches++
		c.msgs += int64(msgs.Len()) + 2
		c.bytes += 2 * nlmsgLen(4) // batch begin and end: a 4-byte nfgenmsg each
		for i := range msgs.Len() {
			c.bytes += nlmsgLen(msgs.Index(i).FieldByName("Data").Len())
		}
	}
	return c
}

type netlinkCount struct {
	d                    *Dataplane
	msgs, bytes, batches int64
}

func (c *netlinkCount) stats() syncbench.Stats {
	return syncbench.Stats{WriteMsgs: c.msgs, WriteBytes: c.bytes, Reads: int64(c.d.genReads), Commits: c.batches}
}

// nlmsgLen is the size of a netlink message with n bytes of data.
func nlmsgLen(n int) int64 { return int64(16+n+3) &^ 3 }
