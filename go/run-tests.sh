#!/usr/bin/env bash
# The Go module as users get it: installs the C library into a temporary prefix (`make install`),
# then `go vet` and `go test ./...` (standard library only, no module downloads) build against
# what was installed through `#cgo pkg-config: vmta`; the tests (and the Example functions) start a
# real loopback mail world (dnsmasq + Postfix smtp-sink on 127.0.70.40-43).
# VMTA_PROFILE=release installs an optimised library (default debug).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile="${VMTA_PROFILE:-debug}"
command -v go >/dev/null || { echo "go tests: go is not installed (run .ci/deps)" >&2; exit 1; }
prefix="$(mktemp -d -t vmta-go-XXXXXX)"
trap 'rm -rf "$prefix"' EXIT
make -s install PREFIX="$prefix" PROFILE="$profile" >/dev/null
# cgocheck=2 checks every pointer handed to C against the cgo rules (no Go pointers in Go memory
# passed to C) at run time.
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig" CGO_LDFLAGS="-Wl,-rpath,$prefix/lib" GOFLAGS=-mod=mod GOPROXY=off
export GODEBUG="${GODEBUG:-cgocheck=2}"
(cd go && go vet ./... && go test -count=1 ./... "$@")
# The example program, a module of its own that requires this one (replace => ../../../go).
(cd examples/go/send && go vet ./... && go build -o "$prefix/send" .)
echo "go: examples/go/send builds against the module"
