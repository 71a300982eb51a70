package nft

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/internal/nstest"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("plan differs from %s:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// Plan shows, as nft commands, what a Sync would do, and changes
// nothing: neither the kernel nor what the next Sync sends.
func TestPlan(t *testing.T) {
	ns := nstest.New(t)
	d := newDP(t, ns)
	ctx := context.Background()
	st := &dataplane.State{Ports: []dataplane.ServicePort{testPort(1)}}

	p, err := d.Plan(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Rebuild || !strings.HasPrefix(p.String(), "# rebuild table inet svcplane") {
		t.Fatalf("first plan = %q, want a rebuild", p.String())
	}
	g := gen(t, ns)
	if err := d.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if d.lastElems == 0 {
		t.Fatal("the Sync after a Plan sent nothing: Plan changed the model")
	}
	if gen(t, ns) == g {
		t.Fatal("Sync after Plan committed nothing")
	}
	if p, err := d.Plan(ctx, st); err != nil || !p.Empty() || p.String() != "no changes\n" {
		t.Fatalf("plan of the synced State = %q, %v; want no changes", p, err)
	}

	changed := &dataplane.State{Ports: []dataplane.ServicePort{testPort(1)}}
	changed.Ports[0].Endpoints = changed.Ports[0].Endpoints[2:] // drop 198.18.1.10 and 2001:db8:1::a
	p, err = d.Plan(ctx, changed)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "plan-endpoint-removed", p.String())
	// The plan left the model alone: the Sync sends what it showed.
	if err := d.Sync(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(p.String(), "\n"); d.lastElems != n {
		t.Fatalf("the Sync sent %d changes, the plan showed %d", d.lastElems, n)
	}
}
