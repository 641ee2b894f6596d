#!/usr/bin/env bash
# Kills `vmta serve` with SIGKILL under load 200 times (the CI test does 20) and checks that every
# message that got its 250 reached the sink; prints acknowledged, delivered, duplicates and missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VMTA_SERVE_KILLS="${1:-200}" cargo test --release -p vmta-cli --test serve_crash -- --nocapture
