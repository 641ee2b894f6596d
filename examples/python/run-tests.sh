#!/usr/bin/env bash
# Runs the Python binding's tests (pytest) against the vmta library built from this repository, and
# checks that the package installs with pip (into a scratch directory; nothing is installed system
# wide). The tests start a real loopback mail world (dnsmasq + Postfix smtp-sink on 127.0.70.30-33).
# VMTA_PROFILE=release uses target/release (default debug).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
profile="${VMTA_PROFILE:-debug}"
if [ "$profile" = release ]; then cargo build -q -p vmta-ffi --release; else cargo build -q -p vmta-ffi; fi
export VMTA_LIB="$root/target/$profile/libvmta.so"
python3 -c 'import pytest' 2>/dev/null || { echo "python tests: pytest is not installed (run .ci/deps)" >&2; exit 1; }

scratch="$(mktemp -d -t vmta-py-XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
echo "python: pip install"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-build-isolation --no-deps --target "$scratch/site" examples/python
(cd "$scratch" && PYTHONPATH="$scratch/site" python3 -c 'import vmta, sys; assert vmta.__file__.startswith(sys.argv[1]); print("python: installed vmta", vmta.version())' "$scratch/site")

echo "python: pytest"
cd examples/python
PYTHONPATH="$root/examples/python" python3 -m pytest -q -p no:cacheprovider --basetemp="$scratch/pytest" tests
