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
	"github.com/svcplane/svcplane/internal/nftbatch"
	"github.com/svcplane/svcplane/internal/prefixes"
)

// virtual is a virtual server and its real servers, by address:port and
// weight.
type virtual struct {
	svc   ipvsnl.Service
	dests map[netip.AddrPort]uint32
	port  dataplane.PortName // the service port, for errors; zero: found in the kernel
}

// name names the virtual server's service port in errors.
func (v *virtual) name() string {
	if v.port == (dataplane.PortName{}) {
		return "existing"
	}
	return v.port.String()
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
// reads what IPVS holds on this Dataplane's addresses and adopts the
// table; later ones send only the operations that changed. An invalid
// State returns its validation error and changes nothing.
//
// Sync reads the kernel first and checks ctx once more before it writes
// anything: a Sync cancelled until then changes nothing. Once it writes,
// it finishes (IPVS has no transactions; stopping halfway would leave a
// service half-programmed).
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

	// Read what the kernel holds.
	dev, err := d.lookupDevice()
	if err != nil {
		return err
	}
	nodeAddrs, err := d.nodeAddrs(linkIndex(dev))
	if err != nil {
		return err
	}
	want := d.plan(desired, nodeAddrs)
	junk, err := d.readDeviceAddrs(dev)
	if err != nil {
		return err
	}
	rebuild := false
	if d.elems == nil {
		if elems, ok := d.adoptTable(); ok {
			d.elems = elems
		} else {
			rebuild = true
		}
	} else if g, err := kstate.Generation(d.ns.Fd()); err != nil || g != d.lastGen {
		// Another program committed to nftables since we did: check
		// that our table is whole and read its elements again, so
		// that whatever was added to or removed from its sets behind
		// our back is undone.
		if ok, _ := d.tableIntact(); !ok {
			rebuild = true
		} else if elems, err := d.readElems(); err != nil {
			rebuild = true
		} else {
			d.elems, d.lastGen = elems, g
		}
	}
	if d.applied != nil {
		// Were our virtual servers changed behind our back, or is
		// another program's where ours go? One dump tells; then read
		// them again.
		if changed, err := d.servicesChanged(want.virtuals); err != nil || changed {
			d.applied = nil
		}
	}
	if d.applied == nil {
		if err := d.load(want, nodeAddrs); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ipvs: sync cancelled before it changed anything: %w", err)
	}

	// Write. Until the virtual servers are all in place, every change
	// is logged with its inverse: a failure undoes them, so that a Sync
	// the kernel refuses leaves the previous state (an IPVS request
	// refused halfway, say EINVAL for a real server whose address the
	// local routing table does not call unicast).
	var undo undoLog
	failed := func(err error) error {
		if uerr := undo.run(); uerr != nil {
			d.applied, d.elems = nil, nil // read everything again next time
			return errors.Join(err, fmt.Errorf("ipvs: undoing the failed Sync: %w", uerr))
		}
		return fmt.Errorf("%w (nothing changed: the Sync was undone)", err)
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
	if dev == nil {
		if dev, err = d.createDevice(); err != nil {
			return err
		}
		undo.add(func() error { return d.nl.LinkDel(dev) })
	}
	// Addresses first, so IPVS and the reject rule see them together;
	// many per request.
	var adds []netip.Addr
	for a := range want.addrs {
		if !d.addrs[a] {
			adds = append(adds, a)
		}
	}
	slices.SortFunc(adds, netip.Addr.Compare)
	if err := d.rt.Replace(dev.Attrs().Index, adds, unix.IFA_F_NODAD, func(a netip.Addr, err error) error {
		if err != nil {
			return fmt.Errorf("ipvs: add %s to %s: %w", a, d.cfg.Device, err)
		}
		d.addrs[a] = true
		undo.add(func() error {
			delete(d.addrs, a)
			return d.nl.AddrDel(dev, hostAddr(a))
		})
		return nil
	}); err != nil {
		return failed(err)
	}
	oldElems, hadTable := d.elems, !rebuild || d.tableExists()
	if err := d.syncTable(rebuild, want.elems); err != nil {
		return failed(err)
	}
	undo.add(func() error {
		if !hadTable {
			d.elems = nil
			d.nft.DelTable(d.table)
			return d.nft.Flush()
		}
		if oldElems == nil {
			oldElems = map[elemKey]string{}
		}
		return d.syncTable(false, oldElems)
	})
	stale, err := d.syncVirtuals(want.virtuals, &undo)
	if err != nil {
		return failed(err)
	}
	for a := range d.addrs {
		if !want.addrs[a] {
			if err := d.nl.AddrDel(dev, hostAddr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("ipvs: remove %s from %s: %w", a, d.cfg.Device, err)
			}
			delete(d.addrs, a)
		}
	}
	for _, a := range junk {
		if err := d.nl.AddrDel(dev, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("ipvs: remove %s, which is not ours, from %s: %w", a.IPNet, d.cfg.Device, err)
		}
	}
	if err := ctclean.Delete(d.ns.Fd(), stale); err != nil {
		return fmt.Errorf("ipvs: virtual servers applied, but %w", err)
	}
	return nil
}

// lookupDevice returns the dummy device, or nil when it is missing.
func (d *Dataplane) lookupDevice() (netlink.Link, error) {
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
	return nil, nil
}

// createDevice creates the dummy device.
func (d *Dataplane) createDevice() (netlink.Link, error) {
	if err := d.nl.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: d.cfg.Device}}); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return nil, fmt.Errorf("ipvs: create dummy link %s: %w (the kernel lacks CONFIG_DUMMY)", d.cfg.Device, dataplane.ErrUnsupported)
		}
		return nil, fmt.Errorf("ipvs: create dummy link %s: %w", d.cfg.Device, err)
	}
	return d.nl.LinkByName(d.cfg.Device)
}

func linkIndex(l netlink.Link) int {
	if l == nil {
		return -1
	}
	return l.Attrs().Index
}

// readDeviceAddrs sets d.addrs to the service IPs on the device (host
// prefixes) and returns the other addresses someone put there, which the
// Sync removes: the device and what is on it are ours.
func (d *Dataplane) readDeviceAddrs(dev netlink.Link) ([]netlink.Addr, error) {
	d.addrs = map[netip.Addr]bool{}
	if dev == nil {
		return nil, nil
	}
	list, err := d.addrList(dev)
	if err != nil {
		return nil, fmt.Errorf("ipvs: list addresses of %s: %w", d.cfg.Device, err)
	}
	var junk []netlink.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.IPNet == nil {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() {
			continue // the kernel's own, if the device is up
		}
		if ones, bits := a.Mask.Size(); ones != bits || bits != ip.BitLen() {
			junk = append(junk, a)
			continue
		}
		d.addrs[ip] = true
	}
	return junk, nil
}

// addrList lists the addresses of link (nil: of every link). A dump
// that addresses changed during (another program's, say) comes back
// with ErrDumpInterrupted and may be partial: it is read again.
func (d *Dataplane) addrList(link netlink.Link) ([]netlink.Addr, error) {
	for i := 0; ; i++ {
		list, err := d.nl.AddrList(link, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 4 {
			return list, err
		}
	}
}

// nodeAddrs returns the addresses NodePorts listen on: the namespace's
// addresses but loopback, link-local and the device's (index devIndex),
// filtered by Node.NodePortAddrs when set.
func (d *Dataplane) nodeAddrs(devIndex int) ([]netip.Addr, error) {
	list, err := d.addrList(nil)
	if err != nil {
		return nil, fmt.Errorf("ipvs: list addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range list {
		if a.LinkIndex == devIndex {
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
	// Room for a virtual server per service port, and for its cluster
	// IP's elements: maps that grow as they fill rehash each time. (Not
	// for the endpoints' hairpin elements: endpoints share addresses,
	// and the elements outlive the Sync as d.elems.)
	n := len(desired.Ports)
	p := plan{virtuals: make(map[ipvsnl.Key]*virtual, n), addrs: make(map[netip.Addr]bool, n), elems: make(map[elemKey]string, 3*n)}
	el := func(f int, s setID, key string) { p.elems[elemKey{sid(f, s), key}] = "" }
	for i := range desired.Ports {
		sp := &desired.Ports[i]
		if len(sp.ClusterIPs) == 0 {
			continue
		}
		cat := dataplane.Categorize(sp, &d.cfg.Node)
		add := func(a netip.Addr, port uint16, eps []dataplane.Endpoint, local bool) {
			v := &virtual{port: sp.Name, dests: make(map[netip.AddrPort]uint32, len(eps)), svc: ipvsnl.Service{
				Addr: a, Protocol: uint8(sp.Protocol), Port: port, Scheduler: d.cfg.Scheduler,
			}}
			if sp.Affinity > 0 {
				v.svc.Flags = ipvsnl.FlagPersistent
				v.svc.Timeout = uint32(sp.Affinity / time.Second)
			}
			for _, e := range eps {
				if e.Addr.Is4() == a.Is4() {
					v.dests[e.AddrPort()] = 1
					el(famOf(e.Addr), setHairpin, hairpinKey(e.Addr))
				}
			}
			// A terminating endpoint that still serves but is not used
			// (ready ones exist) keeps a real server of weight 0: no new
			// connections or flows, but those it has go on.
			for _, e := range sp.Endpoints {
				_, used := v.dests[e.AddrPort()]
				if !used && e.Serving && e.Terminating && e.Addr.Is4() == a.Is4() && (!local || e.NodeName == d.cfg.Node.Name) {
					v.dests[e.AddrPort()] = 0
				}
			}
			p.virtuals[v.svc.Key()] = v
		}
		var families [2]bool // by famOf
		for _, cip := range sp.ClusterIPs {
			f := famOf(cip)
			families[f] = true
			p.addrs[cip] = true
			add(cip, sp.Port, cat.Internal(sp), sp.InternalLocal)
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
			add(a, sp.Port, cat.External(sp), sp.ExternalLocal)
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
			for _, r := range prefixes.Outermost(ranges) {
				p.elems[elemKey{sid(f, setFirewallAllow), front + string(r.Addr().AsSlice())}] = front + string(prefixes.Last(r).AsSlice())
			}
		}
		if sp.NodePort != 0 {
			for _, a := range nodeAddrs {
				if families[famOf(a)] {
					add(a, sp.NodePort, cat.External(sp), sp.ExternalLocal)
				}
			}
			for f, ok := range families {
				if ok {
					el(f, setNodePorts, string(nodePortKey(sp.Protocol, sp.NodePort)))
				}
			}
			if !sp.ExternalLocal {
				for f, ok := range families {
					if ok {
						el(f, setNodePortsCluster, string(nodePortKey(sp.Protocol, sp.NodePort)))
					}
				}
			}
		}
	}
	return p
}

// load reads what IPVS holds of ours: the virtual servers on the
// device's addresses, at the keys the Sync programs, and on node
// addresses at the NodePorts our table records (those a predecessor
// programmed), so that the first Sync changes only what differs.
func (d *Dataplane) load(want plan, nodeAddrs []netip.Addr) error {
	svcs, err := d.ipvs.Services()
	if err != nil {
		return err
	}
	d.applied = map[ipvsnl.Key]*virtual{}
	for i := range svcs {
		s := &svcs[i]
		if _, wanted := want.virtuals[s.Key()]; !wanted && !d.addrs[s.Addr] && !d.ourNodePort(s, nodeAddrs, d.elems) {
			continue // not ours
		}
		v := &virtual{svc: *s, dests: map[netip.AddrPort]uint32{}}
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

// ourNodePort reports whether s is on a node address at a NodePort that
// elems (our table's) records.
func (d *Dataplane) ourNodePort(s *ipvsnl.Service, nodeAddrs []netip.Addr, elems map[elemKey]string) bool {
	if !slices.Contains(nodeAddrs, s.Addr) {
		return false
	}
	_, ok := elems[elemKey{sid(famOf(s.Addr), setNodePorts), string(nodePortKey(dataplane.Protocol(s.Protocol), s.Port))}]
	return ok
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
	// The elements to add and delete, by set. When the table is empty
	// (a first Sync) every element is added: room for them at once.
	var add, del [2 * setsPerFamily][]nftables.SetElement
	if len(d.elems) == 0 {
		var n [len(add)]int
		for k := range want {
			n[k.set]++
		}
		for s := range add {
			add[s] = make([]nftables.SetElement, 0, n[s])
		}
	}
	changed := false
	for k, end := range want {
		if old, ok := d.elems[k]; !ok || old != end {
			if ok {
				del[k.set] = append(del[k.set], elem(k, old))
			}
			add[k.set] = append(add[k.set], elem(k, end))
			changed = true
		}
	}
	for k, end := range d.elems {
		if _, ok := want[k]; !ok {
			del[k.set] = append(del[k.set], elem(k, end))
			changed = true
		}
	}
	if !rebuild && !changed {
		return nil
	}
	// The batch: the elements, and the table (1 MiB at most, a few
	// hundred messages) when it is rebuilt.
	bytes, msgs := 1<<20, 256
	for _, m := range [][len(add)][]nftables.SetElement{add, del} {
		for _, es := range m {
			if len(es) == 0 {
				continue
			}
			msgs++
			for _, e := range es {
				bytes += nftbatch.ElemSize(e)
			}
		}
	}
	msgs += bytes / nftbatch.MaxChunk
	if err := d.sock.Fit(bytes, msgs); err != nil {
		return fmt.Errorf("ipvs: size the nftables socket buffers for %d bytes: %w", bytes, err)
	}
	for s, es := range del {
		if len(es) == 0 {
			continue
		}
		if err := nftbatch.Chunks(es, func(c []nftables.SetElement) error { return d.nft.SetDeleteElements(d.sets[s], c) }); err != nil {
			return err
		}
	}
	for s, es := range add {
		if len(es) == 0 {
			continue
		}
		if err := nftbatch.Chunks(es, func(c []nftables.SetElement) error { return d.nft.SetAddElements(d.sets[s], c) }); err != nil {
			return err
		}
	}
	if err := d.nft.Flush(); err != nil {
		d.applied, d.elems = nil, nil // read everything again next time
		return fmt.Errorf("ipvs: commit table inet %s: %w", d.cfg.Table, err)
	}
	d.elems = want // the caller's no more: a plan's, or the d.elems of before
	if g, err := kstate.Generation(d.ns.Fd()); err == nil {
		d.lastGen = g
	}
	return nil
}

// syncVirtuals sends the IPVS operations that make applied equal want,
// pipelined (ipvsnl.Batch): many requests per sendmsg, their acks read
// after. Each request's callback runs when its ack is read, in order,
// and logs the inverse of a request that succeeded; a refused one fails
// the Sync, which then undoes those. applied is updated as requests are
// queued: when one fails, it is dropped and read again next time.
func (d *Dataplane) syncVirtuals(want map[ipvsnl.Key]*virtual, undo *undoLog) ([]ctclean.Flow, error) {
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
	b := d.ipvs.Batch()
	keys := slices.SortedFunc(maps.Keys(want), compareKeys)
	var adds addOps
	for _, k := range keys {
		w := want[k]
		// done returns a callback that names the service port in an
		// error and otherwise logs inverse.
		done := func(inverse func() error) func(error) error {
			return func(err error) error {
				if err != nil {
					return fmt.Errorf("%s: %w", w.name(), err)
				}
				undo.add(inverse)
				return nil
			}
		}
		have := d.applied[k]
		fresh := have == nil
		if fresh {
			// A new virtual server: it and its real servers are all
			// added, and w is what is applied. Those requests, the bulk
			// of a first Sync, are logged without a closure each
			// (addOp).
			o := adds.next(d, undo, w, nil)
			if err := b.NewService(&w.svc, o.done); err != nil {
				return fail(err)
			}
			d.applied[k] = w
			if serving(w.dests) {
				staleTo(&w.svc, netip.Addr{}) // datagrams sent before it existed
			}
		} else if have.svc != w.svc {
			svc, prev := w.svc, have.svc
			if err := b.UpdateService(&svc, done(func() error { return d.ipvs.UpdateService(&prev) })); err != nil {
				return fail(err)
			}
			have.svc = w.svc
		}
		if (fresh || !serving(have.dests)) && serving(w.dests) {
			staleTo(&w.svc, netip.Addr{}) // its first endpoint
		}
		for ap, weight := range w.dests {
			if fresh {
				o := adds.next(d, undo, w, &ipvsnl.Dest{Addr: ap.Addr(), Port: ap.Port(), Weight: weight})
				if err := b.NewDest(&w.svc, &o.dst, o.done); err != nil {
					return fail(err)
				}
				continue
			}
			old, ok := have.dests[ap]
			if ok && old == weight {
				continue
			}
			dst := &ipvsnl.Dest{Addr: ap.Addr(), Port: ap.Port(), Weight: weight}
			svc := w.svc
			var err error
			if !ok {
				err = b.NewDest(&svc, dst, done(func() error { return gone(d.ipvs.DelDest(&svc, dst)) }))
			} else {
				err = b.UpdateDest(&svc, dst, done(func() error {
					return d.ipvs.UpdateDest(&svc, &ipvsnl.Dest{Addr: ap.Addr(), Port: ap.Port(), Weight: old})
				}))
			}
			if err != nil {
				return fail(err)
			}
			have.dests[ap] = weight
		}
		if fresh {
			continue // nothing leaves
		}
		if err := d.leave(b, w, have, staleTo, undo); err != nil {
			return fail(err)
		}
	}
	for k, have := range d.applied {
		if _, ok := want[k]; ok {
			continue
		}
		err := b.DelService(&have.svc, func(err error) error {
			if err := gone(err); err != nil {
				return err
			}
			undo.add(func() error {
				if err := d.ipvs.NewService(&have.svc); err != nil {
					return err
				}
				for ap, weight := range have.dests {
					if err := d.ipvs.NewDest(&have.svc, &ipvsnl.Dest{Addr: ap.Addr(), Port: ap.Port(), Weight: weight}); err != nil {
						return err
					}
				}
				return nil
			})
			return nil
		})
		if err != nil {
			return fail(err)
		}
		delete(d.applied, k)
		staleTo(&have.svc, netip.Addr{})
	}
	if err := b.Flush(); err != nil {
		return fail(err)
	}
	return stale, nil
}

// serving reports whether dests has a real server of non-zero weight.
func serving(dests map[netip.AddrPort]uint32) bool {
	for _, w := range dests {
		if w != 0 {
			return true
		}
	}
	return false
}

// leave queues on b what takes the real servers of have that w no longer
// lists (their endpoints left the State, or serve no more) out of
// service. A TCP real server that carries connections drains, as in
// kube-proxy's IPVS mode: it gets weight 0 (no new connections; its open
// ones go on), and a later Sync deletes it once IPVS counts no
// connection to it (TIME_WAIT included). One that carries none (one read
// of the service's real servers tells) is deleted at once, as are UDP
// and SCTP real servers: their flows move to another endpoint
// (vs/expire_nodest_conn; the package doc says what a moving UDP flow
// loses), and stale is told their conntrack entries.
func (d *Dataplane) leave(b *ipvsnl.Batch, w, have *virtual, stale func(*ipvsnl.Service, netip.Addr), undo *undoLog) error {
	var leaving []netip.AddrPort
	for ap := range have.dests {
		if _, ok := w.dests[ap]; !ok {
			leaving = append(leaving, ap)
		}
	}
	if len(leaving) == 0 {
		return nil
	}
	named := func(err error) error { return fmt.Errorf("%s: %w", w.name(), err) }
	drain := w.svc.Protocol == unix.IPPROTO_TCP
	busy := map[netip.AddrPort]bool{}
	if drain {
		ds, err := d.ipvs.Dests(&w.svc)
		if err != nil {
			return named(err)
		}
		for _, x := range ds {
			busy[netip.AddrPortFrom(x.Addr, x.Port)] = x.ActiveConns+x.InactiveConns > 0
		}
	}
	slices.SortFunc(leaving, netip.AddrPort.Compare)
	svc := w.svc
	for _, ap := range leaving {
		dst := &ipvsnl.Dest{Addr: ap.Addr(), Port: ap.Port()}
		was := &ipvsnl.Dest{Addr: ap.Addr(), Port: ap.Port(), Weight: have.dests[ap]}
		var err error
		switch {
		case drain && busy[ap] && was.Weight != 0:
			err = b.UpdateDest(&svc, dst, func(err error) error {
				if err != nil {
					return named(err)
				}
				undo.add(func() error { return d.ipvs.UpdateDest(&svc, was) })
				return nil
			})
			have.dests[ap] = 0
		case drain && busy[ap]:
			// Draining: connections remain.
		default:
			err = b.DelDest(&svc, dst, func(err error) error {
				if err := gone(err); err != nil {
					return named(err)
				}
				undo.add(func() error { return d.ipvs.NewDest(&svc, was) })
				return nil
			})
			delete(have.dests, ap)
			stale(&svc, ap.Addr())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// addOp is a request adding a virtual server (dst is zero) or one of its
// real servers, and its own inverse: its callback logs it in undo.
type addOp struct {
	d    *Dataplane
	undo *undoLog
	w    *virtual // the virtual server, in the plan (it does not change during the Sync)
	dst  ipvsnl.Dest
}

// addOps hands out addOps from slabs: one allocation per many requests.
type addOps []addOp

func (s *addOps) next(d *Dataplane, undo *undoLog, w *virtual, dst *ipvsnl.Dest) *addOp {
	if len(*s) == cap(*s) {
		*s = make([]addOp, 0, 512)
	}
	*s = append(*s, addOp{d: d, undo: undo, w: w})
	o := &(*s)[len(*s)-1]
	if dst != nil {
		o.dst = *dst
	}
	return o
}

// done is the request's callback: it names the service port in an error
// and otherwise logs the inverse.
func (o *addOp) done(err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", o.w.name(), err)
	}
	o.undo.push(o)
	return nil
}

// revert deletes what the request added.
func (o *addOp) revert() error {
	if o.dst.Addr.IsValid() {
		return gone(o.d.ipvs.DelDest(&o.w.svc, &o.dst))
	}
	return gone(o.d.ipvs.DelService(&o.w.svc))
}

// undoLog holds the inverses of the changes a Sync made so far.
type undoLog []reverter

// reverter undoes one change.
type reverter interface{ revert() error }

type revertFunc func() error

func (f revertFunc) revert() error { return f() }

func (u *undoLog) add(f func() error) { *u = append(*u, revertFunc(f)) }

func (u *undoLog) push(r reverter) { *u = append(*u, r) }

// run undoes the changes, newest first, and reports what it could not
// undo.
func (u *undoLog) run() error {
	var errs []error
	for i := len(*u) - 1; i >= 0; i-- {
		errs = append(errs, (*u)[i].revert())
	}
	*u = nil
	return errors.Join(errs...)
}

func (d *Dataplane) tableExists() bool {
	_, err := d.nft.ListTableOfFamily(d.cfg.Table, nftables.TableFamilyINet)
	return err == nil
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
	devIndex := -1
	if l, err := d.nl.LinkByName(d.cfg.Device); err == nil {
		devIndex = l.Attrs().Index
		list, _ := d.addrList(l)
		for _, a := range list {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				ours[ip.Unmap()] = true
			}
		}
	}
	// The NodePorts our table records tell our virtual servers on node
	// addresses, also those a predecessor programmed.
	nodeAddrs, _ := d.nodeAddrs(devIndex)
	nodePorts := map[elemKey]string{}
	if _, err := d.nft.ListTableOfFamily(d.cfg.Table, nftables.TableFamilyINet); err == nil {
		for f := v4; f <= v6; f++ {
			es, _ := d.nft.GetSetElements(d.sets[sid(f, setNodePorts)])
			for _, e := range es {
				nodePorts[elemKey{sid(f, setNodePorts), string(e.Key)}] = ""
			}
		}
	}
	if svcs, err := d.ipvs.Services(); err == nil {
		for i := range svcs {
			s := &svcs[i]
			if _, applied := d.applied[s.Key()]; applied || ours[s.Addr] || d.ourNodePort(s, nodeAddrs, nodePorts) {
				errs = append(errs, gone(d.ipvs.DelService(s)))
			}
		}
	} else {
		errs = append(errs, err)
	}
	if l, err := d.nl.LinkByName(d.cfg.Device); err == nil {
		errs = append(errs, d.nl.LinkDel(l))
	}
	d.nft.AddTable(d.table)
	d.nft.DelTable(d.table)
	errs = append(errs, d.nft.Flush())
	d.applied, d.addrs, d.elems = nil, nil, nil
	return errors.Join(errs...)
}
