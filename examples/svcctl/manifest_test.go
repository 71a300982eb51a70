package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/dataplane/kube"
)

func testdata(names ...string) []string {
	var out []string
	for _, n := range names {
		out = append(out, filepath.Join("testdata", n))
	}
	return out
}

// translate loads files and translates them for node-a.
func translate(t *testing.T, files ...string) (*objects, *dataplane.State) {
	t.Helper()
	objs, err := loadFiles(testdata(files...), nil)
	if err != nil {
		t.Fatalf("load %v: %v", files, err)
	}
	st := kube.Translate(objs.services, objs.slices, &dataplane.Node{Name: "node-a"})
	if err := st.Validate(); err != nil {
		t.Fatalf("translated state is invalid: %v", err)
	}
	return objs, st
}

var classroomPods = []netip.AddrPort{
	netip.MustParseAddrPort("198.18.1.10:8080"),
	netip.MustParseAddrPort("198.18.1.11:8080"),
	netip.MustParseAddrPort("198.18.2.10:8080"),
}

func endpointAddrs(p dataplane.ServicePort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, e := range p.Endpoints {
		if e.Ready {
			out = append(out, e.AddrPort())
		}
	}
	return out
}

func TestClassroomManifests(t *testing.T) {
	for _, tc := range []struct {
		files     []string
		port      string // "" when nothing is programmed
		clusterIP string
		nodePort  uint16
		lbIP      string
		notes     []string
	}{
		{files: []string{"svc-web.yaml"}, port: "default/svc-web:http", clusterIP: "198.19.0.10"},
		{files: []string{"svc-web-node.yaml"}, port: "default/svc-web-node:http", clusterIP: "198.19.0.11", nodePort: 30123},
		{files: []string{"svc-web-lb.yaml"}, port: "default/svc-web-lb:http", clusterIP: "198.19.0.13", nodePort: 30124, lbIP: "203.0.113.10"},
		{files: []string{"svc-no-selector.yaml", "endpoints.yaml"}, port: "default/svc-no-selector:http", clusterIP: "198.19.0.12"},
		{files: []string{"svc-node-web-headless.yaml"}, notes: []string{"headless"}},
		{files: []string{"svc-ext.yaml"}, notes: []string{"ExternalName", "google.com"}},
		{files: []string{"endpoints.yaml"}, notes: []string{"not mirrored: no Service default/svc-no-selector"}},
	} {
		t.Run(strings.Join(tc.files, "+"), func(t *testing.T) {
			objs, st := translate(t, tc.files...)
			notes := strings.Join(append(objs.notes, skipped(objs, st)...), "\n")
			for _, n := range tc.notes {
				if !strings.Contains(notes, n) {
					t.Errorf("notes %q lack %q", notes, n)
				}
			}
			if tc.port == "" {
				if len(st.Ports) != 0 {
					t.Fatalf("ports = %v, want none", st.Ports)
				}
				return
			}
			if len(st.Ports) != 1 {
				t.Fatalf("got %d ports, want 1: %+v", len(st.Ports), st.Ports)
			}
			p := st.Ports[0]
			if p.Name.String() != tc.port || p.Port != 80 || p.Protocol != dataplane.TCP {
				t.Errorf("port = %s %s %d, want %s TCP 80", p.Name, p.Protocol, p.Port, tc.port)
			}
			if want := []netip.Addr{netip.MustParseAddr(tc.clusterIP)}; !slices.Equal(p.ClusterIPs, want) {
				t.Errorf("cluster IPs = %v, want %v", p.ClusterIPs, want)
			}
			if p.NodePort != tc.nodePort {
				t.Errorf("NodePort = %d, want %d", p.NodePort, tc.nodePort)
			}
			if tc.lbIP != "" && !slices.Equal(p.LoadBalancerIPs, []netip.Addr{netip.MustParseAddr(tc.lbIP)}) {
				t.Errorf("load-balancer IPs = %v, want %s", p.LoadBalancerIPs, tc.lbIP)
			}
			if got := endpointAddrs(p); !slices.Equal(got, classroomPods) {
				t.Errorf("ready endpoints = %v, want the 3 pods %v", got, classroomPods)
			}
		})
	}
}

// TestClassroomAddresses checks that the manifests use only the
// documentation ranges DESIGN.md assigns.
func TestClassroomAddresses(t *testing.T) {
	ranges := []netip.Prefix{
		netip.MustParsePrefix("192.0.2.0/24"),   // node network
		netip.MustParsePrefix("198.18.0.0/16"),  // pods
		netip.MustParsePrefix("198.19.0.0/16"),  // cluster IPs
		netip.MustParsePrefix("203.0.113.0/24"), // external and LB IPs
	}
	files, _ := filepath.Glob("testdata/*.yaml")
	if len(files) < 7 {
		t.Fatalf("found %d manifests, want at least 7", len(files))
	}
	objs, err := loadFiles(files, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := kube.Translate(objs.services, objs.slices, nil)
	check := func(what string, a netip.Addr) {
		for _, r := range ranges {
			if r.Contains(a) {
				return
			}
		}
		t.Errorf("%s %s is outside the documentation ranges", what, a)
	}
	for _, p := range st.Ports {
		for _, a := range slices.Concat(p.ClusterIPs, p.ExternalIPs, p.LoadBalancerIPs) {
			check(p.Name.String(), a)
		}
		for _, r := range p.SourceRanges {
			check(p.Name.String()+" source range", r.Addr())
		}
		for _, e := range p.Endpoints {
			check(p.Name.String()+" endpoint", e.Addr)
		}
	}
	if len(st.Ports) != 4 {
		t.Errorf("all manifests together give %d ports, want 4", len(st.Ports))
	}
}

func TestMirroring(t *testing.T) {
	const manifest = `
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 198.19.1.1
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, namespace: shop, labels: {team: data}}
subsets:
- addresses: [{ip: 198.18.1.20, nodeName: node-a}]
  notReadyAddresses: [{ip: 198.18.2.20, nodeName: node-b}]
  ports: [{name: pg, port: 5432}]
- addresses: [{ip: "2001:db8:1::20"}]
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.1.2
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: shop}
subsets:
- addresses: [{ip: 198.18.1.30}]
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: skip, namespace: shop}
spec:
  clusterIP: 198.19.1.3
  ports: [{port: 80}]
---
apiVersion: v1
kind: Endpoints
metadata:
  name: skip
  namespace: shop
  labels: {endpointslice.kubernetes.io/skip-mirror: "true"}
subsets:
- addresses: [{ip: 198.18.1.40}]
  ports: [{port: 80}]
`
	objs, err := loadFiles([]string{"-"}, strings.NewReader(manifest))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.slices) != 2 {
		t.Fatalf("mirrored %d slices, want 2 (one per subset and family of db)", len(objs.slices))
	}
	v4 := objs.slices[0]
	if v4.AddressType != "IPv4" || v4.Labels["kubernetes.io/service-name"] != "db" ||
		v4.Labels["endpointslice.kubernetes.io/managed-by"] != mirrorManagedBy || v4.Labels["team"] != "data" {
		t.Errorf("slice = %s %v, want IPv4 labelled for db, managed by the mirroring controller, with the Endpoints' labels", v4.AddressType, v4.Labels)
	}
	if len(v4.Endpoints) != 2 || !*v4.Endpoints[0].Conditions.Ready || *v4.Endpoints[1].Conditions.Ready {
		t.Errorf("endpoints = %+v, want a ready one and a not-ready one", v4.Endpoints)
	}
	if objs.slices[1].AddressType != "IPv6" {
		t.Errorf("second slice is %s, want IPv6", objs.slices[1].AddressType)
	}
	notes := strings.Join(objs.notes, "\n")
	for _, want := range []string{"Endpoints shop/web not mirrored: Service shop/web has a selector", "Endpoints shop/skip not mirrored: labelled endpointslice.kubernetes.io/skip-mirror=true"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes %q lack %q", notes, want)
		}
	}
	st := kube.Translate(objs.services, objs.slices, nil)
	for _, p := range st.Ports {
		if p.Name.Name == "db" {
			if got := endpointAddrs(p); !slices.Equal(got, []netip.AddrPort{netip.MustParseAddrPort("198.18.1.20:5432")}) {
				t.Errorf("db's ready endpoints = %v, want only 198.18.1.20:5432 (IPv6 dropped: no IPv6 cluster IP)", got)
			}
		}
	}
}

// Subsets with the same ports share a slice (per family), as the
// mirroring controller's do; other ports get their own.
func TestMirrorMergesSubsets(t *testing.T) {
	const manifest = `
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {clusterIP: 198.19.1.1, ports: [{name: pg, port: 5432}, {name: metrics, port: 9187}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: db}
subsets:
- addresses: [{ip: 198.18.1.20}]
  ports: [{name: pg, port: 5432}]
- addresses: [{ip: 198.18.2.20}]
  ports: [{name: pg, port: 5432, protocol: TCP}]
- addresses: [{ip: 198.18.1.20}]
  ports: [{name: metrics, port: 9187}]
`
	objs, err := loadFiles([]string{"-"}, strings.NewReader(manifest))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range objs.slices {
		var addrs []string
		for _, e := range s.Endpoints {
			addrs = append(addrs, e.Addresses[0])
		}
		got = append(got, fmt.Sprintf("%s %s:%d %v", s.Name, *s.Ports[0].Name, *s.Ports[0].Port, addrs))
	}
	want := []string{"db-mirror-0-ipv4 pg:5432 [198.18.1.20 198.18.2.20]", "db-mirror-1-ipv4 metrics:9187 [198.18.1.20]"}
	if !slices.Equal(got, want) {
		t.Errorf("mirrored slices:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	st := kube.Translate(objs.services, objs.slices, nil)
	if len(st.Ports) != 2 || len(st.Ports[0].Endpoints) != 1 || len(st.Ports[1].Endpoints) != 2 {
		t.Errorf("translated: %+v, want metrics with 1 endpoint and pg with 2", st.Ports)
	}
}

// TestBadManifests checks that each problem is reported with its file,
// document and field, all at once, and that nothing is programmed (the
// errors come before any backend is opened, so this runs without root).
func TestBadManifests(t *testing.T) {
	svc := "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: 198.19.0.10\n  ports: [{port: 80}]\n"
	for _, tc := range []struct {
		name, manifest string
		want           []string
	}{
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: 198.19.0.10\n  ports:\n  - port: 80\n    targetport: 8080\n",
			[]string{"bad.yaml:1: document 1 (Service default/s): spec.ports[0].targetport: unknown field"}},
		{"wrong type", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: 198.19.0.10\n  ports: [{port: eighty}]\n",
			[]string{`spec.ports[0].port: want an integer, got the string "eighty"`}},
		{"bad port", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: 198.19.0.10\n  ports: [{port: 70000}]\n",
			[]string{"spec.ports[0].port: 70000 is not a valid port"}},
		{"bad cluster IP", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: 198.19.0.300\n  ports: [{port: 80}]\n",
			[]string{`spec.clusterIP: "198.19.0.300" is not an IP address`}},
		{"no cluster IP", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n",
			[]string{"spec.clusterIP: missing: without an API server nothing allocates one"}},
		{"second document", svc + "---\napiVersion: v1\nkind: Service\nmetadata: {name: t}\nspec:\n  clusterIP: 198.19.0.11\n  type: Nodeport\n  ports: [{port: 80}]\n",
			[]string{`bad.yaml:8: document 2 (Service default/t): spec.type: "Nodeport" is not a Service type`}},
		{"missing kind", "apiVersion: v1\nmetadata: {name: s}\n", []string{"document 1: kind: missing"}},
		{"old apiVersion", "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: e}\n",
			[]string{`(EndpointSlice default/e): apiVersion: "discovery.k8s.io/v1beta1" is not supported for EndpointSlice (want discovery.k8s.io/v1)`}},
		{"slice without service label", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\nendpoints: [{addresses: [198.18.1.10]}]\n",
			[]string{`metadata.labels["kubernetes.io/service-name"]: missing`}},
		{"slice address family", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, labels: {kubernetes.io/service-name: s}}\naddressType: IPv6\nendpoints: [{addresses: [198.18.1.10]}]\n",
			[]string{"endpoints[0].addresses[0]: 198.18.1.10 is not an IPv6 address"}},
		{"endpoints address", "apiVersion: v1\nkind: Endpoints\nmetadata: {name: s}\nsubsets: [{addresses: [{ip: pod-1}], ports: [{port: 8080}]}]\n",
			[]string{`subsets[0].addresses[0].ip: "pod-1" is not an IP address`}},
		{"invalid YAML", svc + "---\nkind: Service\n  bad: [\n", []string{"bad.yaml:8: document 2: invalid YAML"}},
		{"duplicate", svc + "---\n" + svc, []string{"bad.yaml:8: document 2 (Service default/s): metadata.name: repeats the Service at bad.yaml:1: document 1"}},
		{"every problem at once", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: nope\n  ports: [{port: 0, protocol: ICMP}]\n",
			[]string{`spec.clusterIP: "nope"`, "spec.ports[0].port: 0", `spec.ports[0].protocol: "ICMP"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "bad.yaml")
			if err := os.WriteFile(file, []byte(tc.manifest), 0o644); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), []string{"plan", "-f", file, "--node-name", "node-a"}, nil, &stdout, &stderr)
			if code != 1 {
				t.Fatalf("exit code %d, want 1; stderr:\n%s", code, stderr.String())
			}
			msg := strings.ReplaceAll(stderr.String(), dir+"/", "")
			if !strings.HasPrefix(msg, "svcctl plan: bad manifests:\n") {
				t.Errorf("stderr = %q, want it to start with 'svcctl plan: bad manifests:'", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr lacks %q:\n%s", w, msg)
				}
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}

func TestJSONManifests(t *testing.T) {
	const stream = `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "198.19.0.1", "ports": [{"port": 80}]}}
{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}, "spec": {"clusterIP": "198.19.0.2", "ports": [{"port": 80}]}},
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"}, "spec": {"clusterIP": "198.19.0.3", "ports": [{"port": "x"}]}}
]}`
	_, err := loadFiles([]string{"-"}, strings.NewReader(stream))
	if err == nil || !strings.Contains(err.Error(), `<stdin>:2: document 2 items[1] (Service default/c): spec.ports[0].port: want an integer`) {
		t.Fatalf("err = %v, want the bad item named by line, document and index", err)
	}
	objs, err := loadFiles([]string{"-"}, strings.NewReader(strings.Replace(stream, `"x"`, "81", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.services) != 3 {
		t.Errorf("got %d services, want 3", len(objs.services))
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: svcctl COMMAND"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"apply"}, 2, "no manifests: give them with -f FILE"},
		{[]string{"apply", "-f", "testdata/svc-web.yaml", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"show", "--backend", "bpf", "--node-name", "n"}, 1, `--backend "bpf": unknown backend (want nft or ipvs)`},
		{[]string{"plan", "-f", "testdata/nope.yaml", "--node-name", "n"}, 1, "nope.yaml: no such file"},
		{[]string{"show", "--pod-cidr", "198.18.1.0", "--node-name", "n"}, 1, `--pod-cidr "198.18.1.0": not a CIDR`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, nil, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("svcctl %v: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}

// On a kernel without IPVS, --backend ipvs says to use one.
func TestNoIPVS(t *testing.T) {
	if ipvsAvailable() {
		t.Skip("this kernel has IPVS")
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"show", "--backend", "ipvs", "--node-name", "n"}, nil, &stdout, &stderr)
	if want := "Use a kernel with IPVS (CONFIG_IP_VS, the ip_vs module loaded), or --backend nft."; code != 1 || !strings.Contains(stderr.String(), want) {
		t.Errorf("svcctl show --backend ipvs: exit %d, stderr %q; want exit 1 and %q", code, stderr.String(), want)
	}
}

func TestFold(t *testing.T) {
	var lines []string
	for b := 0; b < 64; b++ {
		ep := "198.18.1.10 . 8080"
		if b >= 22 && b != 40 {
			ep = "198.18.1.11 . 8080"
		}
		lines = append(lines, "add element inet svcplane endpoints-v4 { 198.19.0.10 . tcp . 80 . 0x"+
			strings.Repeat("0", 6)+string("0123456789abcdef"[b/16])+string("0123456789abcdef"[b%16])+" : "+ep+" }")
	}
	lines = append(lines, `add element inet svcplane service-ips-v4 { 198.19.0.10 . tcp . 80 comment "default/svc-web:http" }`)
	got := fold(lines)
	want := []string{
		"add element inet svcplane endpoints-v4 { 198.19.0.10 . tcp . 80 . buckets 0-21,40 : 198.18.1.10 . 8080 }",
		"add element inet svcplane endpoints-v4 { 198.19.0.10 . tcp . 80 . buckets 22-39,41-63 : 198.18.1.11 . 8080 }",
		`add element inet svcplane service-ips-v4 { 198.19.0.10 . tcp . 80 comment "default/svc-web:http" }`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("fold =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
