package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/nftbatch"
)

// DefaultTable is the table name used when Config.Table is empty.
const DefaultTable = "svcplane"

// DefaultMasqueradeMark is the packet mark bit used when
// Config.MasqueradeMark is 0. It is the bit kube-proxy uses.
const DefaultMasqueradeMark = 0x4000

// Config configures a Dataplane.
type Config struct {
	// Node describes the node being programmed.
	Node dataplane.Node
	// NetNS is the path of the network namespace to program, such as
	// /run/netns/NAME or /proc/PID/ns/net. Empty means the caller's.
	NetNS string
	// Table is the name of the inet table the Dataplane owns. Empty means
	// DefaultTable. Two Dataplanes in one namespace need different tables.
	Table string
	// MasqueradeMark is the single packet mark bit that flags a
	// connection for masquerading. 0 means DefaultMasqueradeMark.
	MasqueradeMark uint32
}

// Dataplane programs service load balancing into one nftables table.
// It implements dataplane.Dataplane. Its methods are safe for concurrent
// use; Syncs are serialised.
type Dataplane struct {
	mu    sync.Mutex
	cfg   Config
	nsFd  int // -1: the caller's namespace
	conn  *nftables.Conn
	table *nftables.Table
	sets  []*nftables.Set // indexed by setID
	st    *store          // what the kernel holds; nil: unknown, rebuild
	// svcs are the synced ports by name, headless ones included;
	// order holds them in the order of the last State, fronts who owns
	// each frontend, and affCount how many ports (with a cluster IP)
	// use each affinity timeout. epoch marks the ports a validation has
	// seen (validate.go).
	svcs     map[dataplane.PortName]*svcState
	order    []*svcState
	fronts   map[frontKey]*svcState
	affCount map[int64]int
	epoch    uint64
	// adopted is set during a Sync that adopted the kernel's table.
	adopted bool
	// fingerprint identifies the table's fixed shape (see adopt.go).
	fingerprint string
	// genConn reads the nftables generation; lastGen is the generation
	// after our last commit.
	genConn *netlink.Conn
	lastGen uint32
	// affChains are the affinity timeouts (seconds) whose objects exist.
	affChains map[int64]bool
	// staleCT holds conntrack cleanups a failed Sync could not finish.
	staleCT []staleFlow
	// lastElems is how many element changes the last Sync sent.
	lastElems int
	// beforeFlush, when set (by tests), sees each batch just before Sync
	// commits it; genReads counts nftables generation requests. The
	// benchmarks count netlink traffic with them.
	beforeFlush func(*nftables.Conn)
	genReads    int
	// sock is conn's netlink socket; batchBytes bounds the size of the
	// batch being queued and queued counts its messages (each one
	// answered by an ack).
	sock       nftbatch.Sock
	batchBytes int
	queued     int
	// closed is set by Close; conn is nil after a failed batch, too.
	closed bool
}

var _ dataplane.Dataplane = (*Dataplane)(nil)

// Socket buffer sizes: a batch of several MB fits in one send, and the
// acks of a batch of thousands of messages fit in the receive buffer. A
// larger batch raises them first (fitBuffers): a batch larger than the
// send buffer fails with EMSGSIZE, and acks overflowing the receive
// buffer report ENOBUFS for a batch the kernel committed.
const (
	sendBuffer = 64 << 20
	recvBuffer = 16 << 20
)

// New checks cfg, opens a netlink connection to the namespace and returns
// a Dataplane. It changes nothing in the kernel; the first Sync does.
func New(cfg Config) (*Dataplane, error) {
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.MasqueradeMark == 0 {
		cfg.MasqueradeMark = DefaultMasqueradeMark
	}
	if err := checkConfig(&cfg); err != nil {
		return nil, err
	}
	d := &Dataplane{cfg: cfg, nsFd: -1}
	if cfg.NetNS != "" {
		fd, err := unix.Open(cfg.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("nft: open network namespace: %w", &os.PathError{Op: "open", Path: cfg.NetNS, Err: err})
		}
		d.nsFd = fd
	}
	conn, err := d.dial()
	if err != nil {
		d.closeNS()
		if errors.Is(err, unix.EPROTONOSUPPORT) {
			return nil, fmt.Errorf("nft: netlink for nftables: %w (%w)", dataplane.ErrUnsupported, err)
		}
		return nil, fmt.Errorf("nft: open netlink connection: %w", err)
	}
	d.conn = conn
	if _, err := conn.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		d.Close()
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, fmt.Errorf("nft: the kernel has no nf_tables with the inet family: %w", dataplane.ErrUnsupported)
		}
		return nil, fmt.Errorf("nft: list tables: %w", err)
	}
	d.table = &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}
	d.sets = newSets(d.table)
	d.fingerprint = d.computeFingerprint()
	return d, nil
}

// dial opens the lasting netlink connection a Dataplane queues its
// batches on.
func (d *Dataplane) dial() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting(), d.sock.Option(sendBuffer, recvBuffer)}
	if d.nsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(d.nsFd))
	}
	return nftables.New(opts...)
}

// redial drops the connection after a failed batch: its queue may hold
// messages of the failed batch, and after ENOBUFS its socket holds acks
// out of sequence (the next Flush would wait for good). The next call
// opens a new one (connected).
func (d *Dataplane) redial() {
	if d.conn != nil {
		d.conn.CloseLasting()
		d.conn = nil
	}
}

// connected makes sure d has a connection, opening a new one after a
// failed batch; with d.mu held.
func (d *Dataplane) connected() error {
	if d.closed {
		return errClosed
	}
	if d.conn != nil {
		return nil
	}
	conn, err := d.dial()
	if err != nil {
		return fmt.Errorf("nft: reopen the netlink connection: %w", err)
	}
	d.conn = conn
	return nil
}

func checkConfig(cfg *Config) error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &dataplane.FieldError{Path: path, Detail: fmt.Sprintf(format, args...)})
	}
	if len(cfg.Table) > 255 {
		bad("table", "is longer than 255 bytes")
	}
	if m := cfg.MasqueradeMark; m&(m-1) != 0 {
		bad("masqueradeMark", "%#x has more than one bit set (want a single bit, e.g. 0x4000)", m)
	}
	for i, p := range cfg.Node.LocalPodCIDRs {
		if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			bad(fmt.Sprintf("node.localPodCIDRs[%d]", i), "%s is not a valid prefix", p)
		}
	}
	for i, p := range cfg.Node.NodePortAddrs {
		if !p.IsValid() {
			bad(fmt.Sprintf("node.nodePortAddrs[%d]", i), "%s is not a valid prefix", p)
		}
	}
	return errors.Join(errs...)
}

// podCIDRs returns the node's pod prefixes of one family, masked.
func (d *Dataplane) podCIDRs(f int) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range d.cfg.Node.LocalPodCIDRs {
		if famOf(p.Addr()) == f {
			out = append(out, p.Masked())
		}
	}
	return out
}

// Close releases the netlink connection and leaves the kernel state in
// place for a later Dataplane to adopt.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var err error
	d.closed = true
	if d.conn != nil {
		err = d.conn.CloseLasting()
		d.conn = nil
	}
	if d.genConn != nil {
		d.genConn.Close()
		d.genConn = nil
	}
	d.closeNS()
	return err
}

func (d *Dataplane) closeNS() {
	if d.nsFd >= 0 {
		unix.Close(d.nsFd)
		d.nsFd = -1
	}
}

var errClosed = errors.New("nft: Dataplane is closed")
