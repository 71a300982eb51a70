package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svcplane/svcplane/conformance/topo"
	"github.com/svcplane/svcplane/internal/ipvsnl"
)

// mainEnv makes the test binary run the demo's main, for the interrupt
// test.
const mainEnv = "SVCPLANE_DEMO_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) != "" {
		main()
		return
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run `sudo make test`")
	}
}

// The whole tour runs, announces each step, and checks what it shows.
func TestTour(t *testing.T) { tour(t, "nft") }

// The tour on the ipvs backend, where the kernel has IPVS (make test-vm).
func TestTourIPVS(t *testing.T) {
	needRoot(t)
	c, err := ipvsnl.Dial(-1)
	if err != nil {
		t.Skipf("no IPVS here (make test-vm runs this in a VM whose kernel has it): %v", err)
	}
	c.Close()
	tour(t, "ipvs")
}

func tour(t *testing.T, backend string) {
	needRoot(t)
	// Under emulation (make test-vm sets SVCPLANE_TIME_SCALE) everything
	// takes several times longer; natively the tour must stay short.
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scale(30*time.Second))
	defer cancel()
	var out bytes.Buffer
	d := &demo{n: 30, backend: backend, out: &out}
	start := time.Now()
	if err := d.run(ctx); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if took, limit := time.Since(start), topo.Scale(20*time.Second); took > limit {
		t.Errorf("the tour took %v, want it short (under %v)", took, limit)
	}
	for _, want := range []string{
		"==> ClusterIP balancing: 30 requests from client",
		"You've hit web-1 from 198.18.2.11:",
		"==> NodePort: the external client calls port 30123",
		"==> ClientIP affinity",
		"==> An endpoint goes",
		"==> Tearing everything down",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the tour's output lacks %q:\n%s", want, out.String())
		}
	}
	if backend == "nft" && !strings.Contains(out.String(), "still works") {
		t.Errorf("with nft, the connection to the removed endpoint must survive:\n%s", out.String())
	}
	t.Logf("the tour on %s:\n%s", backend, out.String())
}

// Interrupted mid-way, the demo says so, tears down and leaves the
// machine as it was.
func TestInterrupted(t *testing.T) {
	needRoot(t)
	before := rootState(t)
	cmd := exec.Command(os.Args[0], "-n", "3000")
	cmd.Env = append(os.Environ(), mainEnv+"=1", "GORACE=atexit_sleep_ms=0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var out strings.Builder
	interrupted := false
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if !interrupted && strings.Contains(sc.Text(), "You've hit") {
			cmd.Process.Signal(syscall.SIGINT)
			interrupted = true
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("demo exited with %v, want exit code 130\nstdout:\n%s\nstderr:\n%s", err, out.String(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "interrupted; everything it built is gone") || !strings.Contains(out.String(), "==> Tearing everything down") {
		t.Errorf("stdout:\n%s\nstderr:\n%s\nwant the teardown and the interrupt announced", out.String(), stderr.String())
	}
	if after := rootState(t); after != before {
		t.Errorf("the machine's links and named namespaces changed:\nbefore: %s\nafter:  %s", before, after)
	}
}

// rootState describes what the demo must not leave behind: the root
// namespace's links and the named network namespaces.
func rootState(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		names = append(names, "netns:"+e.Name())
	}
	return strings.Join(names, " ")
}
