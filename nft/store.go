package nft

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// elemKey identifies one element: the set and the key bytes.
type elemKey struct {
	set setID
	key string
}

// elemVal is an element's data and comment.
type elemVal struct {
	val     string
	keyEnd  string // interval sets: the last key of the range
	jump    string // verdict maps: the chain to jump to
	comment string
}

// store is the element state of the table: what the kernel holds
// (applied) and what the services want (want, refcounted, since several
// services may want one cluster IP or hairpin pair). Changes are batched:
// touch records which keys to compare at the next flush.
type store struct {
	applied map[elemKey]elemVal
	want    map[elemKey]*wanted
	dirty   map[elemKey]struct{}
	// fresh is set while nothing has been applied (a table built from
	// nothing): every wanted key is then pending, and dirty is not kept.
	fresh bool
}

type wanted struct {
	elemVal
	refs int
}

func newStore() *store {
	return &store{
		applied: make(map[elemKey]elemVal),
		want:    make(map[elemKey]*wanted),
		dirty:   make(map[elemKey]struct{}),
		fresh:   true,
	}
}

// reserve makes room for n wanted keys in a fresh, empty store, so that
// a full Sync does not grow the map step by step.
func (s *store) reserve(n int) {
	if s.fresh && len(s.want) == 0 && n > 0 {
		s.want = make(map[elemKey]*wanted, n)
	}
}

// element is one element a service contributes.
type element struct {
	elemKey
	elemVal
}

func (s *store) add(e element) {
	w := s.want[e.elemKey]
	if w == nil {
		w = &wanted{}
		s.want[e.elemKey] = w
	}
	w.refs++
	// The last writer wins; maps have one owner per key by validation.
	w.elemVal = e.elemVal
	if !s.fresh {
		s.dirty[e.elemKey] = struct{}{}
	}
}

func (s *store) remove(k elemKey) {
	w := s.want[k]
	if w == nil {
		return
	}
	if w.refs--; w.refs <= 0 {
		delete(s.want, k)
	}
	if !s.fresh {
		s.dirty[k] = struct{}{}
	}
}

// change is one set's element changes for a batch.
type change struct {
	del, add []nftables.SetElement
}

// pending compares every dirty key's wanted and applied state and returns
// the element deletions and additions per set. Deletions of a key precede
// its re-addition within the batch.
func (s *store) pending(nsets int) ([]change, int) {
	out := make([]change, nsets)
	if s.fresh {
		s.eachWanted(func(set setID, e nftables.SetElement) {
			out[set].add = append(out[set].add, e)
		})
		return out, len(s.want)
	}
	n := 0
	for k := range s.dirty {
		old, had := s.applied[k]
		w, want := s.want[k]
		switch {
		case had && want && old == w.elemVal:
			continue
		case had && want:
			out[k.set].del = append(out[k.set].del, delElement(k, old))
			out[k.set].add = append(out[k.set].add, setElement(k, w.elemVal))
			n += 2
		case had:
			out[k.set].del = append(out[k.set].del, delElement(k, old))
			n++
		case want:
			out[k.set].add = append(out[k.set].add, setElement(k, w.elemVal))
			n++
		}
	}
	return out, n
}

// eachWanted calls f with every wanted element, as an addition.
func (s *store) eachWanted(f func(setID, nftables.SetElement)) {
	for k, w := range s.want {
		f(k.set, setElement(k, w.elemVal))
	}
}

// committed records that the kernel now holds what was pending.
func (s *store) committed() {
	if s.fresh {
		s.applied = make(map[elemKey]elemVal, len(s.want))
		for k, w := range s.want {
			s.applied[k] = w.elemVal
		}
		s.fresh = false
		return
	}
	for k := range s.dirty {
		if w, ok := s.want[k]; ok {
			s.applied[k] = w.elemVal
		} else {
			delete(s.applied, k)
		}
	}
	clear(s.dirty)
}

func delElement(k elemKey, v elemVal) nftables.SetElement {
	e := nftables.SetElement{Key: []byte(k.key)}
	if v.keyEnd != "" {
		e.KeyEnd = []byte(v.keyEnd)
	}
	return e
}

func setElement(k elemKey, v elemVal) nftables.SetElement {
	e := nftables.SetElement{Key: []byte(k.key), Comment: v.comment}
	if v.jump != "" {
		e.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: v.jump}
	}
	if v.keyEnd != "" {
		e.KeyEnd = []byte(v.keyEnd)
	}
	if v.val != "" {
		e.Val = []byte(v.val)
	}
	return e
}
