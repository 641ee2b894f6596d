#!/usr/bin/env bash
# vmta's test command: installs the real peers the tests start (when missing), then runs every test:
# the Rust tests, then the C, Python and Go bindings' tests against the C ABI (examples/*/run-tests.sh).
set -euo pipefail
cd "$(dirname "$0")"
.ci/deps
cargo test --workspace --all-targets
cargo test --workspace --doc
examples/c/run-tests.sh
examples/python/run-tests.sh
examples/go/run-tests.sh
