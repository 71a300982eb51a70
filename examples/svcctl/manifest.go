package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// objects is what a set of manifests holds for svcctl.
type objects struct {
	services  []*corev1.Service
	slices    []*discoveryv1.EndpointSlice
	endpoints []*corev1.Endpoints
	// where says where each object came from, for messages.
	where map[any]string
	// notes are warnings: objects ignored, and why.
	notes []string
}

// source names one document of one file.
type source struct {
	file string
	line int // where the document starts, 1-based
	doc  int // 1-based index of the document in the file
	item string
}

func (s source) String() string {
	out := fmt.Sprintf("%s:%d: document %d", s.file, s.line, s.doc)
	if s.item != "" {
		out += " " + s.item
	}
	return out
}

// manifestError is one problem with a manifest.
type manifestError struct {
	src    source
	object string // "Service default/svc-web", or "" when unknown
	field  string // the field path, or ""
	detail string
}

func (e *manifestError) Error() string {
	var b strings.Builder
	b.WriteString(e.src.String())
	if e.object != "" {
		b.WriteString(" (" + e.object + ")")
	}
	b.WriteString(": ")
	if e.field != "" {
		b.WriteString(e.field + ": ")
	}
	b.WriteString(e.detail)
	return b.String()
}

// loadFiles reads every file ("-" is standard input) into one objects.
func loadFiles(files []string, stdin io.Reader) (*objects, error) {
	objs := &objects{where: make(map[any]string)}
	var errs []error
	for _, f := range files {
		var data []byte
		var err error
		name := f
		if f == "-" {
			name = "<stdin>"
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(f)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, objs.load(name, data))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := objs.checkDuplicates(); err != nil {
		return nil, err
	}
	objs.mirror()
	return objs, nil
}

// document is one YAML or JSON document of a file, as JSON.
type document struct {
	src  source
	json []byte
	err  error
}

// load decodes every document of one file. It reports every problem it
// finds, each naming the file, document and field.
func (o *objects) load(file string, data []byte) error {
	var errs []error
	for _, d := range splitDocuments(file, data) {
		if d.err != nil {
			errs = append(errs, &manifestError{src: d.src, detail: d.err.Error()})
			continue
		}
		errs = append(errs, o.decode(d.src, d.json))
	}
	return errors.Join(errs...)
}

// splitDocuments splits a file into its documents: a stream of JSON
// values when it starts with '{' or '[', else YAML documents separated by
// "---" lines. Empty documents are skipped but counted.
func splitDocuments(file string, data []byte) []document {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		return splitJSON(file, data)
	}
	var out []document
	lines := strings.SplitAfter(string(data), "\n")
	start, doc := 0, 1
	flush := func(end int) {
		text := strings.Join(lines[start:end], "")
		src := source{file: file, line: start + 1, doc: doc}
		// Skip the separator line itself in the line count.
		if start > 0 {
			src.line = start + 1
		}
		if isBlankYAML(text) {
			return
		}
		j, err := yaml.YAMLToJSONStrict([]byte(text))
		if err != nil {
			err = shiftYAMLLine(err, start)
		}
		out = append(out, document{src: src, json: j, err: err})
	}
	for i, l := range lines {
		if l == "---\n" || l == "---" || l == "---\r\n" || strings.HasPrefix(l, "--- ") {
			flush(i)
			start, doc = i+1, doc+1
		}
	}
	flush(len(lines))
	return out
}

func isBlankYAML(text string) bool {
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") && l != "..." {
			return false
		}
	}
	return true
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// shiftYAMLLine makes the "line N" in a YAML error count from the start
// of the file instead of the document.
func shiftYAMLLine(err error, offset int) error {
	msg := yamlLine.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, _ := strconv.Atoi(strings.TrimPrefix(m, "line "))
		return "line " + strconv.Itoa(n+offset)
	})
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	return errors.New("invalid YAML: " + msg)
}

// splitJSON reads a stream of JSON values; an array's elements are
// documents of their own.
func splitJSON(file string, data []byte) []document {
	var out []document
	dec := json.NewDecoder(bytes.NewReader(data))
	doc := 0
	for {
		offset := dec.InputOffset()
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == io.EOF {
			return out
		}
		doc++
		line := 1 + bytes.Count(data[:offset], []byte("\n"))
		if skip := len(data[offset:]) - len(bytes.TrimLeft(data[offset:], " \t\r\n")); skip > 0 {
			line += bytes.Count(data[offset:int(offset)+skip], []byte("\n"))
		}
		src := source{file: file, line: line, doc: doc}
		if err != nil {
			out = append(out, document{src: src, err: fmt.Errorf("invalid JSON: %v", err)})
			return out
		}
		if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '[' {
			var items []json.RawMessage
			if err := json.Unmarshal(raw, &items); err != nil {
				out = append(out, document{src: src, err: fmt.Errorf("invalid JSON: %v", err)})
				continue
			}
			for i, it := range items {
				s := src
				s.item = fmt.Sprintf("[%d]", i)
				out = append(out, document{src: s, json: it})
			}
			continue
		}
		out = append(out, document{src: src, json: raw})
	}
}

// typeMeta is what every object starts with.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// decode decodes one document: a Service, EndpointSlice, Endpoints, or a
// List of them. Other kinds are noted and ignored.
func (o *objects) decode(src source, data []byte) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return nil
	}
	var generic map[string]any
	if err := json.Unmarshal(data, &generic); err != nil {
		return &manifestError{src: src, detail: "not an object: " + jsonDetail(err)}
	}
	var tm typeMeta
	if err := json.Unmarshal(data, &tm); err != nil {
		return &manifestError{src: src, detail: jsonDetail(err)}
	}
	switch {
	case tm.Kind == "":
		return &manifestError{src: src, field: "kind", detail: "missing (want Service, EndpointSlice, Endpoints or List)"}
	case tm.APIVersion == "":
		return &manifestError{src: src, field: "apiVersion", detail: "missing"}
	}
	name := func() string {
		meta, _ := generic["metadata"].(map[string]any)
		ns, _ := meta["namespace"].(string)
		n, _ := meta["name"].(string)
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		return tm.Kind + " " + ns + "/" + n
	}
	want := map[string]string{
		"Service":       "v1",
		"Endpoints":     "v1",
		"EndpointSlice": "discovery.k8s.io/v1",
		"List":          "v1",
	}
	wantVersion, known := want[tm.Kind]
	if !known {
		o.notes = append(o.notes, fmt.Sprintf("%s: ignored %s (%s): svcctl reads Services, EndpointSlices and Endpoints", src, name(), tm.APIVersion))
		return nil
	}
	if tm.APIVersion != wantVersion {
		return &manifestError{src: src, object: name(), field: "apiVersion", detail: fmt.Sprintf("%q is not supported for %s (want %s)", tm.APIVersion, tm.Kind, wantVersion)}
	}
	var obj any
	switch tm.Kind {
	case "List":
		items, _ := generic["items"].([]any)
		if _, ok := generic["items"]; ok && items == nil {
			return &manifestError{src: src, object: "List", field: "items", detail: "not a list"}
		}
		var errs []error
		for i, it := range items {
			b, _ := json.Marshal(it)
			s := src
			s.item = strings.TrimSpace(s.item + fmt.Sprintf(" items[%d]", i))
			errs = append(errs, o.decode(s, b))
		}
		return errors.Join(errs...)
	case "Service":
		obj = &corev1.Service{}
	case "Endpoints":
		obj = &corev1.Endpoints{}
	case "EndpointSlice":
		obj = &discoveryv1.EndpointSlice{}
	}
	var errs []error
	for _, p := range shapeProblems(generic, reflect.TypeOf(obj).Elem(), "") {
		errs = append(errs, &manifestError{src: src, object: name(), field: p.field, detail: p.detail})
	}
	if err := json.Unmarshal(data, obj); err != nil {
		// Type errors are reported above, with their full path.
		if len(errs) == 0 {
			errs = append(errs, &manifestError{src: src, object: name(), detail: jsonDetail(err)})
		}
		return errors.Join(errs...)
	}
	var problems []fieldProblem
	switch obj := obj.(type) {
	case *corev1.Service:
		defaultNamespace(&obj.ObjectMeta)
		problems = checkService(obj)
		o.services = append(o.services, obj)
	case *corev1.Endpoints:
		defaultNamespace(&obj.ObjectMeta)
		problems = checkEndpoints(obj)
		o.endpoints = append(o.endpoints, obj)
	case *discoveryv1.EndpointSlice:
		defaultNamespace(&obj.ObjectMeta)
		problems = checkSlice(obj)
		o.slices = append(o.slices, obj)
	}
	o.where[obj] = src.String()
	for _, p := range problems {
		errs = append(errs, &manifestError{src: src, object: name(), field: p.field, detail: p.detail})
	}
	return errors.Join(errs...)
}

func jsonDetail(err error) string {
	return strings.TrimPrefix(err.Error(), "json: ")
}

func defaultNamespace(m *metav1.ObjectMeta) {
	if m.Namespace == "" {
		m.Namespace = metav1.NamespaceDefault
	}
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// shapeProblems returns the keys of v (decoded JSON) that the Go type t (a
// Kubernetes API type) has no field for, and the values of the wrong JSON
// type, each with its full path (spec.ports[0].port). Kubernetes rejects
// unknown fields in strict mode, and they are almost always typos
// (targetport, protocoll); like the API server, matching is
// case-sensitive.
func shapeProblems(v any, t reflect.Type, path string) []fieldProblem {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if v == nil || reflect.PointerTo(t).Implements(unmarshalerType) || t.Implements(unmarshalerType) {
		return nil // null, or IntOrString, Time, Quantity: they check themselves
	}
	wrong := func(want string) []fieldProblem {
		return []fieldProblem{{path, fmt.Sprintf("want %s, got %s", want, jsonKind(v))}}
	}
	var out []fieldProblem
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return wrong("an object")
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			ft, ok := fields[k]
			if !ok {
				out = append(out, fieldProblem{p, "unknown field"})
				continue
			}
			out = append(out, shapeProblems(m[k], ft, p)...)
		}
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			return wrong("a list")
		}
		for i, e := range list {
			out = append(out, shapeProblems(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return wrong("an object")
		}
		for k, e := range m {
			out = append(out, shapeProblems(e, t.Elem(), fmt.Sprintf("%s[%q]", path, k))...)
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			return wrong("a string")
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return wrong("true or false")
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		f, ok := v.(float64)
		if !ok {
			return wrong("an integer")
		}
		if f != float64(int64(f)) {
			return []fieldProblem{{path, fmt.Sprintf("want an integer, got %v", f)}}
		}
	}
	return out
}

// jsonKind names the JSON type of a decoded value.
func jsonKind(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", v)
	case float64:
		return fmt.Sprintf("the number %v", v)
	case bool:
		return fmt.Sprintf("%v", v)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// jsonFields maps the JSON names of t's fields, inlined ones included,
// to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := make(map[string]reflect.Type)
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" && opts == "" {
			continue
		}
		if f.Anonymous && name == "" || strings.Contains(","+opts+",", ",inline,") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					out[k] = v
				}
				continue
			}
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

// fieldProblem is a problem with one field of a decoded object.
type fieldProblem struct{ field, detail string }

type checker struct{ out []fieldProblem }

func (c *checker) bad(field, format string, args ...any) {
	c.out = append(c.out, fieldProblem{field, fmt.Sprintf(format, args...)})
}

func (c *checker) name(m *metav1.ObjectMeta) {
	if m.Name == "" {
		c.bad("metadata.name", "missing")
	}
}

func (c *checker) ip(field, s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		c.bad(field, "%q is not an IP address", s)
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

func (c *checker) port(field string, p int32, optional bool) {
	if p == 0 && optional {
		return
	}
	if p < 1 || p > 65535 {
		c.bad(field, "%d is not a valid port (want 1-65535)", p)
	}
}

func (c *checker) protocol(field string, p corev1.Protocol) {
	switch p {
	case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		c.bad(field, "%q is not a protocol (want TCP, UDP or SCTP)", p)
	}
}

// checkService reports what svcctl cannot program as written. Without an
// API server nothing allocates cluster IPs or NodePorts, so manifests
// must carry them, as `kubectl get -o yaml` prints them.
func checkService(s *corev1.Service) []fieldProblem {
	c := &checker{}
	c.name(&s.ObjectMeta)
	spec := &s.Spec
	switch spec.Type {
	case "", corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	case corev1.ServiceTypeExternalName:
		if spec.ExternalName == "" {
			c.bad("spec.externalName", "missing (an ExternalName Service names a DNS name)")
		}
		return c.out
	default:
		c.bad("spec.type", "%q is not a Service type (want ClusterIP, NodePort, LoadBalancer or ExternalName)", spec.Type)
		return c.out
	}
	headless := spec.ClusterIP == corev1.ClusterIPNone
	switch {
	case spec.ClusterIP == "" && len(spec.ClusterIPs) == 0:
		c.bad("spec.clusterIP", "missing: without an API server nothing allocates one; set it (e.g. 198.19.0.10) or None for a headless Service")
	case headless:
	case spec.ClusterIP != "":
		c.ip("spec.clusterIP", spec.ClusterIP)
	}
	for i, ip := range spec.ClusterIPs {
		f := fmt.Sprintf("spec.clusterIPs[%d]", i)
		switch {
		case ip == corev1.ClusterIPNone:
			if i > 0 || len(spec.ClusterIPs) > 1 {
				c.bad(f, "None must be the only entry")
			}
		case i == 0 && spec.ClusterIP != "" && ip != spec.ClusterIP:
			c.bad(f, "%q differs from spec.clusterIP %q (they must agree)", ip, spec.ClusterIP)
		default:
			c.ip(f, ip)
		}
	}
	for i, ip := range spec.ExternalIPs {
		c.ip(fmt.Sprintf("spec.externalIPs[%d]", i), ip)
	}
	for i, r := range spec.LoadBalancerSourceRanges {
		if _, err := netip.ParsePrefix(strings.TrimSpace(r)); err != nil {
			if _, err := netip.ParseAddr(strings.TrimSpace(r)); err != nil {
				c.bad(fmt.Sprintf("spec.loadBalancerSourceRanges[%d]", i), "%q is not a CIDR", r)
			}
		}
	}
	for i, ing := range s.Status.LoadBalancer.Ingress {
		if ing.IP != "" {
			c.ip(fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), ing.IP)
		}
	}
	switch spec.ExternalTrafficPolicy {
	case "", corev1.ServiceExternalTrafficPolicyCluster, corev1.ServiceExternalTrafficPolicyLocal:
	default:
		c.bad("spec.externalTrafficPolicy", "%q is not a policy (want Cluster or Local)", spec.ExternalTrafficPolicy)
	}
	if p := spec.InternalTrafficPolicy; p != nil && *p != corev1.ServiceInternalTrafficPolicyCluster && *p != corev1.ServiceInternalTrafficPolicyLocal {
		c.bad("spec.internalTrafficPolicy", "%q is not a policy (want Cluster or Local)", *p)
	}
	switch spec.SessionAffinity {
	case "", corev1.ServiceAffinityNone, corev1.ServiceAffinityClientIP:
	default:
		c.bad("spec.sessionAffinity", "%q is not an affinity (want None or ClientIP)", spec.SessionAffinity)
	}
	if cfg := spec.SessionAffinityConfig; cfg != nil && cfg.ClientIP != nil && cfg.ClientIP.TimeoutSeconds != nil {
		if t := *cfg.ClientIP.TimeoutSeconds; t < 1 || t > 86400 {
			c.bad("spec.sessionAffinityConfig.clientIP.timeoutSeconds", "%d is out of range (want 1-86400)", t)
		}
	}
	if !headless && len(spec.Ports) == 0 {
		c.bad("spec.ports", "missing: a Service needs at least one port")
	}
	names := make(map[string]int)
	for i, p := range spec.Ports {
		f := fmt.Sprintf("spec.ports[%d]", i)
		c.port(f+".port", p.Port, false)
		c.protocol(f+".protocol", p.Protocol)
		c.port(f+".nodePort", p.NodePort, true)
		if p.NodePort != 0 && spec.Type != corev1.ServiceTypeNodePort && spec.Type != corev1.ServiceTypeLoadBalancer {
			c.bad(f+".nodePort", "set on a Service of type %s (only NodePort and LoadBalancer Services have NodePorts)", typeName(spec.Type))
		}
		if len(spec.Ports) > 1 && p.Name == "" {
			c.bad(f+".name", "missing: every port of a multi-port Service needs a name")
		}
		if j, dup := names[p.Name]; dup && p.Name != "" {
			c.bad(f+".name", "%q repeats spec.ports[%d].name", p.Name, j)
		}
		names[p.Name] = i
	}
	return c.out
}

func typeName(t corev1.ServiceType) string {
	if t == "" {
		return string(corev1.ServiceTypeClusterIP)
	}
	return string(t)
}

// checkSlice reports problems with an EndpointSlice.
func checkSlice(s *discoveryv1.EndpointSlice) []fieldProblem {
	c := &checker{}
	c.name(&s.ObjectMeta)
	if s.Labels[discoveryv1.LabelServiceName] == "" {
		c.bad(`metadata.labels["kubernetes.io/service-name"]`, "missing: it names the Service the slice belongs to")
	}
	var want int // 4 or 6
	switch s.AddressType {
	case discoveryv1.AddressTypeIPv4:
		want = 4
	case discoveryv1.AddressTypeIPv6:
		want = 6
	case discoveryv1.AddressTypeFQDN:
	case "":
		c.bad("addressType", "missing (want IPv4 or IPv6)")
	default:
		c.bad("addressType", "%q is not an address type (want IPv4, IPv6 or FQDN)", s.AddressType)
	}
	for i, p := range s.Ports {
		f := fmt.Sprintf("ports[%d]", i)
		if p.Port != nil {
			c.port(f+".port", *p.Port, false)
		}
		if p.Protocol != nil {
			c.protocol(f+".protocol", *p.Protocol)
		}
	}
	for i, e := range s.Endpoints {
		f := fmt.Sprintf("endpoints[%d].addresses", i)
		if len(e.Addresses) == 0 {
			c.bad(f, "missing: an endpoint needs an address")
		}
		if want == 0 {
			continue
		}
		for j, a := range e.Addresses {
			ip, ok := c.ip(fmt.Sprintf("%s[%d]", f, j), a)
			if ok && (ip.Is4() != (want == 4)) {
				c.bad(fmt.Sprintf("%s[%d]", f, j), "%s is not an %s address (the slice's addressType)", a, s.AddressType)
			}
		}
	}
	return c.out
}

// checkEndpoints reports problems with a core/v1 Endpoints.
func checkEndpoints(e *corev1.Endpoints) []fieldProblem {
	c := &checker{}
	c.name(&e.ObjectMeta)
	for i, sub := range e.Subsets {
		for _, list := range []struct {
			name  string
			addrs []corev1.EndpointAddress
		}{{"addresses", sub.Addresses}, {"notReadyAddresses", sub.NotReadyAddresses}} {
			for j, a := range list.addrs {
				c.ip(fmt.Sprintf("subsets[%d].%s[%d].ip", i, list.name, j), a.IP)
			}
		}
		for j, p := range sub.Ports {
			f := fmt.Sprintf("subsets[%d].ports[%d]", i, j)
			c.port(f+".port", p.Port, false)
			c.protocol(f+".protocol", p.Protocol)
		}
	}
	return c.out
}

type objKey struct{ kind, namespace, name string }

// checkDuplicates rejects two objects of one kind with one namespace and
// name: the API server would keep only the last.
func (o *objects) checkDuplicates() error {
	seen := make(map[objKey]string)
	var errs []error
	add := func(kind string, m *metav1.ObjectMeta, obj any) {
		k := objKey{kind, m.Namespace, m.Name}
		if first, dup := seen[k]; dup {
			errs = append(errs, fmt.Errorf("%s (%s %s/%s): metadata.name: repeats the %s at %s", o.where[obj], kind, m.Namespace, m.Name, kind, first))
			return
		}
		seen[k] = o.where[obj]
	}
	for _, s := range o.services {
		add("Service", &s.ObjectMeta, s)
	}
	for _, s := range o.slices {
		add("EndpointSlice", &s.ObjectMeta, s)
	}
	for _, e := range o.endpoints {
		add("Endpoints", &e.ObjectMeta, e)
	}
	return errors.Join(errs...)
}

// Mirroring: the EndpointSlice mirroring controller copies Endpoints that
// a user wrote for a Service without a selector into EndpointSlices,
// which is what kube-proxy reads. svcctl does the same, by its rules.
const (
	mirrorManagedBy       = "endpointslicemirroring-controller.k8s.io"
	maxEndpointsPerSubset = 1000
)

// mirror converts the Endpoints to EndpointSlices as the mirroring
// controller does: only for a Service (in the manifests) without a
// selector, not for Endpoints labelled endpointslice.kubernetes.io/
// skip-mirror=true or carrying a leader-election annotation; subsets with
// the same ports share slices, one per address family; ready addresses
// get ready=true, notReadyAddresses ready=false; at most 1000 addresses
// of each subset are taken, ready ones first; addresses that are not IPs
// are left out. The slices carry the Endpoints' labels, the
// kubernetes.io/service-name label and the controller's managed-by label.
func (o *objects) mirror() {
	svcs := make(map[objKey]*corev1.Service)
	for _, s := range o.services {
		svcs[objKey{"", s.Namespace, s.Name}] = s
	}
	for _, ep := range o.endpoints {
		where := o.where[ep]
		svc := svcs[objKey{"", ep.Namespace, ep.Name}]
		switch {
		case ep.Labels[discoveryv1.LabelSkipMirror] == "true":
			o.notes = append(o.notes, fmt.Sprintf("%s: Endpoints %s/%s not mirrored: labelled %s=true", where, ep.Namespace, ep.Name, discoveryv1.LabelSkipMirror))
			continue
		case ep.Annotations["control-plane.alpha.kubernetes.io/leader"] != "":
			o.notes = append(o.notes, fmt.Sprintf("%s: Endpoints %s/%s not mirrored: a leader-election record", where, ep.Namespace, ep.Name))
			continue
		case svc == nil:
			o.notes = append(o.notes, fmt.Sprintf("%s: Endpoints %s/%s not mirrored: no Service %s/%s in the manifests", where, ep.Namespace, ep.Name, ep.Namespace, ep.Name))
			continue
		case svc.Spec.Selector != nil:
			o.notes = append(o.notes, fmt.Sprintf("%s: Endpoints %s/%s not mirrored: Service %s/%s has a selector, so its EndpointSlices come from the EndpointSlice controller", where, ep.Namespace, ep.Name, ep.Namespace, ep.Name))
			continue
		}
		o.slices = append(o.slices, mirrorEndpoints(ep)...)
	}
}

// mirrorEndpoints returns the EndpointSlices the mirroring controller
// writes for ep.
func mirrorEndpoints(ep *corev1.Endpoints) []*discoveryv1.EndpointSlice {
	type group struct {
		ports []discoveryv1.EndpointPort
		index int // among the distinct port sets
	}
	groups := map[string]*group{}
	slicesBy := map[string]*discoveryv1.EndpointSlice{}
	var out []*discoveryv1.EndpointSlice
	for _, sub := range ep.Subsets {
		var ports []discoveryv1.EndpointPort
		var key strings.Builder
		for _, p := range sub.Ports {
			name, port, proto := p.Name, p.Port, p.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP // the Endpoints API's default
			}
			ports = append(ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto, AppProtocol: p.AppProtocol})
			fmt.Fprintf(&key, "%s/%d/%s,", name, port, proto)
		}
		g := groups[key.String()]
		if g == nil {
			g = &group{ports: ports, index: len(groups)}
			groups[key.String()] = g
		}
		n := 0
		add := func(a corev1.EndpointAddress, ready bool) {
			if n >= maxEndpointsPerSubset {
				return
			}
			ip, err := netip.ParseAddr(a.IP)
			if err != nil {
				return
			}
			ip = ip.Unmap()
			typ := discoveryv1.AddressTypeIPv4
			if ip.Is6() {
				typ = discoveryv1.AddressTypeIPv6
			}
			sk := key.String() + string(typ)
			s := slicesBy[sk]
			if s == nil {
				labels := map[string]string{}
				for k, v := range ep.Labels {
					labels[k] = v
				}
				labels[discoveryv1.LabelServiceName] = ep.Name
				labels[discoveryv1.LabelManagedBy] = mirrorManagedBy
				s = &discoveryv1.EndpointSlice{
					ObjectMeta: metav1.ObjectMeta{
						Namespace: ep.Namespace,
						Name:      fmt.Sprintf("%s-mirror-%d-%s", ep.Name, g.index, strings.ToLower(string(typ))),
						Labels:    labels,
					},
					AddressType: typ,
					Ports:       g.ports,
				}
				slicesBy[sk] = s
				out = append(out, s)
			}
			r := ready
			e := discoveryv1.Endpoint{
				Addresses:  []string{ip.String()},
				Conditions: discoveryv1.EndpointConditions{Ready: &r},
				TargetRef:  a.TargetRef,
				NodeName:   a.NodeName,
			}
			if a.Hostname != "" {
				h := a.Hostname
				e.Hostname = &h
			}
			s.Endpoints = append(s.Endpoints, e)
			n++
		}
		for _, a := range sub.Addresses {
			add(a, true)
		}
		for _, a := range sub.NotReadyAddresses {
			add(a, false)
		}
	}
	return out
}
