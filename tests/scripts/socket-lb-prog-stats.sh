#!/bin/bash
# Issue 10 diagnosis: where the socket LB's time goes. Runs
#   slb-bench --only socket-lb --diagnose --services ${SERVICES:-1000}
# with kernel.bpf_stats_enabled=1 (set back to its old value on exit), snapshots every 3 s
# the run count and kernel run time of the programs behind each test node's link pins,
# and prints ns per run per program and folder (one folder per bench target:
# -1 tc path, -2 socket LB, -4 pod IP with socket LB on, -6 socket LB without daemon).
# Run as root from the repository root after `cargo build -p service-lb-tests --bin slb-bench`.
set -u
bench=${BENCH:-target/debug/slb-bench}
log=${LOG:-/tmp/socket-lb-prog-stats.log}
here=$(dirname "$0")
old=$(sysctl -n kernel.bpf_stats_enabled)
trap 'sysctl -qw kernel.bpf_stats_enabled=$old' EXIT
sysctl -qw kernel.bpf_stats_enabled=1
: > "$log"
# exec: $! is the bench itself (its loops are bounded in count and time).
(exec env SERVICE_LB_REQUIRE_EBPF=1 "$bench" --only socket-lb --diagnose \
    --services "${SERVICES:-1000}") &
pid=$!
# The bench's own folders only: its run prefix is slbt-<its pid in hex>-<n>.
mine=$(printf 'slbt-%x-' "$pid")
while kill -0 $pid 2>/dev/null; do
    for d in /sys/fs/bpf/"$mine"*/; do
        [ -d "$d" ] && echo "DIR $d $(python3 "$here/bpf_prog_stats.py" snapshot "$d")" >> "$log"
    done
    sleep 3
done
wait $pid
status=$?
python3 "$here/bpf_prog_stats.py" summary "$log"
exit $status
