package nft

import (
	"maps"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// elemKey identifies one element: the set and the key bytes.
type elemKey struct {
	set setID
	key string
}

// elemVal is an element's data and comment. What val holds depends on
// the set (kindOf): a map's value, a verdict map's chain to jump to, or
// an interval set's last key of the range; plain sets have none.
type elemVal struct {
	val     string
	comment string
}

// setKind says what an element's val is in a set.
type setKind uint8

const (
	plainSet    setKind = iota // no val
	dataMap                    // val: the element's data
	verdictMap                 // val: the chain to jump to
	intervalSet                // val: the last key of the range
)

// kindOf returns what val holds in set s.
func kindOf(s setID) setKind {
	switch s % setsPerFamily {
	case setEndpoints, setLocalEndpoints, setNodePortEndpoints, setNodePortLocalEps:
		return dataMap
	case setAffinityFrontends, setAffinityNodePorts:
		return verdictMap
	case setFirewallAllow:
		return intervalSet
	}
	return plainSet
}

// fromKernel is the elemVal of an element read from (or sent to) set s.
func fromKernel(s setID, e nftables.SetElement) elemVal {
	v := elemVal{comment: e.Comment}
	switch kindOf(s) {
	case dataMap:
		v.val = string(e.Val)
	case verdictMap:
		if e.VerdictData != nil {
			v.val = e.VerdictData.Chain
		}
	case intervalSet:
		v.val = string(e.KeyEnd)
	}
	return v
}

// store is the element state of the table: what the services want
// (refcounted, since several services may want one cluster IP or hairpin
// pair), and for each key changed since the last commit, what the kernel
// held before (dirty). Outside a Sync the kernel holds exactly what is
// wanted, so no second copy of the table is kept.
type store struct {
	want  map[elemKey]wanted
	dirty map[elemKey]applied
	// fresh is set while nothing has been applied (a table built from
	// nothing): every wanted key is then pending, and dirty is not kept.
	fresh bool
}

type wanted struct {
	elemVal
	refs int
}

// applied is what the kernel holds for a key, if anything.
type applied struct {
	elemVal
	has bool
}

func newStore() *store {
	return &store{
		want:  make(map[elemKey]wanted),
		dirty: make(map[elemKey]applied),
		fresh: true,
	}
}

// reserve makes room for n wanted keys in a fresh, empty store, so that
// a full Sync does not grow the map step by step.
func (s *store) reserve(n int) {
	if s.fresh && len(s.want) == 0 && n > 0 {
		s.want = make(map[elemKey]wanted, n)
	}
}

// element is one element a service contributes.
type element struct {
	elemKey
	elemVal
}

// touch records, the first time k changes after a commit, what the
// kernel holds for it: what was wanted then.
func (s *store) touch(k elemKey, w wanted, had bool) {
	if s.fresh {
		return
	}
	if _, ok := s.dirty[k]; !ok {
		s.dirty[k] = applied{w.elemVal, had}
	}
}

func (s *store) add(e element) {
	w, ok := s.want[e.elemKey]
	s.touch(e.elemKey, w, ok)
	w.refs++
	// The last writer wins; maps have one owner per key by validation.
	w.elemVal = e.elemVal
	s.want[e.elemKey] = w
}

func (s *store) remove(k elemKey) {
	w, ok := s.want[k]
	if !ok {
		return
	}
	s.touch(k, w, true)
	if w.refs--; w.refs <= 0 {
		delete(s.want, k)
	} else {
		s.want[k] = w
	}
}

// adopted records that the kernel holds v for k, as read back from it:
// compared with what is wanted at the next flush.
func (s *store) adopted(k elemKey, v elemVal) {
	s.dirty[k] = applied{v, true}
}

// kernel returns what the kernel holds for k in an adopted store before
// its first commit.
func (s *store) kernel(k elemKey) (elemVal, bool) {
	a := s.dirty[k]
	return a.elemVal, a.has
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
	for k, old := range s.dirty {
		w, want := s.want[k]
		switch {
		case old.has && want && old.elemVal == w.elemVal:
			continue
		case old.has && want:
			out[k.set].del = append(out[k.set].del, delElement(k, old.elemVal))
			out[k.set].add = append(out[k.set].add, setElement(k, w.elemVal))
			n += 2
		case old.has:
			out[k.set].del = append(out[k.set].del, delElement(k, old.elemVal))
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

// committed records that the kernel now holds what is wanted.
func (s *store) committed() {
	s.fresh = false
	clear(s.dirty)
}

// clone returns a deep copy, for Plan to undo its preparation.
func (s *store) clone() *store {
	return &store{want: maps.Clone(s.want), dirty: maps.Clone(s.dirty), fresh: s.fresh}
}

func delElement(k elemKey, v elemVal) nftables.SetElement {
	e := nftables.SetElement{Key: []byte(k.key)}
	if kindOf(k.set) == intervalSet {
		e.KeyEnd = []byte(v.val)
	}
	return e
}

func setElement(k elemKey, v elemVal) nftables.SetElement {
	e := nftables.SetElement{Key: []byte(k.key), Comment: v.comment}
	switch kindOf(k.set) {
	case dataMap:
		e.Val = []byte(v.val)
	case verdictMap:
		e.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: v.val}
	case intervalSet:
		e.KeyEnd = []byte(v.val)
	}
	return e
}
