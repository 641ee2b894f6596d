#!/usr/bin/env python3
"""Verifies DKIM signatures with dkimpy, an implementation independent of vmta.

Usage: dkim_verify.py NAMESERVER_IP NAMESERVER_PORT FILE...

Each FILE is a signed message. Keys are fetched from the given nameserver (a real DNS server the test
started) with dnspython. Prints "FILE: pass" or "FILE: fail <reason>" per file; exits 0 only if every
signature of every file verifies.
"""
import logging
import sys

import dkim
import dns.message
import dns.query
import dns.rdatatype


def main():
    server, port, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        query = dns.message.make_query(name, dns.rdatatype.TXT, use_edns=0, payload=4096)
        answer = dns.query.udp_with_fallback(query, server, timeout=timeout, port=port)[0]
        for rrset in answer.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                for rdata in rrset:
                    return b"".join(rdata.strings)
        return None

    log = logging.getLogger("dkim")
    logging.basicConfig(level=logging.WARNING)
    ok = True
    for path in files:
        with open(path, "rb") as f:
            message = f.read()
        d = dkim.DKIM(message, logger=log, minkey=1024)
        count = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
        results = []
        for i in range(count):
            try:
                results.append(d.verify(idx=i, dnsfunc=dnsfunc))
            except dkim.DKIMException as e:
                results.append(False)
                print(f"{path}: signature {i}: {e}")
        if count > 0 and all(results):
            print(f"{path}: pass ({count} signatures)")
        else:
            ok = False
            print(f"{path}: fail {results}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
