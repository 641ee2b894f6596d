#!/usr/bin/env bash
# The Python package as users get it: type-checks it (mypy --strict), installs it with
# `pip install ./python` into a fresh virtual environment (pip builds libvmta with setuptools-rust
# and bundles it), builds a wheel with `pip wheel` (tagged manylinux by auditwheel when it is
# installed) and runs the tests (pytest) with that wheel installed in another fresh environment,
# against a real loopback mail world (dnsmasq + Postfix smtp-sink on 127.0.70.30-33).
# VMTA_PROFILE=release builds an optimised library (default debug: faster to build, for tests).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export VMTA_PROFILE="${VMTA_PROFILE:-debug}"
unset VMTA_LIB
for m in pytest mypy setuptools_rust venv; do
  python3 -c "import $m" 2>/dev/null || { echo "python tests: $m is not installed (run .ci/deps)" >&2; exit 1; }
done
scratch="$(mktemp -d -t vmta-py-XXXXXX)"
trap 'rm -rf "$scratch"; rm -rf "$root/python/build" "$root/python/vmta.egg-info"' EXIT
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

echo "python: mypy --strict"
python3 -m mypy --config-file python/pyproject.toml python/vmta

echo "python: pip install ./python into a fresh venv"
rm -rf python/build python/vmta.egg-info
python3 -m venv "$scratch/fresh"
"$scratch/fresh/bin/python" -m pip install -q ./python
(cd "$scratch" && "$scratch/fresh/bin/python" -c '
import os, sys, vmta
assert vmta.__file__.startswith(sys.argv[1]), vmta.__file__
assert any(n.startswith("libvmta") for n in os.listdir(os.path.dirname(vmta.__file__)))
assert vmta.__version__ == vmta.version(), (vmta.__version__, vmta.version())
print("python: imported vmta", vmta.__version__, "from", os.path.dirname(vmta.__file__))' "$scratch/fresh")

echo "python: pip wheel"
rm -rf python/build python/vmta.egg-info
python3 -m pip wheel -q --no-build-isolation --no-deps ./python -w "$scratch/dist"
wheel="$(ls "$scratch"/dist/vmta-*.whl)"
if python3 -c 'import auditwheel' 2>/dev/null; then
  plat="$(auditwheel show "$wheel" 2>/dev/null | sed -n 's/.*platform tag to "\(manylinux_[0-9_]*_x86_64\)".*/\1/p' | tr -d '\n')"
  plat="${plat:-$(auditwheel show "$wheel" 2>/dev/null | tr '\n' ' ' | sed -n 's/.*constrains the platform tag to "\([a-z0-9_]*\)".*/\1/p')}"
  if [ -n "$plat" ]; then
    auditwheel repair --plat "$plat" -w "$scratch/wheelhouse" "$wheel" >"$scratch/auditwheel.log" 2>&1 || { cat "$scratch/auditwheel.log" >&2; exit 1; }
    wheel="$(ls "$scratch"/wheelhouse/vmta-*.whl)"
  fi
fi
echo "python: $(basename "$wheel")"

echo "python: pytest against the installed wheel"
# pytest comes from the system; vmta only from the wheel (the tests run outside the source tree).
python3 -m venv --system-site-packages "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q --no-deps "$wheel"
cd "$scratch"
"$scratch/venv/bin/python" -c 'import sys, vmta; assert vmta.__file__.startswith(sys.argv[1]), vmta.__file__' "$scratch/venv"
"$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider --basetemp="$scratch/pytest" "$root/python/tests"
