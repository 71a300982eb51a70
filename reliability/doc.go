// Package reliability proves, with tests that fail when the property
// breaks, that a backend never drops traffic to a ready endpoint because
// of its own updates, never leaves the kernel half-programmed, and never
// touches what is not its own. It has no code: everything is in its test
// files, run by `go test ./reliability` as root (make test), in
// throwaway network namespaces on the documentation address ranges
// (conformance/topo), with bounded load.
//
// # What each test proves
//
//   - TestChurnUnderLoad: a rolling update replaces all 4 endpoints of a
//     service 25 times over (new pod added ready, old one marked
//     terminating, then removed: one Sync each) while a client pod opens
//     800 TCP connections a second, sends 200 UDP requests a second on
//     new flows (each from a source port no earlier request used), and
//     keeps 4 UDP flows on fixed ports. Pods serve while terminating and
//     go only once out of the State and idle (half the rates under the
//     race detector). No TCP connection and no request on a new UDP
//     flow may fail, reach a pod that was not in the State, or reach
//     one already terminating; every long-lived UDP flow must be
//     answered by a live endpoint within 2 s of every Sync.
//   - TestRestartUnderLoad: the process holding the Dataplane (this test
//     binary, re-run as TestRestartHelper) is SIGKILLed inside a Sync
//     three times under the same load; a new process adopts the
//     namespace each time. No request to the (always ready) endpoints
//     may fail; after each kill the kernel holds one of the two States
//     the Sync was between, and at the end exactly a fresh Sync's state.
//   - TestBigTransactions (nft): one Sync of more than 200,000 map
//     elements, one rewriting all of them (more than 400,000 changes),
//     one of 20,800 rules (40 affinity timeouts), each counted back from
//     the kernel element by element and rule by rule.
//   - TestFailedSyncKeepsState: Syncs that fail in the kernel (objects
//     created behind the backend's back that collide with its next
//     ones), Syncs cancelled at each point the backend checks its
//     context, and a namespace whose other references all go away: the
//     error carries the kernel's errno, nothing changes, the previous
//     State keeps forwarding, and the next Sync converges.
//   - TestConcurrentSync: Syncs from 8 goroutines at once under load,
//     then racing Cleanup and Close (run with -race, as make test does).
//   - FuzzSyncSequence and TestAdversarialStates: any sequence of valid
//     and invalid Syncs, restarts and cancellations leaves the kernel
//     equal to a fresh Sync of the last State synced; an invalid State
//     changes no byte of the namespace's nftables state; hostile States
//     (empty names, duplicate frontends, mixed families, port 0,
//     affinity of 10 years, nil and empty slices, 10,000 ports on one
//     service, a million endpoints, overlapping source ranges) fail
//     cleanly or work. FuzzDiff in package nft checks the diff engine
//     itself, in memory; FuzzValidate and FuzzTranslate in dataplane
//     and dataplane/kube check the inputs.
//   - TestForeignObjectsUntouched, TestNodePortExposure,
//     TestSourceRangesEveryFrontend: other programs' nftables objects
//     (made with the nft tool) keep their bytes and handles through
//     Syncs, Cleanup and restarts, and the kernel announces no change
//     outside the backend's tables (no ruleset flush); NodePorts answer
//     only on the allowed addresses, never on 127.0.0.0/8 or ::1, not
//     even to a neighbour's forged packets with route_localnet=1; source
//     ranges hold on every load-balancer IP and nowhere else. They add
//     to the conformance cases Lifecycle/ForeignUntouched,
//     NodePort/Addresses and External/SourceRanges, which they do not
//     repeat.
//   - TestNoExecInLibraries: no library package, nor anything linked
//     into one, imports os/exec (go list -deps).
//
// New UDP flows get source ports of their own because a port the
// kernel hands out again continues the flow it had (issue 6). With
// ephemeral ports, TestChurnUnderLoad on ipvs lost 2 of 6072 "fresh"
// UDP requests once, and 1 of 8184 in one of 8 runs later; with ports
// reused on purpose, every request lost came from a port whose last
// request had gone to the pod being removed. IPVS keeps a UDP
// connection 5 minutes: such a request was dropped, or answered by
// that pod after IPVS had forgotten the connection, so the answer came
// back untranslated (see package ipvs). The long-lived flows are where
// such losses are allowed.
//
// Run `go test -v -run TestChurnUnderLoad ./reliability` to see the
// counts each test logs.
//
// # Backends
//
// The tests that are not about one backend's kernel objects run once per
// entry of the backends table (backend_test.go), as subtests named
// after it. A backend plugs in with a Factory (as for the conformance
// suite), a dump of the kernel objects it owns, normalised so that a
// namespace after any history and a fresh one synced once with the same
// State dump equal, and ways to create objects that collide with its
// next Sync. TestBigTransactions and FuzzDiff are the nft backend's
// own.
//
// The ipvs backend needs IPVS and dummy links, which the development
// machine's kernel lacks: its subtests skip there and run in the VM,
//
//	make test-vm KERNELS=6.1 VM_PKGS=./reliability VM_TESTFLAGS='-test.run=/^ipvs$$'
//
// (the $$ is make's escape for $). It differs where IPVS does: a Sync
// is one request per virtual or real server, not one transaction, so a
// process killed inside one leaves a mix of the two States (what must
// hold is that no request fails and the next process converges), and
// a Sync the kernel refuses undoes what it did; TCP real servers of
// endpoints that leave drain at weight 0, which its dump leaves out;
// it is not given a million endpoints (one netlink request each). Under
// emulation (SVCPLANE_TIME_SCALE, 4 in the VM) the load's rates are
// divided by the time scale and its timeouts multiplied: the guest gets
// what CPU the host spares, so there the load must open at least 10
// connections per Sync rather than 200 a second, and the client's TCP
// retransmissions are logged.
//
// # Fuzzing
//
// `go test` runs the committed corpora (testdata/fuzz) of FuzzDiff,
// FuzzSyncSequence, FuzzValidate and FuzzTranslate as ordinary tests.
// To fuzz, one target at a time (each uses every core):
//
//	go test -run '^$' -fuzz '^FuzzDiff$' -fuzztime 5m ./nft
//	go test -run '^$' -fuzz '^FuzzSyncSequence$' -fuzztime 5m ./reliability
//
// and copy what it finds worth keeping from $(go env GOCACHE)/fuzz into
// testdata/fuzz.
package reliability
