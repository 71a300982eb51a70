package nft

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/prefixes"
)

// Plan is what a Sync would change, as nft commands a person can read
// (and could feed to nft -f): one line per set element, sorted.
type Plan struct {
	// Rebuild is set when the Sync would write the whole table afresh
	// (nothing to adopt, or the table was damaged).
	Rebuild bool
	// Lines are the changes, deletions first, each an nft command.
	Lines []string
}

// Empty reports whether the Sync would write nothing.
func (p *Plan) Empty() bool { return !p.Rebuild && len(p.Lines) == 0 }

// String returns the plan, one command per line, or "no changes".
func (p *Plan) String() string {
	if p.Empty() {
		return "no changes\n"
	}
	var b strings.Builder
	for _, l := range p.Lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// Plan returns what Sync(ctx, desired) would change, without changing
// anything in the kernel or in the Dataplane. It reads the kernel as Sync
// would (the nftables generation, and the table on first use).
func (d *Dataplane) Plan(ctx context.Context, desired *dataplane.State) (*Plan, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	same, err := d.validate(desired)
	if err != nil {
		return nil, fmt.Errorf("nft: invalid state: %w", err)
	}
	if err := d.connected(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	saved := d.save()
	defer d.restore(saved)
	t, err := d.prepare(desired, same)
	if err != nil {
		return nil, err
	}
	p := &Plan{Rebuild: t.full}
	tbl := "inet " + d.cfg.Table
	if t.full {
		p.Lines = append(p.Lines, fmt.Sprintf("# rebuild table %s: %d chains, %d rules, %d sets", tbl, len(newChains(d.table).all()), len(d.rules(newChains(d.table))), len(d.sets)))
	}
	for _, s := range t.affDel {
		p.Lines = append(p.Lines, fmt.Sprintf("delete chain %s affinity-%ds", tbl, s), fmt.Sprintf("delete chain %s affinity-%ds-nodeports", tbl, s))
	}
	for _, s := range t.affAdd {
		p.Lines = append(p.Lines, fmt.Sprintf("# add chains affinity-%ds, affinity-%ds-nodeports and sets affinity-%ds-v4, -v6 to %s", s, s, s, tbl))
	}
	changes := t.changes
	if changes == nil {
		changes, _ = d.st.pending(len(d.sets))
	}
	var del, add []string
	for i, c := range changes {
		s := d.sets[i]
		for _, e := range c.del {
			del = append(del, fmt.Sprintf("delete element %s %s { %s }", tbl, s.Name, formatKey(s, e)))
		}
		for _, e := range c.add {
			add = append(add, fmt.Sprintf("add element %s %s { %s }", tbl, s.Name, formatElement(s, e)))
		}
	}
	slices.Sort(del)
	slices.Sort(add)
	p.Lines = append(p.Lines, del...)
	p.Lines = append(p.Lines, add...)
	return p, nil
}

// saved is the in-memory model, to undo a Plan's preparation.
type saved struct {
	st        *store
	svcs      map[dataplane.PortName]*svcState
	order     []*svcState
	fronts    map[frontKey]*svcState
	affCount  map[int64]int
	affChains map[int64]bool
	staleCT   []staleFlow
	lastGen   uint32
	adopted   bool
}

func (d *Dataplane) save() saved {
	s := saved{svcs: maps.Clone(d.svcs), order: slices.Clone(d.order), fronts: maps.Clone(d.fronts), affCount: maps.Clone(d.affCount),
		affChains: maps.Clone(d.affChains), staleCT: slices.Clone(d.staleCT), lastGen: d.lastGen, adopted: d.adopted}
	if d.st != nil {
		s.st = d.st.clone()
	}
	return s
}

func (d *Dataplane) restore(s saved) {
	d.st, d.svcs, d.order, d.fronts, d.affCount = s.st, s.svcs, s.order, s.fronts, s.affCount
	d.affChains, d.staleCT, d.lastGen, d.adopted = s.affChains, s.staleCT, s.lastGen, s.adopted
}

func formatElement(s *nftables.Set, e nftables.SetElement) string {
	out := formatKey(s, e)
	switch {
	case e.VerdictData != nil:
		out += " : jump " + e.VerdictData.Chain
	case len(e.Val) > 0:
		out += " : " + formatFields(nftables.ConcatSetTypeElements(s.DataType), e.Val)
	}
	if e.Comment != "" {
		out += fmt.Sprintf(" comment %q", e.Comment)
	}
	return out
}

func formatKey(s *nftables.Set, e nftables.SetElement) string {
	types := nftables.ConcatSetTypeElements(s.KeyType)
	k := formatFields(types, e.Key)
	if len(e.KeyEnd) > 0 {
		// Our interval elements are prefixes in the last field.
		last := types[len(types)-1]
		n := int(last.Bytes)
		start, _ := netip.AddrFromSlice(e.Key[len(e.Key)-n:])
		end, _ := netip.AddrFromSlice(e.KeyEnd[len(e.KeyEnd)-n:])
		for bits := 0; bits <= start.BitLen(); bits++ {
			if p := netip.PrefixFrom(start, bits); p.Masked().Addr() == start && prefixes.Last(p) == end {
				return k + "/" + fmt.Sprint(bits)
			}
		}
		return k + "-" + end.String()
	}
	return k
}

// formatFields prints concatenated fields the way nft does.
func formatFields(types []nftables.SetDatatype, b []byte) string {
	var parts []string
	for _, t := range types {
		n := int(t.Bytes)
		if n > len(b) {
			break
		}
		f := b[:n]
		switch t.Name {
		case "ipv4_addr", "ipv6_addr":
			a, _ := netip.AddrFromSlice(f)
			parts = append(parts, a.String())
		case "inet_proto":
			parts = append(parts, strings.ToLower(dataplane.Protocol(f[0]).String()))
		case "inet_service":
			parts = append(parts, fmt.Sprint(binary.BigEndian.Uint16(f)))
		case "mark":
			parts = append(parts, fmt.Sprintf("0x%08x", binaryutil.NativeEndian.Uint32(f)))
		default:
			parts = append(parts, fmt.Sprintf("0x%x", f))
		}
		if pad := (n + 3) / 4 * 4; pad <= len(b) {
			b = b[pad:]
		} else {
			b = nil
		}
	}
	return strings.Join(parts, " . ")
}
