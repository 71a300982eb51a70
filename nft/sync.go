package nft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/nftbatch"
)

// Sync makes the table match desired in one atomic netlink batch. The
// first Sync of a Dataplane adopts a table a predecessor left when its
// rules are exactly this Dataplane's, and otherwise (or after a failed
// Sync) rebuilds the whole table in that batch; later ones send only the
// elements that changed, and nothing at all when nothing did. An invalid
// State returns its validation error and changes nothing.
func (d *Dataplane) Sync(ctx context.Context, desired *dataplane.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	same, err := d.validate(desired)
	if err != nil {
		return fmt.Errorf("nft: invalid state, nothing changed: %w", err)
	}
	if err := d.connected(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("nft: sync not started: %w", err)
	}
	t, err := d.prepare(desired, same)
	if err != nil {
		return err
	}
	full, changes, n, affAdd, affDel, stale := t.full, t.changes, t.n, t.affAdd, t.affDel, t.stale
	if !full && n == 0 {
		d.lastElems = 0
		return d.clearConntrack(stale)
	}
	if err := ctx.Err(); err != nil {
		d.st = nil // the in-memory model moved ahead of the kernel
		return fmt.Errorf("nft: sync cancelled before commit, nothing changed: %w", err)
	}
	d.queued = 0
	if full {
		d.queueTable()
	}
	for _, t := range affAdd {
		d.queueAffinity(t)
	}
	if err := d.queueElements(changes); err != nil {
		d.st = nil
		d.redial() // drop what was queued
		return fmt.Errorf("nft: encode batch, nothing changed: %w", err)
	}
	for _, t := range affDel {
		a := d.affinityObjects(t)
		d.conn.DelChain(a.chain)
		d.conn.DelChain(a.npChain)
		d.conn.DelSet(a.sets[v4])
		d.conn.DelSet(a.sets[v6])
		d.queued += 4
	}
	if err := d.fitBuffers(); err != nil {
		d.st = nil
		d.redial()
		return fmt.Errorf("nft: size the netlink socket buffers for the batch, nothing changed: %w", err)
	}
	if d.beforeFlush != nil {
		d.beforeFlush(d.conn)
	}
	if err := d.conn.Flush(); err != nil {
		d.st = nil // read the table back, or rebuild it, on the next Sync
		d.redial()
		if errors.Is(err, unix.ENOBUFS) {
			// The kernel ran the batch, but its answers overflowed
			// the receive buffer: it may hold the new state.
			return fmt.Errorf("nft: commit batch to table inet %s: its acknowledgements overflowed the receive buffer, so whether the kernel committed it is unknown; the next Sync reads the table back and converges: %w", d.cfg.Table, err)
		}
		return fmt.Errorf("nft: commit batch to table inet %s (the kernel kept its previous state; the next Sync rebuilds the table): %w", d.cfg.Table, err)
	}
	d.st.committed()
	d.affChains = d.wantAffinity()
	d.lastElems = n
	if g, err := d.generation(); err == nil {
		d.lastGen = g
	}
	if err := d.clearConntrack(stale); err != nil {
		d.staleCT = stale // try again next Sync
		return fmt.Errorf("nft: rules applied, but %w", err)
	}
	return nil
}

// queueTable queues the whole table afresh: creating it if needed, then
// deleting and recreating it, so that one batch replaces whatever was
// there, atomically.
func (d *Dataplane) queueTable() {
	d.conn.AddTable(d.table)
	d.conn.DelTable(d.table)
	d.conn.AddTable(d.table)
	d.queued += 3
	c := newChains(d.table)
	for _, ch := range c.all() {
		d.conn.AddChain(ch)
		d.queued++
	}
	for _, s := range d.sets {
		// A fresh id within this batch, from our own counter:
		// google/nftables v0.3.0 allocates ids from an unguarded global,
		// which races when several Dataplanes sync at once.
		s.ID = setIDs.Add(1)
		d.conn.AddSet(s, nil)
		d.queued++
	}
	for _, r := range d.rules(c) {
		if r.chain == c.natPrerouting {
			// Lets a later Dataplane recognise a table it may adopt.
			r.comment += " (" + fingerprintPrefix + d.fingerprint + ")"
		}
		d.conn.AddRule(&nftables.Rule{
			Table:    d.table,
			Chain:    r.chain,
			Exprs:    r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
		})
		d.queued++
	}
}

var setIDs atomic.Uint32

// queueAffinity queues the sets, chains and rules of one affinity
// timeout.
func (d *Dataplane) queueAffinity(seconds int64) {
	a := d.affinityObjects(seconds)
	for _, s := range a.sets {
		s.ID = setIDs.Add(1)
		d.conn.AddSet(s, nil)
	}
	d.conn.AddChain(a.chain)
	d.conn.AddChain(a.npChain)
	d.queued += 4
	for _, r := range d.affinityRules(a) {
		d.queueRule(r)
	}
}

func (d *Dataplane) queueRule(r rule) {
	d.queued++
	d.conn.AddRule(&nftables.Rule{
		Table:    d.table,
		Chain:    r.chain,
		Exprs:    r.exprs,
		UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
	})
}

// wantAffinity returns the affinity timeouts (seconds) the synced ports
// use; each has its own sets and chains.
func (d *Dataplane) wantAffinity() map[int64]bool {
	out := make(map[int64]bool, len(d.affCount))
	for t := range d.affCount {
		out[t] = true
	}
	return out
}

// affinityChanges returns the affinity timeouts whose objects must be
// created and deleted.
func (d *Dataplane) affinityChanges(full bool) (add, del []int64) {
	want, have := d.wantAffinity(), d.affChains
	if full {
		have = nil
	}
	for t := range want {
		if !have[t] {
			add = append(add, t)
		}
	}
	for t := range have {
		if !want[t] {
			del = append(del, t)
		}
	}
	slices.Sort(add)
	slices.Sort(del)
	return add, del
}

// queueElements queues the element changes. A fresh store (a table
// built from nothing) has no list of changes: its wanted elements are
// queued as they are read, a message at a time, so that a large table is
// never held as one list.
func (d *Dataplane) queueElements(changes []change) error {
	d.batchBytes = 0
	if changes == nil && d.st.fresh {
		bufs := make([][]nftables.SetElement, len(d.sets))
		sizes := make([]int, len(d.sets))
		var err error
		d.st.eachWanted(func(set setID, e nftables.SetElement) {
			n := nftbatch.ElemSize(e)
			if sizes[set]+n > nftbatch.MaxChunk && len(bufs[set]) > 0 && err == nil {
				err = d.conn.SetAddElements(d.sets[set], bufs[set])
				d.queued++
				bufs[set], sizes[set] = bufs[set][:0], 0
			}
			bufs[set] = append(bufs[set], e)
			sizes[set] += n
			d.batchBytes += n
		})
		for i, b := range bufs {
			if len(b) > 0 && err == nil {
				err = d.conn.SetAddElements(d.sets[i], b)
				d.queued++
			}
		}
		return err
	}
	for i, c := range changes {
		s := d.sets[i]
		if err := d.chunked(c.del, func(es []nftables.SetElement) error { return d.conn.SetDeleteElements(s, es) }); err != nil {
			return err
		}
	}
	for i, c := range changes {
		s := d.sets[i]
		if err := d.chunked(c.add, func(es []nftables.SetElement) error { return d.conn.SetAddElements(s, es) }); err != nil {
			return err
		}
	}
	return nil
}

// batchSlack bounds what a batch holds besides elements: the table, its
// chains, sets and rules, and affinity chains.
const batchSlack = 8 << 20

// fitBuffers sizes the socket's buffers to the queued batch (a full
// Sync of 50000 service ports is some 150 MB; 20,000 rules of 40
// affinity timeouts are as many acks).
func (d *Dataplane) fitBuffers() error {
	return d.sock.Fit(d.batchBytes+batchSlack, d.queued)
}

func (d *Dataplane) chunked(es []nftables.SetElement, send func([]nftables.SetElement) error) error {
	for _, e := range es {
		d.batchBytes += nftbatch.ElemSize(e)
	}
	return nftbatch.Chunks(es, func(es []nftables.SetElement) error {
		d.queued++
		return send(es)
	})
}

// applyPort (re)computes a port's elements and swaps them into the store.
func (d *Dataplane) applyPort(old *svcState, p *dataplane.ServicePort) *svcState {
	pl := d.planPort(old, p)
	s := &svcState{port: clonePort(p), groups: pl.groups, any: pl.any}
	if old != nil {
		d.removeElements(old)
	}
	d.track(old, s)
	for _, e := range d.elements(p, pl) {
		d.st.add(e)
	}
	return s
}

// removeElements takes s's elements out of the store. They are computed
// again rather than kept: the same port and plan give the same elements.
func (d *Dataplane) removeElements(s *svcState) {
	for _, e := range d.elements(&s.port, plan{groups: s.groups, any: s.any}) {
		d.st.remove(e.elemKey)
	}
}

func (d *Dataplane) removePort(s *svcState) {
	d.removeElements(s)
	d.untrack(s)
}

// Cleanup deletes the Dataplane's table and everything in it, and nothing
// else. A table that is already gone is not an error.
func (d *Dataplane) Cleanup(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.connected(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d.conn.AddTable(d.table)
	d.conn.DelTable(d.table)
	d.st = nil
	d.forgetPorts()
	d.affChains = nil
	if err := d.conn.Flush(); err != nil {
		d.redial()
		return fmt.Errorf("nft: delete table inet %s: %w", d.cfg.Table, err)
	}
	return nil
}

// txn is what a Sync will send.
type txn struct {
	full           bool // rebuild the whole table
	changes        []change
	n              int // element, chain and set changes
	affAdd, affDel []int64
	stale          []staleFlow
}

// prepare brings the in-memory model to desired (adopting or checking the
// kernel table first) and returns what must be sent. It changes nothing in
// the kernel. same is validate's answer: per port, the synced port it
// equals, or nil.
func (d *Dataplane) prepare(desired *dataplane.State, same []*svcState) (*txn, error) {
	if d.st != nil {
		// Has anything else committed since our last commit? Then make
		// sure our table is still whole.
		if g, err := d.generation(); err != nil || g != d.lastGen {
			if ok, verr := d.verify(); err != nil || verr != nil || !ok {
				d.st = nil
			} else {
				d.lastGen = g
			}
		}
	}
	full := d.st == nil
	fresh := full // nothing is known of earlier endpoints
	d.adopted = false
	if full {
		d.forgetPorts()
		same = nil
		st, err := d.adopt()
		if err != nil {
			return nil, fmt.Errorf("nft: read table inet %s: %w", d.cfg.Table, err)
		}
		if st != nil {
			d.st, full, d.adopted = st, false, true
		} else {
			d.st = newStore()
			d.st.reserve(estimateElements(desired))
		}
	}
	stale := d.staleCT // entries a failed cleanup left behind
	d.staleCT = nil
	stale = append(stale, d.applyState(desired, same, fresh)...)
	t := &txn{full: full, stale: stale}
	if d.st.fresh {
		// Queued straight from the store (queueElements).
		t.n = len(d.st.want)
	} else {
		t.changes, t.n = d.st.pending(len(d.sets))
	}
	t.affAdd, t.affDel = d.affinityChanges(full)
	t.n += len(t.affAdd) + len(t.affDel)
	return t, nil
}

// applyState brings the synced ports, and the store, to desired: the
// in-memory half of prepare. same is validate's answer for desired (nil:
// compare every port); fresh says nothing is known of earlier
// endpoints. It returns the conntrack entries to clear.
func (d *Dataplane) applyState(desired *dataplane.State, same []*svcState, fresh bool) []staleFlow {
	var stale []staleFlow
	// Synced ports that are gone. When validate found every synced port
	// it could (same), they are the ones it did not mark.
	var gone []*svcState
	if same != nil && len(d.order) == len(d.svcs) {
		gone = d.gone()
	} else {
		seen := make(map[dataplane.PortName]bool, len(desired.Ports))
		for i := range desired.Ports {
			seen[desired.Ports[i].Name] = true
		}
		for name, s := range d.svcs {
			if !seen[name] {
				gone = append(gone, s)
			}
		}
	}
	for _, s := range gone {
		stale = append(stale, staleFlows(s, &s.port, nil)...)
		d.removePort(s)
		delete(d.svcs, s.port.Name)
	}
	order := d.order[:0]
	if cap(order) < len(desired.Ports) {
		order = make([]*svcState, 0, len(desired.Ports))
	}
	for i := range desired.Ports {
		p := &desired.Ports[i]
		s := (*svcState)(nil)
		if same != nil {
			s = same[i]
		}
		if s == nil {
			old := d.svcs[p.Name]
			if old != nil && equalPort(&old.port, p) {
				s = old
			} else {
				s = d.applyPort(old, p)
				if !fresh {
					// After a rebuild or adoption nothing is known of
					// earlier endpoints, and entries DNATed by earlier
					// rules stay valid.
					stale = append(stale, staleFlows(old, p, s.groups)...)
				}
				d.svcs[p.Name] = s
			}
		}
		s.pos = i
		order = append(order, s)
	}
	d.order = order
	return stale
}

// estimateElements bounds the number of elements desired programs, to
// size the store of a full Sync: a slot per endpoint (64 with affinity)
// per frontend and path, and a few more per port and endpoint.
func estimateElements(desired *dataplane.State) int {
	n := 0
	for i := range desired.Ports {
		p := &desired.Ports[i]
		fronts := len(p.ClusterIPs) + len(p.ExternalIPs) + len(p.LoadBalancerIPs)
		if p.NodePort != 0 {
			fronts++
		}
		paths := 1
		if p.ExternalLocal {
			paths = 2
		}
		n += fronts*(slotCount(len(p.Endpoints), p.Affinity > 0)*paths+4) + len(p.Endpoints) + 2*len(p.SourceRanges)
	}
	return n
}
