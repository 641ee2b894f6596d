#!/usr/bin/env bash
# Runs the Go binding's tests (go test, standard library only, no module downloads) against the vmta
# library built from this repository; the tests start a real loopback mail world (dnsmasq + Postfix
# smtp-sink on 127.0.70.40-43). VMTA_PROFILE=release uses target/release (default debug).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
profile="${VMTA_PROFILE:-debug}"
if [ "$profile" = release ]; then cargo build -q -p vmta-ffi --release; else cargo build -q -p vmta-ffi; fi
command -v go >/dev/null || { echo "go tests: go is not installed (run .ci/deps)" >&2; exit 1; }
libdir="$root/target/$profile"
pc="$(mktemp -d -t vmta-go-XXXXXX)"
trap 'rm -rf "$pc"' EXIT
ffi/pkgconfig.sh "$libdir" include >"$pc/vmta.pc"
# cgocheck=2 checks every pointer handed to C against the cgo rules (no Go pointers in Go memory
# passed to C) at run time.
export PKG_CONFIG_PATH="$pc" CGO_LDFLAGS="-Wl,-rpath,$libdir" GOFLAGS=-mod=mod GOPROXY=off
export GODEBUG="${GODEBUG:-cgocheck=2}"
cd examples/go
go vet ./...
go test -count=1 ./... "$@"
