#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target for SECONDS each (default 3600) and prints one table: inputs run,
# inputs per second, coverage (edges), features, corpus size and crashes per target.
#
#   fuzz/long-run.sh [SECONDS] [TARGET...]      # e.g. fuzz/long-run.sh 600 bounce_parse reply
#
# The committed corpora (fuzz/corpus/TARGET) are read, not written: new inputs go to a scratch
# directory (to keep some, `cargo fuzz cmin TARGET` after copying them in). A crash's input is kept in
# fuzz/artifacts/TARGET/ and reproduced with `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`.
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
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^vmta-fuzz$')
fi
rows=()
crashed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  scratch=$(mktemp -d)
  mkdir -p "$scratch/tmp" "$scratch/inputs"
  echo "long-run: $t for ${seconds}s" >&2
  status=0
  TMPDIR="$scratch/tmp" RUST_BACKTRACE=0 cargo fuzz run "$t" "$scratch/inputs" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$scratch/log" 2>&1 || status=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 \2/p' "$scratch/log" | tail -1)
  final=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$scratch/log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$final")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$final")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$final")
  n=${runs% *}; s=${runs#* }
  rate=$([ -n "$n" ] && [ "${s:-0}" -gt 0 ] && echo $((n / s)) || echo "")
  crash="no"
  if [ "$status" -ne 0 ]; then
    crash="YES (exit $status)"
    crashed=1
    grep -E 'panicked at|SUMMARY' "$scratch/log" | head -5 >&2 || true
  fi
  rows+=("| $t | ${n:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $crash |")
  rm -rf "$scratch"
done
echo "| target | inputs | inputs/s | coverage | features | corpus | crash |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit $crashed
