#!/usr/bin/env python3
"""A loopback mail world for the C, Python and Go binding tests, made of real peers:

- dnsmasq on BASE answering MX and A queries for three test domains,
- Postfix smtp-sink on BASE+1, accepting everything (mail to ok.ffi.test),
- smtp-sink on BASE+2 refusing every RCPT with a hard 5xx error (mail to bad.ffi.test),
- smtp-sink on BASE+3 refusing every RCPT with a soft 4xx error (mail to later.ffi.test),

all sinks on one port so the engine's `[delivery] port` reaches each of them.

Usage: mailworld.py BASE_IP [--lifetime SECONDS]

BASE_IP is an address of 127.0.0.0/8 (the bindings use 127.0.70.0/24, e.g. 127.0.70.10). When the
world is up, one JSON line is printed on standard output:

    {"dns": "127.0.70.10:PORT", "port": PORT, "ok": "ok.ffi.test", "bad": "bad.ffi.test",
     "later": "later.ffi.test", "dump": "/tmp/...", "toml": "<engine configuration fragment>"}

`dump` is the directory where the accepting sink writes each message it receives (one file per
transaction; those that reached the end of data contain a `Received:` field). `toml` holds the
[dns], [delivery] and [shaping] sections an engine needs to deliver into the world.

The world stops on SIGTERM or SIGINT, when the process that started it exits, or after the lifetime
(default 600 s), and removes its temporary directory.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

UNSHAPED = (
    '[defaults]\nmax_connections = 0\nconnection_rate = "unlimited"\n'
    'max_messages_per_connection = 0\nmessage_rate = "unlimited"\nhourly_cap = 0\ndaily_cap = 0\n'
    '[backoff]\ndestination_base = "1s"\ndestination_max = "2s"\n'
)


def require(program):
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/sbin/{program}") if os.access(p, os.X_OK)), None
    )
    if not path:
        sys.exit(f"mailworld: {program} is not installed (run .ci/deps)")
    return path


def free_port(ips, udp_too=False):
    """A port free on every address (TCP, and UDP on the first when asked)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((ips[0], 0))
            port = s.getsockname()[1]
        try:
            held = []
            for ip in ips:
                t = socket.socket()
                held.append(t)
                t.bind((ip, port))
            if udp_too:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(u)
                u.bind((ips[0], port))
            return port
        except OSError:
            continue
        finally:
            for h in held:
                h.close()
    sys.exit("mailworld: no free port")


def wait_tcp(addr, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(addr, timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"mailworld: nothing listens on {addr[0]}:{addr[1]}")


def main():
    args = sys.argv[1:]
    lifetime = 600.0
    if "--lifetime" in args:
        i = args.index("--lifetime")
        lifetime = float(args[i + 1])
        del args[i : i + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    a, b, c, d = (int(x) for x in args[0].split("."))
    if a != 127 or d > 250:
        sys.exit("mailworld: BASE_IP must be 127.x.y.z with z <= 250")
    dns_ip, ok_ip, bad_ip, later_ip = (f"{a}.{b}.{c}.{d + i}" for i in range(4))

    dnsmasq = require("dnsmasq")
    sink = require("smtp-sink")
    tmp = tempfile.mkdtemp(prefix="vmta-mailworld-")
    os.chmod(tmp, 0o755)
    dump = os.path.join(tmp, "dump")
    os.mkdir(dump)
    os.chmod(dump, 0o777)  # smtp-sink runs as nobody when started by root

    children = []

    def stop(*_):
        for p in children:
            if p.poll() is None:
                p.terminate()
        for p in children:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    dns_port = free_port([dns_ip], udp_too=True)
    conf = os.path.join(tmp, "dnsmasq.conf")
    with open(conf, "w") as f:
        f.write(
            f"port={dns_port}\nlisten-address={dns_ip}\nbind-interfaces\nno-resolv\nno-hosts\n"
            f"no-poll\nkeep-in-foreground\nlocal-ttl=60\nlocal=/ffi.test/\n"
            f"pid-file={tmp}/dnsmasq.pid\n"
        )
        for name, ip in (("ok", ok_ip), ("bad", bad_ip), ("later", later_ip)):
            f.write(f"mx-host={name}.ffi.test,mx-{name}.ffi.test,10\n")
            f.write(f"host-record=mx-{name}.ffi.test,{ip}\n")
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    children.append(subprocess.Popen([dnsmasq, "-C", conf], **quiet))

    port = free_port([ok_ip, bad_ip, later_ip])
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    for ip, flags in ((ok_ip, []), (bad_ip, ["-f", "RCPT"]), (later_ip, ["-r", "RCPT"])):
        cmd = [sink, *user, "-d", f"{dump}/%Y%m%d%H%M%S.", *flags, f"{ip}:{port}", "256"]
        if ip != ok_ip:
            cmd[len(user) + 1 : len(user) + 3] = []  # only the accepting sink dumps messages
        children.append(subprocess.Popen(cmd, **quiet))
    wait_tcp((dns_ip, dns_port))
    for ip in (ok_ip, bad_ip, later_ip):
        wait_tcp((ip, port))
    for p in children:
        if p.poll() is not None:
            stop()

    toml = (
        f'[dns]\nnameservers = ["{dns_ip}:{dns_port}"]\ntimeout_ms = 500\n'
        f'[delivery]\nport = {port}\ntls = "disabled"\nconnect_timeout_s = 5\n'
        f"[shaping]\nrules = '''\n{UNSHAPED}'''\n"
    )
    print(
        json.dumps(
            {
                "dns": f"{dns_ip}:{dns_port}",
                "port": port,
                "ok": "ok.ffi.test",
                "bad": "bad.ffi.test",
                "later": "later.ffi.test",
                "dump": dump,
                "toml": toml,
            }
        ),
        flush=True,
    )
    parent = os.getppid()
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline and os.getppid() == parent:
        if any(p.poll() is not None for p in children):
            print("mailworld: a peer exited", file=sys.stderr)
            break
        time.sleep(0.2)
    stop()


if __name__ == "__main__":
    main()
