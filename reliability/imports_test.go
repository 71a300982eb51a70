package reliability

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// libraries are the packages users import: none may run a program
// (DESIGN.md). Test files are not part of them.
var libraries = []string{
	"github.com/svcplane/svcplane/dataplane/...",
	"github.com/svcplane/svcplane/nft/...",
	"github.com/svcplane/svcplane/ipvs/...",
	"github.com/svcplane/svcplane/conformance/...",
}

// goTool finds the go command that runs the tests.
func goTool(t *testing.T) string {
	t.Helper()
	for _, p := range []string{filepath.Join(os.Getenv("GOROOT"), "bin", "go"), filepath.Join(runtime.GOROOT(), "bin", "go")} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list packages with")
	}
	return p
}

// TestNoExecInLibraries lists, with `go list -deps`, every library
// package and everything it links (non-test files), and fails if any of
// them imports os/exec, naming the chain of imports that leads there. A
// control checks that the listing sees os/exec where a test file of
// conformance imports it.
func TestNoExecInLibraries(t *testing.T) {
	goBin := goTool(t)
	list := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(goBin, append([]string{"list", "-e"}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	roots := strings.Fields(list(append([]string{"-f", "{{.ImportPath}}"}, libraries...)...))
	imports := map[string][]string{}
	for _, l := range strings.Split(list(append([]string{"-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}"}, libraries...)...), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			imports[f[0]] = f[1:]
		}
	}
	if len(roots) < 4 || len(imports) < len(roots) {
		t.Fatalf("go list found %d library packages and %d packages in all; want the libraries and their dependencies", len(roots), len(imports))
	}
	for _, root := range roots {
		// Breadth first, remembering how each package was reached.
		from := map[string]string{root: ""}
		queue := []string{root}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			if p == "os/exec" {
				chain := []string{p}
				for q := from[p]; q != ""; q = from[q] {
					chain = append(chain, q)
				}
				slices.Reverse(chain)
				t.Errorf("library package %s imports os/exec: %s", root, strings.Join(chain, " → "))
				break
			}
			for _, q := range imports[p] {
				if _, seen := from[q]; !seen {
					from[q] = p
					queue = append(queue, q)
				}
			}
		}
	}
	if !t.Failed() {
		t.Logf("%d library packages, %d packages linked into them: none imports os/exec", len(roots), len(imports))
	}

	// Control: the listing does see os/exec, in a test file.
	if x := list("-f", "{{join .XTestImports \" \"}}", "github.com/svcplane/svcplane/conformance"); !slices.Contains(strings.Fields(x), "os/exec") {
		t.Errorf("control: go list does not show conformance_test.go's import of os/exec (%q); the check above proves nothing", x)
	}
}
