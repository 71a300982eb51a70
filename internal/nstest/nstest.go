// Package nstest gives tests throwaway network namespaces: the root
// check and the setup that every kernel-facing test of this module
// starts with.
package nstest

import (
	"os"
	"testing"

	"github.com/svcplane/svcplane/internal/netnsutil"
)

// NeedRoot skips t unless it runs as root, which creating network
// namespaces needs.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run `sudo make test`")
	}
}

// New returns a fresh, empty network namespace that is closed when t
// ends; it skips t when not root and fails it when the namespace cannot
// be made.
func New(t testing.TB) *netnsutil.NS {
	t.Helper()
	NeedRoot(t)
	ns, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}
