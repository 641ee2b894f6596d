"""Reply classification, suppression lists, VERP and inbound reports through the Python binding."""

import vmta


def test_classify_reply():
    c = vmta.classify_reply("550 5.1.1 <x@example.com>: Recipient address rejected: User unknown")
    assert (c.reason, c.kind, c.action, c.retry_after) == ("userunknown", "hard", "bounce", None)
    c = vmta.classify_reply("452 4.2.2 Mailbox full")
    assert c.action == "retry" and c.retry_after > 0


def test_suppression_round_trip(tmp_path):
    path = str(tmp_path / "suppressions.log")
    with vmta.SuppressionList(path) as s:
        assert s.check("acme", "a@example.com") is None
        s.add("acme", "A@Example.com", reason="userunknown")
        hit = s.check("acme", "a@example.com")
        assert hit.reason == "userunknown" and hit.source == "manual"
        assert ("acme", "a@example.com") in s
        assert ("other", "a@example.com") not in s
        assert [x.address for x in s.list("acme")] == ["a@example.com"]
    with vmta.SuppressionList(path) as s:  # persisted
        assert s.remove("acme", "a@example.com")
        assert not s.remove("acme", "a@example.com")
        assert s.list() == []


def test_a_signed_dsn_suppresses_an_unsigned_one_does_not(tmp_path):
    verp = vmta.Verp("bounces", "bounce.acme.example", b"secret")
    rp = verp.encode("m7", "gone@example.net")
    assert rp.startswith("bounces+m7.") and rp.endswith("@bounce.acme.example")

    def dsn(to):
        return (
            f"From: MAILER-DAEMON@mx.example.net\r\nTo: {to}\r\nSubject: failure\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
            "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
            "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n--b--\r\n"
        ).encode()

    with vmta.SuppressionList(str(tmp_path / "s.log")) as s:
        kind, outcomes = s.feed_report("acme", dsn("bounces@bounce.acme.example"), verp=verp)
        assert kind == "dsn" and [(o.event, o.verified, o.suppressed) for o in outcomes] == [
            ("bounced", False, False)
        ]
        assert s.check("acme", "gone@example.net") is None
        kind, outcomes = s.feed_report("acme", dsn(rp), verp=verp)
        assert [(o.event, o.reason, o.message_id, o.verified, o.suppressed) for o in outcomes] == [
            ("bounced", "userunknown", "m7", True, True)
        ]
        assert s.check("acme", "gone@example.net").source == "bounce"
