package nft

import (
	"net/netip"
	"time"

	"github.com/svcplane/svcplane/dataplane"
)

// Validation that follows the size of a change.
//
// Every port a Dataplane has synced came from a State that passed
// dataplane.State.Validate, and what Validate checks of one port on its
// own depends on nothing else. So a Sync need not check again a port
// equal to one already synced: only the ports that changed, on their
// own, and their names and frontends against the other ports. The
// Dataplane keeps what that needs: the synced ports in the order of the
// last State (most ports keep their place, so a comparison finds them
// without a map lookup), who owns each frontend, and a mark per synced
// port for duplicate names. Whenever the quick check finds something it
// cannot decide alone (a name or frontend another port may hold, a port
// that fails on its own), it runs the full Validate, which then decides
// and names the fields. So its answer is always Validate's.

// frontKey is a frontend as Validate compares them: address (none for a
// NodePort), port and protocol.
type frontKey struct {
	addr  netip.Addr
	port  uint16
	proto dataplane.Protocol
}

// frontKeys returns p's frontends.
func frontKeys(p *dataplane.ServicePort) []frontKey {
	out := make([]frontKey, 0, len(p.ClusterIPs)+len(p.ExternalIPs)+len(p.LoadBalancerIPs)+1)
	for _, l := range [][]netip.Addr{p.ClusterIPs, p.ExternalIPs, p.LoadBalancerIPs} {
		for _, a := range l {
			out = append(out, frontKey{a, p.Port, p.Protocol})
		}
	}
	if p.NodePort != 0 {
		out = append(out, frontKey{port: p.NodePort, proto: p.Protocol})
	}
	return out
}

// quickCheckMax is the share of changed ports (1/quickCheckMax of the
// State) beyond which checking them one by one costs more than one full
// Validate.
const quickCheckMax = 8

// validate checks desired as desired.Validate() would and returns, per
// port, the synced port it equals (nil for a port that changed, is new
// or is headless), for prepare to skip. It must be called with d.mu held.
func (d *Dataplane) validate(desired *dataplane.State) ([]*svcState, error) {
	if desired == nil || len(d.svcs) == 0 {
		return nil, desired.Validate()
	}
	d.epoch++
	same := make([]*svcState, len(desired.Ports))
	var changed []int
	limit := len(desired.Ports)/quickCheckMax + 1
	shift := 0 // where the last port found sat in the last State, less its index now
	for i := range desired.Ports {
		p := &desired.Ports[i]
		s := (*svcState)(nil)
		if j := i + shift; j >= 0 && j < len(d.order) && d.order[j].port.Name == p.Name {
			s = d.order[j]
		} else if s = d.svcs[p.Name]; s != nil {
			shift = s.pos - i // a port was added or removed before this one
		}
		if s != nil {
			if s.seen == d.epoch {
				return nil, desired.Validate() // a name twice
			}
			s.seen = d.epoch
			if equalPort(&s.port, p) {
				same[i] = s
				continue
			}
		}
		if changed = append(changed, i); len(changed) > limit {
			return nil, desired.Validate()
		}
	}
	if len(changed) == 0 {
		return same, nil
	}
	names := make(map[dataplane.PortName]bool, len(changed))
	fronts := make(map[frontKey]dataplane.PortName)
	for _, i := range changed {
		p := &desired.Ports[i]
		if err := (&dataplane.State{Ports: desired.Ports[i : i+1]}).Validate(); err != nil {
			return nil, desired.Validate() // for the field paths
		}
		if s := d.svcs[p.Name]; s == nil || s.seen != d.epoch {
			// Not a synced port's name (or a synced port's name
			// taken by a headless port): it must be new here.
			if names[p.Name] {
				return nil, desired.Validate()
			}
			names[p.Name] = true
		}
		for _, f := range frontKeys(p) {
			if o, ok := fronts[f]; ok && o != p.Name {
				return nil, desired.Validate()
			}
			fronts[f] = p.Name
			if o := d.fronts[f]; o != nil && o.port.Name != p.Name {
				// Held by a synced port, which may be leaving or
				// changing in this State: let Validate decide.
				return nil, desired.Validate()
			}
		}
	}
	return same, nil
}

// track records s, the new state of a synced port, in the frontend
// owners and affinity counts, replacing old (nil for a new port).
func (d *Dataplane) track(old, s *svcState) {
	if old != nil {
		d.untrack(old)
	}
	if d.fronts == nil {
		d.fronts = make(map[frontKey]*svcState)
		d.affCount = make(map[int64]int)
	}
	for _, f := range frontKeys(&s.port) {
		d.fronts[f] = s
	}
	if s.port.Affinity > 0 && len(s.port.ClusterIPs) > 0 {
		d.affCount[int64(s.port.Affinity/time.Second)]++
	}
}

// untrack forgets s, a synced port that goes.
func (d *Dataplane) untrack(s *svcState) {
	for _, f := range frontKeys(&s.port) {
		if d.fronts[f] == s {
			delete(d.fronts, f)
		}
	}
	if s.port.Affinity > 0 && len(s.port.ClusterIPs) > 0 {
		t := int64(s.port.Affinity / time.Second)
		if d.affCount[t]--; d.affCount[t] <= 0 {
			delete(d.affCount, t)
		}
	}
}

// gone returns the synced ports the State validate just accepted (with
// a non-nil answer) no longer has, without a pass over that State:
// validate marked every synced port it found.
func (d *Dataplane) gone() []*svcState {
	var out []*svcState
	for _, s := range d.order {
		if s.seen != d.epoch {
			out = append(out, s)
		}
	}
	return out
}

// forgetPorts drops every synced port.
func (d *Dataplane) forgetPorts() {
	d.svcs = make(map[dataplane.PortName]*svcState)
	d.fronts = nil
	d.affCount = nil
	d.order = nil
}
