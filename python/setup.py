"""Builds the package with libvmta inside: setuptools-rust compiles the C ABI crate (../ffi) as a
shared library and puts it next to the Python modules, which load it with ctypes. The version is
the crate's. VMTA_PROFILE=debug builds an unoptimised library (for tests; wheels to ship are
release builds)."""

import os
import re

from setuptools import setup
from setuptools_rust import Binding, RustExtension

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "..", "Cargo.toml"), encoding="utf-8") as f:
    VERSION = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)

setup(
    version=VERSION,
    rust_extensions=[
        RustExtension(
            "vmta.libvmta",
            path=os.path.join("..", "ffi", "Cargo.toml"),
            binding=Binding.NoBinding,
            debug=os.environ.get("VMTA_PROFILE") == "debug",
            py_limited_api=True,
        )
    ],
    # ctypes only: one wheel serves every CPython from 3.9 on (tag cp39-abi3).
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
    zip_safe=False,
)
