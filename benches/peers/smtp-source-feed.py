#!/usr/bin/env python3
"""Benchmark feeder built on Postfix's own smtp-source: the same interface as benches/peers/feed
(smtp-feed), so benches/peers/postfix.sh and benches/serve.sh can inject with it.

    smtp-source-feed.py --server IP:PORT --routes FILE --messages N [--connections C] [--size BYTES]

Runs one smtp-source per destination domain (the first D domains of the routes file, D = min(4, C)),
C/D sessions each (-s), keeping each connection for the next message (-d), N/D messages each (-m) of
--size payload bytes (-l, default 2048) to user@DOMAIN with a sequence number prepended (-N).
smtp-source pipelines MAIL, RCPT and DATA when the server offers PIPELINING. Exit 1 if any
smtp-source fails. Prints one JSON line: system "smtp-source", messages, seconds, msg_per_s, cpu_s
(the smtp-source processes' user+system time), cpu_us_per_msg.
"""
import argparse, json, os, resource, shutil, subprocess, sys, time

p = argparse.ArgumentParser()
p.add_argument("--server", required=True)
p.add_argument("--routes", required=True)
p.add_argument("--messages", type=int, required=True)
p.add_argument("--connections", type=int, default=20)
p.add_argument("--size", type=int, default=2048)
a = p.parse_args()
source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
if not os.path.exists(source):
    sys.exit("smtp-source-feed: smtp-source is missing (apt-get install postfix)")
domains = [l.split()[0] for l in open(a.routes) if len(l.split()) == 3]
d = max(1, min(4, a.connections, len(domains)))
procs = []
t0 = time.monotonic()
for i in range(d):
    n = a.messages // d + (1 if i < a.messages % d else 0)
    s = a.connections // d + (1 if i < a.connections % d else 0)
    procs.append(subprocess.Popen([
        source, "-d", "-N", "-s", str(max(1, s)), "-m", str(n), "-l", str(a.size),
        "-M", "feed.vmta.test", "-f", "bounces@sender.vmta.test", "-t", "user@" + domains[i],
        a.server], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
failed = 0
for pr in procs:
    _, err = pr.communicate()
    if pr.returncode != 0:
        failed = 1
        sys.stderr.write(err.decode(errors="replace"))
seconds = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = ru.ru_utime + ru.ru_stime
print(json.dumps({
    "system": "smtp-source", "messages": a.messages, "seconds": round(seconds, 3),
    "msg_per_s": round(a.messages / seconds), "cpu_s": round(cpu, 3),
    "cpu_us_per_msg": round(cpu * 1e6 / a.messages, 1), "domains": d, "connections": a.connections,
}))
sys.exit(failed)
