"""The ctypes structures against the C header's layout (compiled with the system C compiler)."""

import ctypes
import os
import shutil
import subprocess

import pytest

from vmta import _lib

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))

STRUCTS = {
    "vmta_str": _lib.Str,
    "vmta_tag": _lib.Tag,
    "vmta_message": _lib.Message,
    "vmta_event": _lib.Event,
    "vmta_stats": _lib.Stats,
    "vmta_recovery_report": _lib.RecoveryReport,
    "vmta_reload_report": _lib.ReloadReport,
    "vmta_classification": _lib.Classification,
    "vmta_suppression_info": _lib.SuppressionInfo,
    "vmta_suppression_entry": _lib.SuppressionEntry,
    "vmta_report_outcome": _lib.ReportOutcome,
}


def test_structures_match_the_header(tmp_path):
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("a C compiler is needed to check the structure layouts")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "vmta.h"', "int main(void) {"]
    for cname, py in STRUCTS.items():
        lines.append(f'  printf("{cname} %zu\\n", sizeof({cname}));')
        for field, _ in py._fields_:
            lines.append(f'  printf("{cname}.{field} %zu\\n", offsetof({cname}, {field}));')
    lines += ["  return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run([cc, "-I", os.path.join(ROOT, "include"), str(src), "-o", str(exe)], check=True)
    want = dict(line.rsplit(" ", 1) for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines())
    for cname, py in STRUCTS.items():
        assert int(want[cname]) == ctypes.sizeof(py), cname
        for field, _ in py._fields_:
            assert int(want[f"{cname}.{field}"]) == getattr(py, field).offset, f"{cname}.{field}"
