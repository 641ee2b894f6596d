#!/usr/bin/env python3
"""A real STARTTLS SMTP receiver for vmta's tests: aiosmtpd with a throwaway CA from trustme.

Usage: starttls_server.py HOST PORT DIR
Writes DIR/ca.pem (the CA that signed the server certificate for mx.starttls.test), prints READY when
listening, and one line per accepted message: DELIVERED <tls|plain> <mail_from> <rcpt,...> <bytes>.
A recipient whose local part is "unknown" is refused with 550 5.1.1. Stops on SIGTERM or when its
standard input closes... (stdin is not used: the test kills it).
"""
import asyncio
import os
import signal
import ssl
import sys

import trustme
from aiosmtpd.controller import Controller


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0] == "unknown":
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        tls = "tls" if session.ssl is not None else "plain"
        print(
            "DELIVERED %s %s %s %d"
            % (tls, envelope.mail_from or "<>", ",".join(envelope.rcpt_tos), len(envelope.content)),
            flush=True,
        )
        return "250 2.0.0 Ok: queued"


def main():
    host, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ca = trustme.CA()
    cert = ca.issue_cert("mx.starttls.test")
    ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    controller = Controller(
        Handler(), hostname=host, port=port, tls_context=context, require_starttls=False,
        server_hostname="mx.starttls.test", ready_timeout=10,
    )
    controller.start()
    print("READY", flush=True)
    stop = {"flag": False}

    def on_term(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        while not stop["flag"]:
            signal.pause()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
