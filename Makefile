# svcplane — make targets. `make test` and `make demo` are the two
# commands a newcomer needs; both run as root.

export PATH := $(PATH):/usr/local/go/bin
GO ?= go
GOFLAGS_TEST ?=

.PHONY: all check test deps vet unit conformance demo fmt clean

all: check

## check: the fast loop — formatting, vet and unit tests (seconds; no root needed)
check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) test -short ./dataplane/...

## test: everything — deps, vet, unit tests with -race, the conformance suite on every backend this kernel supports, and the IPVS backend in a Debian 6.1 VM when this kernel has no IPVS (root)
test: deps vet
	$(GO) test -race -count=1 $(GOFLAGS_TEST) ./...
	@if [ -e /proc/net/ip_vs ]; then \
	  echo "== this kernel has IPVS: the ipvs backend was tested natively above"; \
	else \
	  echo "== this kernel has no IPVS: testing the ipvs backend in a Debian 6.1 VM (make test-vm)"; \
	  KERNELS=6.1 VM_PKGS="./conformance ./internal/ipvsnl" \
	    VM_TESTFLAGS='-test.run=^(TestConformance|TestServicesAndDests)$$/^ipvs$$' ./scripts/vm/test.sh; \
	fi

deps:
	@./scripts/deps.sh

vet:
	$(GO) vet ./...

## conformance: only the conformance suite, verbose
conformance: deps
	$(GO) test -count=1 -v ./conformance/ $(GOFLAGS_TEST)

## demo: builds a throwaway cluster in namespaces, programs svc-web with the nft backend, sends traffic (root)
demo: deps
	$(GO) run ./examples/demo

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
