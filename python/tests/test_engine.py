"""The Python binding against a real sink: delivered, bounced, deferred and expired events, refusals,
the context manager, the event iterator and asyncio through add_reader."""

import asyncio
import os
import concurrent.futures
import threading

import pytest

import vmta
from conftest import received


def message(subject: str, to: str = "someone@ok.ffi.test") -> bytes:
    return f"From: <sender@vmta.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nHello from Python.\r\n".encode()


def final_events(engine, ids, timeout=30.0):
    """Events until every message id in `ids` has a final event per recipient."""
    want = dict(ids)  # id -> number of recipients
    got = []
    for e in engine.events(timeout=timeout):
        got.append(e)
        if e.final and e.message_id in want:
            want[e.message_id] -= 1
            if want[e.message_id] == 0:
                del want[e.message_id]
        if not want:
            break
    assert not want, f"no final event for {want}; got {got}"
    return got


def test_version():
    assert vmta.version() == "0.1.0"


def test_delivered_bounced_and_expired_events_from_a_real_sink(world, config):
    with vmta.Engine(toml=config) as engine:
        ok = engine.submit(
            "sender@vmta.test",
            ["py-ok@ok.ffi.test"],
            message("python delivered", "py-ok@ok.ffi.test"),
            tags={"campaign": "py", "n": "1"},
        )
        bad = engine.submit("sender@vmta.test", ["py-bad@bad.ffi.test"], message("python bounced"))
        later = engine.submit("sender@vmta.test", ["py-later@later.ffi.test"], message("python later"))
        assert len({ok, bad, later}) == 3
        events = final_events(engine, {ok: 1, bad: 1, later: 1})
        by = {}
        for e in events:
            by.setdefault((e.message_id, e.kind), e)
        d = by[(ok, "delivered")]
        assert (d.recipient, d.code, d.recipient_index) == ("py-ok@ok.ffi.test", 250, 0)
        assert d.tags == {"campaign": "py", "n": "1"}
        dns_ip = world["dns"].rsplit(":", 1)[0].split(".")
        ok_ip = ".".join(dns_ip[:3] + [str(int(dns_ip[3]) + 1)])  # the world's accepting sink
        assert d.ip == ok_ip and d.mx == "mx-ok.ffi.test"
        b = by[(bad, "bounced")]
        assert b.recipient == "py-bad@bad.ffi.test" and 500 <= b.code < 600 and b.phase == "rcpt"
        assert b.reason  # classified
        assert 400 <= by[(later, "deferred")].code < 500
        assert (later, "expired") in by
        stats = engine.stats()
        assert (stats.submitted, stats.delivered, stats.bounced, stats.expired) == (3, 1, 1, 1)
        assert "vmta_delivered_total" in engine.prometheus()
    assert received(world, "Subject: python delivered")


def test_submit_nowait_one_message_per_call_then_flush(world, config):
    # Each call hands one message over without waiting for the disk; flush() returns once all are
    # durable, and each is delivered or bounced as with submit().
    with vmta.Engine(toml=config) as engine:
        ids = {}
        for n in range(20):
            to = f"py-nowait{n}@ok.ffi.test" if n % 5 else f"py-nowait{n}@bad.ffi.test"
            ids[engine.submit_nowait("sender@vmta.test", [to], message(f"python nowait {n}", to))] = 1
        assert len(ids) == 20
        assert engine.flush(timeout=30)
        events = [e for e in final_events(engine, ids) if e.final]
        kinds = sorted(e.kind for e in events)
        assert kinds == ["bounced"] * 4 + ["delivered"] * 16, kinds
        with pytest.raises(vmta.InvalidMessage):
            engine.submit_nowait("sender@vmta.test", [], message("x"))
        assert engine.flush(timeout=0)
    assert received(world, "Subject: python nowait 1")


def test_one_message_to_several_recipients(world, config):
    with vmta.Engine(toml=config, shards=3) as engine:
        rcpts = ["a@ok.ffi.test", "unknown@bad.ffi.test", "b@ok.ffi.test"]
        mid = engine.submit("sender@vmta.test", rcpts, message("python many"), priority="bulk")
        events = [e for e in final_events(engine, {mid: 3}) if e.final]
        assert sorted((e.recipient_index, e.kind) for e in events) == [
            (0, "delivered"),
            (1, "bounced"),
            (2, "delivered"),
        ]


def test_refusals_raise_and_queue_nothing(config):
    with vmta.Engine(toml=config) as engine:
        with pytest.raises(vmta.InvalidMessage) as e:
            engine.submit("sender@vmta.test", [], message("x"))
        assert "no recipients" in str(e.value) and e.value.code == 11
        with pytest.raises(vmta.InvalidMessage):
            engine.submit("sender@vmta.test", ["not an address"], message("x"))
        with pytest.raises(vmta.InvalidMessage):
            engine.submit("sender@vmta.test", ["a@ok.ffi.test"], b"")
        with pytest.raises(vmta.VmtaError) as e:
            engine.submit("sender@vmta.test", ["a@ok.ffi.test"], b"x" * ((64 << 20) + 1))
        assert e.value.code == vmta.TOO_LARGE
        with pytest.raises(vmta.VmtaError) as e:
            engine.submit("sender@vmta.test", [b"\xff@ok.ffi.test"], message("x"))
        assert e.value.code == vmta.INVALID_UTF8
        assert engine.stats().submitted == 0
        engine.shutdown(grace=0.5)
        with pytest.raises(vmta.ShuttingDown):
            engine.submit("sender@vmta.test", ["a@ok.ffi.test"], message("x"))
    with pytest.raises(vmta.VmtaError) as e:
        engine.submit("sender@vmta.test", ["a@ok.ffi.test"], message("x"))
    assert e.value.code == vmta.INVALID_HANDLE


def test_tenant_policy_refusals(world, tmp_path):
    toml = (
        f'[engine]\nshards = 1\npin_shards = false\ndurability = "none"\nspool_dir = "{tmp_path}"\n'
        "spool_segment_mb = 2\n"
        + world["toml"]
        + '[[tenant]]\nname = "acme"\npool = "default"\nsender_domains = ["acme.example"]\n'
    )
    body = b"From: news@acme.example\r\nTo: x@ok.ffi.test\r\nSubject: policy\r\n\r\nhi\r\n"
    with vmta.Engine(toml=toml) as engine:
        with pytest.raises(vmta.UnknownTenant):
            engine.submit("news@acme.example", ["x@ok.ffi.test"], body, tenant="nobody")
        with pytest.raises(vmta.SenderNotApproved):
            engine.submit("news@other.example", ["x@ok.ffi.test"], body, tenant="acme")
        engine.set_tenant_locked("acme", True)
        with pytest.raises(vmta.AccountLocked):
            engine.submit("news@acme.example", ["x@ok.ffi.test"], body, tenant="acme")
        engine.set_tenant_locked("acme", False)
        mid = engine.submit("news@acme.example", ["x@ok.ffi.test"], body, tenant="acme")
        events = final_events(engine, {mid: 1})
        assert [e.kind for e in events if e.final] == ["delivered"]
        assert events[-1].tenant == "acme"
        with pytest.raises(vmta.UnknownTenant):
            engine.set_tenant_locked("ghost")


def test_configuration_errors_name_the_key(tmp_path):
    with pytest.raises(vmta.ConfigError) as e:
        vmta.Engine(toml="[delivery]\nport = 0\n", spool_dir=str(tmp_path))
    assert e.value.key == "delivery.port"
    with pytest.raises(vmta.ConfigError) as e:
        vmta.Engine(toml="[engine]\nshards = 'x'\n")
    assert e.value.key == "engine.shards"
    with pytest.raises(TypeError):
        vmta.Engine(colour="blue")
    with pytest.raises(vmta.VmtaError) as e:
        vmta.Engine(spool_dir=str(tmp_path), port=0)
    assert e.value.code == vmta.INVALID_ARGUMENT
    with pytest.raises(vmta.VmtaError) as e:
        vmta.Engine(spool_dir=str(tmp_path), spool_segment_mb=0)
    assert e.value.code == vmta.INVALID_ARGUMENT


def test_events_iterator_ends_on_timeout_and_after_shutdown(config):
    engine = vmta.Engine(toml=config)
    assert list(engine.events(timeout=0.2)) == []
    waiter = threading.Thread(target=lambda: list(engine.events()))
    waiter.start()
    engine.shutdown(grace=0.1)
    engine.wakeup()
    waiter.join(timeout=10)
    assert not waiter.is_alive(), "the iterator ends once the engine is shut down"
    engine.close()
    engine.close()  # twice is harmless


def test_cancel(world, config):
    with vmta.Engine(toml=config) as engine:
        # later.ffi.test defers: the message waits for its retry and can be cancelled.
        mid = engine.submit("sender@vmta.test", ["c@later.ffi.test"], message("cancel me"))
        for e in engine.events(timeout=10):
            if e.kind == "deferred":
                break
        assert engine.cancel(mid) == 1
        kinds = [e.kind for e in engine.events(timeout=2)]
        assert "cancelled" in kinds
        assert engine.cancel(mid) == 0
        assert engine.stats().cancelled == 1


def test_recovery_reports_what_a_restart_found(world, config):
    with vmta.Engine(toml=config) as engine:
        r = engine.recovery()
        assert (r.messages, r.recipients, r.corrupt_records) == (0, 0, 0)
        # later.ffi.test defers: the messages are still queued when the engine stops.
        for i in range(5):
            engine.submit("sender@vmta.test", ["r%d@later.ffi.test" % i], message("keep %d" % i))
        engine.shutdown(grace=0.5)
    with vmta.Engine(toml=config) as engine:
        r = engine.recovery()
        assert r.messages == 5 and r.recipients == 5, r
        assert r.records >= 5 and r.segments >= 1 and r.corrupt_records == 0, r
        # The first event says so too.
        first = next(engine.events(timeout=5))
        assert first.kind == "recovered" and first.message_id == 0, first
        assert first.tags["messages"] == "5", first
        assert first.text.startswith("recovered 5 messages"), first


def test_asyncio_reads_events_through_add_reader(world, config):
    async def run():
        with vmta.Engine(toml=config) as engine:
            loop = asyncio.get_running_loop()
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                # submit blocks until the message is durable: keep it off the event loop.
                ids = await asyncio.gather(
                    *[
                        loop.run_in_executor(
                            pool,
                            lambda i=i: engine.submit(
                                "sender@vmta.test", [f"async{i}@ok.ffi.test"], message(f"async {i}")
                            ),
                        )
                        for i in range(5)
                    ]
                )
            delivered = set()

            async def collect():
                async for e in engine.aevents():
                    if e.kind == "delivered":
                        delivered.add(e.message_id)
                    if delivered == set(ids):
                        return

            await asyncio.wait_for(collect(), timeout=30)
            return ids

    ids = asyncio.run(run())
    assert len(set(ids)) == 5
    assert all(received(world, f"Subject: async {i}\r") or received(world, f"Subject: async {i}") for i in range(5))


def test_suppression_refuses_and_a_late_dsn_suppresses(world, config):
    with vmta.Engine(toml=config) as engine:
        engine.suppress("py-gone@ok.ffi.test", reason="userunknown")
        assert engine.suppression("PY-GONE@ok.ffi.test").reason == "userunknown"
        with pytest.raises(vmta.Suppressed):
            engine.submit("sender@vmta.test", ["py-gone@ok.ffi.test"], message("python suppressed"))
        mid = engine.submit(
            "sender@vmta.test", ["py-fine@ok.ffi.test", "py-gone@ok.ffi.test"], message("python partly")
        )
        events = final_events(engine, {mid: 2})
        kinds = {(e.recipient, e.kind) for e in events if e.message_id == mid}
        assert ("py-gone@ok.ffi.test", "suppressed") in kinds and ("py-fine@ok.ffi.test", "delivered") in kinds
        # A DSN after the 250 (no VERP configured: matched by address and tenant).
        dsn = (
            "From: MAILER-DAEMON@mx.example\r\nTo: <sender@vmta.test>\r\nSubject: failure\r\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n"
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
            "Final-Recipient: rfc822; py-fine@ok.ffi.test\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n"
        ).encode()
        kind, _, outcomes = engine.apply_report(dsn)
        assert kind == "dsn" and outcomes[0].suppressed and outcomes[0].event == "bounced"
        late = next((e for e in engine.events(timeout=10) if e.kind == "late-bounce"), None)
        assert late and late.recipient == "py-fine@ok.ffi.test" and late.reason == "userunknown"
        assert engine.stats().suppressed == 2  # the refused submission and the partial one
        assert engine.unsuppress("py-gone@ok.ffi.test")
        assert engine.suppression("py-gone@ok.ffi.test") is None


def test_the_example_program_runs_with_the_installed_package(world, config, tmp_path):
    """examples/python/send.py, run by this interpreter (the installed package), delivers."""
    import subprocess
    import sys

    path = tmp_path / "vmta.toml"
    path.write_text(config)
    root = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "python", "send.py"), str(path),
         "sender@vmta.test", "py-example@ok.ffi.test"],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("delivered ") and "py-example@ok.ffi.test 250" in out.stdout, out.stdout


def test_reload_applies_new_rules_and_refuses_a_broken_config(world, config):
    """Engine.reload: new shaping rules apply, a broken configuration raises ConfigError with its
    key and changes nothing, a changed spool is named as needing a restart."""
    with vmta.Engine(toml=config) as engine:
        report = engine.reload(toml=config, shaping_rules='[defaults]\nmax_connections = 2\n')
        assert report.applied == ["shaping"], report
        assert report.needs_restart == [], report
        with pytest.raises(vmta.ConfigError) as e:
            engine.reload(toml=config, shaping_rules='[defaults]\nmessage_rate = "fast"\n')
        assert e.value.key == "shaping.rules"
        report = engine.reload(toml=config.replace("shards = 2", "shards = 3"))
        assert report.needs_restart == ["engine"], report
        assert "shaping" in report.applied  # back to the configuration's own rules
        mid = engine.submit("sender@vmta.test", ["reload@ok.ffi.test"], b"From: sender@vmta.test\r\nSubject: r\r\n\r\nx\r\n")
        for event in engine.events(timeout=30):
            if event.message_id == mid and event.final:
                assert event.kind == "delivered", event
                break
        else:
            pytest.fail("no final event")
