package ipvs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/ctclean"
	"github.com/svcplane/svcplane/internal/ipvsnl"
	"github.com/svcplane/svcplane/internal/kstate"
	"github.com/svcplane/svcplane/internal/netnsutil"
)

// virtual is a virtual server and its real servers, by address:port and
// weight.
type virtual struct {
	svc   ipvsnl.Service
	dests map[netip.AddrPort]uint32
	name  string // the service port, for errors
}

// plan is the desired kernel state.
type plan struct {
	virtuals map[ipvsnl.Key]*virtual
	addrs    map[netip.Addr]bool
	elems    map[elemKey]string
}

// sysctls are the per-namespace IPVS settings kube-proxy's IPVS mode
// uses: conntrack so that netfilter sees (and can masquerade) IPVS
// connections; connections to a removed real server expire instead of
// hanging; persistence templates of a quiescent server expire.
var sysctls = [][2]string{
	{"net/ipv4/vs/conntrack", "1"},
	{"net/ipv4/vs/expire_nodest_conn", "1"},
	{"net/ipv4/vs/expire_quiescent_template", "1"},
	{"net/ipv4/ip_forward", "1"},
}

// Sync makes IPVS, the device and the table match desired. The first Sync
// reads what IPVS holds on this Dataplane's addresses and rebuilds the
// table; later ones send only the operations that changed. An invalid
// State returns its validation error and changes nothing.
func (d *Dataplane) Sync(ctx context.Context, desired *dataplane.State) error {
	if err := desired.Validate(); err != nil {
		return fmt.Errorf("ipvs: invalid state, nothing changed: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ipvs == nil {
		return errClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ipvs: sync not started: %w", err)
	}
	if !d.sysctls {
		if err := d.ns.Do(func() error {
			for _, kv := range sysctls {
				if err := netnsutil.SetSysctl(kv[0], kv[1]); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("ipvs: set sysctls: %w", err)
		}
		c := d.cfg
		if c.TCPTimeout > 0 || c.TCPFinTimeout > 0 || c.UDPTimeout > 0 {
			if err := d.ipvs.SetTimeouts(secs(c.TCPTimeout), secs(c.TCPFinTimeout), secs(c.UDPTimeout)); err != nil {
				return err
			}
		}
		d.sysctls = true
	}
	dev, err := d.device()
	if err != nil {
		return err
	}
	nodeAddrs, err := d.nodeAddrs(dev)
	if err != nil {
		return err
	}
	want := d.plan(desired, nodeAddrs)
	if d.applied != nil {
		// Were our virtual servers changed behind our back? One dump
		// tells; then read them again.
		if changed, err := d.servicesChanged(); err != nil || changed {
			d.applied = nil
		}
	}
	if d.applied == nil {
		if err := d.load(dev, want); err != nil {
			return err
		}
	}
	rebuild := d.elems == nil
	if !rebuild {
		// Has another program committed to nftables since we did? Then
		// check our table is whole.
		if g, err := kstate.Generation(d.ns.Fd()); err != nil || g != d.lastGen {
			if ok, _ := d.tableIntact(); !ok {
				rebuild = true
			} else {
				d.lastGen = g
			}
		}
	} else if elems, ok := d.adoptTable(); ok {
		d.elems, rebuild = elems, false
	}

	// Addresses first, so IPVS and the reject rule see them together.
	for a := range want.addrs {
		if !d.addrs[a] {
			if err := d.nl.AddrReplace(dev, hostAddr(a)); err != nil {
				return fmt.Errorf("ipvs: add %s to %s: %w", a, d.cfg.Device, err)
			}
			d.addrs[a] = true
		}
	}
	if err := d.syncTable(rebuild, want.elems); err != nil {
		return err
	}
	stale, err := d.syncVirtuals(want.virtuals)
	if err != nil {
		return err
	}
	for a := range d.addrs {
		if !want.addrs[a] {
			if err := d.nl.AddrDel(dev, hostAddr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("ipvs: remove %s from %s: %w", a, d.cfg.Device, err)
			}
			delete(d.addrs, a)
		}
	}
	if err := ctclean.Delete(d.ns.Fd(), stale); err != nil {
		return fmt.Errorf("ipvs: virtual servers applied, but %w", err)
	}
	return nil
}

// device returns the dummy device, creating it when missing.
func (d *Dataplane) device() (netlink.Link, error) {
	l, err := d.nl.LinkByName(d.cfg.Device)
	if err == nil {
		if l.Type() != "dummy" {
			return nil, fmt.Errorf("ipvs: link %s exists and is a %s, not ours (a dummy); choose another Config.Device", d.cfg.Device, l.Type())
		}
		return l, nil
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return nil, fmt.Errorf("ipvs: look up %s: %w", d.cfg.Device, err)
	}
	if err := d.nl.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: d.cfg.Device}}); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return nil, fmt.Errorf("ipvs: create dummy link %s: %w (the kernel lacks CONFIG_DUMMY)", d.cfg.Device, dataplane.ErrUnsupported)
		}
		return nil, fmt.Errorf("ipvs: create dummy link %s: %w", d.cfg.Device, err)
	}
	return d.nl.LinkByName(d.cfg.Device)
}

// nodeAddrs returns the addresses NodePorts listen on: the namespace's
// addresses but loopback, link-local and the device's, filtered by
// Node.NodePortAddrs when set.
func (d *Dataplane) nodeAddrs(dev netlink.Link) ([]netip.Addr, error) {
	list, err := d.nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("ipvs: list addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range list {
		if a.LinkIndex == dev.Attrs().Index {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || slices.Contains(out, ip) {
			continue
		}
		if n := d.cfg.Node.NodePortAddrs; len(n) > 0 && !slices.ContainsFunc(n, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// secs rounds a positive timeout up to whole seconds.
func secs(t time.Duration) uint32 {
	if t <= 0 {
		return 0
	}
	return uint32((t + time.Second - 1) / time.Second)
}

func hostAddr(a netip.Addr) *netlink.Addr {
	bits := 32
	if a.Is6() {
		bits = 128
	}
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, bits)}, Flags: unix.IFA_F_NODAD}
}

// plan computes the desired virtual servers, device addresses and set
// elements.
func (d *Dataplane) plan(desired *dataplane.State, nodeAddrs []netip.Addr) plan {
	p := plan{virtuals: map[ipvsnl.Key]*virtual{}, addrs: map[netip.Addr]bool{}, elems: map[elemKey]string{}}
	el := func(f int, s setID, key string) { p.elems[elemKey{sid(f, s), key}] = "" }
	for i := range desired.Ports {
		sp := &desired.Ports[i]
		if len(sp.ClusterIPs) == 0 {
			continue
		}
		cat := dataplane.Categorize(sp, &d.cfg.Node)
		add := func(a netip.Addr, port uint16, eps []dataplane.Endpoint) {
			v := &virtual{name: sp.Name.String(), dests: map[netip.AddrPort]uint32{}, svc: ipvsnl.Service{
				Addr: a, Protocol: uint8(sp.Protocol), Port: port, Scheduler: d.cfg.Scheduler,
			}}
			if sp.Affinity > 0 {
				v.svc.Flags = ipvsnl.FlagPersistent
				v.svc.Timeout = uint32(sp.Affinity / time.Second)
			}
			for _, e := range eps {
				if e.Addr.Is4() == a.Is4() {
					v.dests[e.AddrPort()] = 1
					b := e.Addr.AsSlice()
					el(famOf(e.Addr), setHairpin, string(slices.Concat(b, b)))
				}
			}
			p.virtuals[v.svc.Key()] = v
		}
		families := map[int]bool{}
		for _, cip := range sp.ClusterIPs {
			f := famOf(cip)
			families[f] = true
			p.addrs[cip] = true
			add(cip, sp.Port, cat.Internal(sp))
			el(f, setVIPs, string(cip.AsSlice()))
			el(f, setFrontends, frontendKey(cip, sp.Protocol, sp.Port))
			el(f, setClusterFronts, frontendKey(cip, sp.Protocol, sp.Port))
		}
		for _, a := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
			f := famOf(a)
			if !families[f] {
				continue
			}
			p.addrs[a] = true
			add(a, sp.Port, cat.External(sp))
			el(f, setVIPs, string(a.AsSlice()))
			el(f, setFrontends, frontendKey(a, sp.Protocol, sp.Port))
			if !sp.ExternalLocal {
				el(f, setExternalCluster, frontendKey(a, sp.Protocol, sp.Port))
			}
		}
		for _, a := range sp.LoadBalancerIPs {
			f := famOf(a)
			var ranges []netip.Prefix
			for _, r := range sp.SourceRanges {
				if famOf(r.Addr()) == f {
					ranges = append(ranges, r.Masked())
				}
			}
			if !families[f] || len(ranges) == 0 {
				continue // no ranges of this family: any source
			}
			front := frontendKey(a, sp.Protocol, sp.Port)
			el(f, setFirewall, front)
			// Overlapping ranges would clash in the interval set: keep
			// the outermost, which allow the same sources.
			for _, r := range outermost(ranges) {
				p.elems[elemKey{sid(f, setFirewallAllow), front + string(r.Addr().AsSlice())}] = front + string(lastAddr(r).AsSlice())
			}
		}
		if sp.NodePort != 0 {
			for _, a := range nodeAddrs {
				if families[famOf(a)] {
					add(a, sp.NodePort, cat.External(sp))
				}
			}
			if !sp.ExternalLocal {
				for f := range families {
					el(f, setNodePortsCluster, string(nodePortKey(sp.Protocol, sp.NodePort)))
				}
			}
		}
	}
	return p
}

// load reads what IPVS holds on our addresses (and on node addresses at
// the ports we want), so the first Sync changes only what differs.
func (d *Dataplane) load(dev netlink.Link, want plan) error {
	d.addrs = map[netip.Addr]bool{}
	list, err := d.nl.AddrList(dev, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("ipvs: list addresses of %s: %w", d.cfg.Device, err)
	}
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			d.addrs[ip.Unmap()] = true
		}
	}
	svcs, err := d.ipvs.Services()
	if err != nil {
		return err
	}
	d.applied = map[ipvsnl.Key]*virtual{}
	for i := range svcs {
		s := &svcs[i]
		if _, wanted := want.virtuals[s.Key()]; !wanted && !d.addrs[s.Addr] {
			continue // not ours
		}
		v := &virtual{svc: *s, dests: map[netip.AddrPort]uint32{}, name: "existing"}
		dests, err := d.ipvs.Dests(s)
		if err != nil {
			return err
		}
		for _, dst := range dests {
			v.dests[netip.AddrPortFrom(dst.Addr, dst.Port)] = dst.Weight
		}
		d.applied[s.Key()] = v
	}
	return nil
}

// syncTable rebuilds the table when asked and then sends element
// changes, each time in one batch.
func (d *Dataplane) syncTable(rebuild bool, want map[elemKey]string) error {
	if rebuild {
		d.queueTable()
		d.elems = map[elemKey]string{}
	}
	elem := func(k elemKey, end string) nftables.SetElement {
		e := nftables.SetElement{Key: []byte(k.key)}
		if end != "" {
			e.KeyEnd = []byte(end)
		}
		return e
	}
	var add, del = map[setID][]nftables.SetElement{}, map[setID][]nftables.SetElement{}
	for k, end := range want {
		if old, ok := d.elems[k]; !ok || old != end {
			if ok {
				del[k.set] = append(del[k.set], elem(k, old))
			}
			add[k.set] = append(add[k.set], elem(k, end))
		}
	}
	for k, end := range d.elems {
		if _, ok := want[k]; !ok {
			del[k.set] = append(del[k.set], elem(k, end))
		}
	}
	if !rebuild && len(add) == 0 && len(del) == 0 {
		return nil
	}
	for s, es := range del {
		for c := range slices.Chunk(es, 500) {
			if err := d.nft.SetDeleteElements(d.sets[s], c); err != nil {
				return err
			}
		}
	}
	for s, es := range add {
		for c := range slices.Chunk(es, 500) {
			if err := d.nft.SetAddElements(d.sets[s], c); err != nil {
				return err
			}
		}
	}
	if err := d.nft.Flush(); err != nil {
		d.applied, d.elems = nil, nil // read everything again next time
		return fmt.Errorf("ipvs: commit table inet %s: %w", d.cfg.Table, err)
	}
	d.elems = maps.Clone(want)
	if g, err := kstate.Generation(d.ns.Fd()); err == nil {
		d.lastGen = g
	}
	return nil
}

// outermost returns the prefixes of rs that no other one contains, each
// once: their union is the union of rs. (The nft backend has the same.)
func outermost(rs []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for i, r := range rs {
		contains := func(strict bool) func(o netip.Prefix) bool {
			return func(o netip.Prefix) bool {
				return o.Contains(r.Addr()) && (o.Bits() < r.Bits() || !strict && o.Bits() == r.Bits())
			}
		}
		if !slices.ContainsFunc(rs[:i], contains(false)) && !slices.ContainsFunc(rs[i+1:], contains(true)) {
			out = append(out, r)
		}
	}
	return out
}

// lastAddr returns the last address of a masked prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// syncVirtuals sends the IPVS operations that make applied equal want.
func (d *Dataplane) syncVirtuals(want map[ipvsnl.Key]*virtual) ([]ctclean.Flow, error) {
	fail := func(err error) ([]ctclean.Flow, error) {
		d.applied = nil // read the kernel again next time
		return nil, err
	}
	var stale []ctclean.Flow
	staleTo := func(s *ipvsnl.Service, ep netip.Addr) {
		if s.Protocol == unix.IPPROTO_UDP {
			stale = append(stale, ctclean.Flow{IPv6: s.Addr.Is6(), Addr: s.Addr, Port: s.Port, Endpoint: ep})
		}
	}
	keys := slices.SortedFunc(maps.Keys(want), compareKeys)
	for _, k := range keys {
		w := want[k]
		have := d.applied[k]
		if have == nil {
			if err := d.ipvs.NewService(&w.svc); err != nil {
				return fail(fmt.Errorf("%s: %w", w.name, err))
			}
			have = &virtual{svc: w.svc, dests: map[netip.AddrPort]uint32{}, name: w.name}
			d.applied[k] = have
			if len(w.dests) > 0 {
				staleTo(&w.svc, netip.Addr{}) // datagrams sent before it existed
			}
		} else if have.svc != w.svc {
			if err := d.ipvs.UpdateService(&w.svc); err != nil {
				return fail(fmt.Errorf("%s: %w", w.name, err))
			}
			have.svc = w.svc
		}
		if len(have.dests) == 0 && len(w.dests) > 0 {
			staleTo(&w.svc, netip.Addr{}) // its first endpoint
		}
		for ap, weight := range w.dests {
			dst := &ipvsnl.Dest{Addr: ap.Addr(), Port: ap.Port(), Weight: weight}
			old, ok := have.dests[ap]
			switch {
			case !ok:
				if err := d.ipvs.NewDest(&w.svc, dst); err != nil {
					return fail(fmt.Errorf("%s: %w", w.name, err))
				}
			case old != weight:
				if err := d.ipvs.UpdateDest(&w.svc, dst); err != nil {
					return fail(fmt.Errorf("%s: %w", w.name, err))
				}
			default:
				continue
			}
			have.dests[ap] = weight
		}
		for ap := range have.dests {
			if _, ok := w.dests[ap]; !ok {
				if err := gone(d.ipvs.DelDest(&w.svc, &ipvsnl.Dest{Addr: ap.Addr(), Port: ap.Port()})); err != nil {
					return fail(fmt.Errorf("%s: %w", w.name, err))
				}
				delete(have.dests, ap)
				staleTo(&w.svc, ap.Addr())
			}
		}
	}
	for k, have := range d.applied {
		if _, ok := want[k]; !ok {
			if err := gone(d.ipvs.DelService(&have.svc)); err != nil {
				return fail(err)
			}
			delete(d.applied, k)
			staleTo(&have.svc, netip.Addr{})
		}
	}
	return stale, nil
}

// gone treats deleting what is already gone as done: IPVS answers ESRCH
// for a missing service and ENOENT for a missing real server.
func gone(err error) error {
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

func compareKeys(a, b ipvsnl.Key) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if a.Protocol != b.Protocol {
		return int(a.Protocol) - int(b.Protocol)
	}
	return int(a.Port) - int(b.Port)
}

// Cleanup deletes this Dataplane's virtual servers, device and table, and
// nothing else.
func (d *Dataplane) Cleanup(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ipvs == nil {
		return errClosed
	}
	var errs []error
	ours := map[netip.Addr]bool{}
	if l, err := d.nl.LinkByName(d.cfg.Device); err == nil {
		list, _ := d.nl.AddrList(l, netlink.FAMILY_ALL)
		for _, a := range list {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				ours[ip.Unmap()] = true
			}
		}
		errs = append(errs, d.nl.LinkDel(l))
	}
	if svcs, err := d.ipvs.Services(); err == nil {
		for i := range svcs {
			s := &svcs[i]
			if _, applied := d.applied[s.Key()]; applied || ours[s.Addr] {
				errs = append(errs, gone(d.ipvs.DelService(s)))
			}
		}
	} else {
		errs = append(errs, err)
	}
	d.nft.AddTable(d.table)
	d.nft.DelTable(d.table)
	errs = append(errs, d.nft.Flush())
	d.applied, d.addrs, d.elems = nil, nil, nil
	return errors.Join(errs...)
}
