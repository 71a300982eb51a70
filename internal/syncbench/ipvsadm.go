package syncbench

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/svcplane/svcplane/dataplane"
)

// IPVSAdm is the `ipvsadm -R` peer of the ipvs backend: the same virtual
// and real servers (one virtual server per cluster IP and port, round
// robin, each ready endpoint a masqueraded real server of weight 1), as
// `ipvsadm -S` saves them, restored with `nsenter --net=<ns> ipvsadm -R`
// into an empty namespace. It programs IPVS only: the ipvs backend also
// puts the service IPs on a dummy device and writes its nftables table.
var IPVSAdm = Loader{Name: "ipvsadm-restore", Render: RenderIPVSAdm, Load: LoadIPVSAdm,
	Available: func() error {
		if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
			return fmt.Errorf("this kernel has no IPVS (no /proc/net/ip_vs): run it in the VM (make test-vm KERNELS=6.1 VM_PKGS=./ipvs)")
		}
		return needProgram("ipvsadm", "ipvsadm")
	}}

// RenderIPVSAdm writes st's cluster-IP virtual servers in ipvsadm's
// restore format: one -A line per virtual server, one -a line per real
// server.
func RenderIPVSAdm(st *dataplane.State, _ dataplane.Node) []byte {
	var b bytes.Buffer
	for i := range st.Ports {
		p := &st.Ports[i]
		flag := map[dataplane.Protocol]string{dataplane.TCP: "-t", dataplane.UDP: "-u", dataplane.SCTP: "--sctp-service"}[p.Protocol]
		for _, cip := range p.ClusterIPs {
			vip := netip.AddrPortFrom(cip, p.Port).String()
			persist := ""
			if p.Affinity > 0 {
				persist = fmt.Sprintf(" -p %d", int(p.Affinity/time.Second))
			}
			fmt.Fprintf(&b, "-A %s %s -s rr%s\n", flag, vip, persist)
			for _, e := range p.Endpoints {
				if e.Ready && e.Addr.Is4() == cip.Is4() {
					fmt.Fprintf(&b, "-a %s %s -r %s -m -w 1\n", flag, vip, e.AddrPort())
				}
			}
		}
	}
	return b.Bytes()
}

// LoadIPVSAdm runs `ipvsadm -R` with file on its standard input inside the
// namespace at nsPath and returns ipvsadm's CPU time.
func LoadIPVSAdm(nsPath string, file []byte) (time.Duration, error) {
	return load(nsPath, file, "ipvsadm", "-R")
}
