"""vmta for Python: an embeddable outbound mail delivery core, through its C ABI (ctypes).

    import vmta

    with vmta.Engine(toml=config_text) as engine:
        message_id = engine.submit("news@example.com", ["ann@example.net"], message_bytes)
        for event in engine.events(timeout=30):
            print(event.kind, event.recipient, event.code, event.text)

Events are pulled: `Engine.poll()` drains what is pending, `Engine.events()` iterates while blocking
in `vmta_engine_wait` (the GIL is released), `Engine.aevents()` is an asyncio async iterator driven by
`loop.add_reader(engine.event_fd, ...)`. Refusals raise `Refused` subclasses (`Busy`,
`InvalidMessage`, `UnknownTenant`, `AccountLocked`, `SenderNotApproved`, `ShuttingDown`, ...).
"""

import asyncio
import ctypes
import importlib.metadata
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, Iterator, List, NoReturn, Optional, Sequence, Union

from . import _lib
from ._lib import lib

__all__ = [
    "Engine",
    "Event",
    "Stats",
    "Classification",
    "SuppressionList",
    "ReloadReport",
    "Suppression",
    "Verp",
    "ReportOutcome",
    "VmtaError",
    "Refused",
    "Busy",
    "ShuttingDown",
    "InvalidMessage",
    "UnknownTenant",
    "AccountLocked",
    "SenderNotApproved",
    "Suppressed",
    "ForgedReport",
    "ConfigError",
    "classify_reply",
    "version",
]

# Result codes (include/vmta.h); never renumbered.
OK = 0
NULL_PARAMETER = 1
INVALID_ARGUMENT = 2
INVALID_UTF8 = 3
TOO_LARGE = 4
PANIC = 5
INVALID_HANDLE = 6
CONFIG = 7
START_FAILED = 8
BUSY = 9
SHUTTING_DOWN = 10
INVALID_MESSAGE = 11
UNKNOWN_TENANT = 12
ACCOUNT_LOCKED = 13
SENDER_NOT_APPROVED = 14
SUPPRESSED = 15
NO_SPACE = 16
SPOOL_ERROR = 17
NO_EVENTS = 18
CONCURRENT_POLL = 19
IO = 20
NOT_FOUND = 21
FORGED_REPORT = 22
DISABLED = 23
TIMEOUT = 24

_KINDS = {
    1: "delivered",
    2: "deferred",
    3: "bounced",
    4: "expired",
    5: "cancelled",
    6: "suppressed",
    7: "late-bounce",
    8: "late-deferral",
    9: "complaint",
    10: "recovered",
    11: "refused",
}
_FINAL = {"delivered", "bounced", "expired", "cancelled", "suppressed", "refused"}
_DURABILITY = {"sync": 0, "interval": 1, "none": 2}
_TLS = {"disabled": 0, "opportunistic": 1, "required": 2}
_PRIORITY = {"transactional": 0, "bulk": 1}


def version() -> str:
    """The version of the linked library, as "major.minor.patch"."""
    n = lib.vmta_version()
    return "%d.%d.%d" % (n // 10000, n // 100 % 100, n % 100)


try:
    #: The package's version: the crate's, which the bundled library reports too.
    __version__: str = importlib.metadata.version("vmta")
except importlib.metadata.PackageNotFoundError:  # a source checkout on PYTHONPATH
    __version__ = version()


class VmtaError(Exception):
    """A vmta call failed. `code` is the vmta_result, `name` its description; `key` names the
    configuration key at fault for configuration errors."""

    def __init__(self, code: int, message: str = "", key: str = ""):
        self.code = code
        self.name = lib.vmta_result_str(code).decode()
        self.key = key
        self.message = message or self.name
        super().__init__(self.message)


class ConfigError(VmtaError):
    """The configuration is wrong (`key` says where)."""


class Refused(VmtaError):
    """A submission was refused; nothing was queued."""


class Busy(Refused):
    """The submission queue is full: try again shortly."""


class ShuttingDown(Refused):
    """The engine is shutting down."""


class InvalidMessage(Refused):
    """The envelope or message is not acceptable (the message says why)."""


class UnknownTenant(Refused):
    """The tenant is not configured."""


class AccountLocked(Refused):
    """The tenant's account is locked."""


class SenderNotApproved(Refused):
    """The sender is not approved for the tenant."""


class Suppressed(Refused):
    """Every recipient is on the tenant's suppression list; nothing was queued."""


class ForgedReport(VmtaError):
    """An inbound report came back to a VERP address whose signature does not verify; nothing
    changed."""


_ERRORS = {
    CONFIG: ConfigError,
    BUSY: Busy,
    SHUTTING_DOWN: ShuttingDown,
    INVALID_MESSAGE: InvalidMessage,
    UNKNOWN_TENANT: UnknownTenant,
    ACCOUNT_LOCKED: AccountLocked,
    SENDER_NOT_APPROVED: SenderNotApproved,
    SUPPRESSED: Suppressed,
    FORGED_REPORT: ForgedReport,
    NO_SPACE: Refused,
    SPOOL_ERROR: Refused,
}


def _raise(code: int, err: Optional[ctypes.c_void_p] = None) -> NoReturn:
    message, key = "", ""
    if err is not None and err.value:
        message = lib.vmta_error_message(err).decode("utf-8", "replace")
        key = lib.vmta_error_key(err).decode("utf-8", "replace")
        lib.vmta_error_free(err)
    raise _ERRORS.get(code, VmtaError)(code, message, key)


def _check(code: int, err: Optional[ctypes.c_void_p] = None) -> None:
    if code != OK:
        _raise(code, err)


def _b(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


@dataclass(frozen=True)
class Event:
    """One recipient's outcome of one delivery attempt (copied out of the engine)."""

    # delivered, deferred, bounced, expired, cancelled, suppressed, late-bounce, late-deferral,
    # complaint, recovered (once per start whose spool held mail: message_id 0, counts in tags)
    kind: str
    message_id: int
    recipient_index: int
    recipient: str
    tenant: str
    code: int  # SMTP reply code, 0 when no server answered
    enhanced: Optional[str]  # "5.1.1"
    text: str
    phase: str
    reason: str
    mx: str
    ip: str
    source: str
    attempts: int
    next_attempt: int
    submitted_at: int
    at_ms: int
    tags: Dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """No more events will come for this recipient."""
        return self.kind in _FINAL

    @classmethod
    def _from_c(cls, e: _lib.Event) -> "Event":
        tags = {}
        for i in range(e.tags_len):
            tags[e.tags[i].key.text()] = e.tags[i].value.text()
        enhanced = None
        if e.enhanced_class:
            enhanced = "%d.%d.%d" % (e.enhanced_class, e.enhanced_subject, e.enhanced_detail)
        return cls(
            kind=_KINDS.get(e.kind, "unknown"),
            message_id=e.message_id,
            recipient_index=e.recipient_index,
            recipient=e.recipient.text(),
            tenant=e.tenant.text(),
            code=e.code,
            enhanced=enhanced,
            text=e.text.text(),
            phase=e.phase.text(),
            reason=e.reason.text(),
            mx=e.mx.text(),
            ip=e.ip.text(),
            source=e.source.text(),
            attempts=e.attempts,
            next_attempt=e.next_attempt,
            submitted_at=e.submitted_at,
            at_ms=e.at_ms,
            tags=tags,
        )


@dataclass(frozen=True)
class Stats:
    """Counters since start and gauges now, summed over shards."""

    shards: int
    submitted: int
    delivered: int
    deferred: int
    bounced: int
    expired: int
    cancelled: int
    queued: int
    in_flight: int
    connections_open: int
    connections_opened: int
    connection_failures: int
    spool_errors: int
    suppressed: int  # recipients left out at submission because they were suppressed


@dataclass(frozen=True)
class RecoveryReport:
    """What opening the engine's spool found (recovery after a restart or a crash), summed over shards."""

    segments: int
    messages: int  # messages recovered with recipients still to deliver
    recipients: int
    records: int  # valid records replayed
    corrupt_records: int  # damaged stretches skipped
    corrupt_bytes: int
    truncated_bytes: int  # torn tails cut
    orphan_records: int
    removed_segments: int
    damaged_segments: int
    elapsed_ms: int


@dataclass
class ReloadReport:
    """What `Engine.reload` did: what is in force now, and what changed but needs a restart."""

    applied: List[str]  # "shaping", "bounce rules", "tenants"
    needs_restart: List[str]  # "engine", "dns", "delivery", "retry", ...


_RELOAD_APPLIED = [(1, "shaping"), (2, "bounce rules"), (4, "tenants")]
_RELOAD_RESTART = [
    (1, "engine"),
    (2, "dns"),
    (4, "delivery"),
    (8, "retry"),
    (16, "sources"),
    (32, "pools"),
    (64, "routing"),
    (128, "smarthost"),
    (256, "suppression"),
    (512, "verp"),
    (1024, "tenants on or off"),
]


class Engine:
    """A running delivery engine.

    Configure it with TOML text (`toml=`) or a file (`path=`), then override the main options by
    keyword: `spool_dir`, `spool_segment_mb`, `shards`, `pin_shards`, `durability` ("sync", "interval", "none"),
    `nameservers`, `port`, `tls` ("disabled", "opportunistic", "required"), `smarthost`
    ("host:port", TLS from `smarthost_tls`), `helo_name`, `event_log`, `submission_queue`,
    `max_connections_per_host`, `shaping_rules`.

    Thread rules follow the C library: submit, cancel, stats, wait and wakeup from any thread; one
    consumer of events at a time.
    """

    def __init__(self, toml: Optional[str] = None, *, path: Optional[str] = None, **options: Any) -> None:
        config = ctypes.c_void_p()
        err = ctypes.c_void_p()
        if toml is not None and path is not None:
            raise ValueError("give toml or path, not both")
        if path is not None:
            _check(lib.vmta_config_from_file(*_lib.data(_b(path)), ctypes.byref(config), ctypes.byref(err)), err)
        elif toml is not None:
            _check(lib.vmta_config_from_toml(*_lib.data(_b(toml)), ctypes.byref(config), ctypes.byref(err)), err)
        else:
            _check(lib.vmta_config_new(ctypes.byref(config)))
        try:
            self._configure(config, options)
            h = ctypes.c_void_p()
            _check(lib.vmta_engine_new(config, ctypes.byref(h), ctypes.byref(err)), err)
            self._h: Optional[ctypes.c_void_p] = h
        finally:
            lib.vmta_config_free(config)
        self._shut = False
        self._buf = (_lib.Event * 256)()

    @staticmethod
    def _configure(c: ctypes.c_void_p, o: Dict[str, Any]) -> None:
        setters = {
            "spool_dir": lambda v: lib.vmta_config_set_spool_dir(c, *_lib.data(_b(str(v)))),
            "spool_segment_mb": lambda v: lib.vmta_config_set_spool_segment_mb(c, v),
            "shards": lambda v: lib.vmta_config_set_shards(c, v),
            "pin_shards": lambda v: lib.vmta_config_set_pin_shards(c, bool(v)),
            "durability": lambda v: lib.vmta_config_set_durability(c, _DURABILITY[v]),
            "port": lambda v: lib.vmta_config_set_port(c, v),
            "tls": lambda v: lib.vmta_config_set_tls(c, _TLS[v]),
            "helo_name": lambda v: lib.vmta_config_set_helo_name(c, *_lib.data(_b(v))),
            "event_log": lambda v: lib.vmta_config_set_event_log(c, *_lib.data(_b(str(v)))),
            "submission_queue": lambda v: lib.vmta_config_set_submission_queue(c, v),
            "max_connections_per_host": lambda v: lib.vmta_config_set_max_connections_per_host(c, v),
            "shaping_rules": lambda v: lib.vmta_config_set_shaping_rules(c, *_lib.data(_b(v))),
        }
        smarthost_tls = o.pop("smarthost_tls", "required")
        for key, value in o.items():
            if key == "nameservers":
                for ns in value:
                    _check(lib.vmta_config_add_nameserver(c, *_lib.data(_b(ns))))
            elif key == "smarthost":
                _check(lib.vmta_config_set_smarthost(c, *_lib.data(_b(value)), _TLS[smarthost_tls]))
            elif key in setters:
                _check(setters[key](value))
            else:
                raise TypeError("unknown engine option %r" % key)

    @property
    def _handle(self) -> ctypes.c_void_p:
        if self._h is None:
            raise VmtaError(INVALID_HANDLE, "the engine is closed")
        return self._h

    def submit(
        self,
        sender: str,
        recipients: Sequence[str],
        message: Union[bytes, str],
        *,
        tenant: str = "",
        tags: Optional[Dict[str, str]] = None,
        priority: str = "transactional",
    ) -> int:
        """Queues a message; returns its id once durable. Raises a `Refused` subclass otherwise."""
        return self._submit(lib.vmta_engine_submit, sender, recipients, message, tenant, tags, priority)

    def submit_nowait(
        self,
        sender: str,
        recipients: Sequence[str],
        message: Union[bytes, str],
        *,
        tenant: str = "",
        tags: Optional[Dict[str, str]] = None,
        priority: str = "transactional",
    ) -> int:
        """Queues a message without waiting for the disk: returns its id once it is handed to the
        engine, whose group commit makes it durable before delivery (one message per call is as
        fast as a batch). Refusals known at once raise as `submit` does; a refusal of the spool
        afterwards (a full disk) comes as a "refused" event per recipient. `flush()` waits until
        every such message is durable."""
        return self._submit(lib.vmta_engine_submit_nowait, sender, recipients, message, tenant, tags, priority)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Blocks (without the GIL) until every message queued with `submit_nowait` (by any
        thread) is durable or refused: True; False when `timeout` seconds passed first."""
        ms = 0xFFFFFFFF if timeout is None else max(0, min(int(timeout * 1000), 0xFFFFFFFF))
        r = lib.vmta_engine_flush(self._handle, ms)
        if r == TIMEOUT:
            return False
        _check(r)
        return True

    def _submit(
        self,
        call: Any,
        sender: str,
        recipients: Sequence[str],
        message: Union[bytes, str],
        tenant: str,
        tags: Optional[Dict[str, str]],
        priority: str,
    ) -> int:
        keep: List[object] = []
        rcpts = (_lib.Str * max(len(recipients), 1))(*[_lib.as_str(_b(r), keep) for r in recipients])
        tag_list = list((tags or {}).items())
        ctags = (_lib.Tag * max(len(tag_list), 1))(
            *[_lib.Tag(_lib.as_str(_b(k), keep), _lib.as_str(_b(v), keep)) for k, v in tag_list]
        )
        m = _lib.Message(
            sender=_lib.as_str(_b(sender), keep),
            recipients=ctypes.cast(rcpts, ctypes.POINTER(_lib.Str)),
            recipients_len=len(recipients),
            tenant=_lib.as_str(_b(tenant), keep),
            tags=ctypes.cast(ctags, ctypes.POINTER(_lib.Tag)),
            tags_len=len(tag_list),
            body=_lib.as_str(_b(message), keep),
            priority=_PRIORITY[priority],
        )
        mid = ctypes.c_uint64()
        err = ctypes.c_void_p()
        _check(call(self._handle, ctypes.byref(m), ctypes.byref(mid), ctypes.byref(err)), err)
        return mid.value

    def cancel(self, message_id: int) -> int:
        """Cancels what is left of a message; returns how many recipients were cancelled."""
        n = ctypes.c_size_t()
        _check(lib.vmta_engine_cancel(self._handle, message_id, ctypes.byref(n)))
        return n.value

    def poll(self, max_events: int = 256) -> List[Event]:
        """The events pending now (at most `max_events`), without blocking."""
        cap = min(max_events, len(self._buf))
        n = ctypes.c_size_t()
        _check(lib.vmta_engine_poll_events(self._handle, self._buf, cap, ctypes.byref(n)))
        # Copy out at once: the views are valid only until the next poll.
        return [Event._from_c(self._buf[i]) for i in range(n.value)]

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks (without the GIL) until events are pending: True; False when `timeout` seconds pass,
        `wakeup()` is called or the engine is shut down."""
        ms = 0xFFFFFFFF if timeout is None else max(0, min(int(timeout * 1000), 0xFFFFFFFF))
        r = lib.vmta_engine_wait(self._handle, ms)
        if r in (NO_EVENTS, SHUTTING_DOWN):
            return False
        _check(r)
        return True

    def wakeup(self) -> None:
        """Wakes every thread blocked in `wait()`."""
        _check(lib.vmta_engine_wakeup(self._handle))

    def events(self, timeout: Optional[float] = None) -> Iterator[Event]:
        """Iterates over events as they come, blocking (without the GIL) in between; stops after
        `timeout` seconds without any (None: never), or once the engine is shut down and drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.poll()
            yield from batch
            if batch:
                deadline = None if timeout is None else time.monotonic() + timeout
                continue
            if self._shut:
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            self.wait(left)

    def poll_pending(self) -> bool:
        """Whether events are pending now."""
        return bool(lib.vmta_engine_wait(self._handle, 0) == OK)

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    async def aevents(self) -> AsyncIterator[Event]:
        """An async iterator of events for asyncio: waits on the event fd with `loop.add_reader`.
        Ends once the engine is shut down and drained."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = self.event_fd
        loop.add_reader(fd, ready.set)
        try:
            while True:
                ready.clear()
                batch = self.poll()
                for e in batch:
                    yield e
                if batch:
                    continue
                if self._shut:
                    return
                await ready.wait()
        finally:
            loop.remove_reader(fd)

    @property
    def event_fd(self) -> int:
        """A file descriptor readable while events are pending (owned by the engine)."""
        fd = lib.vmta_engine_event_fd(self._handle)
        if fd < 0:
            raise VmtaError(INVALID_HANDLE)
        return int(fd)

    def stats(self) -> Stats:
        s = _lib.Stats()
        _check(lib.vmta_engine_stats(self._handle, ctypes.byref(s)))
        return Stats(**{f[0]: getattr(s, f[0]) for f in _lib.Stats._fields_})

    def reload(self, toml: Optional[str] = None, *, path: Optional[str] = None, **options: Any) -> "ReloadReport":
        """Applies a changed configuration (as for the constructor) to the running engine, all or
        nothing: shaping rules, bounce rules and tenants take effect for the next decision; what
        needs a restart is named in the report and left as it was. A configuration that does not
        check raises `ConfigError` (with its `key`) and nothing changes."""
        config = ctypes.c_void_p()
        err = ctypes.c_void_p()
        if toml is not None and path is not None:
            raise ValueError("give toml or path, not both")
        if path is not None:
            _check(lib.vmta_config_from_file(*_lib.data(_b(path)), ctypes.byref(config), ctypes.byref(err)), err)
        elif toml is not None:
            _check(lib.vmta_config_from_toml(*_lib.data(_b(toml)), ctypes.byref(config), ctypes.byref(err)), err)
        else:
            _check(lib.vmta_config_new(ctypes.byref(config)))
        try:
            self._configure(config, options)
            r = _lib.ReloadReport()
            _check(lib.vmta_engine_reload(self._handle, config, ctypes.byref(r), ctypes.byref(err)), err)
        finally:
            lib.vmta_config_free(config)
        return ReloadReport(
            applied=[n for b, n in _RELOAD_APPLIED if r.applied & b],
            needs_restart=[n for b, n in _RELOAD_RESTART if r.needs_restart & b],
        )

    def recovery(self) -> RecoveryReport:
        """What opening the spool found: all zero for a new spool."""
        r = _lib.RecoveryReport()
        _check(lib.vmta_engine_recovery(self._handle, ctypes.byref(r)))
        return RecoveryReport(**{f[0]: getattr(r, f[0]) for f in _lib.RecoveryReport._fields_})

    def suppression(self, address: str, *, tenant: str = "", stream: str = "") -> Optional["Suppression"]:
        """The suppression that stops mail to `address` for `tenant` (empty: the default tenant) on
        `stream` now, or None."""
        hit = ctypes.c_bool()
        info = _lib.SuppressionInfo()
        _check(
            lib.vmta_engine_suppression_check(
                self._handle,
                *_lib.data(_b(tenant)),
                *_lib.data(_b(address)),
                *_lib.data(_b(stream)),
                ctypes.byref(hit),
                ctypes.byref(info),
            )
        )
        if not hit.value:
            return None
        return Suppression(
            tenant, address.lower(), stream, info.reason.text(), _SOURCES[info.source], info.created, info.expires or None
        )

    def suppress(
        self, address: str, *, tenant: str = "", stream: str = "", reason: str = "", expires: int = 0
    ) -> None:
        """Suppresses `address` by hand (every stream unless `stream`; for good unless `expires`)."""
        _check(
            lib.vmta_engine_suppression_add(
                self._handle,
                *_lib.data(_b(tenant)),
                *_lib.data(_b(address)),
                *_lib.data(_b(stream)),
                *_lib.data(_b(reason)),
                expires,
            )
        )

    def unsuppress(self, address: str, *, tenant: str = "", stream: str = "") -> bool:
        """Removes a suppression; returns whether there was one."""
        removed = ctypes.c_bool()
        _check(
            lib.vmta_engine_suppression_remove(
                self._handle,
                *_lib.data(_b(tenant)),
                *_lib.data(_b(address)),
                *_lib.data(_b(stream)),
                ctypes.byref(removed),
            )
        )
        return removed.value

    def apply_report(self, message: bytes, *, tenant: str = "") -> "tuple[str, int, List[ReportOutcome]]":
        """Applies an inbound DSN / ARF / auto-reply to the engine's suppression list (events follow:
        late-bounce, late-deferral, complaint); returns (kind, message id or 0, outcomes). Raises
        `ForgedReport` for a VERP address that does not verify."""
        rep = ctypes.c_void_p()
        err = ctypes.c_void_p()
        _check(
            lib.vmta_engine_apply_report(
                self._handle, *_lib.data(_b(tenant)), *_lib.data(bytes(message)), ctypes.byref(rep), ctypes.byref(err)
            ),
            err,
        )
        try:
            return lib.vmta_report_kind(rep).decode(), lib.vmta_report_message_id(rep), _outcomes(rep)
        finally:
            lib.vmta_report_free(rep)

    def prometheus(self) -> str:
        """Metrics in the Prometheus text format."""
        buf = ctypes.c_void_p()
        _check(lib.vmta_engine_prometheus(self._handle, ctypes.byref(buf)))
        try:
            return ctypes.string_at(lib.vmta_buffer_data(buf), lib.vmta_buffer_len(buf)).decode()
        finally:
            lib.vmta_buffer_free(buf)

    def set_tenant_locked(self, tenant: str, locked: bool = True) -> None:
        """Locks or unlocks a configured tenant."""
        _check(lib.vmta_engine_set_tenant_locked(self._handle, *_lib.data(_b(tenant)), locked))

    def shutdown(self, grace: float = 5.0) -> None:
        """Stops intake, lets in-flight transactions finish within `grace` seconds, stops the engine.
        Events stay available to `poll()` / `events()`, which then end."""
        self._shut = True
        _check(lib.vmta_engine_shutdown(self._handle, int(grace * 1000)))

    def close(self) -> None:
        """Frees the engine (stopping it at once if `shutdown()` was not called)."""
        if self._h is not None:
            h, self._h = self._h, None
            self._shut = True
            lib.vmta_engine_free(h)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._h is not None and not self._shut:
            self.shutdown(grace=2.0)
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


@dataclass(frozen=True)
class Classification:
    reason: str  # userunknown, mailboxfull, ratelimited, ...
    kind: str  # hard, soft, block, transient, success
    action: str  # bounce, retry, none
    retry_after: Optional[int]  # seconds, for retry
    throttle: bool


def classify_reply(reply: str) -> Classification:
    """Classifies an SMTP reply line (`550 5.1.1 User unknown`) with vmta's shipped rules."""
    c = _lib.Classification()
    _check(lib.vmta_classify_reply(*_lib.data(_b(reply)), ctypes.byref(c)))
    action = {1: "bounce", 2: "retry", 3: "none"}[c.action]
    return Classification(
        reason=c.reason.text(),
        kind=c.kind.text(),
        action=action,
        retry_after=c.retry_after_s if action == "retry" else None,
        throttle=bool(c.throttle),
    )


_SOURCES = {1: "bounce", 2: "complaint", 3: "manual"}
_OUTCOMES = {1: "bounced", 2: "deferred", 3: "delivered", 4: "complaint", 5: "autoreply"}


@dataclass(frozen=True)
class Suppression:
    tenant: str
    address: str
    stream: str
    reason: str
    source: str  # bounce, complaint, manual
    created: int
    expires: Optional[int]


@dataclass(frozen=True)
class ReportOutcome:
    recipient: str
    message_id: str
    event: str  # bounced, deferred, delivered, complaint, autoreply
    reason: str
    feedback_type: str
    verified: bool
    suppressed: bool


def _outcomes(rep: Any) -> List[ReportOutcome]:
    outcomes = []
    o = _lib.ReportOutcome()
    for i in range(lib.vmta_report_len(rep)):
        _check(lib.vmta_report_get(rep, i, ctypes.byref(o)))
        outcomes.append(
            ReportOutcome(
                o.recipient.text(),
                o.message_id.text(),
                _OUTCOMES[o.event],
                o.reason.text(),
                o.feedback_type.text(),
                bool(o.verified),
                bool(o.suppressed),
            )
        )
    return outcomes


class Verp:
    """Signed VERP return paths `prefix+<id>.<tag>.<local>=<domain>@domain`."""

    def __init__(self, prefix: str, domain: str, key: bytes):
        self._h: Optional[ctypes.c_void_p] = ctypes.c_void_p()
        _check(
            lib.vmta_verp_new(
                *_lib.data(_b(prefix)), *_lib.data(_b(domain)), *_lib.data(_b(key)), ctypes.byref(self._h)
            )
        )

    def encode(self, message_id: str, recipient: str) -> str:
        buf = ctypes.c_void_p()
        _check(lib.vmta_verp_encode(self._h, *_lib.data(_b(message_id)), *_lib.data(_b(recipient)), ctypes.byref(buf)))
        try:
            return ctypes.string_at(lib.vmta_buffer_data(buf), lib.vmta_buffer_len(buf)).decode()
        finally:
            lib.vmta_buffer_free(buf)

    def __del__(self) -> None:
        if getattr(self, "_h", None):
            lib.vmta_verp_free(self._h)
            self._h = None


class SuppressionList:
    """A tenant-keyed suppression list stored in an append-only log file."""

    def __init__(self, path: str):
        self._h: Optional[ctypes.c_void_p] = ctypes.c_void_p()
        err = ctypes.c_void_p()
        _check(lib.vmta_suppression_open(*_lib.data(_b(path)), ctypes.byref(self._h), ctypes.byref(err)), err)

    def check(self, tenant: str, address: str, stream: str = "") -> Optional[Suppression]:
        hit = ctypes.c_bool()
        info = _lib.SuppressionInfo()
        _check(
            lib.vmta_suppression_check(
                self._h,
                *_lib.data(_b(tenant)),
                *_lib.data(_b(address)),
                *_lib.data(_b(stream)),
                ctypes.byref(hit),
                ctypes.byref(info),
            )
        )
        if not hit.value:
            return None
        return Suppression(
            tenant, address.lower(), stream, info.reason.text(), _SOURCES[info.source], info.created, info.expires or None
        )

    def __contains__(self, key: object) -> bool:
        """`(tenant, address) in suppression_list`."""
        if not (isinstance(key, tuple) and len(key) == 2):
            return False
        tenant, address = key
        return self.check(str(tenant), str(address)) is not None

    def add(self, tenant: str, address: str, *, stream: str = "", reason: str = "", expires: int = 0) -> None:
        _check(
            lib.vmta_suppression_add(
                self._h,
                *_lib.data(_b(tenant)),
                *_lib.data(_b(address)),
                *_lib.data(_b(stream)),
                *_lib.data(_b(reason)),
                expires,
            )
        )

    def remove(self, tenant: str, address: str, stream: str = "") -> bool:
        removed = ctypes.c_bool()
        _check(
            lib.vmta_suppression_remove(
                self._h, *_lib.data(_b(tenant)), *_lib.data(_b(address)), *_lib.data(_b(stream)), ctypes.byref(removed)
            )
        )
        return removed.value

    def list(self, tenant: str = "") -> List[Suppression]:
        lst = ctypes.c_void_p()
        _check(lib.vmta_suppression_list_new(self._h, *_lib.data(_b(tenant)), ctypes.byref(lst)))
        try:
            out = []
            e = _lib.SuppressionEntry()
            for i in range(lib.vmta_suppression_list_len(lst)):
                _check(lib.vmta_suppression_list_get(lst, i, ctypes.byref(e)))
                out.append(
                    Suppression(
                        e.tenant.text(),
                        e.address.text(),
                        e.stream.text(),
                        e.reason.text(),
                        _SOURCES[e.source],
                        e.created,
                        e.expires or None,
                    )
                )
            return out
        finally:
            lib.vmta_suppression_list_free(lst)

    def feed_report(
        self, tenant: str, message: bytes, *, verp: Optional[Verp] = None, trust_unsigned: bool = False
    ) -> "tuple[str, List[ReportOutcome]]":
        """Reads an inbound DSN / ARF / auto-reply and applies it; returns (kind, outcomes)."""
        rep = ctypes.c_void_p()
        err = ctypes.c_void_p()
        _check(
            lib.vmta_suppression_feed_report(
                self._h,
                verp._h if verp is not None else None,
                *_lib.data(_b(tenant)),
                *_lib.data(bytes(message)),
                1 if trust_unsigned else 0,
                ctypes.byref(rep),
                ctypes.byref(err),
            ),
            err,
        )
        try:
            return lib.vmta_report_kind(rep).decode(), _outcomes(rep)
        finally:
            lib.vmta_report_free(rep)

    def close(self) -> None:
        if self._h:
            lib.vmta_suppression_free(self._h)
            self._h = None

    def __enter__(self) -> "SuppressionList":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
