#!/usr/bin/env bash
# The quiet-machine round behind docs/benchmarks.md's "issue 12 closes" section: every figure
# of the issue's targets, tunray and its sing-box peer alternated.  Root; nothing else running.
#   sudo bench/quiet_round.sh > /tmp/round.log
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
run() { echo; echo "######## $*"; date +%T; timeout 900 "$@" 2>&1 | tail -12; }
for mtu in 65535 1500; do
  for _ in 1 2; do
    run $PY bench/bench_cps.py --proxy tunray-system --workers 2 --runs 3 --mtu $mtu
    run $PY bench/bench_cps.py --proxy sb-system --runs 3 --mtu $mtu
  done
  run $PY bench/bench_cps.py --proxy tunray-system --workers 1 --runs 3 --mtu $mtu
  run $PY bench/bench_tput.py --proxy tunray-system --workers 2 --mtu $mtu --runs 2 --seconds 4
  run $PY bench/bench_tput.py --proxy sb-system --mtu $mtu --runs 2 --seconds 4
done
run $PY bench/bench_cps.py --proxy tunray --workers 2 --mtu 65535 --runs 3
run $PY bench/bench_cps.py --proxy sb-gvisor --mtu 65535 --runs 3
run $PY bench/bench_held.py --proxy tunray-system --flows 5000
run $PY bench/bench_mem.py --workers 2
run $PY bench/bench_mem.py --proxy sb-gvisor
run $PY plugins/outbound_vless/bench/bench_vless_tun.py --no-iperf --rounds 5 --path tls \
  --only tunray --only tunray-system --only sb-gvisor --only sb-system
run $PY bench/bench_socks.py --rounds 3 --seconds 3
echo DONE; date +%T
