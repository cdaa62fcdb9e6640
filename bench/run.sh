#!/usr/bin/env bash
# `make bench`: the benchmarks of issue 7, written to docs/performance.md.
#
#   bash bench/run.sh            every figure (P1..P10) in one run, so that docs/performance.md is one day's
#                                measurement side by side (about an hour on 2 cores; P9 alone takes half of it)
#   bash bench/run.sh P3 P6      some figures; docs/performance.md keeps the others' last results
#
# Uses the stack of tests/stack/stack.sh: a running one (its env file) or, when none runs, its own
# (`install` + `up`, and `down` at the end). Adds the bench guests with `stack.sh bench-up` and
# removes them with `bench-down`, also on failure. Each figure runs under a time limit.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MEMDUMP_VENV:-$repo/.venv}
stack=$repo/tests/stack/stack.sh
stack_dir=${MEMDUMP_STACK_DIR:-/tmp/memdump-stack}
results=$repo/bench/results
limit=${MEMDUMP_BENCH_FIGURE_TIMEOUT:-600}
export PATH="$venv/bin:$PATH" MEMDUMP_REPO="$repo" MEMDUMP_BENCH_RESULTS="$results" PYTHONDONTWRITEBYTECODE=1

declare -A scripts=([P1]=p1_latency.py [P2]=p2_requests.py [P3]=p3_throughput.py [P4]=p4_callback.py
                    [P5]=p5_rerun.py [P6]=p6_status_load.py [P7]=p7_live.py [P8]=p8_collect.py
                    [P9]=p9_convert.py [P10]=p10_fleet.py)
figures=("$@")
[ ${#figures[@]} -gt 0 ] || figures=(P1 P2 P3 P4 P5 P6 P7 P8 P9 P10)
for f in "${figures[@]}"; do
  [ -n "${scripts[$f]:-}" ] || { echo "unknown figure $f (P1..P10)" >&2; exit 2; }
done

log() { printf '\n=== %s\n' "$*" >&2; }

stack_running() {
  [ -f "$stack_dir/env" ] || return 1
  # shellcheck disable=SC1091
  (. "$stack_dir/env" && [ -n "${MEMDUMP_TEST_LIBVIRT_URI:-}" ] && curl -fsS "$MEMDUMP_TEST_INFLUXDB_URL/ping" >/dev/null 2>&1 \
    && virsh -c qemu:///system version >/dev/null 2>&1)
}

own_stack=0
sampler=
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  bash "$stack" bench-down || true
  [[ " ${figures[*]} " == *" P9 "* ]] && { bash "$stack" convert-down || true; }
  if [ "$own_stack" = 1 ]; then bash "$stack" down || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! stack_running; then
  log "no running stack: starting one (stack.sh install + up)"
  bash "$stack" install && bash "$stack" up || exit 1
  own_stack=1
fi
# shellcheck disable=SC1091
. "$stack_dir/env"
# P9 brings its own guests (below); the others use the bench guests.
if [[ " ${figures[*]} " != " P9 " ]]; then
  bash "$stack" bench-up || exit 1
  # shellcheck disable=SC1091
  . "$stack_dir/bench-env"
fi

mkdir -p "$results"
rm -rf "$results/work"
for f in "${figures[@]}"; do rm -f "$results/${f,,}.json"; done
# A full run describes the machine afresh; a partial one adds its load samples to the last full run's.
if [ $# -eq 0 ] || [ ! -f "$results/machine.json" ]; then
  rm -f "$results/load.txt"
  python "$repo/bench/report.py" machine
fi
python "$repo/bench/report.py" sample &
sampler=$!

failed=()
for f in "${figures[@]}"; do
  # P9 runs Volatility's banners.Banners over three 4.5 GiB images: minutes each.
  figure_limit=$limit
  [ "$f" != P9 ] || figure_limit=${MEMDUMP_BENCH_P9_TIMEOUT:-2700}
  # P10 starts 50 services and runs eight fleet-wide playbooks.
  [ "$f" != P10 ] || figure_limit=${MEMDUMP_BENCH_P10_TIMEOUT:-1800}
  log "$f: bench/${scripts[$f]} (limit ${figure_limit} s)"
  started=$SECONDS
  # P9 needs Linux guests of more than 4 GiB (stack.sh convert-up), only while it runs: one of them
  # rewrites its memory without pause, a whole CPU that the other figures would measure too.
  if [ "$f" = P9 ]; then
    # shellcheck disable=SC1091
    if ! { bash "$stack" convert-up && . "$stack_dir/convert-env"; }; then
      failed+=("$f"); continue
    fi
  fi
  if ! timeout --kill-after=30 "$figure_limit" python "$repo/bench/${scripts[$f]}"; then
    failed+=("$f")
  fi
  [ "$f" != P9 ] || bash "$stack" convert-down || true
  log "$f: $((SECONDS - started)) s"
done

python "$repo/bench/report.py" write
# Keep the figures' JSON (and the generated 200-task playbook); drop dumps, temp dirs, the symlink.
rm -rf "$results/work" "$results/collections" "$results/ansible-tmp" "$results"/*args.json
if [ ${#failed[@]} -gt 0 ]; then
  log "figures that did not finish: ${failed[*]} (docs/performance.md says 'not run' for them)"
  exit 1
fi
log "done: docs/performance.md"
