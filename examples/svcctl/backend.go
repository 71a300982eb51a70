package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/nft"
)

// backend is what svcctl needs of a kernel backend. Each backend has an
// adapter (nft here, ipvs in ipvs.go) and a case in newBackend.
type backend interface {
	// Describe names what the backend programs, e.g.
	// "table inet svcplane".
	Describe() string
	// Plan returns what Sync would change, without changing anything.
	Plan(ctx context.Context, st *dataplane.State) (changes, error)
	Sync(ctx context.Context, st *dataplane.State) error
	// Show reads back what is programmed. st, when not nil, is the
	// manifests' State, for backends whose kernel objects carry no
	// service names (ipvs).
	Show(ctx context.Context, st *dataplane.State) (*view, error)
	// Cleanup removes everything the backend programmed. st, when not
	// nil, is the State last applied, for backends that need it to
	// recognise all of it (ipvs: NodePorts).
	Cleanup(ctx context.Context, st *dataplane.State) error
	Close() error
}

// changes is a backend's plan: Empty when a Sync would write nothing,
// Lines the backend's own commands otherwise (lines starting with # are
// remarks, not changes).
type changes interface {
	Empty() bool
	Lines() []string
}

// view is what a backend has programmed, backend-neutral: service ports,
// their frontends, and each frontend's endpoints.
type view struct {
	// Exists is false when the backend has nothing programmed at all (no
	// table, for nft).
	Exists bool
	Ports  []viewPort
	// Note is a remark for the reader, or "".
	Note string
	// PoliciesHidden is set when the backend's kernel objects do not
	// show traffic policies, source ranges, rejects and drops (ipvs keeps
	// them elsewhere): comparisons then look at frontends and endpoints
	// only.
	PoliciesHidden bool
}

type viewPort struct {
	Name      string // namespace/name:port
	Frontends []viewFrontend
}

type viewFrontend struct {
	Kind     string // "cluster IP", "external IP", "NodePort"
	Addr     netip.Addr
	Protocol dataplane.Protocol
	Port     uint16
	// Local: externalTrafficPolicy Local; Reject: no endpoints anywhere;
	// Drop: none usable here.
	Local, Reject, Drop bool
	Affinity            time.Duration
	SourceRanges        []netip.Prefix
	Endpoints           []viewEndpoint
	// LocalEndpoints serve outside clients of a Local frontend.
	LocalEndpoints []viewEndpoint
}

func (f viewFrontend) String() string {
	return netip.AddrPortFrom(f.Addr, f.Port).String() + "/" + f.Protocol.String()
}

type viewEndpoint struct {
	Addr netip.AddrPort
	// Weight is the share of the frontend's traffic, as the backend
	// states it ("1/3": one of a frontend's 3 slots, for nft; "weight 1" for IPVS).
	Weight string
	// Counters are the kernel's counters for the endpoint where the
	// backend has them (IPVS: connections), "" where it has none (nft).
	Counters string
}

// backendConfig is what every backend is built from.
type backendConfig struct {
	Node  dataplane.Node
	NetNS string
	Table string // the nftables table: nft's whole state, ipvs's helper table
}

// backends lists the backend names svcctl knows, for help and errors.
var backends = []string{"nft", "ipvs"}

func newBackend(name string, cfg backendConfig) (backend, error) {
	switch name {
	case "nft":
		dp, err := nft.New(nft.Config{Node: cfg.Node, NetNS: cfg.NetNS, Table: cfg.Table})
		if err != nil {
			return nil, err
		}
		table := cfg.Table
		if table == "" {
			table = nft.DefaultTable
		}
		return &nftBackend{dp: dp, table: table}, nil
	case "ipvs":
		return newIPVSBackend(cfg)
	}
	return nil, fmt.Errorf("--backend %q: unknown backend (want nft or ipvs)", name)
}

// nftBackend adapts *nft.Dataplane.
type nftBackend struct {
	dp    *nft.Dataplane
	table string
}

func (b *nftBackend) Describe() string { return "table inet " + b.table }

func (b *nftBackend) Plan(ctx context.Context, st *dataplane.State) (changes, error) {
	p, err := b.dp.Plan(ctx, st)
	if err != nil {
		return nil, err
	}
	return nftPlan{p}, nil
}

type nftPlan struct{ p *nft.Plan }

func (p nftPlan) Empty() bool     { return p.p.Empty() }
func (p nftPlan) Lines() []string { return p.p.Lines }

func (b *nftBackend) Sync(ctx context.Context, st *dataplane.State) error   { return b.dp.Sync(ctx, st) }
func (b *nftBackend) Cleanup(ctx context.Context, _ *dataplane.State) error { return b.dp.Cleanup(ctx) }
func (b *nftBackend) Close() error                                          { return b.dp.Close() }

// Show reads the table back with nft.Dataplane.Show; its elements name
// their service ports, so st is not needed. nftables keeps no counters for
// the table's map elements: the view has none.
func (b *nftBackend) Show(ctx context.Context, _ *dataplane.State) (*view, error) {
	prog, err := b.dp.Show(ctx)
	if err != nil {
		return nil, err
	}
	v := &view{Exists: prog.Exists}
	for _, p := range prog.Ports {
		vp := viewPort{Name: p.Name}
		for _, f := range p.Frontends {
			vp.Frontends = append(vp.Frontends, viewFrontend{
				Kind: f.Kind.String(), Addr: f.Addr, Protocol: f.Protocol, Port: f.Port,
				Local: f.Local, Reject: f.Reject, Drop: f.Drop,
				Affinity: f.Affinity, SourceRanges: f.SourceRanges,
				Endpoints: nftShares(f.Endpoints), LocalEndpoints: nftShares(f.LocalEndpoints),
			})
		}
		v.Ports = append(v.Ports, vp)
	}
	return v, nil
}

func nftShares(ss []nft.Share) []viewEndpoint {
	var out []viewEndpoint
	for _, s := range ss {
		out = append(out, viewEndpoint{Addr: s.Endpoint, Weight: fmt.Sprintf("%d/%d", s.Slots, s.Of)})
	}
	return out
}
