#!/usr/bin/env python3
"""The table of benches/wan.sh: for each RTT:SYSTEM named on the command line, reads
DIR/rtt-RTT/SYSTEM.world.json (what the sink saw: messages, seconds from the first accepted
connection to the last expected message, connections opened) and SYSTEM.client.json (the client's
JSON line, for its CPU), writes DIR/results.jsonl and DIR/wan.md and prints the table.

msg_per_rtt_per_conn is messages per connection per round trip: what pipelining buys. At RTT 0 it
is left out (no round trip to count).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import last_json_line  # noqa: E402  (the reader compare.sh's table uses)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("rows", nargs="*")
    a = p.parse_args()
    results = []
    for r in a.rows:
        rtt, system = r.split(":", 1)
        d = os.path.join(a.dir, f"rtt-{rtt}")
        world = last_json_line(os.path.join(d, f"{system}.world.json"))
        client = last_json_line(os.path.join(d, f"{system}.client.json"))
        n, secs = world["received"], world["seconds"]
        cpu = client["postfix_cpu_s"] if system == "postfix" else client["cpu_s"]
        rate = n / secs if secs > 0 else 0.0
        per_conn = rate / a.connections
        results.append(
            {
                "system": system,
                "rtt_ms": int(rtt),
                "connections": a.connections,
                "connections_opened": world["connections"],
                "messages": n,
                "seconds": secs,
                "msg_per_s": round(rate, 1),
                "msg_per_s_per_conn": round(per_conn, 2),
                "msg_per_rtt_per_conn": round(per_conn * int(rtt) / 1000, 3) if int(rtt) else None,
                "cpu_us_per_msg": round(cpu * 1e6 / n, 1) if n else None,
            }
        )
    with open(os.path.join(a.dir, "results.jsonl"), "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    lines = [
        f"| RTT ms | system | messages | msg/s | msg/s per conn | msg per RTT per conn | CPU µs/msg | vs Postfix per conn |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        pf = next(
            (x for x in results if x["system"] == "postfix" and x["rtt_ms"] == r["rtt_ms"]), None
        )
        ratio = (
            f"{r['msg_per_s_per_conn'] / pf['msg_per_s_per_conn']:.1f}×"
            if pf and pf["msg_per_s_per_conn"] > 0
            else "-"
        )
        per_rtt = "-" if r["msg_per_rtt_per_conn"] is None else f"{r['msg_per_rtt_per_conn']:.2f}"
        lines.append(
            f"| {r['rtt_ms']} | {r['system']} | {r['messages']:,} | {r['msg_per_s']:,.1f} | "
            f"{r['msg_per_s_per_conn']:,.2f} | {per_rtt} | {r['cpu_us_per_msg']} | {ratio} |"
        )
    table = "\n".join(lines) + "\n"
    with open(os.path.join(a.dir, "wan.md"), "w") as f:
        f.write(table)
    print(table, end="")


if __name__ == "__main__":
    main()
