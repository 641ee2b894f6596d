#!/usr/bin/env bash
# vmta's test command: installs the real peers the tests start (when missing), then runs every test.
set -euo pipefail
cd "$(dirname "$0")"
.ci/deps
cargo test --workspace --all-targets
cargo test --workspace --doc
