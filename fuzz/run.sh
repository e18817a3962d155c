#!/usr/bin/env bash
# Builds every fuzz target once, then runs each for SECONDS (default 60), two at a time,
# and prints the executions per target. Exits non-zero if any target finds a crash,
# a timeout or a leak; its log tail and the artifact path are printed.
#
#   bash fuzz/run.sh            # 60 s per target
#   bash fuzz/run.sh 30         # what CI runs
#   FUZZ_SANITIZER=address FUZZ_PARALLEL=1 bash fuzz/run.sh 300
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Default sanitizer: none (see README.md: the product forbids unsafe code; what we hunt
# is panics, and without ASan a target runs about twice as fast and builds faster).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
sanitizer=${FUZZ_SANITIZER:-none}
parallel=${FUZZ_PARALLEL:-2}
# -a: debug assertions and overflow checks on, so arithmetic overflow is a crash too.
flags=(--sanitizer "$sanitizer" --debug-assertions)
# FUZZ_TARGET_DIR: a build directory kept between runs (CI keeps one outside its fresh
# clone, so the nightly dependency build is paid once per machine, not per run).
if [[ -n ${FUZZ_TARGET_DIR:-} ]]; then
  mkdir -p "$FUZZ_TARGET_DIR"
  flags+=(--target-dir "$FUZZ_TARGET_DIR")
fi

cargo +nightly fuzz build "${flags[@]}"
mapfile -t targets < <(cargo +nightly fuzz list)

logs=$(mktemp -d)
run() {
  local target=$1
  # Seeds are never rewritten: libFuzzer adds what it finds to the corpus folder,
  # which .gitignore keeps out of the repository beside the seed-* files.
  cargo +nightly fuzz run "${flags[@]}" "$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    >"$logs/$target.log" 2>&1
}

status=0
declare -A pids=()
for target in "${targets[@]}"; do
  while (( ${#pids[@]} >= parallel )); do
    wait -n || true
    for t in "${!pids[@]}"; do
      kill -0 "${pids[$t]}" 2>/dev/null || unset "pids[$t]"
    done
  done
  run "$target" &
  pids[$target]=$!
done
failed=()
for target in "${targets[@]}"; do
  if [[ -n ${pids[$target]:-} ]]; then wait "${pids[$target]}" || true; fi
done
# Each run's verdict from its log (wait -n already reaped some of the jobs).
printf '\n%-16s %14s %8s  %s\n' TARGET EXECUTIONS SECONDS RESULT
for target in "${targets[@]}"; do
  log="$logs/$target.log"
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | awk '{print $5}' | tail -1 || true)
  if grep -q '^Done [0-9]* runs in' "$log" && ! grep -qE '^==[0-9]+== ERROR|panicked at|SUMMARY: libFuzzer' "$log"; then
    result=ok
  else
    result=FAILED
    failed+=("$target")
    status=1
  fi
  printf '%-16s %14s %8s  %s\n' "$target" "${execs:-?}" "${took:-?}" "$result"
done
for target in "${failed[@]}"; do
  printf '\n== %s: last lines of its log\n' "$target"
  tail -n 60 "$logs/$target.log"
done
rm -rf "$logs"
exit $status
