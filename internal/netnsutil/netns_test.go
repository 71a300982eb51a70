package netnsutil

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// needNetns skips the test unless this process may create network
// namespaces (root, or CAP_SYS_ADMIN).
func needNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run as root (sudo go test) or in the VM (make test-vm)")
	}
	ns, err := New()
	if err != nil {
		t.Skipf("cannot create network namespaces here (%v): run as root on Linux with CONFIG_NET_NS, or in the VM (make test-vm)", err)
	}
	ns.Close()
}

// statNS returns the inode of the namespace a /proc ns link points to.
func statNS(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

// threadNS maps every thread of this process to its network namespace.
func threadNS(t *testing.T) map[int]uint64 {
	t.Helper()
	dirs, err := filepath.Glob("/proc/self/task/*")
	if err != nil {
		t.Fatal(err)
	}
	m := map[int]uint64{}
	for _, d := range dirs {
		tid, _ := strconv.Atoi(filepath.Base(d))
		var st unix.Stat_t
		if err := unix.Stat(d+"/ns/net", &st); err != nil {
			continue // the thread exited meanwhile
		}
		m[tid] = st.Ino
	}
	return m
}

// checkAllThreadsIn fails unless every thread of the process is in the
// namespace with inode want: no thread was left behind in a foreign one.
func checkAllThreadsIn(t *testing.T, want uint64) {
	t.Helper()
	for tid, ino := range threadNS(t) {
		if ino != want {
			t.Errorf("thread %d is in namespace %d, want the original %d", tid, ino, want)
		}
	}
}

// origNS is the namespace of the test's threads, read from a locked
// thread (/proc/self/ns/net is the main thread's, which a Do may be using).
func origNS(t *testing.T) uint64 {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return statNS(t, currentNSPath)
}

func newNS(t *testing.T) *NS {
	t.Helper()
	ns, err := New()
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

func mustID(t *testing.T, ns *NS) uint64 {
	t.Helper()
	id, err := ns.ID()
	if err != nil {
		t.Fatalf("ID() = %v", err)
	}
	return id
}

func TestNewLeavesCallerThread(t *testing.T) {
	needNetns(t)
	orig := origNS(t)
	runtime.LockOSThread()
	before := statNS(t, currentNSPath)
	ns := newNS(t)
	after := statNS(t, currentNSPath)
	runtime.UnlockOSThread()
	if before != orig || after != orig {
		t.Errorf("caller's thread namespace before/after New = %d/%d, want %d: New must not move the caller", before, after, orig)
	}
	if id := mustID(t, ns); id == orig {
		t.Errorf("New() returned the current namespace %d", id)
	}
	checkAllThreadsIn(t, orig)
}

func TestDoRunsInTargetAndRestores(t *testing.T) {
	needNetns(t)
	orig := origNS(t)
	ns := newNS(t)
	want := mustID(t, ns)

	var got uint64
	var tid int
	if err := ns.Do(func() error {
		got = statNS(t, currentNSPath)
		tid = unix.Gettid()
		return nil
	}); err != nil {
		t.Fatalf("Do() = %v", err)
	}
	if got != want {
		t.Errorf("inside Do the thread is in namespace %d, want %d", got, want)
	}
	// The thread was released to the runtime: it must be back home.
	if ino, ok := threadNS(t)[tid]; ok && ino != orig {
		t.Errorf("thread %d that ran fn is in namespace %d after Do, want %d", tid, ino, orig)
	}
	checkAllThreadsIn(t, orig)
}

func TestDoReturnsError(t *testing.T) {
	needNetns(t)
	orig := origNS(t)
	ns := newNS(t)
	errBoom := errors.New("boom")
	err := ns.Do(func() error { return errBoom })
	if !errors.Is(err, errBoom) {
		t.Errorf("Do() = %v, want fn's error %v", err, errBoom)
	}
	checkAllThreadsIn(t, orig)
}

func TestDoPanicReachesCaller(t *testing.T) {
	needNetns(t)
	orig := origNS(t)
	ns := newNS(t)
	var r any
	func() {
		defer func() { r = recover() }()
		ns.Do(func() error { panic("boom") })
		t.Error("Do returned after fn panicked; want it to panic")
	}()
	pe, ok := r.(*PanicError)
	if !ok {
		t.Fatalf("recovered %T %v, want *PanicError", r, r)
	}
	if pe.Value != "boom" || len(pe.Stack) == 0 {
		t.Errorf("PanicError = {%v, %d-byte stack}, want {boom, a stack}", pe.Value, len(pe.Stack))
	}
	checkAllThreadsIn(t, orig)
}

func TestDoGoexitReachesCaller(t *testing.T) {
	needNetns(t)
	orig := origNS(t)
	ns := newNS(t)
	var afterDo, deferred bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { deferred = true }()
		ns.Do(func() error { runtime.Goexit(); return nil })
		afterDo = true
	}()
	wg.Wait()
	if afterDo || !deferred {
		t.Errorf("after runtime.Goexit in fn: code after Do ran = %v, caller's defers ran = %v; want false, true", afterDo, deferred)
	}
	checkAllThreadsIn(t, orig)
}

// The main goroutine keeps the main thread, so no Do runs there: the
// runtime cannot end the main thread, only park it, and the discard test
// wants to see the thread vanish.
func init() { runtime.LockOSThread() }

// TestDoDiscardsThreadWhenRestoreFails makes switching back fail and checks
// that the thread, still in the foreign namespace, is never reused: it
// disappears, and every other thread is in the original namespace. It runs
// in a child process, so that the other tests never share a process with a
// thread left in a foreign namespace.
func TestDoDiscardsThreadWhenRestoreFails(t *testing.T) {
	needNetns(t)
	if os.Getenv("NETNSUTIL_DISCARD_CHILD") == "1" {
		discardChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestDoDiscardsThreadWhenRestoreFails$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "NETNSUTIL_DISCARD_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
}

func discardChild(t *testing.T) {
	orig := origNS(t)
	ns := newNS(t)
	for i := range 5 {
		calls := 0
		setns = func(fd, nstype int) error {
			calls++
			if calls == 2 { // the switch back
				return syscall.EINVAL
			}
			return unix.Setns(fd, nstype)
		}
		tid := 0
		err := ns.Do(func() error { tid = unix.Gettid(); return nil })
		setns = unix.Setns
		if err == nil {
			t.Fatal("Do() = nil with a failing switch back; want an error")
		}
		t.Logf("try %d: thread %d: Do() = %v", i, tid, err)
		deadline := time.Now().Add(5 * time.Second)
		if tid == os.Getpid() {
			t.Fatal("Do ran on the main thread, which init locked to the main goroutine")
		}
		for {
			if _, ok := threadNS(t)[tid]; !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("thread %d that could not switch back still exists: it must be discarded", tid)
			}
			time.Sleep(10 * time.Millisecond)
		}
		for tid, ino := range threadNS(t) {
			if ino != orig {
				t.Errorf("thread %d is in namespace %d, want the original %d", tid, ino, orig)
			}
		}
		// Later calls still work, on good threads.
		if err := ns.Do(func() error { return nil }); err != nil {
			t.Fatalf("Do after a discarded thread: %v", err)
		}
	}
}

func TestDoConcurrent(t *testing.T) {
	needNetns(t)
	orig := origNS(t)
	nss := []*NS{newNS(t), newNS(t)}
	ids := []uint64{mustID(t, nss[0]), mustID(t, nss[1])}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			k := i % 2
			errs <- nss[k].Do(func() error {
				var st unix.Stat_t
				if err := unix.Stat(currentNSPath, &st); err != nil {
					return err
				}
				if st.Ino != ids[k] {
					return errors.New("wrong namespace")
				}
				return nil
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	checkAllThreadsIn(t, orig)
}

func TestOpenPathAndClose(t *testing.T) {
	needNetns(t)
	ns := newNS(t)
	again, err := Open(ns.Path())
	if err != nil {
		t.Fatalf("Open(%s) = %v", ns.Path(), err)
	}
	defer again.Close()
	if a, b := mustID(t, ns), mustID(t, again); a != b {
		t.Errorf("Open(Path()) is namespace %d, want %d", b, a)
	}
	if _, err := Open("/proc/self/ns/uts"); err == nil {
		t.Error("Open(/proc/self/ns/uts) = nil error, want: not a network namespace")
	}
	if _, err := Open("/proc/self/status"); err == nil {
		t.Error("Open(/proc/self/status) = nil error, want: not a network namespace")
	}

	if err := ns.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := ns.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	if ns.Fd() != -1 || ns.Path() != "" {
		t.Errorf("after Close: Fd, Path = %d, %q; want -1, empty", ns.Fd(), ns.Path())
	}
	if err := ns.Do(func() error { return nil }); err == nil {
		t.Error("Do on a closed namespace = nil error")
	}
	// The namespace lives on while another reference holds it.
	if err := again.Do(func() error { return nil }); err != nil {
		t.Errorf("Do on a second reference after the first was closed: %v", err)
	}
}

func TestSysctlPerNamespace(t *testing.T) {
	needNetns(t)
	rootBefore, err := Sysctl("net.ipv4.ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	ns := newNS(t)
	want := "1"
	if rootBefore == "1" {
		want = "0"
	}
	var got string
	if err := ns.Do(func() error {
		if err := SetSysctl("net.ipv4.ip_forward", want); err != nil {
			return err
		}
		got, err = Sysctl("net/ipv4/ip_forward")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("inside the namespace ip_forward = %s after setting %s", got, want)
	}
	rootAfter, err := Sysctl("net.ipv4.ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	if rootAfter != rootBefore {
		t.Fatalf("root namespace ip_forward changed %s → %s: SetSysctl inside Do leaked", rootBefore, rootAfter)
	}
}
