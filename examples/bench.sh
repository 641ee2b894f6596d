#!/usr/bin/env bash
# Submission cost through the C ABI, from C (examples/c/bench.c) and from Go (BenchmarkSubmit in
# go/), with 1 and 4 submitting threads, against a real loopback mail world
# (examples/peers/mailworld.py on 127.0.70.50-53): engine with 2 shards, durability "none", every
# message to the accepting smtp-sink. Builds the release library first.
#   examples/bench.sh [COUNT]     (default 20000 submissions per run)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
count="${1:-20000}"
work="$(mktemp -d -t vmta-bench-XXXXXX)"
world_pid=""
cleanup() {
  if [ -n "$world_pid" ]; then kill "$world_pid" 2>/dev/null || true; wait "$world_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# The release library, installed into a scratch prefix the way users get it.
make -s install PREFIX="$work/prefix" PROFILE=release >/dev/null
libdir="$work/prefix/lib"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -std=c11 -O2 -Wall -Wextra -Werror $(pkg-config --cflags vmta) examples/c/bench.c -o "$work/bench" \
  $(pkg-config --libs vmta) -Wl,-rpath,"$libdir" -lpthread

python3 examples/peers/mailworld.py 127.0.70.50 >"$work/world.json" &
world_pid=$!
for _ in $(seq 100); do [ -s "$work/world.json" ] && break; sleep 0.1; done
world_toml="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["toml"])' "$work/world.json")"
for threads in 1 4; do
  rm -rf "$work/spool"
  printf '[engine]\nshards = 2\npin_shards = false\ndurability = "none"\nspool_dir = "%s"\n%s\n' \
    "$work/spool" "$world_toml" >"$work/bench.toml"
  "$work/bench" "$work/bench.toml" bench@ok.ffi.test "$count" "$threads"
done
kill "$world_pid"; wait "$world_pid" 2>/dev/null || true; world_pid=""

cd go
export CGO_LDFLAGS="-Wl,-rpath,$libdir" GOFLAGS=-mod=mod GOPROXY=off
go test -run '^$' -bench Submit -benchtime "${count}x" .
