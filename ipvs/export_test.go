package ipvs

import (
	"github.com/svcplane/svcplane/internal/kstate"
	"github.com/svcplane/svcplane/internal/syncbench"
)

// benchStats is what d sent to IPVS since New (internal/ipvsnl counts
// each request as it goes out), and the nftables generation of its
// namespace, read now on a socket of its own: the difference between two
// readings is the number of nftables transactions committed in between,
// which here only d makes.
func (d *Dataplane) benchStats() syncbench.Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ipvs == nil {
		return syncbench.Stats{}
	}
	c := d.ipvs.Counts()
	g, _ := kstate.Generation(d.ns.Fd())
	return syncbench.Stats{WriteMsgs: c.Writes, WriteBytes: c.WriteBytes, Reads: c.Reads, Commits: int64(g)}
}
