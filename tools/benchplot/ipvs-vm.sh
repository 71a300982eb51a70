#!/usr/bin/env bash
# ipvs-vm.sh OUT — the IPVS half of `make bench`: builds the ipvs test
# binary, boots one Debian kernel in QEMU (scripts/vm/run.sh; this
# machine's kernel has no IPVS) and runs, in that one boot,
# BenchmarkSync/ipvs (full, then the small scenarios) and
# BenchmarkSync/ipvsadm-restore. The benchmark output goes to OUT, after a
# `vm:` line naming the guest kernel (benchstat takes it as a label);
# the console is shown as it runs. ipvsadm must be installed on this
# machine: the guest runs this machine's root, read-only.
#
# Environment (the Makefile passes its BENCH_VM_* and BENCH_* variables):
#   KERNEL   kernel series or version to boot (6.1)
#   SIZES    SVCPLANE_BENCH_SIZES in the guest (1000x5,10000x5)
#   MAX      SVCPLANE_BENCH_MAX (0: every size of SIZES)
#   FULL     -benchtime of full (1x); SMALL: of the other scenarios (10x)
#   COUNT    -count (1)
#   TIMEOUT  seconds the VM may run (3600)
set -euo pipefail
out=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
KERNEL=${KERNEL:-6.1} SIZES=${SIZES:-1000x5,10000x5} MAX=${MAX:-0}
FULL=${FULL:-1x} SMALL=${SMALL:-10x} COUNT=${COUNT:-1} TIMEOUT=${TIMEOUT:-3600}
command -v ipvsadm >/dev/null || { echo "bench: ipvsadm is missing (apt-get install ipvsadm): the VM runs this machine's programs" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/svcplane-bench-vm.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$repo" && CGO_ENABLED=0 go test -c -o "$work/ipvs.test" ./ipvs)
cat >"$work/guest.sh" <<GUEST
#!/bin/sh
# Runs in the guest, in ipvs/: one binary, three benchmark runs.
echo "Debian \$(uname -r), \$(nproc) vCPUs" >"$work/guest"
: >"$work/raw.txt"
for run in "BenchmarkSync/^ipvs\\\$/full/ $FULL" \\
           "BenchmarkSync/^ipvs\\\$/(noop|one-endpoint|add-service|remove-service)/ $SMALL" \\
           "BenchmarkSync/^ipvsadm-restore\\\$/ 1x"; do
  set -- \$run
  echo "bench-vm: \$1 -benchtime=\$2"
  "$work/ipvs.test" -test.run '^\$' -test.count=$COUNT -test.timeout 120m -test.bench "\$1" -test.benchtime=\$2 >>"$work/raw.txt" 2>&1 || { tail -30 "$work/raw.txt"; exit 1; }
done
GUEST
chmod +x "$work/guest.sh"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
"$repo/scripts/vm/run.sh" --kernel "$KERNEL" --share "$work" --cwd "$repo/ipvs" --timeout "$TIMEOUT" \
  --env "SVCPLANE_BENCH_SIZES=$SIZES" --env "SVCPLANE_BENCH_MAX=$MAX" -- "$work/guest.sh"
{
  echo "vm: $(cat "$work/guest") under QEMU/TCG; this machine's load average $load_before before the VM run, $(cut -d' ' -f1-3 /proc/loadavg) after"
  grep -v '^PASS$\|^ok ' "$work/raw.txt"
} >"$out"
