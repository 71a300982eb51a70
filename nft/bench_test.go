package nft

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/nstest"
	"github.com/svcplane/svcplane/internal/syncbench"
)

// Benchmarks at cluster scale (issue 5); internal/syncbench has the
// States, scenarios and metrics. `make bench` runs them and writes
// docs/benchmarks.md; TestBenchmarks keeps each of them working at its
// smallest size in `make test`.

// nftBackend is the library, counting its netlink traffic.
var nftBackend = syncbench.Backend{
	Name: "nft",
	New: func(nsPath string, node dataplane.Node) (dataplane.Dataplane, error) {
		d, err := New(Config{NetNS: nsPath, Node: node})
		if err != nil {
			return nil, err
		}
		return syncbench.WithStats(d, countNetlink(d).stats), nil
	},
	// Batch begin, the slot deletions and additions, the hairpin pair
	// of the new endpoint and of the old one, batch end.
	MaxOneEndpointMsgs: 6,
}

// BenchmarkSync is BenchmarkSync/<backend>/<scenario>/services=<N>/endpoints=<E>
// for the library ("nft") and its peer, the same State loaded with nft -f
// ("nft-file", full only).
func BenchmarkSync(b *testing.B) {
	syncbench.Sync(syncbench.Bench(b), []syncbench.Backend{nftBackend}, []syncbench.Loader{syncbench.NFTFile})
}

// BenchmarkConnect is BenchmarkConnect/nft/services=<N>.
func BenchmarkConnect(b *testing.B) {
	syncbench.Connect(syncbench.Bench(b), nftBackend)
}

// TestBenchmarks runs every benchmark case once at its smallest size, so
// that they keep working; it judges no timing.
func TestBenchmarks(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	r := syncbench.Once(t)
	r.Run("Sync", func(r syncbench.R) {
		syncbench.Sync(r, []syncbench.Backend{nftBackend}, []syncbench.Loader{syncbench.NFTFile})
	})
	r.Run("Connect", func(r syncbench.R) { syncbench.Connect(r, nftBackend) })
}

// TestFullSyncHoldsEveryElement checks that after a cold Sync of a
// benchmark State the kernel really holds every element: google/nftables
// v0.3.0 silently drops elements past 64 KiB in one message, and a batch
// larger than the socket's send buffer fails (NETLINK-NOTES.md). A dump
// (GetSetElements) is quadratic in the set's size, so every expected key
// is fetched instead, 1024 to a request: the kernel answers each with the
// element or the request with ENOENT. For endpoints-v4 it also checks
// that each service's 5 slots point at its own endpoints, one each, and
// that there is no sixth slot. SVCPLANE_VERIFY_SERVICES sets the size (default 1000; make bench
// runs 50000).
func TestFullSyncHoldsEveryElement(t *testing.T) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("SVCPLANE_VERIFY_SERVICES")); err == nil && v > 0 {
		n = v
	}
	const e = 5
	ns := nstest.New(t)
	d := newDP(t, ns)
	st := syncbench.State(n, e, 0)
	if err := d.Sync(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetReadBuffer(64 << 20); err != nil {
		t.Fatal(err)
	}
	var clusterIPs, fronts, slotKeys [][]byte
	for i := range st.Ports {
		p := &st.Ports[i]
		cip := p.ClusterIPs[0]
		front := frontendKey(cip, p.Protocol, p.Port)
		clusterIPs = append(clusterIPs, cip.AsSlice())
		fronts = append(fronts, front)
		for b := range uint32(e) {
			slotKeys = append(slotKeys, bucketKey(front, b))
		}
	}
	hairpins := map[string]bool{}
	for i := range st.Ports {
		for _, ep := range st.Ports[i].Endpoints {
			a := ep.Addr.AsSlice()
			hairpins[string(append(a, a...))] = true
		}
	}
	var hairpinKeys [][]byte
	for k := range hairpins {
		hairpinKeys = append(hairpinKeys, []byte(k))
	}
	check := func(set setID, keys [][]byte) [][]byte {
		t.Helper()
		vals, err := getElements(c, d.cfg.Table, d.sets[sid(v4, set)].Name, keys)
		if err != nil {
			t.Fatalf("%s: %v", d.sets[sid(v4, set)].Name, err)
		}
		return vals
	}
	check(setClusterIPs, clusterIPs)
	check(setServiceIPs, fronts)
	check(setHairpin, hairpinKeys)
	vals := check(setEndpoints, slotKeys)
	for i := range st.Ports {
		own := map[string]int{}
		for _, ep := range st.Ports[i].Endpoints {
			own[string(addrPort(ep.AddrPort()))] = 0
		}
		for _, v := range vals[i*e : (i+1)*e] {
			k, ok := own[string(v)]
			if !ok {
				t.Fatalf("port %d: a slot points at %x, not one of its endpoints", i, v)
			}
			own[string(v)] = k + 1
		}
		for ep, k := range own {
			if k != 1 {
				t.Fatalf("port %d: endpoint %x has %d slots, want 1", i, ep, k)
			}
		}
	}
	if _, err := getElements(c, d.cfg.Table, d.sets[sid(v4, setEndpoints)].Name, [][]byte{bucketKey(fronts[0], e)}); err == nil {
		t.Fatalf("port 0 has a slot %d, want only %d slots", e, e)
	}
	t.Logf("the kernel holds all %d cluster IPs, %d frontends, %d hairpin pairs and %d endpoint slots",
		len(clusterIPs), len(fronts), len(hairpinKeys), len(slotKeys))
	if n <= 1000 {
		// Small enough to dump: nothing else is there either.
		elems, err := d.conn.GetSetElements(d.sets[sid(v4, setEndpoints)])
		if err != nil {
			t.Fatal(err)
		}
		if len(elems) != len(slotKeys) {
			t.Fatalf("endpoints-v4 holds %d elements, want %d", len(elems), len(slotKeys))
		}
	}
}

// getElements fetches keys from a set of table inet <table> with
// NFT_MSG_GETSETELEM, 1024 keys to a request, and returns each element's
// data (nil for sets), in order. A missing key fails its request.
func getElements(c *netlink.Conn, table, set string, keys [][]byte) ([][]byte, error) {
	var out [][]byte
	for start := 0; start < len(keys); start += 1024 {
		batch := keys[start:min(start+1024, len(keys))]
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
		ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
		ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(list *netlink.AttributeEncoder) error {
			for i, k := range batch {
				list.Nested(uint16(i+1), func(el *netlink.AttributeEncoder) error {
					el.Nested(unix.NFTA_SET_ELEM_KEY, func(v *netlink.AttributeEncoder) error {
						v.Bytes(unix.NFTA_DATA_VALUE, k)
						return nil
					})
					return nil
				})
			}
			return nil
		})
		attrs, err := ae.Encode()
		if err != nil {
			return nil, err
		}
		req, err := c.Send(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request | netlink.Acknowledge},
			Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
		})
		if err != nil {
			return nil, err
		}
		got := 0
		for done := false; !done; {
			msgs, err := c.Receive()
			if err != nil {
				return nil, fmt.Errorf("keys %d to %d: %w", start, start+len(batch), err)
			}
			for _, m := range msgs {
				if m.Header.Sequence != req.Header.Sequence {
					continue
				}
				if m.Header.Type == netlink.Error {
					done = true // the ack; errors came back from Receive
					continue
				}
				ad, err := netlink.NewAttributeDecoder(m.Data[4:])
				if err != nil {
					return nil, err
				}
				for ad.Next() {
					if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
						continue
					}
					ad.Nested(func(list *netlink.AttributeDecoder) error {
						for list.Next() {
							var val []byte
							list.Nested(func(el *netlink.AttributeDecoder) error {
								for el.Next() {
									if el.Type() == unix.NFTA_SET_ELEM_DATA {
										el.Nested(func(v *netlink.AttributeDecoder) error {
											for v.Next() {
												if v.Type() == unix.NFTA_DATA_VALUE {
													val = v.Bytes()
												}
											}
											return nil
										})
									}
								}
								return nil
							})
							out = append(out, val)
							got++
						}
						return nil
					})
				}
				if err := ad.Err(); err != nil {
					return nil, err
				}
			}
		}
		if got != len(batch) {
			return nil, fmt.Errorf("keys %d to %d: the kernel returned %d elements, want %d", start, start+len(batch), got, len(batch))
		}
	}
	return out, nil
}
