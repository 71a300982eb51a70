package ipvs

import (
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"

	"github.com/svcplane/svcplane/internal/ipvsnl"
	"github.com/svcplane/svcplane/internal/kstate"
)

// servicesChanged reports whether IPVS holds other virtual servers than
// the ones we applied where we own or are about to own one: on our
// addresses, or at a key the next Sync programs (one dump of all
// services).
func (d *Dataplane) servicesChanged(want map[ipvsnl.Key]*virtual) (bool, error) {
	svcs, err := d.ipvs.Services()
	if err != nil {
		return false, err
	}
	seen := 0
	for i := range svcs {
		s := &svcs[i]
		have, ok := d.applied[s.Key()]
		_, wanted := want[s.Key()]
		switch {
		case ok && have.svc != *s:
			return true, nil
		case ok:
			seen++
		case d.addrs[s.Addr] || wanted:
			return true, nil // a stranger on our address or where ours goes
		}
	}
	return seen != len(d.applied), nil
}

// tableIntact reports whether the kernel holds our table with every
// chain, rule and set, written for this configuration.
func (d *Dataplane) tableIntact() (bool, error) {
	chains, err := d.nft.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, err
	}
	have := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table.Name == d.cfg.Table {
			have[ch.Name] = ch
		}
	}
	want, rules := d.tableShape()
	if len(have) != len(want) {
		return false, nil // a chain of another program's in our table
	}
	count := map[string]int{}
	for _, r := range rules {
		count[r.chain.Name]++
	}
	for _, ch := range want {
		got, ok := have[ch.Name]
		if !ok {
			return false, nil
		}
		rs, err := d.nft.GetRules(d.table, got)
		if err != nil {
			return false, err
		}
		if len(rs) != count[ch.Name] {
			return false, nil
		}
		if ch.Name == rules[0].chain.Name {
			c, _ := userdata.GetString(rs[0].UserData, userdata.TypeComment)
			if !strings.Contains(c, fingerprintPrefix+d.fp) {
				return false, nil
			}
		}
	}
	sets, err := d.nft.GetSets(d.table)
	if err != nil {
		return false, err
	}
	if len(sets) != len(d.sets) {
		return false, nil // a set of another program's in our table
	}
	names := map[string]bool{}
	for _, s := range sets {
		names[s.Name] = true
	}
	for _, s := range d.sets {
		if !names[s.Name] {
			return false, nil
		}
	}
	return true, nil
}

// adoptTable reads the elements of a table a predecessor left, when it is
// whole and written for this configuration.
func (d *Dataplane) adoptTable() (map[elemKey]string, bool) {
	if _, err := d.nft.ListTableOfFamily(d.cfg.Table, nftables.TableFamilyINet); err != nil {
		return nil, false
	}
	gen, err := kstate.Generation(d.ns.Fd())
	if err != nil {
		return nil, false
	}
	if ok, err := d.tableIntact(); !ok || err != nil {
		return nil, false
	}
	elems, err := d.readElems()
	if err != nil {
		return nil, false
	}
	if again, err := kstate.Generation(d.ns.Fd()); err != nil || again != gen {
		return nil, false // changed while we read: rebuild
	}
	d.lastGen = gen
	return elems, true
}

// readElems reads the elements of every set of our table.
func (d *Dataplane) readElems() (map[elemKey]string, error) {
	elems := map[elemKey]string{}
	for i, s := range d.sets {
		es, err := d.nft.GetSetElements(s)
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			if !e.IntervalEnd {
				elems[elemKey{setID(i), string(e.Key)}] = string(e.KeyEnd)
			}
		}
	}
	return elems, nil
}
