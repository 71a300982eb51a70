#!/usr/bin/env bash
# test.sh — what `make test-vm` runs: the kernel-facing test packages inside
# QEMU on each Debian kernel of KERNELS, as root, verbose; a summary with
# per-kernel timings at the end; exit 1 when any package fails on any kernel.
#
# Environment (the Makefile passes its variables of the same names):
#   KERNELS          kernels to boot: series or full versions ("6.1 6.12")
#   VM_PKGS          packages to test (go list patterns); default: every
#                    package with tests except ./dataplane/..., which is pure
#                    Go and already covered by `make test` on the host
#   VM_TESTFLAGS     extra test binary flags, e.g. -test.run=Conformance
#   VM_ENV           K=V words set in the tests' environment in the guest
#   VM_TEST_TIMEOUT  -test.timeout of each binary (default 20m): a hung test
#                    then fails with its goroutine dump instead of being killed
#   VM_TIMEOUT       seconds one kernel's VM may run before it is killed (3600)
#
# One VM boot per kernel runs guest-check.sh and then every test binary
# (guest-suite.sh): booting costs about as much as a package's tests under
# emulation. The binaries are built here with CGO_ENABLED=0 (static: the
# guest runs them chrooted into this machine's root, but static binaries
# would also run elsewhere) into a work directory shared with the guest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$here/common.sh"
repo=$(cd "$here/../.." && pwd -P)
cd "$repo"
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin

KERNELS=${KERNELS:-6.1 6.12}
VM_PKGS=${VM_PKGS:-}
VM_TESTFLAGS=${VM_TESTFLAGS:-}
# Under emulation everything is several times slower: requests that
# expect an answer wait 4x longer (conformance/topo.TimeScale).
VM_ENV="SVCPLANE_TIME_SCALE=4 ${VM_ENV:-}"
VM_TEST_TIMEOUT=${VM_TEST_TIMEOUT:-20m}
VM_TIMEOUT=${VM_TIMEOUT:-3600}

# Root: apt-get for what is missing, and QEMU exporting / with the file
# owners intact (9p passthrough) so the guest's root reads everything.
[ "$(id -u)" = 0 ] || vm_die "make test-vm needs root (sudo make test-vm)"

t_start=$SECONDS

# Kernels first: downloads and initramfs builds show up on their own line
# of the timings rather than in the first kernel's.
# shellcheck disable=SC2086 # KERNELS is a list
mapfile -t kvers < <("$here/prepare.sh" $KERNELS)
[ ${#kvers[@]} -gt 0 ] || vm_die "no kernels (KERNELS='$KERNELS')"
t_prepare=$((SECONDS - t_start))

# The work directory is the guest's share: binaries, results, logs. Kept
# only when something failed.
work=$(mktemp -d "${TMPDIR:-/tmp}/svcplane-test-vm.XXXXXX")
keep_work=''
trap '[ -n "$keep_work" ] || rm -rf "$work"' EXIT
mkdir -p "$work/bin"
cp "$here/guest-suite.sh" "$here/guest-check.sh" "$work/"

mod=$(go list -m)
if [ -z "$VM_PKGS" ]; then
  VM_PKGS=$(go list ./... | grep -v "^$mod/dataplane\(/\|\$\)" | tr '\n' ' ')
fi
declare -A display=()
names=()
t0=$SECONDS
# shellcheck disable=SC2086 # VM_PKGS is a list of patterns
while read -r ip dir; do
  [ -n "$ip" ] || continue
  rel=${ip#"$mod"}
  rel=${rel#/}
  rel=${rel:-.}
  name=${rel//\//_}
  CGO_ENABLED=0 go test -c -o "$work/bin/$name.test" "$ip"
  echo "$name $dir $work/bin/$name.test" >>"$work/packages"
  display[$name]=$rel
  names+=("$name")
done < <(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}' $VM_PKGS)
[ ${#names[@]} -gt 0 ] || vm_die "no packages with tests in VM_PKGS='$VM_PKGS'"
display[guest-check]="(guest-check)"
t_build=$((SECONDS - t0))
vm_log "built ${#names[@]} test binaries in ${t_build}s: ${names[*]}"

# failing_cases LOG: the innermost failing test names of a -test.v log.
# A "--- FAIL: A/B/C" line of the binary itself is indented 4 spaces per
# "/" in its name; lines indented otherwise come from output the tests log
# (a child test binary's, say) and are not this binary's failures.
failing_cases() {
  awk '
    match($0, /^ *--- FAIL: [^ ]+/) {
      line = substr($0, 1, RLENGTH)
      n = index(line, "---") - 1
      name = substr(line, n + 11)
      if (n == 4 * gsub("/", "/", name)) fails[++k] = name
    }
    /^panic: / && !p { p = $0 }
    # A -test.timeout panic names the tests still running, one per line.
    p && /^\t\t[^ ]+ \(/ { sub(/^\t\t/, ""); sub(/ \(.*/, ""); p = p (r++ ? " " : "; running: ") $0 }
    END {
      for (i = 1; i <= k; i++) {
        leaf = 1
        for (j = 1; j <= k; j++) if (index(fails[j], fails[i] "/") == 1) leaf = 0
        if (leaf) out = out (out ? " " : "") fails[i]
      }
      if (p) out = out (out ? " " : "") "[" p "]"
      print out
    }' "$1"
}

env_args=()
for e in $VM_ENV; do env_args+=(--env "$e"); done

# skipped_cases LOG: the names of the binary's own skipped tests (same
# indentation rule as failing_cases).
skipped_cases() {
  awk 'match($0, /^ *--- SKIP: [^ ]+/) {
      line = substr($0, 1, RLENGTH); n = index(line, "---") - 1; name = substr(line, n + 11)
      if (n == 4 * gsub("/", "/", name)) printf "%s ", name
    }' "$1"
}

declare -A wall=() boot=()
summary=()
passed=0 failed=0
for kver in "${kvers[@]}"; do
  kdir=$work/$kver
  mkdir -p "$kdir"
  cp "$work/packages" "$kdir/packages"
  echo "== test-vm: $kver: ${names[*]}"
  t0=$SECONDS
  set +e
  # shellcheck disable=SC2086 # VM_TESTFLAGS is a list
  "$here/run.sh" --kernel "$kver" --share "$work" --cwd "$repo" --timeout "$VM_TIMEOUT" "${env_args[@]}" -- \
    "$work/guest-suite.sh" "$kdir" -test.v -test.count=1 "-test.timeout=$VM_TEST_TIMEOUT" $VM_TESTFLAGS |
    tee "$kdir/console.log"
  vmrc=${PIPESTATUS[0]}
  set -e
  wall[$kver]=$((SECONDS - t0))
  boot[$kver]=$(grep -o 'vm-init: booted in [0-9.]*s' "$kdir/console.log" | head -n1 | grep -o '[0-9.]*s' || echo '?')
  for name in guest-check "${names[@]}"; do
    line=$(grep "^$name " "$kdir/results" 2>/dev/null || true)
    if [ -z "$line" ]; then
      case $vmrc in
      124) why="no result: the VM ran past VM_TIMEOUT=${VM_TIMEOUT}s and was killed" ;;
      125) why="no result: the VM crashed or did not boot (console above)" ;;
      *) why="no result (VM exit $vmrc)" ;;
      esac
      summary+=("$(printf '%-22s %-20s %-5s %6s  %s' "$kver" "${display[$name]}" FAIL - "$why")")
      failed=$((failed + 1))
      continue
    fi
    read -r _ rc secs <<<"$line"
    skips=
    if [ "$name" != guest-check ]; then
      skips=$(skipped_cases "$kdir/$name.log")
      [ -z "$skips" ] || skips="$(wc -w <<<"$skips") skipped: $skips"
    fi
    # A -test.run filter that matches nothing exits 0 and prints PASS:
    # count that as a failure, or a mistyped VM_TESTFLAGS passes silently.
    if [ "$rc" = 0 ] && [ "$name" != guest-check ] && grep -q '^testing: warning: no tests to run' "$kdir/$name.log"; then
      summary+=("$(printf '%-22s %-20s %-5s %5ss  %s' "$kver" "${display[$name]}" FAIL "$secs" "no test matched VM_TESTFLAGS (in make, write \$ as \$\$)")")
      failed=$((failed + 1))
      continue
    fi
    if [ "$rc" = 0 ]; then
      summary+=("$(printf '%-22s %-20s %-5s %5ss%s' "$kver" "${display[$name]}" ok "$secs" "${skips:+  $skips}")")
      passed=$((passed + 1))
    else
      if [ "$name" = guest-check ]; then
        cases=$(grep -o 'guest-check: FAIL .*' "$kdir/$name.log" | head -n1)
      else
        cases=$(failing_cases "$kdir/$name.log")
      fi
      summary+=("$(printf '%-22s %-20s %-5s %5ss  exit %s: %s' "$kver" "${display[$name]}" FAIL "$secs" "$rc" "$cases")")
      failed=$((failed + 1))
    fi
  done
done

echo
echo "== test-vm summary"
printf '%s\n' "${summary[@]}"
echo "timings: kernels ready ${t_prepare}s, test binaries built ${t_build}s"
for kver in "${kvers[@]}"; do
  echo "  $kver: VM ${wall[$kver]}s in all, boot to first command ${boot[$kver]} (guest clock)"
done
echo "  total $((SECONDS - t_start))s"
if [ "$failed" -gt 0 ]; then
  keep_work=1
  echo "test-vm: logs kept in $work/<kernel>/<package>.log"
fi
# The plain closing line CI reads: packages (and guest checks) per kernel.
echo "test-vm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
