#!/usr/bin/env bash
# vmta's test command: installs the real peers the tests start (when missing), then runs every test:
# the Rust tests, then the C library installed into a temporary prefix with its C tests, the Python
# package built, installed and tested from its wheel, and the Go tests (*/run-tests.sh).
set -euo pipefail
cd "$(dirname "$0")"
.ci/deps
cargo test --workspace --all-targets
cargo test --workspace --doc
examples/c/run-tests.sh
python/run-tests.sh
go/run-tests.sh
