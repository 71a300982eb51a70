# svcplane — make targets. `make test` and `make demo` are the two
# commands a newcomer needs; both run as root.

export PATH := $(PATH):/usr/local/go/bin
# The Go that builds and tests here: 1.27.3, which the go command fetches
# from the module proxy on first use (76 MB, about 10 s). govulncheck
# reports standard-library vulnerabilities in this machine's go1.26.8
# (fixed in 1.26.10), so the project's own builds use a newer Go; go.mod
# still asks only for 1.26. make GOTOOLCHAIN=local ... uses the machine's.
export GOTOOLCHAIN := go1.27.3
GO ?= go
GOFLAGS_TEST ?=

.PHONY: all check test deps vet unit conformance demo fmt clean vulncheck

all: check

## check: the fast loop — formatting, vet and unit tests (seconds; no root needed)
check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) test -short ./dataplane/...

## test: everything — deps, vet, unit tests with -race, the conformance suite, the reliability tests and each benchmark once at its smallest size on every backend this kernel supports, the ipvs backend's share of them in a Debian 6.1 VM when this kernel has no IPVS, and govulncheck (root)
test: deps vet
	$(GO) test -race -count=1 $(GOFLAGS_TEST) ./...
	@if [ -e /proc/net/ip_vs ]; then \
	  echo "== this kernel has IPVS: the ipvs backend was tested natively above"; \
	else \
	  echo "== this kernel has no IPVS: testing the ipvs backend in a Debian 6.1 VM (make test-vm)"; \
	  KERNELS=6.1 VM_PKGS="./conformance ./internal/ipvsnl ./ipvs ./reliability" VM_ENV=SVCPLANE_BENCH_SIZES=100x5 \
	    VM_TESTFLAGS='-test.run=^(TestConformance|TestServicesAndDests|TestExampleNew|TestBenchmarks|$(RELIABILITY_TESTS))$$/^(ipvs|ipvsadm-restore)$$' ./scripts/vm/test.sh; \
	fi
	@./scripts/vulncheck.sh

# The reliability tests that run once per backend: make test runs their
# ipvs half in the VM (TestChurnUnderLoad about 3 minutes of it; its new
# UDP flows have source ports of their own since issue 6).
RELIABILITY_TESTS := TestChurnUnderLoad|TestRestartUnderLoad|TestFailedSyncKeepsState|TestConcurrentSync|TestAdversarialStates|TestForeignObjectsUntouched|TestNodePortExposure|TestSourceRangesEveryFrontend

deps:
	@./scripts/deps.sh

vet:
	$(GO) vet ./...

## conformance: only the conformance suite, verbose
conformance: deps
	$(GO) test -count=1 -v ./conformance/ $(GOFLAGS_TEST)

## demo: the tour — a throwaway cluster in namespaces, the classroom Services programmed with the nft backend, real traffic (root). BACKEND=ipvs: the IPVS backend, natively where /proc/net/ip_vs exists, else inside a VM booting Debian's 6.1 kernel (scripts/vm; DEMO_KERNEL=6.12 for the other)
BACKEND ?= nft
DEMO_KERNEL ?= 6.1
demo: deps
	@if [ "$(BACKEND)" != ipvs ] || [ -e /proc/net/ip_vs ]; then \
	  echo "$(GO) run ./examples/demo -backend $(BACKEND)"; \
	  $(GO) run ./examples/demo -backend "$(BACKEND)"; \
	else \
	  echo "== this kernel has no IPVS: running the tour in a VM booting Debian's $(DEMO_KERNEL) kernel (scripts/vm; emulated, so slower; the first run downloads the kernel)"; \
	  dir=$$(mktemp -d "$${TMPDIR:-/tmp}/svcplane-demo.XXXXXX") || exit 1; trap 'rm -rf "$$dir"' EXIT; \
	  CGO_ENABLED=0 $(GO) build -o "$$dir/demo" ./examples/demo || exit 1; \
	  progress=-progress=true; [ -t 1 ] || progress=-progress=false; \
	  ./scripts/vm/run.sh --kernel "$(DEMO_KERNEL)" --timeout 900 --env SVCPLANE_TIME_SCALE=4 -- "$$dir/demo" -backend ipvs $$progress; \
	fi

## vulncheck: govulncheck over every package, against a Go vulnerability database built from the golang.org/x/vulndb module (pinned; VULNDB=latest for the newest), cached under ~/.cache/svcplane/vulndb; make test runs it last
vulncheck:
	@./scripts/vulncheck.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

# --- VM runner (scripts/vm/): Debian kernels in QEMU, for what this
# machine's kernel lacks (IPVS, SCTP, dummy links) and older kernels.
KERNELS ?= 6.1 6.12
VM_PKGS ?=
VM_TESTFLAGS ?=
VM_ENV ?=
VM_TEST_TIMEOUT ?= 20m
VM_TIMEOUT ?= 3600

.PHONY: test-vm vm-kernels

## test-vm: the kernel-facing test packages inside QEMU on the newest Debian 6.1 and 6.12 kernels, verbose (root; KERNELS="6.1 6.12", VM_PKGS=./nft, VM_TESTFLAGS=-test.run=X)
test-vm: deps
	@KERNELS="$(KERNELS)" VM_PKGS="$(VM_PKGS)" VM_TESTFLAGS="$(VM_TESTFLAGS)" VM_ENV="$(VM_ENV)" \
	  VM_TEST_TIMEOUT="$(VM_TEST_TIMEOUT)" VM_TIMEOUT="$(VM_TIMEOUT)" ./scripts/vm/test.sh

## vm-kernels: only download the KERNELS and build their initramfs (cached under ~/.cache/svcplane/vm)
vm-kernels:
	@./scripts/vm/prepare.sh $(KERNELS)

# --- Benchmarks at cluster scale (issue 5): internal/syncbench, run from
# nft/bench_test.go here and ipvs/bench_test.go in a VM. `make test` runs
# each case once at its smallest size (TestBenchmarks); this runs them all,
# from one test binary per backend, and writes the docs from that run.
BENCH_MAX ?= 0
BENCH_FILE_MAX ?= 50000
BENCH_COUNT ?= 1
BENCH_SMALL ?= 30x
BENCH_FULL ?= 3x
BENCH_CONNECT ?= 3000x
BENCH_VERIFY ?= 50000
# The IPVS half, in a VM (this kernel has no IPVS): BENCH_VM=0 skips it.
BENCH_VM ?= 1
BENCH_VM_KERNEL ?= 6.1
BENCH_VM_SIZES ?= 1000x5,10000x5
BENCH_VM_FULL ?= 1x
BENCH_VM_SMALL ?= 5x
BENCH_RAW := docs/bench-raw.txt
BENCH_BIN := docs/.nft-bench.test

.PHONY: bench

## bench: BenchmarkSync (nft, nft-file; ipvs, ipvsadm-restore in a Debian 6.1 VM) and BenchmarkConnect at every size, then docs/benchmarks.md and docs/sync-time.svg from that run (root; about 40 min on 2 cores; BENCH_MAX=N limits the sizes, BENCH_VM=0 skips the VM; run it on an idle machine)
bench: deps
	@mkdir -p docs
	@if [ "$(BENCH_VM)" != 0 ] && ! command -v ipvsadm >/dev/null; then \
	  echo "bench: installing ipvsadm (the VM runs this machine's programs)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ipvsadm >/dev/null; fi
	$(GO) test -c -o $(BENCH_BIN) ./nft
	@echo "bench: load average before: $$(cut -d' ' -f1-3 /proc/loadavg)"; cut -d' ' -f1-3 /proc/loadavg > docs/.bench-load
	@: > $(BENCH_RAW)
	@bin=$$(realpath $(BENCH_BIN)); raw=$$(realpath $(BENCH_RAW)); cd nft && \
	export SVCPLANE_BENCH_MAX=$(BENCH_MAX) SVCPLANE_BENCH_FILE_MAX=$(BENCH_FILE_MAX); \
	for run in "BenchmarkSync/^nft$$/full/ $(BENCH_FULL)" \
	           "BenchmarkSync/^nft$$/(noop|one-endpoint|add-service|remove-service)/ $(BENCH_SMALL)" \
	           "BenchmarkSync/^nft-file$$/ 1x" \
	           "BenchmarkConnect/ $(BENCH_CONNECT)"; do \
	  set -- $$run; echo "bench: $$1 -benchtime=$$2 (load $$(cut -d' ' -f1 /proc/loadavg))"; \
	  $$bin -test.run '^$$' -test.count=$(BENCH_COUNT) -test.timeout 120m -test.bench "$$1" -test.benchtime=$$2 >> $$raw 2>&1 || { tail -30 $$raw; exit 1; }; \
	done; \
	verify=$(BENCH_VERIFY); if [ $(BENCH_MAX) -gt 0 ] && [ $(BENCH_MAX) -lt $$verify ]; then verify=$(BENCH_MAX); fi; \
	echo "bench: every element after a $$verify × 5 full sync"; echo $$verify > ../docs/.bench-verify-n; \
	SVCPLANE_VERIFY_SERVICES=$$verify $$bin -test.count=1 -test.timeout 60m -test.run '^TestFullSyncHoldsEveryElement$$' -test.v > ../docs/.bench-verify 2>&1 || { cat ../docs/.bench-verify; exit 1; }
	@load_after=$$(cut -d' ' -f1-3 /proc/loadavg); echo "$$load_after" > docs/.bench-load-after
	@if [ "$(BENCH_VM)" != 0 ]; then \
	  echo "bench: the IPVS half in a VM booting Debian $(BENCH_VM_KERNEL) (load $$(cut -d' ' -f1 /proc/loadavg))"; \
	  KERNEL=$(BENCH_VM_KERNEL) SIZES=$(BENCH_VM_SIZES) MAX=$(BENCH_MAX) FULL=$(BENCH_VM_FULL) SMALL=$(BENCH_VM_SMALL) COUNT=$(BENCH_COUNT) \
	    ./tools/benchplot/ipvs-vm.sh docs/.bench-vm && cat docs/.bench-vm >> $(BENCH_RAW); \
	fi
	@cd tools/benchplot && $(GO) run . -in ../../$(BENCH_RAW) -md ../../docs/benchmarks.md -svg ../../docs/sync-time.svg \
	  -notes ../../docs/performance-notes.md \
	  -date "$$(date -u '+%Y-%m-%d %H:%M UTC')" -kernel "$$(uname -r)" \
	  -machine "$$(nproc) cores, $$(awk '/MemTotal/ {printf "%.0f GiB", $$2/1048576}' /proc/meminfo), $$($(GO) version | cut -d' ' -f3), $$(nft --version)" \
	  -how "one make bench run (BENCH_MAX=$(BENCH_MAX): 0 is every size); one test binary per backend; -count=$(BENCH_COUNT); -benchtime $(BENCH_FULL) for full, $(BENCH_SMALL) for the other scenarios, 1x for nft-file, $(BENCH_CONNECT) for Connect; in the VM $(BENCH_VM_FULL) for full, $(BENCH_VM_SMALL) for the others, 1x for ipvsadm-restore; load average $$(cat ../../docs/.bench-load) before, $$(cat ../../docs/.bench-load-after) after the native half; each full op starts when the CPUs are idle again after the previous namespace is torn down" \
	  -verify-n "$$(cat ../../docs/.bench-verify-n)" -verify "$$(grep -o 'the kernel holds all.*' ../../docs/.bench-verify)"
	@rm -f docs/.bench-load docs/.bench-load-after docs/.bench-verify docs/.bench-verify-n docs/.bench-vm $(BENCH_BIN)
	@echo "bench: wrote docs/benchmarks.md, docs/sync-time.svg and $(BENCH_RAW)"
