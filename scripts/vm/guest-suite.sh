#!/bin/sh
# guest-suite.sh OUTDIR [TESTFLAG...] — runs inside the VM for test.sh:
# guest-check.sh, then each test binary listed in OUTDIR/packages (lines
# "NAME DIR BINARY") in its package directory with TESTFLAGs, one after the
# other in a single boot (a boot costs as much as a package's tests under
# emulation). Output goes to the console and to OUTDIR/NAME.log; each result
# becomes a line "NAME EXIT SECONDS" in OUTDIR/results, which the host reads.
# A failing package does not stop the others. POSIX sh: runs as the host's
# /bin/sh.
set -u
out=$1
shift
here=$(dirname "$0")
: >"$out/results"

# run NAME DIR COMMAND...: runs COMMAND in DIR, logs and records it.
run() {
  name=$1 dir=$2
  shift 2
  echo "=== vm: $name"
  start=$(date +%s)
  # No pipefail in sh: the exit code travels through a file.
  { (cd "$dir" && "$@" </dev/null) 2>&1; echo $? >"$out/$name.rc"; } | tee "$out/$name.log"
  rc=$(cat "$out/$name.rc")
  secs=$(($(date +%s) - start))
  echo "=== vm: $name exit $rc (${secs}s)"
  echo "$name $rc $secs" >>"$out/results"
}

run guest-check / "$here/guest-check.sh"
while read -r name dir bin; do
  run "$name" "$dir" "$bin" "$@"
done <"$out/packages"
