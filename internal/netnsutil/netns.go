// Package netnsutil creates, opens and enters Linux network namespaces
// safely from Go.
//
// # Threads and namespaces
//
// A network namespace belongs to an OS thread, not to a goroutine. Go moves
// goroutines between threads at will, so code that switches namespaces must
// lock its goroutine to a thread, and must never give that thread back to
// the runtime while it is still in a foreign namespace: the next goroutine
// scheduled on it would silently run in the wrong network. This package
// follows containernetworking's pkg/ns: [NS.Do] runs its function on a fresh
// goroutine locked to its thread, switches there, switches back, and
// unlocks the thread only when switching back succeeded. If it did not, the
// goroutine exits still locked and the Go runtime destroys the thread (or,
// if it is the process's main thread, which cannot end, parks it for
// good): it never runs Go code again.
//
// Sockets keep the namespace they were created in: create them inside
// [NS.Do] and use them from any goroutine afterwards.
//
// # Unnamed namespaces
//
// [New] creates a namespace held only by a file descriptor (no bind mount
// under /run/netns), so it disappears with its last reference, even when
// the process is killed. [NS.Path] names it for other processes and
// libraries as /proc/<pid>/fd/<fd>.
package netnsutil

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// currentNSPath is the calling thread's network namespace.
const currentNSPath = "/proc/thread-self/ns/net"

// setns is unix.Setns; tests replace it to make switching back fail.
var setns = unix.Setns

// NS is an open network namespace. Its methods are safe for concurrent use.
type NS struct {
	mu sync.RWMutex
	fd int // -1 once closed
}

// New creates a new, unnamed network namespace and returns it open. The
// namespace is created on a locked thread that is switched back before it
// is released (see the package documentation); the caller's thread never
// leaves its namespace. The new namespace has only a loopback device, down.
func New() (*NS, error) {
	var fd int
	err := onLockedThread(func(orig int) (bool, error) {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return true, fmt.Errorf("netnsutil: unshare(CLONE_NEWNET): %w", err)
		}
		var openErr error
		fd, openErr = unix.Open(currentNSPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if openErr != nil {
			openErr = fmt.Errorf("netnsutil: open new namespace: %w", openErr)
		}
		restored := restore(orig)
		if restored != nil && openErr == nil {
			unix.Close(fd)
		}
		if restored != nil {
			return false, errors.Join(openErr, restored)
		}
		return true, openErr
	})
	if err != nil {
		return nil, err
	}
	return &NS{fd: fd}, nil
}

// Open opens the network namespace at path, for example
// /proc/1234/ns/net, /run/netns/NAME or another NS's Path. It fails if path
// is not a network namespace.
func Open(path string) (*NS, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netnsutil: open %s: %w", path, err)
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil || typ != unix.CLONE_NEWNET {
		unix.Close(fd)
		if err == nil {
			err = fmt.Errorf("namespace type %#x", typ)
		}
		return nil, fmt.Errorf("netnsutil: %s is not a network namespace: %w", path, err)
	}
	return &NS{fd: fd}, nil
}

// Current opens the network namespace the calling process's threads are in
// (read from a locked thread).
func Current() (*NS, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return Open(currentNSPath)
}

// Fd returns the namespace's file descriptor, or -1 after Close. It stays
// owned by n: do not close it.
func (n *NS) Fd() int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.fd
}

// Path returns /proc/<pid>/fd/<fd>, a path that opens this namespace for as
// long as n is open: from this process, from other processes of the same
// user (nsenter --net=PATH, ip -netns does not take paths) and from
// libraries that take a namespace path. It returns "" after Close.
func (n *NS) Path() string {
	fd := n.Fd()
	if fd < 0 {
		return ""
	}
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd)
}

// ID returns the namespace's inode number, which identifies it on this
// machine while it exists (as in `ls -L /proc/PID/ns/net` or the
// net:[ID] link text).
func (n *NS) ID() (uint64, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.fd < 0 {
		return 0, errClosed
	}
	return inode(n.fd)
}

// Close closes the namespace's file descriptor. The kernel destroys the
// namespace, with every device and socket left in it, once nothing else
// refers to it. Close is idempotent.
func (n *NS) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.fd < 0 {
		return nil
	}
	err := unix.Close(n.fd)
	n.fd = -1
	if err != nil {
		return fmt.Errorf("netnsutil: close namespace: %w", err)
	}
	return nil
}

// String returns the namespace's Path, or "closed namespace".
func (n *NS) String() string {
	if p := n.Path(); p != "" {
		return p
	}
	return "closed namespace"
}

var errClosed = errors.New("netnsutil: namespace is closed")

// PanicError is what Do panics with when its function panicked: the
// original value and the stack of the goroutine that ran the function.
type PanicError struct {
	Value any    // the value fn panicked with
	Stack []byte // the stack of fn's goroutine at the panic
}

// Error returns the value and the original stack.
func (p *PanicError) Error() string {
	return fmt.Sprintf("panic in network namespace: %v\n\n%s", p.Value, p.Stack)
}

// Unwrap returns the panic value if it is an error.
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

// Do runs fn with its goroutine's thread in namespace n and returns fn's
// error.
//
// fn runs on a new goroutine locked to its OS thread; Do waits for it. The
// thread is switched back to its original namespace afterwards, whether fn
// returned, panicked or called runtime.Goexit, and is released to the
// runtime only if switching back succeeded; otherwise the goroutine exits
// locked, the runtime discards the thread, and Do returns an error.
// Goroutines fn starts run in the original namespace, not in n; sockets fn
// creates stay in n.
//
// If fn panics, Do panics in the caller's goroutine with a *PanicError
// holding the value and fn's stack (recover sees the *PanicError). If fn
// calls runtime.Goexit (as testing.T.FailNow does), Do calls runtime.Goexit
// in the caller's goroutine too.
func (n *NS) Do(fn func() error) error {
	type outcome struct {
		err    error
		panic  *PanicError
		goexit bool
	}
	done := make(chan outcome, 1)
	go func() {
		out := outcome{goexit: true}
		release := false
		runtime.LockOSThread()
		defer func() {
			if release {
				runtime.UnlockOSThread()
			}
			done <- out
		}()
		orig, err := unix.Open(currentNSPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			out = outcome{err: fmt.Errorf("netnsutil: open current namespace: %w", err)}
			release = true
			return
		}
		defer unix.Close(orig)
		if err := n.enter(); err != nil {
			// A failed setns leaves the thread where it was.
			out = outcome{err: err}
			release = true
			return
		}
		defer func() {
			if err := restore(orig); err != nil {
				out.err = errors.Join(out.err, err)
				return // stay locked: the runtime discards this thread
			}
			release = true
		}()
		returned := false
		defer func() {
			if r := recover(); r != nil {
				out = outcome{panic: &PanicError{Value: r, Stack: debug.Stack()}}
			} else if !returned {
				out = outcome{goexit: true}
			}
		}()
		err = fn()
		returned = true
		out = outcome{err: err}
	}()
	out := <-done
	switch {
	case out.panic != nil:
		panic(out.panic)
	case out.goexit:
		runtime.Goexit()
	}
	return out.err
}

// enter switches the calling (locked) thread into n.
func (n *NS) enter() error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.fd < 0 {
		return errClosed
	}
	if err := setns(n.fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("netnsutil: setns to %s: %w", n.pathLocked(), err)
	}
	return nil
}

func (n *NS) pathLocked() string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), n.fd)
}

// restore switches the calling thread back to orig.
func restore(orig int) error {
	if err := setns(orig, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("netnsutil: switching thread back to its namespace failed, discarding the thread: %w", err)
	}
	return nil
}

// onLockedThread runs fn on a new goroutine locked to its thread, passing
// an fd of the thread's namespace. fn reports whether the thread is back in
// that namespace; only then is the thread released.
func onLockedThread(fn func(orig int) (restored bool, err error)) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(currentNSPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netnsutil: open current namespace: %w", err)
			return
		}
		restored, err := fn(orig)
		unix.Close(orig)
		if restored {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

func inode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("netnsutil: fstat namespace: %w", err)
	}
	return st.Ino, nil
}

// SetSysctl writes value to the sysctl name, given as
// "net.ipv4.ip_forward" or "net/ipv4/conf/eth0.100/forwarding" (use the
// slash form when a component contains a dot). Network sysctls
// (/proc/sys/net) belong to the namespace of the thread that opens them:
// call SetSysctl inside Do.
func SetSysctl(name, value string) error {
	p := sysctlPath(name)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("netnsutil: sysctl %s: %w", name, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("netnsutil: sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// Sysctl reads the sysctl name (as SetSysctl names it), without the
// trailing newline. Like SetSysctl, call it inside Do for network sysctls.
func Sysctl(name string) (string, error) {
	b, err := os.ReadFile(sysctlPath(name))
	if err != nil {
		return "", fmt.Errorf("netnsutil: sysctl %s: %w", name, err)
	}
	return strings.TrimRight(string(b), "\n"), nil
}

func sysctlPath(name string) string {
	if !strings.Contains(name, "/") {
		name = strings.ReplaceAll(name, ".", "/")
	}
	return "/proc/sys/" + strings.TrimPrefix(name, "/")
}
