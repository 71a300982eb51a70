// Package kstate reads kernel networking state of a network namespace over
// netlink, for tests that must prove what a backend changed and what it
// left alone: the nftables generation, and a deterministic text snapshot of
// the nftables ruleset, links and addresses.
package kstate

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Generation returns the nftables ruleset generation of the namespace
// behind fd: it changes with every committed nftables transaction.
func Generation(fd int) (uint32, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: fd})
	if err != nil {
		return 0, fmt.Errorf("dial netfilter netlink: %w", err)
	}
	defer c.Close()
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("get nftables generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = nl.NativeEndian()
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				b := ad.Bytes()
				if len(b) == 4 {
					return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), nil
				}
			}
		}
	}
	return 0, fmt.Errorf("get nftables generation: no NFTA_GEN_ID in the answer")
}

// Snapshot returns a deterministic description of the namespace's
// nftables ruleset (every table, chain, rule, set and element), links and
// addresses. Two equal snapshots mean nothing visible there changed.
func Snapshot(fd int) (string, error) {
	var b strings.Builder
	if err := nftSnapshot(&b, fd); err != nil {
		return "", err
	}
	if err := linkSnapshot(&b, fd); err != nil {
		return "", err
	}
	return b.String(), nil
}

func nftSnapshot(b *strings.Builder, fd int) error {
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		return err
	}
	tables, err := c.ListTables()
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	slices.SortFunc(tables, func(a, b *nftables.Table) int {
		return strings.Compare(fmt.Sprint(a.Family, a.Name), fmt.Sprint(b.Family, b.Name))
	})
	chains, err := c.ListChains()
	if err != nil {
		return fmt.Errorf("list nftables chains: %w", err)
	}
	for _, t := range tables {
		fmt.Fprintf(b, "table %d %s flags=%d\n", t.Family, t.Name, t.Flags)
		var tc []*nftables.Chain
		for _, ch := range chains {
			if ch.Table.Name == t.Name && ch.Table.Family == t.Family {
				tc = append(tc, ch)
			}
		}
		slices.SortFunc(tc, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
		for _, ch := range tc {
			fmt.Fprintf(b, "  chain %s type=%s hook=%s prio=%s policy=%s\n", ch.Name, ch.Type, ptr(ch.Hooknum), ptr(ch.Priority), ptr(ch.Policy))
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return fmt.Errorf("list rules of %s: %w", ch.Name, err)
			}
			for _, r := range rules {
				j, _ := json.Marshal(r.Exprs)
				fmt.Fprintf(b, "    rule %x %s\n", r.UserData, j)
			}
		}
		sets, err := c.GetSets(t)
		if err != nil {
			return fmt.Errorf("list sets of %s: %w", t.Name, err)
		}
		slices.SortFunc(sets, func(a, b *nftables.Set) int { return strings.Compare(a.Name, b.Name) })
		for _, s := range sets {
			fmt.Fprintf(b, "  set %s key=%s map=%v\n", s.Name, s.KeyType.Name, s.IsMap)
			elems, err := c.GetSetElements(s)
			if err != nil {
				return fmt.Errorf("list elements of %s: %w", s.Name, err)
			}
			lines := make([]string, 0, len(elems))
			for _, e := range elems {
				lines = append(lines, fmt.Sprintf("    elem %x:%x %v %s", e.Key, e.Val, e.VerdictData, e.Comment))
			}
			slices.Sort(lines)
			for _, l := range lines {
				b.WriteString(l + "\n")
			}
		}
	}
	return nil
}

func ptr[T any](p *T) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprint(*p)
}

func linkSnapshot(b *strings.Builder, fd int) error {
	h, err := vnl.NewHandleAt(netns.NsHandle(fd))
	if err != nil {
		return err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	slices.SortFunc(links, func(a, b vnl.Link) int { return a.Attrs().Index - b.Attrs().Index })
	for _, l := range links {
		a := l.Attrs()
		fmt.Fprintf(b, "link %d %s %s up=%v\n", a.Index, a.Name, l.Type(), a.Flags&unix.IFF_UP != 0)
		addrs, err := h.AddrList(l, vnl.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", a.Name, err)
		}
		var lines []string
		for _, ad := range addrs {
			lines = append(lines, "  addr "+ad.IPNet.String())
		}
		slices.Sort(lines)
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	return nil
}
