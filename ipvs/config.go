package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/ipvsnl"
	"github.com/svcplane/svcplane/internal/netnsutil"
	"github.com/svcplane/svcplane/internal/nftbatch"
	"github.com/svcplane/svcplane/internal/rtaddr"
)

// Defaults for Config's empty fields.
const (
	DefaultDevice         = "svcplane-ipvs"
	DefaultTable          = "svcplane-ipvs"
	DefaultScheduler      = "rr"
	DefaultMasqueradeMark = 0x4000
)

// Config configures a Dataplane.
type Config struct {
	// Node describes the node being programmed.
	Node dataplane.Node
	// NetNS is the path of the network namespace to program; empty means
	// the caller's.
	NetNS string
	// Device is the dummy device that holds the service IPs.
	Device string
	// Table is the name of the inet nftables table the Dataplane owns.
	Table string
	// Scheduler is the IPVS scheduler of every virtual server, e.g. rr,
	// wrr, lc, sh. Its module must be loadable.
	Scheduler string
	// MasqueradeMark is the single packet mark bit that flags a
	// connection for masquerading.
	MasqueradeMark uint32
	// TCPTimeout, TCPFinTimeout and UDPTimeout set the namespace's IPVS
	// connection timeouts (established TCP, TCP after FIN, UDP), as
	// kube-proxy's --ipvs-tcp-timeout and friends do. 0 leaves the
	// kernel's (15 min, 2 min, 5 min). They also bound how long ClientIP
	// affinity outlives its timeout: IPVS keeps a client's persistence
	// while any connection it placed is alive.
	TCPTimeout, TCPFinTimeout, UDPTimeout time.Duration
}

// Dataplane programs service load balancing into IPVS. It implements
// dataplane.Dataplane; its methods are safe for concurrent use.
type Dataplane struct {
	mu   sync.Mutex
	cfg  Config
	ns   *netnsutil.NS
	ipvs *ipvsnl.Conn
	nl   *netlink.Handle
	rt   *rtaddr.Conn // adds service IPs, many per request
	nft  *nftables.Conn

	table *nftables.Table
	sets  []*nftables.Set
	// applied is what IPVS holds of ours, by virtual server; nil until
	// the first Sync has read the kernel.
	applied map[ipvsnl.Key]*virtual
	// addrs are the service IPs on the device.
	addrs   map[netip.Addr]bool
	elems   map[elemKey]string // our nftables set elements (value: interval end)
	sysctls bool
	fp      string        // the table's fingerprint
	lastGen uint32        // nftables generation after our last commit
	sock    nftbatch.Sock // the nftables connection's socket
}

// Socket buffers of the nftables connection.
const (
	minSendBuffer = 4 << 20
	recvBuffer    = 4 << 20
)

var _ dataplane.Dataplane = (*Dataplane)(nil)

// New checks cfg, opens netlink connections in the namespace and checks
// that the kernel has IPVS. It changes nothing; the first Sync does.
func New(cfg Config) (*Dataplane, error) {
	if cfg.Device == "" {
		cfg.Device = DefaultDevice
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.Scheduler == "" {
		cfg.Scheduler = DefaultScheduler
	}
	if cfg.MasqueradeMark == 0 {
		cfg.MasqueradeMark = DefaultMasqueradeMark
	}
	if err := checkConfig(&cfg); err != nil {
		return nil, err
	}
	d := &Dataplane{cfg: cfg}
	var err error
	if cfg.NetNS != "" {
		d.ns, err = netnsutil.Open(cfg.NetNS)
	} else {
		d.ns, err = netnsutil.Current()
	}
	if err != nil {
		return nil, fmt.Errorf("ipvs: open network namespace: %w", err)
	}
	d.ipvs, err = ipvsnl.Dial(d.ns.Fd())
	if errors.Is(err, ipvsnl.ErrNoIPVS) {
		d.Close()
		return nil, fmt.Errorf("ipvs: %w: %w (on a development machine without IPVS, run `make test-vm`)", dataplane.ErrUnsupported, err)
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("ipvs: %w", err)
	}
	if d.nl, err = netlink.NewHandleAt(netns.NsHandle(d.ns.Fd())); err != nil {
		d.Close()
		return nil, fmt.Errorf("ipvs: open rtnetlink: %w", err)
	}
	if d.rt, err = rtaddr.Dial(d.ns.Fd()); err != nil {
		d.Close()
		return nil, fmt.Errorf("ipvs: open rtnetlink: %w", err)
	}
	if d.nft, err = nftables.New(nftables.WithNetNSFd(d.ns.Fd()), nftables.AsLasting(),
		// Buffers for large batches; syncTable raises them further.
		d.sock.Option(minSendBuffer, recvBuffer)); err != nil {
		d.Close()
		return nil, fmt.Errorf("ipvs: open nftables netlink: %w", err)
	}
	d.table = &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}
	d.sets = newSets(d.table)
	d.fp = d.fingerprint()
	return d, nil
}

func checkConfig(cfg *Config) error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &dataplane.FieldError{Path: path, Detail: fmt.Sprintf(format, args...)})
	}
	if n := len(cfg.Device); n > 15 {
		bad("device", "%q is longer than 15 bytes, the kernel's limit for link names", cfg.Device)
	}
	if m := cfg.MasqueradeMark; m&(m-1) != 0 {
		bad("masqueradeMark", "%#x has more than one bit set (want a single bit, e.g. 0x4000)", m)
	}
	for i, p := range cfg.Node.LocalPodCIDRs {
		if !p.IsValid() {
			bad(fmt.Sprintf("node.localPodCIDRs[%d]", i), "is not a valid prefix")
		}
	}
	for i, p := range cfg.Node.NodePortAddrs {
		if !p.IsValid() {
			bad(fmt.Sprintf("node.nodePortAddrs[%d]", i), "is not a valid prefix")
		}
	}
	return errors.Join(errs...)
}

// Close releases the netlink connections and leaves kernel state in
// place.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if d.ipvs != nil {
		errs = append(errs, d.ipvs.Close())
		d.ipvs = nil
	}
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	if d.rt != nil {
		errs = append(errs, d.rt.Close())
		d.rt = nil
	}
	if d.nft != nil {
		errs = append(errs, d.nft.CloseLasting())
		d.nft = nil
	}
	if d.ns != nil {
		errs = append(errs, d.ns.Close())
		d.ns = nil
	}
	return errors.Join(errs...)
}

var errClosed = errors.New("ipvs: Dataplane is closed")
