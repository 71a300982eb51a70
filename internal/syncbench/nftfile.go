package syncbench

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/svcplane/svcplane/dataplane"
)

// NFTFile is the `nft -f` peer: a State rendered as the script kube-proxy's
// nftables mode (1.3x, through knftables) writes for a full sync, loaded
// into an empty namespace with `nsenter --net=<ns> nft -f -`, the script
// on standard input, as knftables runs nft.
var NFTFile = Loader{Name: "nft-file", Render: RenderNFT, Load: LoadNFT,
	Available: func() error { return needProgram("nft", "nftables") }}

// LoadNFT runs `nft -f -` with file on its standard input inside the
// namespace at nsPath and returns nft's CPU time (nsenter execs nft in
// its own process).
func LoadNFT(nsPath string, file []byte) (time.Duration, error) {
	return load(nsPath, file, "nft", "-f", "-")
}

// load runs prog with args inside the namespace at nsPath, file on its
// standard input, and returns its CPU time.
func load(nsPath string, file []byte, prog string, args ...string) (time.Duration, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + nsPath, prog}, args...)...)
	cmd.Stdin = bytes.NewReader(file)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 2000 {
			out = out[:2000]
		}
		return 0, fmt.Errorf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// needProgram says how to install prog (from Debian package pkg) when it
// is not in PATH.
func needProgram(prog, pkg string) error {
	if _, err := exec.LookPath(prog); err != nil {
		return fmt.Errorf("%s is not installed (apt-get install %s): %w", prog, pkg, err)
	}
	return nil
}

// RenderNFT writes st (IPv4 service ports with cluster IPs, external IPs
// and NodePorts; what the benchmark States hold) in the shape of
// kube-proxy's nftables proxier on a full sync: table "ip kube-proxy", its
// fixed base and helper chains, verdict maps service-ips and
// service-nodeports, and per service port a chain whose last rule is
// `numgen random mod <n> vmap { 0 : goto <endpoint chain>, ... }`, and
// per endpoint a chain that marks hairpin traffic and DNATs. Every chain
// it uses is added and flushed, every element is one `add element` line,
// as knftables writes a transaction. This is our own rendering of that
// published shape, not kube-proxy's code.
func RenderNFT(st *dataplane.State, node dataplane.Node) []byte {
	var b bytes.Buffer
	const t = "ip kube-proxy"
	const mark = "0x4000"
	w := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	chain := func(name string) {
		w("add chain %s %s", t, name)
		w("flush chain %s %s", t, name)
	}
	w(`add table %s { comment "rules for kube-proxy" ; }`, t)
	for _, c := range []struct{ name, typ, hook, prio string }{
		// kube-proxy writes dstnat - 10, dstnat + 10, dstnat and
		// srcnat; nft 1.0.6 takes those names on some hooks only.
		{"filter-prerouting", "filter", "prerouting", "-110"},
		{"filter-input", "filter", "input", "-110"},
		{"filter-forward", "filter", "forward", "-110"},
		{"filter-output", "filter", "output", "-110"},
		{"filter-output-post-dnat", "filter", "output", "-90"},
		{"nat-prerouting", "nat", "prerouting", "-100"},
		{"nat-output", "nat", "output", "-100"},
		{"nat-postrouting", "nat", "postrouting", "100"},
	} {
		w("add chain %s %s { type %s hook %s priority %s ; }", t, c.name, c.typ, c.hook, c.prio)
		w("flush chain %s %s", t, c.name)
	}
	for _, j := range []struct{ dst, src, extra string }{
		{"nodeport-endpoints-check", "filter-input", "ct state new "},
		{"service-endpoints-check", "filter-input", "ct state new "},
		{"service-endpoints-check", "filter-forward", "ct state new "},
		{"service-endpoints-check", "filter-output", "ct state new "},
		{"firewall-check", "filter-prerouting", "ct state new "},
		{"firewall-check", "filter-output", "ct state new "},
		{"services", "nat-output", ""},
		{"services", "nat-prerouting", ""},
		{"masquerading", "nat-postrouting", ""},
		{"cluster-ips-check", "filter-forward", "ct state new "},
		{"cluster-ips-check", "filter-output-post-dnat", "ct state new "},
	} {
		chain(j.dst)
		w("add rule %s %s %sjump %s", t, j.src, j.extra, j.dst)
	}
	chain("mark-for-masquerade")
	w("add rule %s mark-for-masquerade mark set mark or %s", t, mark)
	w("add rule %s masquerading mark and %s == 0 return", t, mark)
	w("add rule %s masquerading mark set mark xor %s", t, mark)
	w("add rule %s masquerading masquerade fully-random", t)
	w(`add set %s cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }`, t)
	w(`add rule %s cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"`, t)
	w(`add rule %s cluster-ips-check ip daddr { 198.19.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"`, t)
	w(`add map %s no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }`, t)
	w(`add map %s no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }`, t)
	w(`add chain %s reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }`, t)
	w("flush chain %s reject-chain", t)
	w("add rule %s reject-chain reject", t)
	w("add rule %s service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services", t)
	w("add rule %s nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports", t)
	w(`add map %s firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }`, t)
	chain("firewall-check")
	w("add rule %s firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips", t)
	w(`add map %s service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }`, t)
	w(`add map %s service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }`, t)
	w("add rule %s services ip daddr . meta l4proto . th dport vmap @service-ips", t)
	w("add rule %s services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports", t)
	w("flush set %s cluster-ips", t)
	for _, m := range []string{"service-ips", "firewall-ips", "no-endpoint-services", "no-endpoint-nodeports", "service-nodeports"} {
		w("flush map %s %s", t, m)
	}

	var podCIDR string
	for _, p := range node.LocalPodCIDRs {
		if p.Addr().Is4() {
			podCIDR = p.Masked().String()
			break
		}
	}
	for i := range st.Ports {
		p := &st.Ports[i]
		var cip netip.Addr
		for _, a := range p.ClusterIPs {
			if a.Is4() {
				cip = a
			}
		}
		if !cip.IsValid() {
			continue
		}
		proto := strings.ToLower(p.Protocol.String())
		var eps []netip.AddrPort
		for _, e := range p.Endpoints {
			if e.Addr.Is4() && e.Ready {
				eps = append(eps, e.AddrPort())
			}
		}
		base := fmt.Sprintf("%s/%s/%s/%s", p.Name.Namespace, p.Name.Name, proto, p.Name.Port)
		svcChain := "service-" + hashName(base)
		extChain := "external-" + hashName(base)
		epChains := make([]string, len(eps))
		for j, ep := range eps {
			epChains[j] = "endpoint-" + hashName(fmt.Sprintf("%s__%s/%d", base, ep.Addr(), ep.Port()))
			chain(epChains[j])
		}
		if len(eps) > 0 {
			chain(svcChain)
		}
		external := len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0 || p.NodePort != 0
		if external && len(eps) > 0 {
			chain(extChain)
		}
		w("add element %s cluster-ips { %s }", t, cip)
		if len(eps) > 0 {
			w("add element %s service-ips { %s . %s . %d : goto %s }", t, cip, proto, p.Port, svcChain)
		} else {
			w(`add element %s no-endpoint-services { %s . %s . %d comment "%s" : goto reject-chain }`, t, cip, proto, p.Port, p.Name)
		}
		for _, a := range append(append([]netip.Addr(nil), p.ExternalIPs...), p.LoadBalancerIPs...) {
			if len(eps) > 0 {
				w("add element %s service-ips { %s . %s . %d : goto %s }", t, a, proto, p.Port, extChain)
			} else {
				w(`add element %s no-endpoint-services { %s . %s . %d comment "%s" : goto reject-chain }`, t, a, proto, p.Port, p.Name)
			}
		}
		if p.NodePort != 0 {
			if len(eps) > 0 {
				w("add element %s service-nodeports { %s . %d : goto %s }", t, proto, p.NodePort, extChain)
			} else {
				w(`add element %s no-endpoint-nodeports { %s . %d comment "%s" : goto reject-chain }`, t, proto, p.NodePort, p.Name)
			}
		}
		if len(eps) == 0 {
			continue
		}
		if podCIDR != "" {
			w("add rule %s %s ip daddr %s %s dport %d ip saddr != %s jump mark-for-masquerade", t, svcChain, cip, proto, p.Port, podCIDR)
		}
		if external {
			w("add rule %s %s jump mark-for-masquerade", t, extChain)
			w("add rule %s %s goto %s", t, extChain, svcChain)
		}
		var vmap strings.Builder
		for j, c := range epChains {
			if j > 0 {
				vmap.WriteString(", ")
			}
			fmt.Fprintf(&vmap, "%d : goto %s", j, c)
		}
		w("add rule %s %s numgen random mod %d vmap { %s }", t, svcChain, len(eps), vmap.String())
		for j, ep := range eps {
			w("add rule %s %s ip saddr %s jump mark-for-masquerade", t, epChains[j], ep.Addr())
			w("add rule %s %s meta l4proto %s dnat to %s", t, epChains[j], proto, ep)
		}
	}
	return b.Bytes()
}

// hashName prefixes name with 8 characters of its hash, as kube-proxy
// names its per-service and per-endpoint chains.
func hashName(name string) string {
	h := sha256.Sum256([]byte(name))
	return base32.StdEncoding.EncodeToString(h[:])[:8] + "-" + name
}
