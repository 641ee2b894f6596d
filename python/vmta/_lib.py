"""The C library loaded with ctypes, with the prototypes of include/vmta.h.

Structures mirror the header field by field; `tests/test_abi.py` checks them against the library.
"""

import ctypes
from typing import Iterator, List, Optional, Tuple
import ctypes.util
import os
from ctypes import (
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint16,
    c_uint32,
    c_uint64,
    c_uint8,
    c_void_p,
)

u8p = POINTER(c_uint8)


class Str(Structure):
    """vmta_str: borrowed bytes."""

    _fields_ = [("ptr", u8p), ("len", c_size_t)]

    def bytes(self) -> bytes:
        if self.len == 0:
            return b""
        return ctypes.string_at(self.ptr, self.len)

    def text(self) -> str:
        return self.bytes().decode("utf-8", "replace")


class Tag(Structure):
    _fields_ = [("key", Str), ("value", Str)]


class Message(Structure):
    _fields_ = [
        ("sender", Str),
        ("recipients", POINTER(Str)),
        ("recipients_len", c_size_t),
        ("tenant", Str),
        ("tags", POINTER(Tag)),
        ("tags_len", c_size_t),
        ("body", Str),
        ("priority", c_uint32),
    ]


class Event(Structure):
    _fields_ = [
        ("message_id", c_uint64),
        ("kind", c_uint32),
        ("code", c_uint16),
        ("recipient_index", c_uint16),
        ("enhanced_class", c_uint16),
        ("enhanced_subject", c_uint16),
        ("enhanced_detail", c_uint16),
        ("attempts", c_uint16),
        ("next_attempt", c_uint64),
        ("submitted_at", c_uint64),
        ("at_ms", c_uint64),
        ("recipient", Str),
        ("tenant", Str),
        ("text", Str),
        ("phase", Str),
        ("reason", Str),
        ("mx", Str),
        ("ip", Str),
        ("source", Str),
        ("tags", POINTER(Tag)),
        ("tags_len", c_size_t),
    ]


class Stats(Structure):
    _fields_ = [
        (name, c_uint64)
        for name in (
            "shards",
            "submitted",
            "delivered",
            "deferred",
            "bounced",
            "expired",
            "cancelled",
            "queued",
            "in_flight",
            "connections_open",
            "connections_opened",
            "connection_failures",
            "spool_errors",
            "suppressed",
        )
    ]


class ReloadReport(Structure):
    _fields_ = [("applied", c_uint32), ("needs_restart", c_uint32)]


class RecoveryReport(Structure):
    _fields_ = [
        (name, c_uint64)
        for name in (
            "segments",
            "messages",
            "recipients",
            "records",
            "corrupt_records",
            "corrupt_bytes",
            "truncated_bytes",
            "orphan_records",
            "removed_segments",
            "damaged_segments",
            "elapsed_ms",
        )
    ]


class Classification(Structure):
    _fields_ = [
        ("reason", Str),
        ("kind", Str),
        ("action", c_uint32),
        ("retry_after_s", c_uint64),
        ("throttle", c_bool),
    ]


class SuppressionInfo(Structure):
    _fields_ = [("reason", Str), ("source", c_uint32), ("created", c_uint64), ("expires", c_uint64)]


class SuppressionEntry(Structure):
    _fields_ = [
        ("tenant", Str),
        ("address", Str),
        ("stream", Str),
        ("reason", Str),
        ("source", c_uint32),
        ("created", c_uint64),
        ("expires", c_uint64),
    ]


class ReportOutcome(Structure):
    _fields_ = [
        ("recipient", Str),
        ("message_id", Str),
        ("event", c_uint32),
        ("reason", Str),
        ("feedback_type", Str),
        ("verified", c_bool),
        ("suppressed", c_bool),
    ]


def _candidates() -> "Iterator[str]":
    env = os.environ.get("VMTA_LIB")
    if env:
        yield env
        return
    here = os.path.dirname(os.path.abspath(__file__))
    # The library the wheel bundles (libvmta.abi3.so, built by setuptools-rust).
    for name in sorted(os.listdir(here)):
        if name.startswith("libvmta") and name.endswith(".so"):
            yield os.path.join(here, name)
    # A checkout: python/vmta/ beside target/.
    root = os.path.normpath(os.path.join(here, "..", ".."))
    for profile in ("release", "debug"):
        yield os.path.join(root, "target", profile, "libvmta.so")
    found = ctypes.util.find_library("vmta")
    if found:
        yield found


def _load() -> ctypes.CDLL:
    tried = []
    for path in _candidates():
        if os.path.sep in path and not os.path.exists(path):
            tried.append(path)
            continue
        return ctypes.CDLL(path)
    raise OSError(
        "vmta: libvmta.so not found (tried %s); install the package with pip (it builds the library) or set VMTA_LIB"
        % (", ".join(tried) or "the system library path")
    )


lib = _load()

result = c_uint32
vp = c_void_p
pvp = POINTER(c_void_p)
b = c_char_p  # (const uint8_t *, size_t) inputs: bytes (NULs allowed, the length says) + c_size_t

_PROTOTYPES = {
    "vmta_version": (c_uint32, []),
    "vmta_result_str": (c_char_p, [result]),
    "vmta_error_code": (result, [vp]),
    "vmta_error_message": (c_char_p, [vp]),
    "vmta_error_key": (c_char_p, [vp]),
    "vmta_error_free": (result, [vp]),
    "vmta_buffer_data": (u8p, [vp]),
    "vmta_buffer_len": (c_size_t, [vp]),
    "vmta_buffer_free": (result, [vp]),
    "vmta_config_new": (result, [pvp]),
    "vmta_config_from_toml": (result, [b, c_size_t, pvp, pvp]),
    "vmta_config_from_file": (result, [b, c_size_t, pvp, pvp]),
    "vmta_config_free": (result, [vp]),
    "vmta_config_set_shards": (result, [vp, c_uint32]),
    "vmta_config_set_pin_shards": (result, [vp, c_bool]),
    "vmta_config_set_spool_dir": (result, [vp, b, c_size_t]),
    "vmta_config_set_durability": (result, [vp, c_uint32]),
    "vmta_config_set_spool_segment_mb": (result, [vp, c_uint32]),
    "vmta_config_set_submission_queue": (result, [vp, c_uint32]),
    "vmta_config_set_helo_name": (result, [vp, b, c_size_t]),
    "vmta_config_set_event_log": (result, [vp, b, c_size_t]),
    "vmta_config_add_nameserver": (result, [vp, b, c_size_t]),
    "vmta_config_set_port": (result, [vp, c_uint16]),
    "vmta_config_set_tls": (result, [vp, c_uint32]),
    "vmta_config_set_max_connections_per_host": (result, [vp, c_uint32]),
    "vmta_config_set_retry": (result, [vp, c_uint64, c_uint64, c_uint64]),
    "vmta_config_set_shaping_rules": (result, [vp, b, c_size_t]),
    "vmta_config_set_smarthost": (result, [vp, b, c_size_t, c_uint32]),
    "vmta_engine_new": (result, [vp, pvp, pvp]),
    "vmta_engine_submit": (result, [vp, POINTER(Message), POINTER(c_uint64), pvp]),
    "vmta_engine_submit_nowait": (result, [vp, POINTER(Message), POINTER(c_uint64), pvp]),
    "vmta_engine_flush": (result, [vp, c_uint32]),
    "vmta_engine_cancel": (result, [vp, c_uint64, POINTER(c_size_t)]),
    "vmta_engine_poll_events": (result, [vp, POINTER(Event), c_size_t, POINTER(c_size_t)]),
    "vmta_engine_event_fd": (c_int, [vp]),
    "vmta_engine_wait": (result, [vp, c_uint32]),
    "vmta_engine_wakeup": (result, [vp]),
    "vmta_engine_stats": (result, [vp, POINTER(Stats)]),
    "vmta_engine_recovery": (result, [vp, POINTER(RecoveryReport)]),
    "vmta_engine_reload": (result, [vp, vp, POINTER(ReloadReport), pvp]),
    "vmta_engine_prometheus": (result, [vp, pvp]),
    "vmta_engine_set_tenant_locked": (result, [vp, b, c_size_t, c_bool]),
    "vmta_engine_suppression_check": (
        result,
        [vp, b, c_size_t, b, c_size_t, b, c_size_t, POINTER(c_bool), POINTER(SuppressionInfo)],
    ),
    "vmta_engine_suppression_add": (
        result,
        [vp, b, c_size_t, b, c_size_t, b, c_size_t, b, c_size_t, c_uint64],
    ),
    "vmta_engine_suppression_remove": (
        result,
        [vp, b, c_size_t, b, c_size_t, b, c_size_t, POINTER(c_bool)],
    ),
    "vmta_engine_suppression_list_new": (result, [vp, b, c_size_t, pvp]),
    "vmta_engine_apply_report": (result, [vp, b, c_size_t, b, c_size_t, pvp, pvp]),
    "vmta_config_set_suppression": (result, [vp, c_bool]),
    "vmta_config_set_verp": (result, [vp, b, c_size_t, b, c_size_t, b, c_size_t]),
    "vmta_engine_shutdown": (result, [vp, c_uint32]),
    "vmta_engine_free": (result, [vp]),
    "vmta_classify_reply": (result, [b, c_size_t, POINTER(Classification)]),
    "vmta_suppression_open": (result, [b, c_size_t, pvp, pvp]),
    "vmta_suppression_free": (result, [vp]),
    "vmta_suppression_check": (
        result,
        [vp, b, c_size_t, b, c_size_t, b, c_size_t, POINTER(c_bool), POINTER(SuppressionInfo)],
    ),
    "vmta_suppression_add": (
        result,
        [vp, b, c_size_t, b, c_size_t, b, c_size_t, b, c_size_t, c_uint64],
    ),
    "vmta_suppression_remove": (
        result,
        [vp, b, c_size_t, b, c_size_t, b, c_size_t, POINTER(c_bool)],
    ),
    "vmta_suppression_list_new": (result, [vp, b, c_size_t, pvp]),
    "vmta_suppression_list_len": (c_size_t, [vp]),
    "vmta_suppression_list_get": (result, [vp, c_size_t, POINTER(SuppressionEntry)]),
    "vmta_suppression_list_free": (result, [vp]),
    "vmta_verp_new": (result, [b, c_size_t, b, c_size_t, b, c_size_t, pvp]),
    "vmta_verp_free": (result, [vp]),
    "vmta_verp_encode": (result, [vp, b, c_size_t, b, c_size_t, pvp]),
    "vmta_suppression_feed_report": (
        result,
        [vp, vp, b, c_size_t, b, c_size_t, c_uint32, pvp, pvp],
    ),
    "vmta_report_kind": (c_char_p, [vp]),
    "vmta_report_message_id": (c_uint64, [vp]),
    "vmta_report_len": (c_size_t, [vp]),
    "vmta_report_get": (result, [vp, c_size_t, POINTER(ReportOutcome)]),
    "vmta_report_free": (result, [vp]),
}

for _name, (_restype, _argtypes) in _PROTOTYPES.items():
    _f = getattr(lib, _name)
    _f.restype = _restype
    _f.argtypes = _argtypes


def data(value: bytes) -> "Tuple[Optional[bytes], int]":
    """A (pointer, length) argument pair for bytes (no copy: ctypes passes the bytes' buffer)."""
    return (value or None), len(value)


def as_str(value: bytes, keep: "List[object]") -> Str:
    """A vmta_str over bytes; `keep` holds the buffer for the duration of the call."""
    if not value:
        return Str(None, 0)
    ptr = ctypes.c_char_p(value)  # points into the bytes object, which `keep` holds
    keep.append((value, ptr))
    return Str(ctypes.cast(ptr, u8p), len(value))
