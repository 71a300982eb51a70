package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/ipvsnl"
	"github.com/svcplane/svcplane/ipvs"
)

// The ipvs backend.
//
// ipvs.Dataplane syncs and cleans up. It has no Plan and no Show yet, so
// svcctl reads IPVS itself (read-only, over svcplane's IPVS netlink
// client): virtual servers, their real servers and the kernel's
// connection counters. IPVS objects carry no names: svcctl names a
// virtual server after the manifests' service port with that frontend,
// when it has manifests (plan, apply, and show -f). NodePorts are one
// virtual server per node address; plan compares them per NodePort.

// ipvsBackend adapts *ipvs.Dataplane.
type ipvsBackend struct {
	dp     *ipvs.Dataplane
	cfg    backendConfig
	nsFd   int // -1: our own namespace
	rd     *ipvsnl.Conn
	nl     *netlink.Handle
	device string
}

func newIPVSBackend(cfg backendConfig) (backend, error) {
	table := cfg.Table
	if table == "" {
		table = ipvs.DefaultTable
	}
	dp, err := ipvs.New(ipvs.Config{Node: cfg.Node, NetNS: cfg.NetNS, Table: table})
	if errors.Is(err, dataplane.ErrUnsupported) {
		return nil, fmt.Errorf("--backend ipvs: this kernel (Linux %s) has no IPVS. Use a kernel with IPVS (CONFIG_IP_VS, the ip_vs module loaded), or --backend nft.\n  (%w)", kernelRelease(), err)
	}
	if err != nil {
		return nil, err
	}
	b := &ipvsBackend{dp: dp, cfg: cfg, nsFd: -1, device: ipvs.DefaultDevice}
	b.cfg.Table = table
	fail := func(err error) (backend, error) {
		b.Close()
		return nil, err
	}
	if cfg.NetNS != "" {
		if b.nsFd, err = unix.Open(cfg.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return fail(fmt.Errorf("open network namespace %s: %w", cfg.NetNS, err))
		}
		b.nl, err = netlink.NewHandleAt(netns.NsHandle(b.nsFd))
	} else {
		b.nl, err = netlink.NewHandle()
	}
	if err != nil {
		return fail(fmt.Errorf("open rtnetlink: %w", err))
	}
	if b.rd, err = ipvsnl.Dial(b.nsFd); err != nil {
		return fail(err)
	}
	return b, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func (b *ipvsBackend) Describe() string {
	return "IPVS (device " + b.device + ", table inet " + b.cfg.Table + ")"
}

func (b *ipvsBackend) Sync(ctx context.Context, st *dataplane.State) error { return b.dp.Sync(ctx, st) }

// Cleanup removes what the ipvs backend recognises as its own: the
// virtual servers on its device's addresses, the device and the table.
// Given the manifests last applied, it first syncs them, so that their
// NodePort virtual servers (on node addresses, not the device's) are
// recognised and removed too.
func (b *ipvsBackend) Cleanup(ctx context.Context, st *dataplane.State) error {
	if st != nil {
		if err := b.dp.Sync(ctx, st); err != nil {
			return err
		}
	}
	return b.dp.Cleanup(ctx)
}

func (b *ipvsBackend) Close() error {
	var errs []error
	if b.dp != nil {
		errs = append(errs, b.dp.Close())
	}
	if b.rd != nil {
		errs = append(errs, b.rd.Close())
	}
	if b.nl != nil {
		b.nl.Close()
	}
	if b.nsFd >= 0 {
		unix.Close(b.nsFd)
	}
	return errors.Join(errs...)
}

// vsKey is a frontend: a virtual server, or for NodePorts all the virtual
// servers of one protocol and port of one family (addr is then the
// family's unspecified address).
type vsKey struct {
	addr  netip.Addr
	proto dataplane.Protocol
	port  uint16
}

func (k vsKey) nodePort() bool { return k.addr.IsUnspecified() }

func (k vsKey) String() string {
	if k.nodePort() {
		fam := "IPv4"
		if k.addr.Is6() {
			fam = "IPv6"
		}
		return fmt.Sprintf("NodePort %d/%s (%s node addresses)", k.port, k.proto, fam)
	}
	return netip.AddrPortFrom(k.addr, k.port).String() + "/" + k.proto.String()
}

func compareKeys(a, b vsKey) int {
	return cmp.Or(cmp.Compare(btoi(a.nodePort()), btoi(b.nodePort())), a.addr.Compare(b.addr), cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port))
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// vs is what a frontend forwards to.
type vs struct {
	name, kind string
	eps        []netip.AddrPort
	persist    uint32 // ClientIP affinity, seconds
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// desiredVS is what the ipvs backend programs for st on node, by frontend
// (the same endpoint choice: dataplane.Categorize).
func desiredVS(st *dataplane.State, node *dataplane.Node) map[vsKey]*vs {
	out := make(map[vsKey]*vs)
	if st == nil {
		return out
	}
	for i := range st.Ports {
		p := &st.Ports[i]
		cat := dataplane.Categorize(p, node)
		add := func(kind string, a netip.Addr, port uint16, eps []dataplane.Endpoint) {
			v := &vs{name: p.Name.String(), kind: kind, persist: uint32(p.Affinity / time.Second)}
			for _, e := range eps {
				if e.Addr.Is4() == a.Is4() {
					v.eps = append(v.eps, e.AddrPort())
				}
			}
			slices.SortFunc(v.eps, netip.AddrPort.Compare)
			out[vsKey{a, p.Protocol, port}] = v
		}
		fams := map[bool]bool{}
		for _, cip := range p.ClusterIPs {
			fams[cip.Is4()] = true
			add("cluster IP", cip, p.Port, cat.Internal(p))
		}
		for _, a := range slices.Concat(p.ExternalIPs, p.LoadBalancerIPs) {
			if fams[a.Is4()] {
				add("external IP", a, p.Port, cat.External(p))
			}
		}
		if p.NodePort != 0 {
			for _, cip := range p.ClusterIPs {
				add("NodePort", unspecified(cip), p.NodePort, cat.External(p))
			}
		}
	}
	return out
}

// programmed is what IPVS holds in the namespace.
type programmed struct {
	exists   bool // the device or any virtual server exists
	onDevice map[netip.Addr]bool
	services []ipvsnl.Service
	dests    [][]ipvsnl.Dest
}

func (b *ipvsBackend) read() (*programmed, error) {
	p := &programmed{onDevice: map[netip.Addr]bool{}}
	if l, err := b.nl.LinkByName(b.device); err == nil {
		p.exists = true
		addrs, err := b.nl.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", b.device, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				p.onDevice[ip.Unmap()] = true
			}
		}
	}
	svcs, err := b.rd.Services()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(svcs, func(a, b ipvsnl.Service) int {
		return compareKeys(vsKey{a.Addr, dataplane.Protocol(a.Protocol), a.Port}, vsKey{b.Addr, dataplane.Protocol(b.Protocol), b.Port})
	})
	for i := range svcs {
		d, err := b.rd.Dests(&svcs[i])
		if err != nil {
			return nil, err
		}
		slices.SortFunc(d, func(x, y ipvsnl.Dest) int {
			return netip.AddrPortFrom(x.Addr, x.Port).Compare(netip.AddrPortFrom(y.Addr, y.Port))
		})
		p.services = append(p.services, svcs[i])
		p.dests = append(p.dests, d)
	}
	p.exists = p.exists || len(svcs) > 0
	return p, nil
}

// key returns the frontend virtual server i belongs to: itself on the
// device, its NodePort elsewhere.
func (p *programmed) key(i int) vsKey {
	s := &p.services[i]
	k := vsKey{s.Addr, dataplane.Protocol(s.Protocol), s.Port}
	if !p.onDevice[s.Addr] {
		k.addr = unspecified(s.Addr)
	}
	return k
}

func (b *ipvsBackend) Show(ctx context.Context, st *dataplane.State) (*view, error) {
	p, err := b.read()
	if err != nil {
		return nil, err
	}
	names := desiredVS(st, &b.cfg.Node)
	v := &view{Exists: p.exists, PoliciesHidden: true}
	ports := map[string]*viewPort{}
	var order []string
	for i, s := range p.services {
		k := p.key(i)
		name, kind := "", "service IP"
		if k.nodePort() {
			kind = "NodePort"
		}
		if w := names[k]; w != nil {
			name, kind = w.name, w.kind
		}
		f := viewFrontend{Kind: kind, Addr: s.Addr, Protocol: dataplane.Protocol(s.Protocol), Port: s.Port, Reject: len(p.dests[i]) == 0}
		if s.Flags&ipvsnl.FlagPersistent != 0 {
			f.Affinity = time.Duration(s.Timeout) * time.Second
		}
		for _, d := range p.dests[i] {
			f.Endpoints = append(f.Endpoints, viewEndpoint{
				Addr:     netip.AddrPortFrom(d.Addr, d.Port),
				Weight:   fmt.Sprintf("weight %d", d.Weight),
				Counters: fmt.Sprintf("%d active, %d inactive connections", d.ActiveConns, d.InactiveConns),
			})
		}
		vp := ports[name]
		if vp == nil {
			vp = &viewPort{Name: name}
			ports[name] = vp
			order = append(order, name)
		}
		vp.Frontends = append(vp.Frontends, f)
	}
	slices.Sort(order)
	for _, n := range order {
		v.Ports = append(v.Ports, *ports[n])
	}
	if len(v.Ports) > 0 && v.Ports[0].Name == "" && st == nil {
		v.Note = "IPVS virtual servers carry no service names: give the manifests (-f) to name them"
	}
	return v, nil
}

// ipvsPlan is svcctl's plan for the ipvs backend: the virtual and real
// server changes a Sync makes, as ipvsadm would name them.
type ipvsPlan struct{ lines []string }

// Empty reports whether the plan has no changes (remarks aside).
func (p *ipvsPlan) Empty() bool {
	for _, l := range p.lines {
		if !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}
func (p *ipvsPlan) Lines() []string { return p.lines }

// Plan compares what IPVS holds with what st needs. It sees virtual and
// real servers, weights and persistence, not the device's addresses or
// the nftables table, which a Sync also keeps right.
func (b *ipvsBackend) Plan(ctx context.Context, st *dataplane.State) (changes, error) {
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("invalid state: %w", err)
	}
	p, err := b.read()
	if err != nil {
		return nil, err
	}
	want := desiredVS(st, &b.cfg.Node)
	have := map[vsKey]*vs{}
	var stray []string
	for i, s := range p.services {
		k := p.key(i)
		if _, ok := want[k]; !ok && !p.onDevice[s.Addr] {
			// Not on the device and not wanted: the backend does not
			// touch it (another program's, or a NodePort of an earlier
			// apply that the backend no longer recognises).
			stray = append(stray, netip.AddrPortFrom(s.Addr, s.Port).String()+"/"+dataplane.Protocol(s.Protocol).String())
			continue
		}
		if have[k] != nil {
			continue // another node address of the same NodePort
		}
		v := &vs{}
		if s.Flags&ipvsnl.FlagPersistent != 0 {
			v.persist = s.Timeout
		}
		for _, d := range p.dests[i] {
			v.eps = append(v.eps, netip.AddrPortFrom(d.Addr, d.Port))
		}
		have[k] = v
	}
	keys := make([]vsKey, 0, len(want)+len(have))
	for k := range want {
		keys = append(keys, k)
	}
	for k := range have {
		if want[k] == nil {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, compareKeys)
	pl := &ipvsPlan{}
	for _, k := range keys {
		w, h := want[k], have[k]
		switch {
		case h == nil:
			pl.lines = append(pl.lines, fmt.Sprintf("add virtual server %s%s → %s", k, persistence(w.persist), addrPorts(w.eps)))
		case w == nil:
			pl.lines = append(pl.lines, fmt.Sprintf("delete virtual server %s", k))
		default:
			if w.persist != h.persist {
				pl.lines = append(pl.lines, fmt.Sprintf("set virtual server %s%s", k, persistence(w.persist)))
			}
			add, del := diff(w.eps, h.eps)
			for _, a := range add {
				pl.lines = append(pl.lines, fmt.Sprintf("add real server %s → %s", k, a))
			}
			for _, d := range del {
				pl.lines = append(pl.lines, fmt.Sprintf("delete real server %s → %s", k, d))
			}
		}
	}
	if len(stray) > 0 {
		pl.lines = append(pl.lines, fmt.Sprintf("# left alone: %d virtual servers off the device that no manifest wants (%s): another program's, or NodePorts of an earlier apply, which the ipvs backend does not recognise; svcctl cleanup -f with the manifests that created them removes those", len(stray), strings.Join(stray, ", ")))
	}
	return pl, nil
}

func persistence(secs uint32) string {
	if secs == 0 {
		return " (no persistence)"
	}
	return fmt.Sprintf(" (persistent %ds)", secs)
}

func addrPorts(eps []netip.AddrPort) string {
	if len(eps) == 0 {
		return "no real servers (rejected)"
	}
	s := make([]string, len(eps))
	for i, e := range eps {
		s[i] = e.String()
	}
	return strings.Join(s, ", ")
}
