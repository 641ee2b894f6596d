#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target for SECONDS each (default 3600; FUZZ_RUNS ends a target earlier once it
# has run that many inputs) and prints one table: inputs run, seconds, inputs per second, coverage
# (edges), features, corpus size, peak memory and crashes per target.
#
#   fuzz/long-run.sh [SECONDS] [TARGET...]      # e.g. fuzz/long-run.sh 600 bounce_parse reply
#   FUZZ_RUNS=10000000 fuzz/long-run.sh 3600    # each target until 10 million inputs or an hour
#   FUZZ_JOBS=2 fuzz/long-run.sh 600            # two targets at a time (one per core)
#
# The committed corpora (fuzz/corpus/TARGET) are read, not written: new inputs go to a scratch
# directory (to keep some, `cargo fuzz cmin TARGET` after copying them in). A crash's input and the
# run's log are kept in fuzz/artifacts/TARGET/; the input is reproduced with
# `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`.
# Spools and other files the targets make go to a temporary directory removed after each target.
# Exit 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-3600}"
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
runs="${FUZZ_RUNS:-}"
jobs="${FUZZ_JOBS:-1}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^vmta-fuzz$')
fi
rows_dir=$(mktemp -d)
# One target: fuzzes it and writes its table row to $rows_dir/TARGET (status in $rows_dir/TARGET.rc).
one() {
  local t="$1" scratch status=0
  mkdir -p "corpus/$t" "artifacts/$t"
  scratch=$(mktemp -d)
  mkdir -p "$scratch/tmp" "$scratch/inputs"
  echo "long-run: $t for ${seconds}s${runs:+ or $runs inputs}" >&2
  TMPDIR="$scratch/tmp" RUST_BACKTRACE=0 cargo fuzz run "$t" "$scratch/inputs" "corpus/$t" -- \
    -max_total_time="$seconds" ${runs:+-runs="$runs"} -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$scratch/log" 2>&1 || status=$?
  local ran n s rate final cov ft corp rss crash="no"
  ran=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 \2/p' "$scratch/log" | tail -1)
  # -a: a log quotes inputs, so it may hold any byte.
  final=$(grep -a -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$scratch/log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$final")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$final")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$final")
  # The peak, or a crashed run's last: a leak that piles up shows here before the RSS limit.
  rss=$(sed -n 's/^stat::peak_rss_mb:[[:space:]]*\([0-9]*\).*/\1/p' "$scratch/log" | tail -1)
  [ -n "$rss" ] || rss=$(sed -n 's/.* rss: \([0-9]*\)Mb.*/\1/p' <<<"$final")
  n=${ran% *}; s=${ran#* }
  # A crash ends the run without its "Done" line: the last status line has the count.
  [ -n "$n" ] || n=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$final")
  rate=$([ -n "$n" ] && [ "${s:-0}" -gt 0 ] && echo $((n / s)) || echo "")
  if [ "$status" -ne 0 ]; then
    crash="YES (exit $status)"
    grep -a -E 'panicked at|SUMMARY' "$scratch/log" | head -5 >&2 || true
    # The whole report (a panic's message, a leak's allocation stacks) beside the input.
    cp "$scratch/log" "artifacts/$t/log-$(date -u +%Y%m%dT%H%M%S)"
  fi
  echo "| $t | ${n:-?} | ${s:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | ${rss:-?} | $crash |" >"$rows_dir/$t"
  echo "$status" >"$rows_dir/$t.rc"
  rm -rf "$scratch"
}
# The first build of each target happens before the timed runs, one at a time.
for t in "${targets[@]}"; do
  cargo fuzz build "$t" >/dev/null 2>&1 || true
done
running=0
for t in "${targets[@]}"; do
  one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
echo "fuzz/long-run.sh $seconds ${targets[*]}: commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), \
$(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores, $jobs at a time${runs:+, at most $runs inputs each}"
echo
echo "| target | inputs | seconds | inputs/s | coverage | features | corpus | peak RSS (MB) | crash |"
echo "|---|---|---|---|---|---|---|---|---|"
crashed=0
for t in "${targets[@]}"; do
  cat "$rows_dir/$t"
  [ "$(cat "$rows_dir/$t.rc")" = 0 ] || crashed=1
done
rm -rf "$rows_dir"
exit $crashed
